"""The decoding path of generation: a GPT's weights prepared once, then a few tokens per call.

Training wants autograd and large matrix products. Decoding is another workload: each step
multiplies a handful of rows by every weight matrix, so it is bound by reading the weights
and by per-operation overhead, not by arithmetic. :class:`Decoder` snapshots a model for
that workload, with one of two engines (:func:`resolve_engine`):

- **rust** (the default for bfloat16 sampling on x86-64 CPUs with AVX2 or AVX512-BF16):
  the whole step is one call into ``lmrs._lmrs`` (``rust/src/decode.rs``), with the GIL
  released: weights in bfloat16 packed in blocks of 16 output columns, attention over a
  bfloat16 key/value cache (keys transposed), everything between the matrix products in
  plain loops, both cores through rayon. The kernels are chosen once per process for what
  the CPU has (``lmrs._lmrs.decode_kernel()``): "avx512bf16" (``vdpbf16ps``, AVX-512
  attention), "avx2" (AVX2 + FMA, the bfloat16 weights widened to float32 in registers)
  or "portable" (plain Rust); the environment variable ``LMRS_CPU=avx2`` or
  ``LMRS_CPU=portable`` forces a lower one (a name this CPU cannot run is a ValueError).
  Rows of a batch never mix: with a given kernel, a row's logits are bit-identical
  whatever else is in the batch. The kernels round differently from each other, so their
  logits agree to bfloat16 precision, not to the bit.
- **torch** (GPUs, float32/float64 sampling, CPUs without AVX2, e.g. ARM): eager
  PyTorch on a prepared copy of the weights in the sampling dtype; on CPU packed once for
  oneDNN (``torch.ops.mkldnn``) with GELU and the residual adds fused into the matrix
  products, the attention scale folded into the query weights, a float32 KV cache.

Measured on two CPU cores (``benchmarks/bench_model.py``, HF GPT-2 of the same shape): the
rust engine samples about 16x GPT-2's tokens/s at batch 1 and 4x at batch 16; the torch
engine about 3x at both.

The prepared weights are a copy: a Decoder does not follow later changes to the model's
parameters (a new one, or the next ``generate`` call, prepares them again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from lmrs.model import GPT, ModelConfig, rotate_half
from lmrs.options import ENGINES
from lmrs.precision import native_bf16

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(
    dtype: Union[str, torch.dtype, None],
    device: torch.device,
    model_dtype: torch.dtype = torch.float32,
) -> torch.dtype:
    """The dtype of the matrix products while sampling.

    "auto" (or None): bfloat16 for a float32 model on hardware with native bfloat16, else
    the model's own dtype. A name from ``DTYPES`` or a torch dtype is taken as given.
    """
    if dtype is None or dtype == "auto":
        if model_dtype == torch.float32 and native_bf16(device):
            return torch.bfloat16
        return model_dtype
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(
                f"sampling dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}"
            )
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"sampling dtype must be one of {sorted(DTYPES)}, got {dtype}")
    return dtype


@dataclass(frozen=True)
class _Linear:
    """``x @ weight.T + bias`` (optionally followed by tanh-GELU) with a prepared weight."""

    weight: torch.Tensor  # oneDNN-packed when ``packed``, else (out, in)
    bias: Optional[torch.Tensor]
    packed: bool

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.packed:
            post_op, algorithm = ("gelu", "tanh") if gelu else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(
                x, self.weight, self.bias, post_op, [], algorithm
            )
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y, approximate="tanh") if gelu else y

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, the add fused into the matmul where oneDNN does it."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, residual, self.weight, self.bias, "add"
            )
        return residual + F.linear(x, self.weight, self.bias)


def _prepare_linear(
    weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype, pack: bool
) -> _Linear:
    weight = weight.detach().to(dtype, memory_format=torch.contiguous_format, copy=True)
    bias = None if bias is None else bias.detach().to(dtype, copy=True)
    if pack:
        try:
            return _Linear(torch.ops.mkldnn._reorder_linear_weight(weight, None), bias, True)
        except (RuntimeError, AttributeError, NotImplementedError):
            pass  # no oneDNN kernel for this dtype/build: plain matmul below
    return _Linear(weight, bias, False)


@dataclass(frozen=True)
class _Layer:
    ln_attn: tuple[torch.Tensor, Optional[torch.Tensor]]
    qkv: _Linear  # query rows pre-scaled by 1/sqrt(head_dim)
    out_proj: _Linear
    ln_ffn: tuple[torch.Tensor, Optional[torch.Tensor]]
    up: _Linear  # GELU fused
    down: _Linear


@dataclass(frozen=True)
class DecodeWeights:
    """A model's parameters prepared for decoding; see :func:`prepare_weights`."""

    config: ModelConfig
    dtype: torch.dtype  # of the weights, the matrix products and the residual stream
    attn_dtype: torch.dtype  # of attention and its key/value cache
    layers: tuple[_Layer, ...]
    ln_final: tuple[torch.Tensor, Optional[torch.Tensor]]
    lm_head: _Linear
    token_embedding: torch.Tensor
    position_embedding: Optional[torch.Tensor]
    rope: Optional[tuple[torch.Tensor, torch.Tensor]]

    @property
    def device(self) -> torch.device:
        return self.token_embedding.device


def _snapshot_key(model: GPT, dtype: torch.dtype, pack: bool) -> tuple[Any, ...]:
    # a parameter changed in place bumps its version; a replaced one has a new address
    state = tuple((p.data_ptr(), p._version) for p in model.parameters())
    return (dtype, pack, state)


def prepare_weights(
    model: GPT, dtype: Union[str, torch.dtype, None] = "auto", pack: Optional[bool] = None
) -> DecodeWeights:
    """The model's weights prepared for decoding (a copy: later training does not change it).

    Preparing packs every matrix (about 15 ms for the 6M-parameter "full" model on two CPU
    cores), so the result is kept on the model and reused until a parameter changes.
    ``pack=None`` packs for oneDNN on CPU when available; False always uses F.linear.
    """
    weight = model.token_embedding.weight
    resolved = resolve_dtype(dtype, weight.device, weight.dtype)
    if pack is None:
        pack = weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
    key = _snapshot_key(model, resolved, pack)
    kept: dict[tuple[Any, ...], DecodeWeights] = model.__dict__.setdefault("_decode_weights", {})
    if key not in kept:
        kept.clear()  # keep one snapshot: the weights of an older state are dead
        kept[key] = _prepare(model, resolved, pack)
    return kept[key]




def resolve_engine(engine: str, device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation runs the decoding steps: "rust" or "torch".

    "auto" picks the Rust step (``lmrs._lmrs.DecodeModel``: one call per token) for
    bfloat16 sampling on a CPU where it has a SIMD kernel, i.e. every x86-64 CPU with AVX2
    and FMA or with AVX512-BF16 (``lmrs._lmrs.decode_kernel()`` is "avx2" or
    "avx512bf16"), and the PyTorch step everywhere else (GPUs, other dtypes, CPUs where
    only the portable kernel runs, such as ARM, or where ``LMRS_CPU=portable`` forces it).
    "rust" forces the Rust step on any CPU (the portable kernel where there is no other).
    A bad ``LMRS_CPU`` value is a ValueError from "auto" and "rust" alike.
    """
    if engine not in ENGINES:
        raise ValueError(f"decoding engine must be one of {ENGINES}, got {engine!r}")
    rust_ok = device.type == "cpu" and dtype == torch.bfloat16
    if engine == "rust" and not rust_ok:
        raise ValueError(
            f"the rust decoding engine runs bfloat16 on the CPU, not {dtype} on {device.type}"
        )
    if engine == "auto":
        from lmrs import _lmrs

        simd = rust_ok and _lmrs.decode_kernel() in ("avx512bf16", "avx2")
        return "rust" if simd else "torch"
    return engine


def rust_decode_model(model: GPT) -> Any:
    """The model's weights as an ``lmrs._lmrs.DecodeModel`` (bfloat16, built in Rust), kept
    on the model until a parameter changes, like :func:`prepare_weights`."""
    from lmrs import _lmrs

    key = ("rust",) + _snapshot_key(model, torch.bfloat16, False)
    kept: dict[tuple[Any, ...], Any] = model.__dict__.setdefault("_decode_weights", {})
    if key not in kept:
        kept.clear()
        config = model.config
        with torch.no_grad():
            tensors = {
                name: tensor.detach().float().cpu().contiguous().numpy()
                for name, tensor in model.state_dict().items()
            }
            if config.position == "rope":
                tensors["rope_cos"] = model.rope_cos.float().cpu().contiguous().numpy()
                tensors["rope_sin"] = model.rope_sin.float().cpu().contiguous().numpy()
        dims = (
            config.embed_dim,
            config.num_heads,
            config.kv_heads,
            config.head_dim,
            config.vocab_size,
            config.max_seq_len,
            config.num_layers,
        )
        kept[key] = _lmrs.DecodeModel(dims, tensors)
    return kept[key]


def _prepare(model: GPT, dtype: torch.dtype, pack: bool) -> DecodeWeights:
    config = model.config
    device = model.token_embedding.weight.device
    # attention in at least float32 on CPU, where half-precision batched matmuls are slow
    attn_dtype = dtype if device.type != "cpu" else torch.promote_types(dtype, torch.float32)

    def snapshot(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(dtype, copy=True)

    def norm(module: torch.nn.LayerNorm) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return snapshot(module.weight), None if module.bias is None else snapshot(module.bias)

    def linear(module: torch.nn.Linear) -> _Linear:
        return _prepare_linear(module.weight, module.bias, dtype, pack)

    query_rows = config.num_heads * config.head_dim
    scale = config.head_dim**-0.5
    layers = []
    for block in model.blocks:
        qkv_weight = block.attn.qkv.weight.detach().clone()
        qkv_weight[:query_rows] *= scale
        qkv_bias = block.attn.qkv.bias
        if qkv_bias is not None:
            qkv_bias = qkv_bias.detach().clone()
            qkv_bias[:query_rows] *= scale
        layers.append(
            _Layer(
                ln_attn=norm(block.ln_attn),
                qkv=_prepare_linear(qkv_weight, qkv_bias, dtype, pack),
                out_proj=linear(block.attn.out_proj),
                ln_ffn=norm(block.ln_ffn),
                up=linear(block.ffn.up),
                down=linear(block.ffn.down),
            )
        )
    position = model.position_embedding
    return DecodeWeights(
        config=config,
        dtype=dtype,
        attn_dtype=attn_dtype,
        layers=tuple(layers),
        ln_final=norm(model.ln_final),
        lm_head=linear(model.lm_head),
        token_embedding=snapshot(model.token_embedding.weight),
        position_embedding=None if position is None else snapshot(position.weight),
        rope=(
            (model.rope_cos.to(attn_dtype), model.rope_sin.to(attn_dtype))
            if config.position == "rope"
            else None
        ),
    )


class Decoder:
    """Prepared weights plus a key/value cache for ``batch_size`` rows of ``max_len`` positions.

    ``decoder(ids)`` takes the next ``T`` tokens of every row (B, T), stores their keys and
    values, and returns the logits (B, vocab) of the last of them, in the sampling dtype.
    The first call is the prompt; each later call one new token. ``reset()`` empties the cache.
    ``engine`` picks the implementation (see :func:`resolve_engine`); the Rust one returns
    float32 logits.
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        max_len: Optional[int] = None,
        dtype: Union[str, torch.dtype, None] = "auto",
        pack: Optional[bool] = None,
        engine: str = "auto",
    ) -> None:
        config = model.config
        self.max_len = config.max_seq_len if max_len is None else max_len
        if not 0 < self.max_len <= config.max_seq_len:
            raise ValueError(f"max_len must be in [1, {config.max_seq_len}], got {self.max_len}")
        device = model.token_embedding.weight.device
        resolved = resolve_dtype(dtype, device, model.token_embedding.weight.dtype)
        self.engine = resolve_engine(engine, device, resolved)
        self.batch_size = batch_size
        self.length = 0
        self._session: Any = None
        if self.engine == "rust":
            self._session = rust_decode_model(model).session(batch_size, self.max_len)
            self._dtype = resolved
            return
        self.weights = prepare_weights(model, resolved, pack)
        self._dtype = self.weights.dtype
        # uninitialised: attention only ever reads positions [0, length), all written first
        shape = (batch_size, config.kv_heads, self.max_len, config.head_dim)
        device, attn_dtype = self.weights.device, self.weights.attn_dtype
        self.keys = [torch.empty(shape, device=device, dtype=attn_dtype) for _ in model.blocks]
        self.values = [torch.empty(shape, device=device, dtype=attn_dtype) for _ in model.blocks]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the matrix products."""
        return self._dtype

    @property
    def layers(self) -> tuple[_Layer, ...]:
        return self.weights.layers

    def reset(self) -> None:
        self.length = 0
        if self._session is not None:
            self._session.reset()

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        batch, seq = ids.shape
        start, end = self.length, self.length + seq
        if batch != self.batch_size:
            raise ValueError(f"Decoder was built for {self.batch_size} rows, got {batch}")
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens is longer than the cache ({self.max_len})")
        if self._session is not None:
            logits = self._session.step(ids.to(torch.int64).contiguous().numpy())
            self.length = end
            return torch.from_numpy(logits)
        w = self.weights
        cfg = w.config
        heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        width = (cfg.embed_dim,)
        x = w.token_embedding[ids]
        if w.position_embedding is not None:
            x = x + w.position_embedding[start:end]
        x = x.view(batch * seq, cfg.embed_dim)
        # causal mask: none needed for one new token (it sees every cached one); is_causal
        # for a whole sequence from position 0; an explicit one for a chunk after a prefix
        mask = None
        if seq > 1 and start > 0:
            mask = torch.ones(seq, end, dtype=torch.bool, device=x.device).tril(start)
        for layer, keys, values in zip(w.layers, self.keys, self.values):
            qkv = layer.qkv(F.layer_norm(x, width, *layer.ln_attn))
            q = qkv[:, : heads * head_dim].view(batch, seq, heads, head_dim).transpose(1, 2)
            q = q.to(w.attn_dtype)
            kv = qkv[:, heads * head_dim :].view(batch, seq, 2, kv_heads, head_dim)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
            if w.rope is not None:
                cos, sin = w.rope[0][start:end], w.rope[1][start:end]
                q = q * cos + rotate_half(q) * sin
                k = k.to(w.attn_dtype)
                k = k * cos + rotate_half(k) * sin
            keys.narrow(2, start, seq).copy_(k)  # converts to the cache dtype
            values.narrow(2, start, seq).copy_(v)
            if seq == 1 and batch > 1:
                y = _one_query_attention(q, keys[:, :, :end], values[:, :, :end])
            else:
                y = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :end],
                    values[:, :, :end],
                    attn_mask=mask,
                    is_causal=start == 0,
                    scale=1.0,  # folded into the query weights
                    enable_gqa=kv_heads != heads,
                )
            y = y.transpose(1, 2).reshape(batch * seq, heads * head_dim).to(w.dtype)
            x = layer.out_proj.add_to(x, y)
            h = layer.up(F.layer_norm(x, width, *layer.ln_ffn), gelu=True)
            x = layer.down.add_to(x, h)
        self.length = end
        last = x.view(batch, seq, cfg.embed_dim)[:, -1]
        return w.lm_head(F.layer_norm(last, width, *w.ln_final))


def _one_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention of one new query per row (B, H, 1, hd) over the cache (B, KVH, L, hd).

    Two batched matmuls over (row, key/value head) pairs, reading the cache in place; the
    query heads that share a key/value head ride along as rows of one matrix, so GQA/MQA
    need no repeated keys. At batch 16 this beats the SDPA kernel (per-head setup dominates
    it when there is one query); at batch 1 SDPA is faster, so that case stays with it.
    """
    batch, heads, _, head_dim = q.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    pairs = batch * kv_heads
    q = q.reshape(pairs, heads // kv_heads, head_dim)
    # (B, KVH, L, hd) slices of a (B, KVH, max_len, hd) cache: one stride per pair
    keys = keys.as_strided((pairs, length, head_dim), (keys.stride(1), head_dim, 1))
    values = values.as_strided((pairs, length, head_dim), (values.stride(1), head_dim, 1))
    scores = torch.bmm(q, keys.transpose(1, 2)).softmax(dim=-1)  # (pairs, group, L)
    return torch.bmm(scores, values).view(batch, heads, 1, head_dim)
