"""lmrs: train small GPT-style language models end to end.

A Rust byte-pair-encoding engine (``lmrs._lmrs``) behind :class:`Tokenizer`, and a
PyTorch decoder-only transformer with data batching, training, evaluation and sampling.

Model and training names are imported lazily so that tokenizer-only use does not pay
for importing PyTorch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from lmrs.corpus import add_to_corpus
from lmrs.seed_api import BytePairEncoding, Transformer, compress
from lmrs.tokenizer import Tokenizer, TokenizerError

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_LAZY = {
    "ModelConfig": "lmrs.model",
    "GPT": "lmrs.model",
    "KVCache": "lmrs.model",
    "create_model": "lmrs.model",
    "create_small_model": "lmrs.model",
    "model_from_preset": "lmrs.model",
    "PRESETS": "lmrs.model",
    "Decoder": "lmrs.decode",
    "generate": "lmrs.generate",
    "stream_generate": "lmrs.generate",
    "prepare_training_data": "lmrs.data",
    "TokenDataset": "lmrs.data",
    "TrainConfig": "lmrs.train",
    "train": "lmrs.train",
    "TrainResult": "lmrs.train",
    "evaluate": "lmrs.evaluate",
    "EvalResult": "lmrs.evaluate",
    "save_checkpoint": "lmrs.checkpoint",
    "load_checkpoint": "lmrs.checkpoint",
    "export": "lmrs.export_run",
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


# The modules lmrs.train, lmrs.evaluate and lmrs.generate share their names with the
# functions they define. Importing such a submodule makes Python set `lmrs.<name>` to the
# module, which would hide the function (`lmrs.train(...)` -> "module is not callable").
_SHADOWED = {"train", "evaluate", "generate"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)  # the submodule is fully loaded by now
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
