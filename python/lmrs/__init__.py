"""lmrs: train small GPT-style language models end to end.

A Rust byte-pair-encoding engine (``lmrs._lmrs``) behind :class:`Tokenizer`, and a
PyTorch decoder-only transformer with data batching, training, evaluation and sampling.

Model and training names are imported lazily so that tokenizer-only use does not pay
for importing PyTorch. The layers, lowest first (DESIGN.md): the shared utilities here,
``corpus`` (text trees and record files), ``tokenizer``, ``data`` (token files),
``model`` (the GPT, its decoding engines, its Hugging Face form), ``checkpoint``,
``training``, ``interop`` (exports of whole runs), this public API, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmrs.corpus.files import add_to_corpus
from lmrs.seed_api import BytePairEncoding, Transformer, compress
from lmrs.tokenizer.core import Tokenizer, TokenizerError

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_LAZY = {
    "ModelConfig": "lmrs.model.gpt",
    "GPT": "lmrs.model.gpt",
    "KVCache": "lmrs.model.gpt",
    "create_model": "lmrs.model.gpt",
    "create_small_model": "lmrs.model.gpt",
    "model_from_preset": "lmrs.model.gpt",
    "PRESETS": "lmrs.model.gpt",
    "Decoder": "lmrs.model.decode",
    "generate": "lmrs.model.generation",
    "stream_generate": "lmrs.model.generation",
    "prepare_training_data": "lmrs.data.tokens",
    "TokenDataset": "lmrs.data.tokens",
    "TrainConfig": "lmrs.training.trainer",
    "train": "lmrs.training.trainer",
    "TrainResult": "lmrs.training.trainer",
    "evaluate": "lmrs.training.evaluation",
    "EvalResult": "lmrs.training.evaluation",
    "save_checkpoint": "lmrs.checkpoint.store",
    "load_checkpoint": "lmrs.checkpoint.store",
    "export": "lmrs.interop.export",
    "load": "lmrs.loading",
    "LoadedRun": "lmrs.loading",
}

__all__ = [
    "Tokenizer",
    "TokenizerError",
    "add_to_corpus",
    "BytePairEncoding",
    "Transformer",
    "compress",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmrs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
