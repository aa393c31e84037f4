"""Checkpoints: ``store`` (the atomic, checksummed checkpoint directory and its recovery)
and ``sharded`` (torch.distributed.checkpoint: every rank writes its part)."""

from lmrs.checkpoint.store import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint_dir,
    save_checkpoint,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint_dir",
    "save_checkpoint",
]
