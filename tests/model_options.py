"""The model options every engine test runs, in one list (test_kv_cache, test_decode,
test_engine_matrix): each ModelConfig option alone and the named ARCHITECTURES, so a new
option added here is run through the cached path and every engine at once."""

from __future__ import annotations

from typing import Any

from lmrs.options import ARCHITECTURES

OPTIONS: list[dict[str, Any]] = [
    {},  # GPT-2: learned positions, LayerNorm, GELU, biases, tied head
    {"position": "rope"},
    {"num_kv_heads": 2},  # grouped-query attention
    {"num_kv_heads": 1, "position": "rope"},  # multi-query attention
    {"bias": False},
    {"tie_weights": False},
    {"attention_dropout": True},
    {"norm": "rmsnorm"},
    {"norm": "rmsnorm", "norm_scale": False},
    {"qk_norm": True, "position": "rope"},
    {"mlp": "relu2"},
    {"mlp": "swiglu"},
    {"mlp": "swiglu", "bias": False, "tie_weights": False},
    {"logit_softcap": 2.0},  # small: the cap bends most logits
    {"zero_init_proj": True},
    *(dict(options) for options in ARCHITECTURES.values()),
]


def option_id(options: dict[str, Any]) -> str:
    """A short test id: the architecture's name, or field=value pairs."""
    for name, arch in ARCHITECTURES.items():
        if options == arch:
            return f"arch={name}"
    return ",".join(f"{key}={value}" for key, value in options.items()) or "defaults"


OPTION_IDS = [option_id(options) for options in OPTIONS]
