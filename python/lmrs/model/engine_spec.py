"""What a decoding engine needs to run a :class:`lmrs.model.GPT`: one spec, by name.

:func:`engine_spec` exports a model as an :class:`EngineSpec`: named fields (dimensions
and options) and named float32 tensors under engine-neutral names, so that an engine (the
Rust one in ``rust/src/py/decode.rs``, or an exporter) never spells the Python model's
parameter names or reads dimensions by position. The mapping from the model's parameter
names to these names lives here and only here (:data:`PARAMETER_NAMES`).

Tensor names and shapes (``E`` embed_dim, ``H`` num_heads, ``K`` kv_heads, ``D`` head_dim,
``F`` ff_dim, ``V`` vocab_size, ``T`` max_seq_len), every matrix (out, in) as
``nn.Linear`` stores it; ``.bias`` tensors exist only with ``bias``:

- ``embed.tokens`` (V, E); ``embed.positions`` (T, E) with learned positions;
  ``rope.cos`` and ``rope.sin`` (T, D) with rotary ones (rotate-half layout: the first and
  second halves of a head are the pairs rotated together)
- ``layers.{i}.attn_norm.weight`` (E) (absent for RMSNorm without scale), ``.bias`` (E)
  (LayerNorm with bias only); the same for ``layers.{i}.mlp_norm`` and ``final_norm``
- ``layers.{i}.attn.qkv.weight`` ((H + 2K)·D, E): queries, then keys, then values;
  ``layers.{i}.attn.out.weight`` (E, H·D)
- ``layers.{i}.mlp.up.weight`` (F, E), ``layers.{i}.mlp.down.weight`` (E, F); SwiGLU adds
  ``layers.{i}.mlp.gate.weight`` (F, E): ``down(silu(gate x) * up x)``
- ``head.weight`` (V, E), only when the head is not tied (``tied_head``: the head is
  ``embed.tokens``)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from lmrs.model.gpt import GPT, LAYER_NORM_EPS, RMS_NORM_EPS, ModelConfig

# the model's parameter names (a full match) -> the spec's tensor names
PARAMETER_NAMES: tuple[tuple[str, str], ...] = (
    (r"token_embedding\.weight", r"embed.tokens"),
    (r"position_embedding\.weight", r"embed.positions"),
    (r"lm_head\.weight", r"head.weight"),
    (r"ln_final\.(weight|bias)", r"final_norm.\1"),
    (r"blocks\.(\d+)\.ln_attn\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"blocks\.(\d+)\.ln_ffn\.(weight|bias)", r"layers.\1.mlp_norm.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"layers.\1.attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"layers.\1.attn.out.\2"),
    (r"blocks\.(\d+)\.ffn\.(gate|up|down)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
)


@dataclass(frozen=True)
class EngineSpec:
    """A model as an engine reads it: dimensions, options and named tensors (float32,
    C-contiguous numpy arrays; see the module docstring for names and shapes)."""

    embed_dim: int
    num_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    num_layers: int
    ff_dim: int
    position: str  # "learned" or "rope"
    rope_base: float  # the base of rope.cos/rope.sin (given for exporters; the tables rule)
    norm: str  # "layernorm" or "rmsnorm" (every norm of the model)
    norm_eps: float
    norm_scale: bool  # the norms have a weight
    qk_norm: bool  # queries and keys RMS-normalised per head (no weight), before rope
    qk_norm_eps: float
    mlp: str  # "gelu" (tanh approximation), "relu2" or "swiglu"
    bias: bool  # linear layers (and LayerNorms) have biases
    tied_head: bool  # the head is embed.tokens
    logit_softcap: Optional[float]  # logits = cap * tanh(logits / cap)
    tensors: dict[str, np.ndarray] = field(repr=False)


def spec_name(parameter: str) -> str:
    """The spec's name for a model parameter; ValueError for one the spec does not map
    (a new parameter must be named here before an engine can run it)."""
    for pattern, replacement in PARAMETER_NAMES:
        if re.fullmatch(pattern, parameter):
            return re.sub(pattern, replacement, parameter)
    raise ValueError(f"engine spec: the model parameter {parameter!r} has no spec name")


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an :class:`EngineSpec` of ``config`` holds, with its shape."""
    e, d, v, t, f = (
        config.embed_dim,
        config.head_dim,
        config.vocab_size,
        config.max_seq_len,
        config.ff_dim,
    )
    shapes: dict[str, tuple[int, ...]] = {"embed.tokens": (v, e)}
    if config.position == "learned":
        shapes["embed.positions"] = (t, e)
    else:
        shapes["rope.cos"] = shapes["rope.sin"] = (t, d)
    if not config.tie_weights:
        shapes["head.weight"] = (v, e)
    qkv = (config.num_heads + 2 * config.kv_heads) * d
    matrices = {"attn.qkv": (qkv, e), "attn.out": (e, config.num_heads * d)}
    if config.mlp == "swiglu":
        matrices["mlp.gate"] = (f, e)
    matrices.update({"mlp.up": (f, e), "mlp.down": (e, f)})
    norms = [f"layers.{i}.{n}" for i in range(config.num_layers) for n in ("attn_norm", "mlp_norm")]
    for norm in norms + ["final_norm"]:
        if config.norm_scale:
            shapes[f"{norm}.weight"] = (e,)
        if config.bias and config.norm == "layernorm":
            shapes[f"{norm}.bias"] = (e,)
    for i in range(config.num_layers):
        for name, shape in matrices.items():
            shapes[f"layers.{i}.{name}.weight"] = shape
            if config.bias:
                shapes[f"layers.{i}.{name}.bias"] = shape[:1]
    return shapes


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def engine_spec(model: GPT) -> EngineSpec:
    """``model`` as an :class:`EngineSpec` (a float32 copy of its weights)."""
    config = model.config
    tensors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for parameter, tensor in model.state_dict().items():
            name = spec_name(parameter)
            if name == "head.weight" and config.tie_weights:
                continue  # the token embedding itself
            tensors[name] = _array(tensor)
        if config.position == "rope":
            tensors["rope.cos"] = _array(model.rope_cos)
            tensors["rope.sin"] = _array(model.rope_sin)
    expected = tensor_shapes(config)
    got = {name: tuple(array.shape) for name, array in tensors.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or sorted(
            name for name in got if got[name] != expected[name]
        )
        raise ValueError(f"engine spec: the model's tensors differ from the spec at {wrong[:3]}")
    return EngineSpec(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        kv_heads=config.kv_heads,
        head_dim=config.head_dim,
        vocab_size=config.vocab_size,
        max_seq_len=config.max_seq_len,
        num_layers=config.num_layers,
        ff_dim=config.ff_dim,
        position=config.position,
        rope_base=float(config.rope_base),
        norm=config.norm,
        norm_eps=RMS_NORM_EPS if config.norm == "rmsnorm" else LAYER_NORM_EPS,
        norm_scale=config.norm_scale,
        qk_norm=config.qk_norm,
        qk_norm_eps=RMS_NORM_EPS,
        mlp=config.mlp,
        bias=config.bias,
        tied_head=config.tie_weights,
        logit_softcap=config.logit_softcap,
        tensors=tensors,
    )
