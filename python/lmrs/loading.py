"""``lmrs.load``: a trained run (or one of its checkpoints) as a model and its tokenizer.

The one way in for everything that uses a trained model: ``lmrs sample``, ``lmrs eval`` and
scripts alike. The checkpoint is verified against its checksums, the tokenizer checked
against the model (vocabulary size, the file the run trained with), and a run directory
whose newest save was interrupted falls back to the newest complete checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from lmrs.checkpoint.store import Checkpoint, CheckpointError, check_tokenizer, load_model
from lmrs.tokenizer.core import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class LoadedRun:
    """A model in eval mode, the tokenizer it was trained with, and the checkpoint they came
    from. Unpacks as ``model, tokenizer = lmrs.load(run)``."""

    model: Any  # lmrs.model.GPT
    tokenizer: Tokenizer
    checkpoint: Checkpoint

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    @property
    def path(self) -> Path:
        """The checkpoint directory that was read."""
        return self.checkpoint.path

    def generate(self, prompt: str, max_length: int = 100, **options: Any) -> str:
        """The text continuing ``prompt`` (at most ``max_length`` new tokens, stopping at
        the end-of-text token); ``options`` are :func:`lmrs.generate`'s (``temperature``,
        ``top_k``, ``top_p``, ``seed``, ``dtype``, ``engine``)."""
        from lmrs.model.generation import generate

        stops = options.pop("stop_tokens", None)
        if stops is None and self.tokenizer.eot_id is not None:
            stops = [self.tokenizer.eot_id]
        ids = generate(
            self.model, self.tokenizer.encode(prompt), max_length, stop_tokens=stops, **options
        )
        return self.tokenizer.decode(ids)

    def export(self, path: PathLike, format: str = "hf", **options: Any) -> Path:
        """Write this checkpoint to ``path`` as :func:`lmrs.export` does (``format`` "hf"
        or "gguf"; ``dtype``, ``overwrite``)."""
        from lmrs.interop.export import export

        return export(self.path, path, format, **options)


def load(run_or_checkpoint: PathLike, *, device: str = "cpu") -> LoadedRun:
    """The model and tokenizer of a run directory (its newest checkpoint) or a checkpoint
    directory, on ``device`` ("cpu", "cuda", "auto", ...), in eval mode.

    Example: ``model, tokenizer = lmrs.load("runs/demo")``, or
    ``lmrs.load("runs/demo").generate("def ", max_length=40, seed=0)``.
    Raises :class:`lmrs.checkpoint.CheckpointError` (one line naming the file) for a missing,
    damaged or tampered checkpoint.
    """
    from lmrs.distributed import resolve_device

    model, saved = load_model(run_or_checkpoint, device=resolve_device(device))
    tokenizer_path: Optional[Path] = saved.tokenizer_path
    if tokenizer_path is None:
        raise CheckpointError(f"{saved.path}: no tokenizer.json in the checkpoint")
    tokenizer = Tokenizer.load(str(tokenizer_path))
    check_tokenizer(saved.path, saved.model_config, tokenizer)
    return LoadedRun(model, tokenizer, saved)


__all__ = ["LoadedRun", "load"]
