"""Import of local Hugging Face model folders: same logits, training continues, exact round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from lmrs import Tokenizer
from lmrs.errors import InputError
from lmrs.model.gpt import GPT, create_model
from lmrs.model.hf_export import export_huggingface
from lmrs.model.hf_import import load_pretrained_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 300
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 8, "def f(x):\n    return x * 2\n" * 6]


def random_gpt2(directory: Path, seed: int = 0, **config: Any) -> Any:
    """A GPT2LMHeadModel with every weight random, saved by save_pretrained (no download)."""
    shape = {"vocab_size": VOCAB, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(
        **{**shape, **config}, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1
    )
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    return model


def ids_for(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: GPT, theirs: Any) -> None:
    ids = ids_for(7)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_folder_imports_with_equal_logits(tmp_path: Path, tied: bool) -> None:
    hf = random_gpt2(tmp_path, tie_word_embeddings=tied, n_inner=48)
    model = GPT.from_pretrained(tmp_path)
    assert model.config.tie_weights is tied
    assert model.config.ff_dim == 48 and model.config.max_seq_len == 64
    assert_same_logits(model, hf)


def test_pytorch_model_bin_loads_with_weights_only(tmp_path: Path) -> None:
    hf = random_gpt2(tmp_path)
    state = hf.state_dict()
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert_same_logits(GPT.from_pretrained(tmp_path), hf)


def test_sharded_and_hub_style_checkpoints_load(tmp_path: Path) -> None:
    """Sharded safetensors (an index naming the shards) and GPT-2's own hub layout (no
    "transformer." prefix, causal-mask buffers beside the weights)."""
    from safetensors.torch import save_file

    hf = random_gpt2(tmp_path / "a")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same_logits(GPT.from_pretrained(tmp_path / "sharded"), hf)

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items()}
    state.pop("lm_head.weight")
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(state, hub / "model.safetensors")
    assert_same_logits(GPT.from_pretrained(hub), hf)


class NotATensor:
    """Any class: unpickling it would run code chosen by whoever wrote the file."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    random_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="pytorch_model.bin") as info:
        GPT.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_training_continues_from_an_import(tmp_path: Path) -> None:
    """`lmrs train --init-from` starts from the folder's weights and its tokenizer."""
    from lmrs.checkpoint.store import load_model
    from lmrs.cli.main import cli

    tokenizer = Tokenizer.train(TEXTS, VOCAB, show_progress=False)
    folder = tmp_path / "hf"
    random_gpt2(folder)
    tokenizer.export_huggingface(folder / "tokenizer.json")
    start = GPT.from_pretrained(folder)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS * 4):
        (corpus / f"{i}.txt").write_text(text)
    run = tmp_path / "run"
    args = ["train", "--init-from", str(folder), "--corpus", str(corpus), "--out", str(run)]
    args += ["--max-steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0"]
    args += ["--eval-batches", "1", "--device", "cpu", "--dtype", "float32", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    trained, saved = load_model(run)
    assert trained.config.embed_dim == 32 and trained.config.vocab_size == VOCAB
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3
    before, after = start.state_dict(), trained.state_dict()
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved  # trained from the imported weights, which changed
    imported = load_pretrained_tokenizer(folder)
    assert Tokenizer.load(saved.tokenizer_path).encode(TEXTS[1]) == imported.encode(TEXTS[1])
    fresh = create_model(VOCAB, embed_dim=32, num_heads=4, num_layers=2, ff_dim=128)
    # closer to the import than to any fresh initialisation: it started there
    distance = (after["blocks.0.attn.qkv.weight"] - before["blocks.0.attn.qkv.weight"]).norm()
    other = fresh.state_dict()["blocks.0.attn.qkv.weight"] - before["blocks.0.attn.qkv.weight"]
    assert distance < 0.5 * other.norm()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"tie_weights": False},
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "num_kv_heads": 2},
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": True, "rope_base": 99.0},
        {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": True},
    ],
    ids=["gpt2", "gpt2-untied", "llama-gqa", "llama-bias", "qwen3"],
)
def test_export_then_import_round_trips_exactly(tmp_path: Path, options: dict[str, Any]) -> None:
    model = create_model(
        VOCAB, max_seq_len=32, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, **options
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_huggingface(model, tmp_path)
    back = GPT.from_pretrained(tmp_path)
    for name in ("position", "norm", "mlp", "bias", "tie_weights", "kv_heads", "qk_norm"):
        assert getattr(back.config, name) == getattr(model.config, name)
    assert back.config.rope_base == model.config.rope_base
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
        ({"model_type": "bert"}, "model_type 'bert'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"n_layer": 3}, "h.2"),
    ],
)
def test_what_lmrs_cannot_compute_is_refused(
    tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    random_gpt2(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(InputError) as info:
        GPT.from_pretrained(tmp_path)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_missing_and_broken_folders_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        GPT.from_pretrained(tmp_path)
    random_gpt2(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="tokenizer.json"):
        load_pretrained_tokenizer(tmp_path)


def test_qwen3_with_a_learned_qk_gain_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = create_model(
        VOCAB,
        embed_dim=32,
        num_heads=4,
        num_layers=1,
        ff_dim=32,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        qk_norm=True,
    )
    export_huggingface(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.q_norm.weight"] *= 2
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="q_norm"):
        GPT.from_pretrained(tmp_path)


def test_init_from_refuses_shape_options_and_resume(tmp_path: Path) -> None:
    from lmrs.cli.main import cli

    folder = tmp_path / "hf"
    random_gpt2(folder)
    Tokenizer.train(TEXTS, VOCAB, show_progress=False).export_huggingface(folder / "tokenizer.json")
    base = ["train", "--init-from", str(folder), "--corpus", str(folder), "--out", str(tmp_path)]
    runner = CliRunner()
    result = runner.invoke(cli, [*base, "--size", "full", "--mlp", "swiglu"])
    assert result.exit_code == 2
    assert "--mlp, --size" in result.output and result.output.startswith("lmrs: ")
    result = runner.invoke(cli, [*base, "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--resume" in result.output
    result = runner.invoke(cli, [*base, "--seq-len", "65"])
    assert result.exit_code == 1 and "context (64)" in result.output
    assert not (tmp_path / "checkpoint").exists()


def test_a_tokenizer_lmrs_cannot_represent_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from lmrs.cli.main import cli

    random_gpt2(tmp_path)
    HFTokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "tokenizer.json")
    )
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_pretrained_tokenizer(tmp_path)
    args = ["train", "--init-from", str(tmp_path), "--corpus", str(tmp_path), "--out", "x"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.startswith("lmrs: ") and "tokenizer.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_config_bigger_than_its_weights_is_refused_before_building(
    tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n_embd 65536 beside small weights: a 51 GB model was built before any shape check."""
    from lmrs.model import gpt as model_module

    hf = random_gpt2(tmp_path)
    if weights == "pytorch_model.bin":
        (tmp_path / "model.safetensors").unlink()
        torch.save(hf.state_dict(), tmp_path / weights)
    edit_config(tmp_path, n_embd=65536)
    built = model_module.GPT.__init__

    def refuse_huge(self: Any, config: Any) -> None:
        assert config.embed_dim != 65536, "a model of config.json's shape was built"
        built(self, config)

    monkeypatch.setattr(model_module.GPT, "__init__", refuse_huge)
    with pytest.raises(InputError) as info:
        GPT.from_pretrained(tmp_path)
    message = str(info.value)
    assert "config.json" in message and weights in message and "(300, 65536)" in message
    assert "\n" not in message
    edit_config(tmp_path, n_embd=32, n_inner=4096)  # a width the header does not show
    with pytest.raises(InputError, match="mlp|c_fc|ffn"):
        GPT.from_pretrained(tmp_path)


def test_weights_that_are_not_finite_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from lmrs.cli.main import cli

    random_gpt2(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 4] = float("nan")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"model.safetensors: tensor .*h\.1\.mlp\.c_fc.* finite"):
        GPT.from_pretrained(tmp_path)
    Tokenizer.train(TEXTS, VOCAB, show_progress=False).export_huggingface(
        tmp_path / "tokenizer.json"
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXTS[0])
    args = ["train", "--init-from", str(tmp_path), "--corpus", str(corpus), "--out"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "run"), "--max-steps", "1"])
    assert result.exit_code == 1, result.output
    assert "not finite" in result.output and "lr" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_deeply_nested_config_is_one_line(tmp_path: Path) -> None:
    random_gpt2(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="config.json: not valid JSON: nested too deeply"):
        GPT.from_pretrained(tmp_path)
