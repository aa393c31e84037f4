"""The model layer: ``config`` (ModelConfig, no torch), ``gpt`` (the forward pass, block by
block), ``fused_loss``, the decoding engines over that same definition (``decode``,
``engine_spec`` for the Rust one), sampling (``generation``), and the model's Hugging Face
form (``hf_export``, ``hf_import``).

``from lmrs.model import GPT`` keeps working for scripts; the names load on first use, so
that ``lmrs.model.config`` can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "GPT": "lmrs.model.gpt",
    "KVCache": "lmrs.model.gpt",
    "create_model": "lmrs.model.gpt",
    "create_small_model": "lmrs.model.gpt",
    "model_from_preset": "lmrs.model.gpt",
    "PRESETS": "lmrs.model.gpt",
    "ModelConfig": "lmrs.model.config",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'lmrs.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
