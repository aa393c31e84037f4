"""A GPT-style decoder-only transformer (nanoGPT-shaped, readable).

Token embedding (+ learned positions, or rotary positions inside attention), a stack of
pre-norm blocks (causal self-attention through ``F.scaled_dot_product_attention``, then a
feed-forward), a final norm and a language-model head (tied to the token embedding or not).
The defaults are GPT-2's (LayerNorm, GELU, biases, tied head); the options of newer small
models (RMSNorm, QK-norm, ReLU² or SwiGLU, logit soft-capping, zero-initialised output
projections) are fields too. Everything the model needs to know lives in
:class:`ModelConfig`; ``lmrs.options.ARCHITECTURES`` names sets of these options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmrs.model.config import LAYER_NORM_EPS, RMS_NORM_EPS, ModelConfig
from lmrs.model.fused_loss import head_cross_entropy
from lmrs.model.hf_export import export_huggingface
from lmrs.model.hf_import import load_pretrained
from lmrs.options import ARCHITECTURES, PRESETS


@dataclass
class KVCache:
    """Keys and values of every layer for ``batch`` rows of up to ``max_len`` positions.

    ``GPT.forward(ids, cache=cache)`` runs the next ``T`` tokens of every row after the
    ``cache.length`` already seen, writes their keys and values, and advances ``length``:
    the prompt in one call, then one token per call. Positions ``[0, length)`` are valid;
    the rest is uninitialised and never read.
    """

    keys: list[torch.Tensor]  # per layer (batch, kv_heads, max_len, head_dim)
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(
        cls,
        config: ModelConfig,
        batch: int,
        max_len: Optional[int] = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device, None] = None,
    ) -> KVCache:
        max_len = config.max_seq_len if max_len is None else max_len
        if not 0 < max_len <= config.max_seq_len:
            raise ValueError(f"max_len must be in [1, {config.max_seq_len}], got {max_len}")
        shape = (batch, config.kv_heads, max_len, config.head_dim)

        def layer() -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        return cls(
            keys=[layer() for _ in range(config.num_layers)],
            values=[layer() for _ in range(config.num_layers)],
        )

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def reset(self) -> None:
        self.length = 0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.qk_norm = config.qk_norm
        # one fused projection for queries, keys and values: one matmul instead of three
        qkv_dim = (config.num_heads + 2 * config.kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.embed_dim, qkv_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim, bias=config.bias)
        self.out_proj.residual_projection = True  # type: ignore[assignment]
        self.attn_dropout = config.dropout_rate if config.attention_dropout else 0.0
        self.resid_dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]],
        cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        start: int = 0,
    ) -> torch.Tensor:
        """``cache``: this layer's (keys, values) buffers; ``x`` holds positions
        ``[start, start + seq)`` and attends to every cached position before them."""
        batch, seq, _ = x.shape
        q_size = self.num_heads * self.head_dim
        kv_size = self.kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q = F.rms_norm(q, (self.head_dim,), eps=RMS_NORM_EPS)
            k = F.rms_norm(k, (self.head_dim,), eps=RMS_NORM_EPS)
        if rope is not None:
            cos, sin = rope  # (seq, head_dim)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        mask = None
        if cache is not None:
            end = start + seq
            keys, values = cache
            keys[:, :, start:end] = k  # converts to the cache's dtype
            values[:, :, start:end] = v
            k, v = keys[:, :, :end].to(q.dtype), values[:, :, :end].to(q.dtype)
            if seq > 1 and start > 0:  # a chunk after a prefix: causal within the chunk
                mask = torch.ones(seq, end, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            # one new token sees every cached one; a sequence from position 0 is causal
            is_causal=mask is None and seq > 1 and start == 0,
            enable_gqa=self.kv_heads != self.num_heads,
        )
        y = y.transpose(1, 2).reshape(batch, seq, q_size)
        return self.resid_dropout(self.out_proj(y))


class FeedForward(nn.Module):
    """``down(act(up(x)))`` with GELU (GPT-2) or ReLU²; SwiGLU: ``down(silu(gate x) * up x)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        self.gate = (
            nn.Linear(config.embed_dim, config.ff_dim, bias=config.bias)
            if config.mlp == "swiglu"
            else None
        )
        self.up = nn.Linear(config.embed_dim, config.ff_dim, bias=config.bias)
        self.down = nn.Linear(config.ff_dim, config.embed_dim, bias=config.bias)
        self.down.residual_projection = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            hidden = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            hidden = F.relu(self.up(x)).square()
        else:
            # the tanh approximation is GPT-2's GELU, fused into one kernel here
            hidden = F.gelu(self.up(x), approximate="tanh")
        return self.dropout(self.down(hidden))


def make_norm(config: ModelConfig) -> nn.Module:
    """The model's normalisation over embed_dim: LayerNorm (bias follows ``config.bias``) or
    RMSNorm (a learned gain when ``norm_scale``, else parameter-free)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.embed_dim, eps=RMS_NORM_EPS, elementwise_affine=config.norm_scale)
    return nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS, bias=config.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_ffn = make_norm(config)
        self.ffn = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), rope, cache, start)
        return x + self.ffn(self.ln_ffn(x))


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # build and initialise under a forked RNG so the caller's global RNG stream is unchanged
        with torch.random.fork_rng(devices=[]):
            self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
            self.position_embedding = (
                nn.Embedding(config.max_seq_len, config.embed_dim)
                if config.position == "learned"
                else None
            )
            self.dropout = nn.Dropout(config.dropout_rate)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
            self.ln_final = make_norm(config)
            self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight
        if config.position == "rope":
            cos, sin = _rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights(torch.Generator().manual_seed(config.seed))

    def _init_weights(self, generator: torch.Generator) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * num_layers), or
        zero with ``zero_init_proj`` (each block then starts as the identity)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if module is self.lm_head and self.config.tie_weights:
                    continue  # it is the token embedding, initialised below
                residual = getattr(module, "residual_projection", False)
                if residual and self.config.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    _normal_from(generator, module.weight, residual_std if residual else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                _normal_from(generator, module.weight, 0.02)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (tied weights counted once).

        With ``exclude_embeddings`` the token and position embeddings are left out (the
        tied lm head is the token embedding, so it goes too; an untied head stays).
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.token_embedding.weight.numel()
            if self.position_embedding is not None:
                total -= self.position_embedding.weight.numel()
        return total

    def estimate_flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per matmul weight plus attention.

        Matmul weights are every weight used in a matrix product: the blocks and the lm head
        (the embedding lookups are free). Attention scores and the weighted sum cost
        12 * layers * seq_len * embed_dim per token (PaLM appendix B convention).
        """
        cfg = self.config
        seq_len = cfg.max_seq_len if seq_len is None else seq_len
        matmul = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)
        matmul += self.lm_head.weight.numel()
        return 6.0 * matmul + 12.0 * cfg.num_layers * seq_len * cfg.embed_dim

    def forward(
        self,
        ids: torch.Tensor,
        cache: Optional[KVCache] = None,
        *,
        targets: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T).

        With a :class:`KVCache` the ids are the next ``T`` positions after ``cache.length``
        (their keys and values are stored, and the cache advances): generation runs this
        same code, the prompt in one call and then one token per call.

        With ``targets`` (B, T): the mean cross-entropy of the targets under those logits
        instead, computed a chunk of rows at a time (:mod:`lmrs.model.fused_loss`) without
        materialising the logits.
        """
        _, seq = ids.shape
        start = 0 if cache is None else cache.length
        end = start + seq
        limit = self.config.max_seq_len if cache is None else cache.max_len
        if end > limit:
            raise ValueError(
                f"sequence of {end} tokens is longer than "
                + (f"max_seq_len {limit}" if cache is None else f"the cache ({limit})")
            )
        x = self.token_embedding(ids)
        rope = None
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(start, end, device=ids.device))
        else:
            rope = (self.rope_cos[start:end].to(x.dtype), self.rope_sin[start:end].to(x.dtype))
        x = self.dropout(x)
        use_checkpoint = (
            self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        for index, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, rope, (cache.keys[index], cache.values[index]), start)
            elif use_checkpoint:
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        if cache is not None:
            cache.length = end
        x = self.ln_final(x)
        cap = self.config.logit_softcap
        if targets is not None and not torch.compiler.is_compiling():
            return head_cross_entropy(
                x.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                softcap=cap, ignore_index=ignore_index,
            )  # fmt: skip
        logits = self.lm_head(x)
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        if targets is not None:  # compiled: the compiler fuses the plain expression
            flat = logits.flatten(0, 1)
            return F.cross_entropy(flat, targets.flatten(), ignore_index=ignore_index)
        return logits

    def compute_loss(
        self, ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
    ) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of ``targets`` (B, T) given ``ids`` (B, T):
        ``F.cross_entropy`` of ``self(ids)``, computed without the full logits. Through
        ``forward``, so that DDP and FSDP hooks see it."""
        return self(ids, targets=targets, ignore_index=ignore_index)

    def to_huggingface(self, path: Any, tokenizer: Any = None, *, dtype: str = "f32") -> Any:
        """Write a transformers folder (see :mod:`lmrs.model.hf_export`); returns its path."""
        return export_huggingface(self, path, tokenizer, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: Any) -> GPT:
        """A GPT from a local Hugging Face model folder (see :mod:`lmrs.model.hf_import`)."""
        return load_pretrained(path, cls)


def _normal_from(generator: torch.Generator, weight: torch.Tensor, std: float) -> None:
    """Fill ``weight`` with N(0, std) drawn from the CPU ``generator``, wherever it lives.

    The values are drawn on the CPU and copied in: a model built under
    ``with torch.device("cuda")`` has CUDA weights, which a CPU generator cannot fill
    directly, and drawing on the CPU gives the same weights for a seed on every device.
    """
    with torch.no_grad():
        values = torch.empty(weight.shape, dtype=weight.dtype, device="cpu")
        weight.copy_(values.normal_(0.0, std, generator=generator))


def _rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (max_seq_len, head_dim) for rotary positions (rotate-half layout).

    Computed in float64 on the CPU whatever the default device (MPS has no float64), then
    moved to the default device in float32.
    """
    half = config.head_dim // 2
    cpu = torch.device("cpu")
    inv_freq = 1.0 / (
        config.rope_base ** (torch.arange(half, dtype=torch.float64, device=cpu) / half)
    )
    positions = torch.arange(config.max_seq_len, dtype=torch.float64, device=cpu)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    target = torch.empty(0).device  # the default device (a `with torch.device(...)` block)
    return angles.cos().float().to(target), angles.sin().float().to(target)


def create_model(
    vocab_size: int,
    max_seq_len: int = 512,
    embed_dim: int = 256,
    num_heads: int = 8,
    num_layers: int = 6,
    ff_dim: int = 1024,
    dropout_rate: Optional[float] = None,
    *,
    arch: Optional[str] = None,
    **options: Any,
) -> GPT:
    """A GPT of the given shape; ``arch`` names a set of options in ``ARCHITECTURES``
    (``gpt2``, ``modern``), and ``options`` are any other :class:`ModelConfig` fields
    (they win over the architecture's). ``dropout_rate`` None: the architecture's (0.1
    without one, as in GPT-2)."""
    fields = {**architecture(arch), **options}
    if dropout_rate is not None:
        fields["dropout_rate"] = dropout_rate
    config = ModelConfig(
        vocab_size=vocab_size,
        max_seq_len=max_seq_len,
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_layers=num_layers,
        ff_dim=ff_dim,
        **fields,
    )
    return GPT(config)


def architecture(name: Optional[str]) -> dict[str, Any]:
    """The ModelConfig options of ``ARCHITECTURES[name]`` (none for ``None``)."""
    if name is None:
        return {}
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return dict(ARCHITECTURES[name])


# named shapes for `lmrs train --size`; any ModelConfig field can be overridden


def model_from_preset(
    name: str, vocab_size: int, *, arch: Optional[str] = None, **overrides: Any
) -> GPT:
    """A GPT with the shape of ``PRESETS[name]`` and the options of ``ARCHITECTURES[arch]``,
    any field overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(PRESETS)}")
    return create_model(vocab_size, arch=arch, **{**PRESETS[name], **overrides})


def create_small_model(vocab_size: int, **overrides: Any) -> GPT:
    """The "small" preset: 128 dim, 4 heads, 2 layers, FFN 512."""
    return model_from_preset("small", vocab_size, **overrides)
