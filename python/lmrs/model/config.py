"""The shape and options of a GPT (:class:`ModelConfig`, saved as ``model_config.json``)
and the constants every engine and export shares. No torch: the checkpoint and export code
reads configs without building a model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from lmrs.options import MLPS, NORMS, POSITIONS

# positions a model may have: far beyond what a small model trains on, and small enough
# that the rotary tables of a hostile config cannot exhaust memory
MAX_CONTEXT = 1 << 20
# every engine uses these (the Rust engine and the exports read them from here)
LAYER_NORM_EPS = 1e-5  # torch's and GPT-2's
RMS_NORM_EPS = 1e-6  # the model norms and QK-norm (nanochat, modded-nanogpt)


@dataclass
class ModelConfig:
    """Shape and options of a :class:`GPT`. Saved as ``model_config.json`` in checkpoints."""

    vocab_size: int
    max_seq_len: int = 512
    embed_dim: int = 256
    num_heads: int = 8
    num_layers: int = 6
    ff_dim: int = 1024
    dropout_rate: float = 0.1
    position: str = "learned"  # "learned" absolute embeddings or "rope" rotary
    num_kv_heads: Optional[int] = None  # None: = num_heads; fewer: GQA; 1: MQA
    gradient_checkpointing: bool = False
    bias: bool = True  # biases in linear layers and LayerNorms
    tie_weights: bool = True  # lm head shares the token embedding matrix
    attention_dropout: bool = False  # dropout on attention weights (off: faster SDPA kernel)
    rope_base: float = 10000.0
    seed: int = 0  # seeds the weight initialisation (global RNG is left untouched)
    # architecture options; the defaults are GPT-2's, so configs saved before these existed
    # load unchanged
    norm: str = "layernorm"  # "layernorm" or "rmsnorm": before attention, FFN and the head
    norm_scale: bool = True  # RMSNorm with a learned gain (False: parameter-free)
    qk_norm: bool = False  # parameter-free RMSNorm of queries and keys per head, before rope
    mlp: str = "gelu"  # "gelu", "relu2" (relu(x)**2) or "swiglu" (down(silu(gate x) * up x))
    logit_softcap: Optional[float] = None  # logits = cap * tanh(logits / cap)
    zero_init_proj: bool = False  # attention out_proj and ffn.down start at zero

    def __post_init__(self) -> None:
        # JSON and the CLI may give a whole number; one type keeps to_dict/from_dict equal
        if isinstance(self.logit_softcap, int) and not isinstance(self.logit_softcap, bool):
            self.logit_softcap = float(self.logit_softcap)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an impossible configuration."""
        for name in ("vocab_size", "max_seq_len", "embed_dim", "num_heads", "num_layers", "ff_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"ModelConfig.embed_dim ({self.embed_dim}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.num_kv_heads is not None:
            if not isinstance(self.num_kv_heads, int) or self.num_kv_heads <= 0:
                raise ValueError(
                    f"ModelConfig.num_kv_heads must be a positive integer or None, "
                    f"got {self.num_kv_heads!r}"
                )
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"ModelConfig.num_heads ({self.num_heads}) must be divisible by "
                    f"num_kv_heads ({self.num_kv_heads})"
                )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.position not in POSITIONS:
            raise ValueError(
                f"ModelConfig.position must be one of {POSITIONS}, got {self.position!r}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.max_seq_len > MAX_CONTEXT:
            raise ValueError(
                f"ModelConfig.max_seq_len {self.max_seq_len} is over the supported "
                f"{MAX_CONTEXT:,} positions"
            )
        rope_base = self.rope_base
        if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)):
            raise ValueError(f"ModelConfig.rope_base must be a number, got {rope_base!r}")
        if not 1.0 < rope_base < math.inf:
            raise ValueError(f"ModelConfig.rope_base must be > 1 and finite, got {rope_base}")
        booleans = (
            "bias",
            "tie_weights",
            "attention_dropout",
            "gradient_checkpointing",
            "norm_scale",
            "qk_norm",
            "zero_init_proj",
        )
        for name in booleans:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false")
        if self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "layernorm" and not self.norm_scale:
            raise ValueError(
                "ModelConfig.norm_scale false needs norm 'rmsnorm' (LayerNorm has a gain)"
            )
        if self.mlp not in MLPS:
            raise ValueError(f"ModelConfig.mlp must be one of {MLPS}, got {self.mlp!r}")
        cap = self.logit_softcap
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, (int, float)):
                raise ValueError(f"ModelConfig.logit_softcap must be a number or null, got {cap!r}")
            if not 0.0 < cap < math.inf:
                raise ValueError(f"ModelConfig.logit_softcap must be > 0 and finite, got {cap}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"ModelConfig.seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        if "vocab_size" not in data:
            raise ValueError("ModelConfig needs 'vocab_size'")
        return cls(**data)
