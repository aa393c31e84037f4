"""Every model option through every engine: the model's full forward, its cached path
(prompt, then one token at a time) and the Rust engine with each CPU kernel this machine
has, held to each other; the options the Rust engine refuses, refused with their reason;
and the engine spec the Rust engine is built from.

Tolerances: the cached path is the same float32 code as the full forward (1e-5); the
Rust engine rounds weights, matrix inputs and the cache to bfloat16, which moves the logits
by about 1% of their spread (5% allowed, as in test_decode_kernels.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest
import torch
from model_options import OPTION_IDS, OPTIONS

from lmrs import _lmrs
from lmrs.model import decode as decode_module
from lmrs.model.decode import (
    OPTION_CHOICES,
    RUST_ENGINE_FIELDS,
    SHAPE,
    TRAINING_ONLY,
    Decoder,
    rust_unsupported,
)
from lmrs.model.engine_spec import PARAMETER_NAMES, engine_spec, spec_name, tensor_shapes
from lmrs.model.gpt import GPT, ModelConfig, create_model

VOCAB = 67
SHAPE_OPTIONS = dict(max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2, ff_dim=48, seed=9)
KERNELS = ("portable", "avx2", "avx512bf16")
CHUNKS = [(0, 5), (5, 6), (6, 7), (7, 8)]  # the prompt, then one token at a time
LOGIT_TOLERANCE = 0.05  # of the reference logits' spread, bfloat16 engine vs float32 model


def tiny(**options: Any) -> GPT:
    """A tiny model with every weight moved off its initial value (zero-initialised
    projections and unit norm gains would hide a wrong weight or a missing one)."""
    model = create_model(VOCAB, **{**SHAPE_OPTIONS, "dropout_rate": 0.0, **options}).eval()
    noise = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.05)
    return model


def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, CHUNKS[-1][1]), generator=torch.Generator().manual_seed(3))


def full_logits(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """The full forward's logits at the last position of every chunk (chunks, B, V)."""
    with torch.no_grad():
        full = model(tokens)
    return torch.stack([full[:, end - 1] for _, end in CHUNKS])


def rust_logits(model: GPT, kernel: str, tokens: torch.Tensor) -> torch.Tensor:
    """The Rust engine's logits after each chunk, built from the engine spec and run with
    ``kernel`` (pytest.skip where this CPU lacks it)."""
    try:
        engine = _lmrs.DecodeModel(engine_spec(model), kernel=kernel)
    except ValueError as error:
        assert "lacks" in str(error), error
        pytest.skip(f"this CPU has no {kernel} kernel")
    assert engine.kernel == kernel
    session = engine.session(tokens.shape[0], tokens.shape[1])
    steps = [session.step(tokens[:, a:b].contiguous().numpy()) for a, b in CHUNKS]
    return torch.from_numpy(np.stack(steps))


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got - reference).abs().max() / reference.std())


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_cached_path_matches_the_full_forward_in_float32(options):
    model = tiny(**options)
    tokens = ids()
    decoder = Decoder(model, batch_size=2, max_len=tokens.shape[1], dtype="float32")
    assert decoder.engine == "torch"
    cached = torch.stack([decoder(tokens[:, a:b]) for a, b in CHUNKS])
    assert torch.allclose(cached, full_logits(model, tokens), atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_rust_engine_runs_every_option_or_refuses_it(options, kernel):
    model = tiny(**options)
    reason = rust_unsupported(model.config)
    if reason is not None:
        with pytest.raises(ValueError, match=re.escape(reason)):
            Decoder(model, batch_size=1, dtype="bfloat16", engine="rust")
        auto = Decoder(model, batch_size=1, dtype="bfloat16", engine="auto")
        assert (auto.engine, auto.fallback_reason) == ("torch", reason)
        return
    tokens = ids()
    reference = full_logits(model, tokens)
    error = relative_error(rust_logits(model, kernel, tokens), reference)
    # bfloat16 rounding moves the logits (so not ~0), but by a small part of their spread
    assert 1e-5 < error < LOGIT_TOLERANCE, f"{kernel}: {error:.4f}"


def test_soft_cap_bends_the_rust_engine_logits_as_the_model_does():
    # a cap small enough to bend the logits far beyond the bfloat16 tolerance
    capped = tiny(logit_softcap=0.3)
    uncapped = tiny()
    assert torch.equal(capped.token_embedding.weight, uncapped.token_embedding.weight)
    tokens = ids()
    got = rust_logits(capped, "portable", tokens)
    assert relative_error(got, full_logits(capped, tokens)) < LOGIT_TOLERANCE
    assert relative_error(got, full_logits(uncapped, tokens)) > 10 * LOGIT_TOLERANCE
    assert got.abs().max() < 0.3


def test_every_model_config_field_is_classified_for_the_rust_engine():
    # a new ModelConfig field must be placed in RUST_ENGINE_FIELDS: run, or refused
    assert {f.name for f in dataclasses.fields(ModelConfig)} == set(RUST_ENGINE_FIELDS)
    for name, treatment in RUST_ENGINE_FIELDS.items():
        assert treatment in (SHAPE, TRAINING_ONLY) or isinstance(treatment, tuple), name


def test_every_choice_of_every_option_is_in_the_matrix():
    # each value of every option the engine lists, and every choice options.py offers,
    # is run by OPTIONS above (alone or in an architecture), so none goes untested
    defaults = ModelConfig(vocab_size=VOCAB)
    covered: dict[str, set[Any]] = {}
    for options in OPTIONS:
        config = dataclasses.replace(defaults, **options)
        for name in RUST_ENGINE_FIELDS:
            covered.setdefault(name, set()).add(getattr(config, name))
    for name, treatment in RUST_ENGINE_FIELDS.items():
        if isinstance(treatment, tuple):
            assert set(treatment) <= covered[name], name
    for name, choices in OPTION_CHOICES.items():
        assert set(choices) <= covered[name], name
    assert len(covered["logit_softcap"]) > 1 and len(covered["num_kv_heads"]) > 2


def test_a_choice_the_engine_does_not_list_is_refused_with_its_reason(monkeypatch):
    # the mechanism, with a table that lacks SwiGLU and one that lacks a field
    model = tiny(mlp="swiglu")
    table = dict(RUST_ENGINE_FIELDS, mlp=("gelu", "relu2"))
    monkeypatch.setattr(decode_module, "RUST_ENGINE_FIELDS", table)
    reason = rust_unsupported(model.config)
    assert reason == "the Rust engine does not run mlp='swiglu' (it runs 'gelu', 'relu2')"
    with pytest.raises(ValueError, match="cannot run this model: the Rust engine does not run"):
        Decoder(model, batch_size=1, dtype="bfloat16", engine="rust")
    auto = Decoder(model, batch_size=1, dtype="bfloat16", engine="auto")
    assert (auto.engine, auto.fallback_reason) == ("torch", reason)
    assert rust_unsupported(tiny().config) is None
    del table["qk_norm"]
    assert rust_unsupported(tiny().config) == (
        "the Rust engine does not know ModelConfig.qk_norm (= False) yet"
    )
    # a model the engine runs: "auto" on an AVX2/AVX-512 CPU picks it, with no reason
    monkeypatch.setattr(decode_module, "RUST_ENGINE_FIELDS", RUST_ENGINE_FIELDS)
    auto = Decoder(tiny(), batch_size=1, dtype="bfloat16", engine="auto")
    simd = _lmrs.decode_kernel() in decode_module.SIMD_KERNELS
    assert (auto.engine, auto.fallback_reason) == ("rust" if simd else "torch", None)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_engine_spec_names_every_tensor_once(options):
    model = tiny(**options)
    spec = engine_spec(model)
    shapes = {name: array.shape for name, array in spec.tensors.items()}
    assert shapes == tensor_shapes(model.config)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in spec.tensors.values())
    config = model.config
    assert (spec.kv_heads, spec.head_dim, spec.tied_head) == (
        config.kv_heads,
        config.head_dim,
        config.tie_weights,
    )
    assert (spec.norm, spec.mlp, spec.logit_softcap) == (
        config.norm,
        config.mlp,
        config.logit_softcap,
    )
    # the values are the model's: the tied head is the token embedding
    tokens = model.token_embedding.weight.detach().numpy()
    assert np.array_equal(spec.tensors["embed.tokens"], tokens)
    if not config.tie_weights:
        head = model.lm_head.weight.detach().numpy()
        assert np.array_equal(spec.tensors["head.weight"], head)


def test_spec_names_come_from_one_table():
    assert spec_name("blocks.3.attn.out_proj.bias") == "layers.3.attn.out.bias"
    assert spec_name("blocks.0.ffn.gate.weight") == "layers.0.mlp.gate.weight"
    assert spec_name("ln_final.weight") == "final_norm.weight"
    assert len(PARAMETER_NAMES) == len({p for p, _ in PARAMETER_NAMES})
    with pytest.raises(ValueError, match="'blocks.0.attn.new.weight' has no spec name"):
        spec_name("blocks.0.attn.new.weight")


def test_rust_engine_refuses_a_wrong_spec():
    spec = engine_spec(tiny(mlp="swiglu"))
    tensors = dict(spec.tensors)
    extra = {**tensors, "layers.0.attn.x": tensors["embed.tokens"]}
    cases = [
        (dataclasses.replace(spec, norm="batchnorm"), 'unknown norm "batchnorm"'),
        (dataclasses.replace(spec, mlp="geglu"), 'unknown mlp "geglu"'),
        (
            dataclasses.replace(spec, tensors=extra),
            "tensor 'layers.0.attn.x', which this engine does not use",
        ),
        (
            dataclasses.replace(
                spec, tensors={k: v for k, v in tensors.items() if k != "layers.1.mlp.gate.weight"}
            ),
            "the engine spec has no tensor 'layers.1.mlp.gate.weight'",
        ),
        (dataclasses.replace(spec, mlp="gelu"), "which this engine does not use"),
        (dataclasses.replace(spec, logit_softcap=-1.0), "soft-cap must be finite and > 0"),
        (dataclasses.replace(spec, embed_dim=30), "decode: "),
    ]
    for wrong, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            _lmrs.DecodeModel(wrong)
    with pytest.raises(ValueError, match="is not a CPU kernel"):
        _lmrs.DecodeModel(spec, kernel="sse2")
