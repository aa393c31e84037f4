"""The architecture options of ModelConfig (norm, norm_scale, qk_norm, mlp, logit_softcap,
zero_init_proj) and the named ARCHITECTURES: each against a hand-computed reference, the
cached path against the full forward, saving and loading, and `lmrs train --arch`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lmrs.checkpoint.store import load_model, save_checkpoint
from lmrs.cli.main import cli
from lmrs.cli.model import _architecture
from lmrs.model.gpt import (
    GPT,
    LAYER_NORM_EPS,
    RMS_NORM_EPS,
    KVCache,
    ModelConfig,
    create_model,
    model_from_preset,
)
from lmrs.options import ARCHITECTURES, PRESETS
from lmrs.tokenizer.core import Tokenizer

VOCAB = 53
NEW_FIELDS = ("norm", "norm_scale", "qk_norm", "mlp", "logit_softcap", "zero_init_proj")
ALONE = [
    {"norm": "rmsnorm"},
    {"norm": "rmsnorm", "norm_scale": False},
    {"qk_norm": True},
    {"mlp": "relu2"},
    {"mlp": "swiglu"},
    {"logit_softcap": 2.0},
    {"zero_init_proj": True},
]


def tiny(**overrides) -> GPT:
    options = dict(
        max_seq_len=24, embed_dim=32, num_heads=4, num_layers=2, ff_dim=48, dropout_rate=0.0
    )
    options.update(overrides)
    return create_model(VOCAB, **options).eval()


def randomised(model: GPT, seed: int = 0) -> GPT:
    """Every parameter redrawn (norm gains and zero-initialised projections included), so
    each option changes the numbers a test compares."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(noise * 0.3 + (1.0 if parameter.dim() == 1 else 0.0))
    return model


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize(
    "options",
    [*ALONE, {"arch": "modern"}, {"arch": "modern", "mlp": "relu2", "norm_scale": False}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_cached_path_equals_full_forward(options: dict, position: str) -> None:
    model = randomised(tiny(**{**options, "position": position, "num_kv_heads": 2})).double()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = KVCache.empty(model.config, 2, 16, dtype=torch.float64)
    pieces = [model(ids[:, :5], cache=cache)]  # the prompt, then a token per call
    pieces += [model(ids[:, index : index + 1], cache=cache) for index in range(5, 12)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-10)
    # and in float32, the dtype training and the torch engine use
    model32 = model.float()
    cache32 = KVCache.empty(model32.config, 2, 16)
    first = model32(ids[:, :5], cache=cache32)
    rest = [model32(ids[:, index : index + 1], cache=cache32) for index in range(5, 12)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), full.float(), atol=1e-4)


@pytest.mark.parametrize("scale", [True, False])
def test_rmsnorm_matches_its_formula(scale: bool) -> None:
    model = randomised(tiny(norm="rmsnorm", norm_scale=scale))
    norm = model.blocks[0].ln_attn
    assert sum(p.numel() for p in norm.parameters()) == (32 if scale else 0)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(2))
    expected = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_NORM_EPS)
    if scale:
        expected = expected * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    # LayerNorm is GPT-2's, as before
    layer = randomised(tiny()).blocks[0].ln_attn
    centred = x - x.mean(dim=-1, keepdim=True)
    reference = centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + LAYER_NORM_EPS)
    assert torch.allclose(layer(x), reference * layer.weight + layer.bias, atol=1e-5)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys() -> None:
    def attention_output(qk_norm: bool, scale: float) -> torch.Tensor:
        model = randomised(tiny(qk_norm=qk_norm, bias=False, position="rope"))
        with torch.no_grad():
            model.blocks[0].attn.qkv.weight[:64] *= scale  # the query and key rows
        x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3))
        return model.blocks[0].attn(x, (model.rope_cos[:7], model.rope_sin[:7]))

    assert torch.allclose(attention_output(True, 1.0), attention_output(True, 5.0), atol=1e-5)
    assert not torch.allclose(attention_output(False, 1.0), attention_output(False, 5.0))


def test_softcap_bounds_the_logits_and_is_its_formula() -> None:
    capped = randomised(tiny(logit_softcap=3.0, tie_weights=False))
    plain = tiny(tie_weights=False)
    plain.load_state_dict(capped.state_dict())
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    raw, logits = plain(ids), capped(ids)
    # the cap has something to do, and float32's tanh has not saturated to exactly 1
    assert 4.0 < raw.abs().max() < 12.0
    assert logits.abs().max() < 3.0
    assert torch.allclose(logits, 3.0 * torch.tanh(raw / 3.0), atol=1e-5)


@pytest.mark.parametrize("mlp", ["gelu", "relu2", "swiglu"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_one_block_by_hand(mlp: str, norm: str) -> None:
    model = randomised(tiny(mlp=mlp, norm=norm, num_layers=1))
    block = model.blocks[0]
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(5))

    def normed(module: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        if norm == "rmsnorm":
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS) * module.weight
        return F.layer_norm(h, (32,), module.weight, module.bias, LAYER_NORM_EPS)

    def linear(module: torch.nn.Linear, h: torch.Tensor) -> torch.Tensor:
        return h @ module.weight.T + module.bias

    h = x + block.attn(normed(block.ln_attn, x), None)
    inner = normed(block.ln_ffn, h)
    ffn = block.ffn
    if mlp == "swiglu":
        gate = linear(ffn.gate, inner)
        hidden = gate * torch.sigmoid(gate) * linear(ffn.up, inner)
    elif mlp == "relu2":
        hidden = torch.clamp(linear(ffn.up, inner), min=0.0) ** 2
    else:
        up = linear(ffn.up, inner)
        hidden = 0.5 * up * (1 + torch.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up**3)))
    expected = h + linear(ffn.down, hidden)
    assert torch.allclose(block(x), expected, atol=1e-5)
    assert (ffn.gate is not None) == (mlp == "swiglu")


def test_parameter_count_and_flops_follow_the_options() -> None:
    d, ff, layers, seq = 32, 48, 2, 24
    base = tiny()
    swiglu = tiny(mlp="swiglu")
    assert swiglu.num_parameters() - base.num_parameters() == layers * (d * ff + ff)
    assert tiny(mlp="relu2").num_parameters() == base.num_parameters()
    # RMSNorm: no biases (LayerNorm's is 2 * d per norm); without a scale no parameters at all
    norms = 2 * layers + 1
    assert tiny(norm="rmsnorm").num_parameters() == base.num_parameters() - norms * d
    assert tiny(norm="rmsnorm", norm_scale=False).num_parameters() == (
        base.num_parameters() - norms * 2 * d
    )
    for options in ({"qk_norm": True}, {"logit_softcap": 5.0}, {"zero_init_proj": True}):
        assert tiny(**options).num_parameters() == base.num_parameters()
    flops = base.estimate_flops_per_token(seq_len=seq)
    assert swiglu.estimate_flops_per_token(seq_len=seq) - flops == 6 * layers * d * ff


def test_zero_init_proj_starts_at_zero_and_trains() -> None:
    model = tiny(zero_init_proj=True, seed=3).train()
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.out_proj.weight) == 0
        assert torch.count_nonzero(block.ffn.down.weight) == 0
        assert torch.count_nonzero(block.attn.qkv.weight) > 0
        assert torch.count_nonzero(block.ffn.up.weight) > 0
    assert torch.count_nonzero(tiny().blocks[0].ffn.down.weight) > 0
    text = torch.arange(8).repeat(2, 3)  # a short repeated text, 24 tokens per row
    ids, targets = text[:, :-1], text[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model.compute_loss(ids, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.count_nonzero(model.blocks[0].ffn.down.weight) > 0


def test_architectures_combine_with_every_size() -> None:
    for size in PRESETS:
        for arch, options in ARCHITECTURES.items():
            config = model_from_preset(size, 300, arch=arch).config
            assert {key: getattr(config, key) for key in PRESETS[size]} == PRESETS[size]
            assert {key: getattr(config, key) for key in options} == options
    # keywords win over the architecture; "gpt2" is the defaults
    model = model_from_preset("small", 300, arch="modern", mlp="swiglu", position="learned")
    assert (model.config.mlp, model.config.position) == ("swiglu", "learned")
    defaults = ModelConfig(vocab_size=300)
    assert all(getattr(defaults, key) == value for key, value in ARCHITECTURES["gpt2"].items())
    assert create_model(300, embed_dim=32, num_heads=4, arch="modern").config.qk_norm
    with pytest.raises(ValueError, match="unknown architecture 'llama'"):
        model_from_preset("small", 300, arch="llama")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"norm_scale": False}, "norm_scale false needs norm 'rmsnorm'"),
        ({"norm_scale": 1}, "norm_scale must be true or false"),
        ({"qk_norm": "yes"}, "qk_norm must be true or false"),
        ({"mlp": "geglu"}, "mlp must be one of"),
        ({"logit_softcap": 0.0}, "logit_softcap must be > 0"),
        ({"logit_softcap": -5.0}, "logit_softcap must be > 0"),
        ({"logit_softcap": math.inf}, "logit_softcap must be > 0 and finite"),
        ({"logit_softcap": "15"}, "logit_softcap must be a number"),
        ({"logit_softcap": True}, "logit_softcap must be a number"),
        ({"zero_init_proj": None}, "zero_init_proj must be true or false"),
    ],
)
def test_bad_options_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        ModelConfig(vocab_size=VOCAB, **options)
    assert "\n" not in str(error.value)


def test_checkpoint_round_trip_keeps_every_field(tmp_path: Path) -> None:
    model = randomised(tiny(arch="modern", mlp="swiglu", norm_scale=True, logit_softcap=7, seed=2))
    assert model.config.logit_softcap == 7.0 and isinstance(model.config.logit_softcap, float)
    save_checkpoint(tmp_path / "ckpt", model, None, {"step": 0}, model.config)
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(6))
    assert torch.equal(loaded(ids), model(ids))


def test_a_model_config_from_before_the_options_loads(tmp_path: Path) -> None:
    model = randomised(tiny(position="rope", seed=4))
    directory = save_checkpoint(tmp_path / "ckpt", model, None, {"step": 0}, model.config)
    # rewritten as an older lmrs wrote it: without the new fields and without checksums.json
    old = {k: v for k, v in model.config.to_dict().items() if k not in NEW_FIELDS}
    (directory / "model_config.json").write_text(json.dumps(old))
    (directory / "checksums.json").unlink()
    loaded, _ = load_model(directory)
    assert loaded.config == model.config
    assert (loaded.config.norm, loaded.config.mlp, loaded.config.logit_softcap) == (
        "layernorm",
        "gelu",
        None,
    )
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(6))
    assert torch.equal(loaded(ids), model(ids))


def test_cli_train_modern_then_sample(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the quick brown fox jumps over the lazy dog and runs away".split()
    for index in range(4):
        lines = [" ".join(words[(index + k) % len(words) :] + words[:3]) for k in range(40)]
        (corpus / f"doc{index}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.train(str(corpus), 300, show_progress=False)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    runner = CliRunner()
    common = ["train", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tokenizer.json")]
    tiny_run = ["--max-steps", "3", "--batch-size", "4", "--seq-len", "32", "--warmup", "1"]
    tiny_run += ["--eval-batches", "1", "--quiet"]
    out = tmp_path / "run"
    result = runner.invoke(
        cli, [*common, "--out", str(out), "--arch", "modern", "--mlp", "relu2", *tiny_run]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint/model_config.json").read_text())
    assert {**ARCHITECTURES["modern"], "mlp": "relu2"} == {
        key: saved[key] for key in ARCHITECTURES["modern"]
    }
    result = runner.invoke(
        cli,
        ["sample", "--checkpoint", str(out), "--prompt", "the ", "--max-length", "8",
         "--engine", "torch", "--seed", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the ")
    # a resume that asks for another architecture is refused in one line
    result = runner.invoke(
        cli, [*common, "--out", str(out), "--resume", str(out), "--arch", "gpt2", *tiny_run]
    )
    assert result.exit_code != 0
    assert "cannot resume with" in result.output and "--arch: norm layernorm" in result.output
    # the other flags override the architecture the same way (no second run needed)
    flags = dict(position=None, norm="layernorm", qk_norm=False, mlp=None, softcap=0.0)
    options = _architecture("modern", **flags)
    assert (options["logit_softcap"], options["norm"], options["norm_scale"]) == (
        None,
        "layernorm",
        True,  # LayerNorm keeps its gain
    )
    assert (options["qk_norm"], options["position"], options["mlp"]) == (False, "rope", "swiglu")
    assert _architecture("gpt2", **dict(flags, norm=None, softcap=None)) == ARCHITECTURES["gpt2"]
