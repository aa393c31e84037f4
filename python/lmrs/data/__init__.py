"""Token files and batches: ``encode`` (a corpus or record files into a token file, through
the Rust writer) and ``tokens`` (token files opened without reading them, document index,
train/validation splits, batches)."""

from lmrs.data.tokens import (
    Batch,
    DataError,
    TokenDataset,
    TokenSplit,
    prepare_training_data,
    verify_token_data,
)

__all__ = [
    "Batch",
    "DataError",
    "TokenDataset",
    "TokenSplit",
    "prepare_training_data",
    "verify_token_data",
]
