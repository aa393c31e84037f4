"""The decoding path of generation: the model's next-token logits, a few tokens per call.

The model is defined once, in :mod:`lmrs.model`: ``GPT.forward`` takes a key/value cache
(:class:`lmrs.model.KVCache`), so the prompt runs in one call and each new token in one
more. :class:`Decoder` runs that definition with one of two engines (:func:`resolve_engine`),
each on a snapshot of the weights (later training does not change a Decoder):

- **rust** (the default for bfloat16 sampling on x86-64 CPUs with AVX2 or AVX512-BF16):
  the whole step is one call into ``lmrs._lmrs`` (``rust/src/decode/model.rs``), with the GIL
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
- **torch** (GPUs, float32/float64 sampling, CPUs without AVX2, e.g. ARM): the model's
  own ``forward`` with a cache, on a frozen copy in the sampling dtype
  (:func:`sampling_model`). It is the reference: the Rust engine is tested against it, and
  it against the full forward without a cache.

The Rust engine is a faster way to run the same definition, not a second model: it is
built from the model's engine spec (:func:`lmrs.model.engine_spec.engine_spec`: named fields and
tensors, no parameter names of the Python model in Rust), and every ``ModelConfig`` field
is classified in :data:`RUST_ENGINE_FIELDS`: a value it does not run is refused with a
reason (:func:`rust_unsupported`), "auto" then falls back to torch (the reason is
``Decoder.fallback_reason`` and logged at debug level) and "rust" is a ValueError.
docs/benchmarks.md has the measured tokens/s of both engines.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import fields
from typing import Any, Optional, Union

import torch

from lmrs.model.gpt import GPT, KVCache, ModelConfig
from lmrs.options import ENGINES, MLPS, NORMS, POSITIONS
from lmrs.precision import native_bf16

log = logging.getLogger(__name__)

SIMD_KERNELS = ("avx512bf16", "avx2")  # Rust kernels faster than the torch engine

# How the Rust engine treats every ModelConfig field (tests/model/test_engine_matrix.py checks
# that each field is here): SHAPE is read through the engine spec whatever its value,
# TRAINING_ONLY changes nothing at inference, and a tuple lists the values the engine
# runs (any other value is refused; a new choice added to options.py is refused until the
# engine runs it and it is added here).
SHAPE = "shape"
TRAINING_ONLY = "training only"
RUST_ENGINE_FIELDS: dict[str, Union[str, tuple[Any, ...]]] = {
    "vocab_size": SHAPE,
    "max_seq_len": SHAPE,
    "embed_dim": SHAPE,
    "num_heads": SHAPE,
    "num_layers": SHAPE,
    "ff_dim": SHAPE,
    "num_kv_heads": SHAPE,  # grouped/multi-query attention: kv_heads in the spec
    "rope_base": SHAPE,  # the spec's rope tables
    "logit_softcap": SHAPE,  # None or any cap > 0 (ModelConfig checks)
    "dropout_rate": TRAINING_ONLY,
    "attention_dropout": TRAINING_ONLY,
    "gradient_checkpointing": TRAINING_ONLY,
    "seed": TRAINING_ONLY,
    "zero_init_proj": TRAINING_ONLY,
    "position": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_scale": (True, False),
    "qk_norm": (True, False),
    "mlp": ("gelu", "relu2", "swiglu"),
    "bias": (True, False),
    "tie_weights": (True, False),
}
# the option lists whose every value RUST_ENGINE_FIELDS must classify (tests use this)
OPTION_CHOICES: dict[str, tuple[Any, ...]] = {
    "position": POSITIONS,
    "norm": NORMS,
    "mlp": MLPS,
}


def rust_unsupported(config: ModelConfig) -> Optional[str]:
    """None if the Rust engine runs ``config``, else one line saying why not."""
    for entry in fields(config):
        name, value = entry.name, getattr(config, entry.name)
        treatment = RUST_ENGINE_FIELDS.get(name)
        if treatment is None:
            return f"the Rust engine does not know ModelConfig.{name} (= {value!r}) yet"
        if isinstance(treatment, tuple) and value not in treatment:
            runs = ", ".join(repr(v) for v in treatment)
            return f"the Rust engine does not run {name}={value!r} (it runs {runs})"
    return None


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
    engine: str = "auto",
    config: Optional[ModelConfig] = None,
) -> torch.dtype:
    """The dtype of the matrix products while sampling.

    "auto" (or None): bfloat16 for a float32 model where bfloat16 is fast: hardware with
    native bfloat16, or (engine "auto" or "rust") a CPU where the Rust engine has a SIMD
    kernel (AVX2 widens bfloat16 weights in registers: half the bytes read per token) and
    runs ``config`` (when given: see :func:`rust_unsupported`); else the model's own
    dtype. A name from ``DTYPES`` or a torch dtype is taken as given.
    """
    if dtype is None or dtype == "auto":
        rust_fast = (
            engine != "torch"
            and (config is None or rust_unsupported(config) is None)
            and _rust_has_simd(device)
        )
        if model_dtype == torch.float32 and (native_bf16(device) or rust_fast):
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


def _rust_has_simd(device: torch.device) -> bool:
    """The Rust engine runs a SIMD kernel on this device (a CPU with AVX2 or AVX512-BF16)."""
    if device.type != "cpu":
        return False
    from lmrs import _lmrs

    return _lmrs.decode_kernel() in SIMD_KERNELS


def _kept(model: GPT, engine: str) -> dict[tuple[Any, ...], Any]:
    """The snapshots kept on ``model`` for ``engine`` (one per engine: switching engines
    does not rebuild the other's, a changed parameter replaces its own)."""
    kept: dict[str, dict[tuple[Any, ...], Any]] = model.__dict__.setdefault("_decode_weights", {})
    return kept.setdefault(engine, {})


def _snapshot_key(model: GPT, dtype: torch.dtype) -> tuple[Any, ...]:
    # a parameter changed in place bumps its version; a replaced one has a new address
    state = tuple((p.data_ptr(), p._version) for p in model.parameters())
    return (dtype, state)


def sampling_model(model: GPT, dtype: Union[str, torch.dtype, None] = "auto") -> GPT:
    """A frozen copy of ``model`` in the sampling dtype, in eval mode: the torch engine runs
    this copy's own ``forward`` with a :class:`KVCache`, so sampling and training share one
    definition of the model. Kept on the model and reused until a parameter changes."""
    weight = model.token_embedding.weight
    resolved = resolve_dtype(dtype, weight.device, weight.dtype, engine="torch")
    key = _snapshot_key(model, resolved)
    kept = _kept(model, "torch")
    if key not in kept:
        kept.clear()  # keep one snapshot: the weights of an older state are dead
        # the memo entry keeps the copy from copying the snapshots kept on the original
        snapshots = model.__dict__["_decode_weights"]
        clone = copy.deepcopy(model, memo={id(snapshots): {}})
        clone.to(resolved).eval().requires_grad_(False)
        kept[key] = clone
    return kept[key]


def resolve_engine(
    engine: str,
    device: torch.device,
    dtype: torch.dtype,
    config: Optional[ModelConfig] = None,
) -> str:
    """Which implementation runs the decoding steps: "rust" or "torch".

    "auto" picks the Rust step (``lmrs._lmrs.DecodeModel``: one call per token) for
    bfloat16 sampling on a CPU where it has a SIMD kernel, i.e. every x86-64 CPU with AVX2
    and FMA or with AVX512-BF16 (``lmrs._lmrs.decode_kernel()`` is "avx2" or
    "avx512bf16"), and the PyTorch step everywhere else (GPUs, other dtypes, CPUs where
    only the portable kernel runs, such as ARM, or where ``LMRS_CPU=portable`` forces it).
    "rust" forces the Rust step on any CPU (the portable kernel where there is no other).
    A bad ``LMRS_CPU`` value is a ValueError from "auto" and "rust" alike. With ``config``,
    a model the Rust engine does not run (:func:`rust_unsupported`) makes "auto" pick
    torch (logged at debug level) and "rust" a ValueError with the reason.
    """
    if engine not in ENGINES:
        raise ValueError(f"decoding engine must be one of {ENGINES}, got {engine!r}")
    rust_ok = device.type == "cpu" and dtype == torch.bfloat16
    if engine == "rust" and not rust_ok:
        raise ValueError(
            f"the rust decoding engine runs bfloat16 on the CPU, not {dtype} on {device.type}"
        )
    refused = None if config is None or engine == "torch" else rust_unsupported(config)
    if engine == "rust" and refused is not None:
        raise ValueError(f"the rust decoding engine cannot run this model: {refused}")
    if engine == "auto" and refused is not None:
        log.debug("decoding with torch: %s", refused)
        return "torch"
    if engine == "auto":
        from lmrs import _lmrs

        simd = rust_ok and _lmrs.decode_kernel() in SIMD_KERNELS
        return "rust" if simd else "torch"
    return engine


def rust_decode_model(model: GPT) -> Any:
    """The model's weights as an ``lmrs._lmrs.DecodeModel`` (bfloat16, built in Rust from
    :func:`lmrs.model.engine_spec.engine_spec`), kept on the model until a parameter changes,
    like :func:`sampling_model`. ValueError for a model the engine does not run."""
    from lmrs import _lmrs
    from lmrs.model.engine_spec import engine_spec

    refused = rust_unsupported(model.config)
    if refused is not None:
        raise ValueError(f"the rust decoding engine cannot run this model: {refused}")
    key = _snapshot_key(model, torch.bfloat16)
    kept = _kept(model, "rust")
    if key not in kept:
        kept.clear()
        kept[key] = _lmrs.DecodeModel(engine_spec(model))
    return kept[key]


class Decoder:
    """A model's next-token logits with a key/value cache for ``batch_size`` rows of up to
    ``max_len`` positions.

    ``decoder(ids)`` takes the next ``T`` tokens of every row (B, T) and returns the logits
    (B, vocab) of the last of them: the first call is the prompt, each later call one new
    token. ``reset()`` empties the cache. ``engine`` picks the implementation (see
    :func:`resolve_engine`): "torch" runs the model's own ``forward`` (a copy in the
    sampling dtype, :func:`sampling_model`) with a :class:`lmrs.model.KVCache`; "rust" runs
    the same computation in ``lmrs._lmrs`` (float32 logits), tested against it.
    ``fallback_reason`` is why "auto" ran torch for a model the Rust engine refuses
    (:func:`rust_unsupported`), else None.
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        max_len: Optional[int] = None,
        dtype: Union[str, torch.dtype, None] = "auto",
        engine: str = "auto",
    ) -> None:
        config = model.config
        self.max_len = config.max_seq_len if max_len is None else max_len
        if not 0 < self.max_len <= config.max_seq_len:
            raise ValueError(f"max_len must be in [1, {config.max_seq_len}], got {self.max_len}")
        device = model.token_embedding.weight.device
        weight_dtype = model.token_embedding.weight.dtype
        resolved = resolve_dtype(dtype, device, weight_dtype, engine, config)
        self.engine = resolve_engine(engine, device, resolved, config)
        # why "auto" did not pick the Rust engine for this model (None: it did, or never
        # could for this device and dtype)
        self.fallback_reason = (
            rust_unsupported(config) if engine == "auto" and self.engine == "torch" else None
        )
        self.batch_size = batch_size
        self._dtype = resolved
        self._session: Any = None
        self._cache: Optional[KVCache] = None
        self.length = 0
        if self.engine == "rust":
            self._session = rust_decode_model(model).session(batch_size, self.max_len)
            return
        self._model = sampling_model(model, resolved)
        self._cache = KVCache.empty(config, batch_size, self.max_len, dtype=resolved, device=device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the matrix products."""
        return self._dtype

    @property
    def cache(self) -> Optional[KVCache]:
        """The torch engine's key/value cache (the Rust engine keeps its own)."""
        return self._cache

    def reset(self) -> None:
        self.length = 0
        if self._session is not None:
            self._session.reset()
        if self._cache is not None:
            self._cache.reset()

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        batch, seq = ids.shape
        end = self.length + seq
        if batch != self.batch_size:
            raise ValueError(f"Decoder was built for {self.batch_size} rows, got {batch}")
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens is longer than the cache ({self.max_len})")
        if self._session is not None:
            logits = torch.from_numpy(self._session.step(ids.to(torch.int64).contiguous().numpy()))
        else:
            logits = self._model(ids, cache=self._cache)[:, -1]
        self.length = end
        return logits
