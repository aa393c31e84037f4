"""The decoding path of generation: a GPT's weights prepared once, then a few tokens per call.

Training wants autograd and large matrix products. Decoding is another workload: each step
multiplies a handful of rows by every weight matrix, so it is bound by reading the weights
and by eager PyTorch's per-operation overhead, not by arithmetic (profiled: three quarters
of a batch-1 step in ``addmm`` reading 24 MB of fp32 weights). :class:`Decoder` snapshots a
model for that workload:

- weights in the sampling dtype: bfloat16 where the hardware computes it natively (half the
  bytes per token), float32 otherwise or on request;
- on CPU, weight matrices packed once into oneDNN's blocked layout (``torch.ops.mkldnn``, the
  kernels ``torch.compile``'s freezing pass uses), with GELU fused into the up-projection;
  twice as fast as ``addmm`` at batch 16. Where oneDNN is missing, plain ``F.linear``;
- the attention scale folded into the query projection; keys and values for both in one
  preallocated tensor per layer, so a step stores them with one copy;
- the residual stream and attention in float32 (only the matrix products use the sampling
  dtype), and no ``nn.Module`` dispatch: one short loop over the layers.

The snapshot does not follow later changes to the model's parameters: build a new Decoder
after training further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from lmrs.model import GPT, rotate_half

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


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


class Decoder:
    """A model's weights prepared for generation, with a key/value cache for ``batch_size``
    rows of up to ``max_len`` positions.

    ``decoder(ids)`` takes the next ``T`` tokens of every row (B, T), stores their keys and
    values, and returns the float32 logits (B, vocab) of the last of them. The first call
    is the prompt; each later call one new token. ``reset()`` empties the cache.
    ``pack=None`` packs weights for oneDNN on CPU when it can; False always uses F.linear.
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        max_len: Optional[int] = None,
        dtype: Union[str, torch.dtype, None] = "auto",
        pack: Optional[bool] = None,
    ) -> None:
        config = model.config
        self.config = config
        weight = model.token_embedding.weight
        self.device = weight.device
        self.dtype = resolve_dtype(dtype, self.device, weight.dtype)
        self.max_len = config.max_seq_len if max_len is None else max_len
        if not 0 < self.max_len <= config.max_seq_len:
            raise ValueError(f"max_len must be in [1, {config.max_seq_len}], got {self.max_len}")
        if pack is None:
            pack = self.device.type == "cpu" and torch.backends.mkldnn.is_available()
        # attention and the residual stream: at least float32 on CPU, where half-precision
        # batched matmuls are slow; the sampling dtype on accelerators
        self.act_dtype = self.dtype
        if self.device.type == "cpu":
            self.act_dtype = torch.promote_types(self.dtype, torch.float32)

        def snapshot(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.detach().to(self.act_dtype, copy=True)

        def norm(module: torch.nn.LayerNorm) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            bias = None if module.bias is None else snapshot(module.bias)
            return snapshot(module.weight), bias

        def linear(module: torch.nn.Linear) -> _Linear:
            return _prepare_linear(module.weight, module.bias, self.dtype, pack)

        query_rows = config.num_heads * config.head_dim
        scale = config.head_dim**-0.5
        self.layers: list[_Layer] = []
        for block in model.blocks:
            qkv_weight = block.attn.qkv.weight.detach().clone()
            qkv_weight[:query_rows] *= scale
            qkv_bias = block.attn.qkv.bias
            if qkv_bias is not None:
                qkv_bias = qkv_bias.detach().clone()
                qkv_bias[:query_rows] *= scale
            self.layers.append(
                _Layer(
                    ln_attn=norm(block.ln_attn),
                    qkv=_prepare_linear(qkv_weight, qkv_bias, self.dtype, pack),
                    out_proj=linear(block.attn.out_proj),
                    ln_ffn=norm(block.ln_ffn),
                    up=linear(block.ffn.up),
                    down=linear(block.ffn.down),
                )
            )
        self.ln_final = norm(model.ln_final)
        self.lm_head = linear(model.lm_head)
        self.token_embedding = snapshot(model.token_embedding.weight)
        self.position_embedding = (
            None if model.position_embedding is None else snapshot(model.position_embedding.weight)
        )
        self.rope = None
        if config.position == "rope":
            self.rope = (model.rope_cos.to(self.act_dtype), model.rope_sin.to(self.act_dtype))
        # keys at [:, 0], values at [:, 1]: one copy stores both for a step without rotation
        shape = (batch_size, 2, config.kv_heads, self.max_len, config.head_dim)
        # uninitialised: attention only ever reads positions [0, length), all written first
        self.cache = [
            torch.empty(shape, device=self.device, dtype=self.act_dtype) for _ in model.blocks
        ]
        self.batch_size = batch_size
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        batch, seq = ids.shape
        start, end = self.length, self.length + seq
        if batch != self.batch_size:
            raise ValueError(f"Decoder was built for {self.batch_size} rows, got {batch}")
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens is longer than the cache ({self.max_len})")
        cfg = self.config
        heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        width = (cfg.embed_dim,)
        x = self.token_embedding[ids]
        if self.position_embedding is not None:
            x = x + self.position_embedding[start:end]
        x = x.view(batch * seq, cfg.embed_dim)
        # causal mask: none needed for one new token (it sees every cached one); is_causal
        # for a whole sequence from position 0; an explicit one for a chunk after a prefix
        mask = None
        if seq > 1 and start > 0:
            mask = torch.ones(seq, end, dtype=torch.bool, device=self.device).tril(start)
        for layer, cache in zip(self.layers, self.cache):
            h = F.layer_norm(x, width, *layer.ln_attn)
            qkv = layer.qkv(h.to(self.dtype))  # the cache writes below convert k and v
            q = qkv[:, : heads * head_dim].view(batch, seq, heads, head_dim).transpose(1, 2)
            q = q.to(self.act_dtype)
            kv = qkv[:, heads * head_dim :].view(batch, seq, 2, kv_heads, head_dim)
            if self.rope is None:
                cache[:, :, :, start:end] = kv.permute(0, 2, 3, 1, 4)
            else:
                cos, sin = self.rope[0][start:end], self.rope[1][start:end]
                q = q * cos + rotate_half(q) * sin
                k = kv[:, :, 0].transpose(1, 2)
                cache[:, 0, :, start:end] = k * cos + rotate_half(k) * sin
                cache[:, 1, :, start:end] = kv[:, :, 1].transpose(1, 2)
            y = F.scaled_dot_product_attention(
                q,
                cache[:, 0, :, :end],
                cache[:, 1, :, :end],
                attn_mask=mask,
                is_causal=seq > 1 and start == 0,
                scale=1.0,  # folded into the query weights
                enable_gqa=kv_heads != heads,
            )
            y = y.transpose(1, 2).reshape(batch * seq, heads * head_dim)
            x += layer.out_proj(y.to(self.dtype))
            h = F.layer_norm(x, width, *layer.ln_ffn)
            x += layer.down(layer.up(h.to(self.dtype), gelu=True))
        self.length = end
        last = x.view(batch, seq, cfg.embed_dim)[:, -1]
        h = F.layer_norm(last, width, *self.ln_final)
        return self.lm_head(h.to(self.dtype)).float()
