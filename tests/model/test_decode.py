"""Tests for lmrs.model.decode: the generation path agrees with the model's own forward pass."""

from __future__ import annotations

import pytest
import torch

from lmrs.model.decode import Decoder, resolve_dtype
from lmrs.model.gpt import GPT, create_model

VOCAB = 64
CHUNKS = [(0, 4), (4, 7), (7, 8), (8, 9), (9, 11)]  # a prompt, a chunk after it, single steps


def tiny(**overrides) -> GPT:
    options = dict(max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, seed=3)
    options.update(overrides)
    return create_model(VOCAB, **options).eval()


def chunked_logits(decoder: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits after each chunk of ``CHUNKS``, stacked (chunks, B, V)."""
    return torch.stack([decoder(ids[:, a:b]) for a, b in CHUNKS])


def reference_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        full = model(ids)
    return torch.stack([full[:, b - 1] for _, b in CHUNKS])


# every model option through the cached path and the Rust engine: test_engine_matrix.py
# (and test_kv_cache.py in float64); here the Decoder's own rules


def test_cached_chunks_match_full_forward_in_float64():
    model = tiny(position="rope", num_kv_heads=2).double()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    decoder = Decoder(model, batch_size=2, max_len=11)
    assert decoder.dtype == torch.float64  # "auto" keeps a float64 model in float64
    got = chunked_logits(decoder, ids)
    assert decoder.length == 11
    assert torch.allclose(got.double(), reference_logits(model, ids), atol=1e-10)


@pytest.mark.parametrize("options", [{}, {"position": "rope", "num_kv_heads": 2}])
def test_float32_path_matches_the_model(options):
    model = tiny(**options)
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, batch_size=3, dtype="float32")
    assert torch.allclose(chunked_logits(decoder, ids), reference_logits(model, ids), atol=1e-5)


def test_bfloat16_logits_stay_close_to_float32():
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    reference = reference_logits(model, ids)
    decoder = Decoder(model, batch_size=2, dtype=torch.bfloat16, engine="torch")
    got = chunked_logits(decoder, ids)
    assert got.dtype == torch.bfloat16
    got = got.float()
    # bfloat16 keeps 8 bits of mantissa: errors of a few parts in a thousand of the logits'
    # spread, far from the float32 agreement above and far below the spread itself
    error = (got - reference).abs().max() / reference.std()
    assert 1e-6 < error < 0.05


def test_reset_reuses_the_cache():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 6))
    decoder = Decoder(model, batch_size=1, dtype="float32")
    first = decoder(ids)
    decoder.reset()
    assert decoder.length == 0
    assert torch.equal(decoder(ids), first)


def test_grouped_query_cache_holds_only_the_shared_heads():
    decoder = Decoder(tiny(num_kv_heads=1), batch_size=2, max_len=10, engine="torch")
    assert decoder.cache is not None
    assert decoder.cache.keys[0].shape == (2, 1, 10, 8)  # (batch, kv heads, len, head dim)
    assert decoder.cache.values[0].shape == (2, 1, 10, 8)


def test_snapshot_ignores_later_parameter_changes():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 5))
    decoder = Decoder(model, batch_size=1, dtype="float32")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
        unchanged = tiny()(ids)[:, -1]  # same seed: the weights the decoder was built from
        assert not torch.allclose(model(ids)[:, -1], unchanged, atol=1e-3)
    assert torch.allclose(decoder(ids), unchanged, atol=1e-5)


def test_bad_requests_raise():
    decoder = Decoder(tiny(), batch_size=2, max_len=8, dtype="float32")
    with pytest.raises(ValueError, match="built for 2 rows, got 1"):
        decoder(torch.zeros(1, 3, dtype=torch.long))
    decoder(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="9 tokens is longer than the cache \\(8\\)"):
        decoder(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len must be in \\[1, 16\\]"):
        Decoder(tiny(), batch_size=1, max_len=17)
    with pytest.raises(ValueError, match="sampling dtype must be 'auto' or one of"):
        Decoder(tiny(), batch_size=1, dtype="int8")


def test_rust_engine_rows_do_not_depend_on_the_batch():
    # every sum is computed the same way whatever the batch: bit-identical rows
    model = tiny(position="rope", num_kv_heads=2)
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(5))
    batch = Decoder(model, batch_size=3, dtype="bfloat16", engine="rust")
    together = [batch(ids[:, :6]), batch(ids[:, 6:7]), batch(ids[:, 7:9])]
    for row in range(3):
        alone = Decoder(model, batch_size=1, dtype="bfloat16", engine="rust")
        singles = [alone(ids[row : row + 1, :6]), alone(ids[row : row + 1, 6:7])]
        singles.append(alone(ids[row : row + 1, 7:9]))
        for got, want in zip(singles, together):
            assert torch.equal(got[0], want[row])


def test_rust_engine_errors_and_reset():
    model = tiny()
    decoder = Decoder(model, batch_size=1, max_len=6, dtype="bfloat16", engine="rust")
    assert decoder.engine == "rust" and decoder.dtype == torch.bfloat16
    first = decoder(torch.tensor([[1, 2, 3]]))
    assert first.dtype == torch.float32
    with pytest.raises(ValueError, match="7 tokens is longer than the cache \\(6\\)"):
        decoder(torch.tensor([[1, 2, 3, 4]]))
    decoder.reset()
    assert torch.equal(decoder(torch.tensor([[1, 2, 3]])), first)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder(torch.tensor([[VOCAB]]))
    with pytest.raises(ValueError, match="runs bfloat16 on the CPU"):
        Decoder(model, batch_size=1, dtype="float32", engine="rust")
    with pytest.raises(ValueError, match="decoding engine must be one of"):
        Decoder(model, batch_size=1, engine="cuda")


# (CPU kernel, device, dtype) -> the engine "auto" must pick, written out by hand: the Rust
# step is the default only for bfloat16 on a CPU with a SIMD kernel (AVX512-BF16 or AVX2,
# i.e. x86-64); a CPU with only the portable kernel (ARM, or LMRS_CPU=portable) keeps torch
AUTO_ENGINE_CASES = [
    ("avx512bf16", "cpu", torch.bfloat16, "rust"),
    ("avx512bf16", "cpu", torch.float32, "torch"),
    ("avx512bf16", "cuda", torch.bfloat16, "torch"),
    ("avx512bf16", "mps", torch.bfloat16, "torch"),
    ("avx2", "cpu", torch.bfloat16, "rust"),
    ("avx2", "cpu", torch.float32, "torch"),
    ("avx2", "cpu", torch.float64, "torch"),
    ("avx2", "cuda", torch.bfloat16, "torch"),
    ("avx2", "mps", torch.bfloat16, "torch"),
    ("portable", "cpu", torch.bfloat16, "torch"),
    ("portable", "cpu", torch.float32, "torch"),
    ("portable", "cuda", torch.bfloat16, "torch"),
]


@pytest.mark.parametrize(("kernel", "device", "dtype", "expected"), AUTO_ENGINE_CASES)
def test_auto_engine_rule(monkeypatch, kernel, device, dtype, expected):
    from lmrs import _lmrs
    from lmrs.model.decode import resolve_engine

    assert _lmrs.decode_kernel() in ("avx512bf16", "avx2", "portable")  # the answer replaced
    monkeypatch.setattr(_lmrs, "decode_kernel", lambda: kernel)
    assert resolve_engine("auto", torch.device(device), dtype) == expected
    # an explicit choice is kept whatever the CPU has (a portable kernel stands in)
    assert resolve_engine("torch", torch.device(device), dtype) == "torch"
    if (device, dtype) == ("cpu", torch.bfloat16):
        assert resolve_engine("rust", torch.device(device), dtype) == "rust"
    else:
        with pytest.raises(ValueError, match="runs bfloat16 on the CPU"):
            resolve_engine("rust", torch.device(device), dtype)


@pytest.mark.parametrize(
    "native, kernel, engine, expected",
    [
        (True, "portable", "auto", torch.bfloat16),  # native bf16 (CUDA Ampere, AMX...)
        (False, "avx2", "auto", torch.bfloat16),  # the Rust AVX2 kernel reads bf16 weights
        (False, "avx512bf16", "rust", torch.bfloat16),
        (False, "avx2", "torch", torch.float32),  # torch on a CPU without native bf16
        (False, "portable", "auto", torch.float32),
        (False, "portable", "rust", torch.float32),
    ],
)
def test_auto_dtype_rule(monkeypatch, native, kernel, engine, expected):
    import lmrs.model.decode
    from lmrs import _lmrs

    cpu = torch.device("cpu")
    monkeypatch.setattr(lmrs.model.decode, "native_bf16", lambda device: native)
    monkeypatch.setattr(_lmrs, "decode_kernel", lambda: kernel)
    assert resolve_dtype("auto", cpu, torch.float32, engine) == expected
    assert resolve_dtype(None, cpu, torch.float32, engine) == expected
    assert resolve_dtype("auto", cpu, torch.float64, engine) == torch.float64
    assert resolve_dtype("float32", cpu, torch.float32, engine) == torch.float32
    assert resolve_dtype(torch.bfloat16, cpu, torch.float32, engine) == torch.bfloat16
