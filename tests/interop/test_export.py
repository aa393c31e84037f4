"""Export to Hugging Face transformers and GGUF: same logits, same greedy tokens, same ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from lmrs import Tokenizer
from lmrs.errors import InputError
from lmrs.interop.export import export
from lmrs.interop.gguf_export import export_gguf
from lmrs.model.generation import generate
from lmrs.model.gpt import GPT, create_model
from lmrs.model.hf_export import export_huggingface

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

VOCAB = 300
TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 6,
    "Il était une fois, dans un pays lointain... 1234 5678!" * 4,
]
RUNNING_TEXT = "The lazy fox returns a + b;\n  print(1234) <|endoftext|> était\n\n"

GPT2 = {}
GPT2_NO_BIAS_GQA = {"bias": False, "num_kv_heads": 2, "tie_weights": False}
LLAMA = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "num_kv_heads": 2}
LLAMA_BIAS = {
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "bias": True,
    "norm_scale": False,
    "tie_weights": False,
    "rope_base": 500.0,
}
QWEN3 = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": True}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, VOCAB, show_progress=False)


def tiny_model(options: dict[str, Any], seed: int = 0, **shape: Any) -> GPT:
    """A tiny model whose every weight (norm gains and biases too) is random."""
    dims = {"max_seq_len": 64, "embed_dim": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 64}
    model = create_model(VOCAB, dropout_rate=0.0, seed=seed, **{**dims, **shape, **options})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def ids_for(seed: int, length: int = 64) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(directory: Path, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()
    with torch.no_grad():
        return hf(ids).logits.float()


@pytest.mark.parametrize(
    ("options", "class_name"),
    [
        (GPT2, "GPT2LMHeadModel"),
        (GPT2_NO_BIAS_GQA, "GPT2LMHeadModel"),
        (LLAMA, "LlamaForCausalLM"),
        (LLAMA_BIAS, "LlamaForCausalLM"),
        (QWEN3, "Qwen3ForCausalLM"),
        ({"arch": "modern"}, "Qwen3ForCausalLM"),  # what lmrs train builds by default
    ],
    ids=[
        "gpt2",
        "gpt2-nobias-gqa-untied",
        "llama-gqa",
        "llama-bias-nogain-untied",
        "qwen3",
        "modern",
    ],  # fmt: skip
)
def test_hf_export_gives_lmrs_logits(
    tmp_path: Path, tokenizer: Tokenizer, options: dict[str, Any], class_name: str
) -> None:
    model = tiny_model(options)
    export_huggingface(model, tmp_path, tokenizer)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.architectures == [class_name]
    ids = ids_for(1)
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(hf_logits(tmp_path, ids), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_hf_greedy_generation_is_identical(
    tmp_path: Path, tokenizer: Tokenizer, options: dict[str, Any]
) -> None:
    model = tiny_model(options, seed=3)
    export_huggingface(model, tmp_path, tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = tokenizer.encode("def add(a, b):")
    ours = generate(model, prompt, max_length=50, temperature=0, dtype="float32", engine="torch")
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=50,
            min_new_tokens=50,  # the end-of-text token does not stop it early
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    assert len(ours) == 50
    assert out[0, len(prompt) :].tolist() == ours


def test_hf_tokenizer_gives_lmrs_ids(tmp_path: Path, tokenizer: Tokenizer) -> None:
    export_huggingface(tiny_model(GPT2), tmp_path, tokenizer)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token == "<|endoftext|>"
    assert hf.eos_token_id == tokenizer.eot_id
    for text in [*TEXTS, RUNNING_TEXT, "  leading spaces\tand tabs  "]:
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
        assert hf.decode(tokenizer.encode(text)) == text
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.eos_token_id == tokenizer.eot_id


def test_hf_export_in_bfloat16_halves_the_file(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = tiny_model(LLAMA)
    export_huggingface(model, tmp_path / "f32", tokenizer)
    export_huggingface(model, tmp_path / "bf16", tokenizer, dtype="bf16")
    full = (tmp_path / "f32" / "model.safetensors").stat().st_size
    half = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    ids = ids_for(2)
    with torch.no_grad():
        ours = model(ids)
    theirs = hf_logits(tmp_path / "bf16", ids, dtype=torch.float32)
    torch.testing.assert_close(theirs, ours, atol=5e-2, rtol=0)


# ---- GGUF ---------------------------------------------------------------------------------

GGUF_TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "bf16": 5e-2, "q8_0": 5e-2}


def gguf_case(tmp_path: Path, tokenizer: Tokenizer, model: GPT, dtype: str) -> None:
    pytest.importorskip("accelerate")  # transformers reads GGUF files through it
    path = export_gguf(model, tmp_path / "model.gguf", tokenizer, dtype=dtype)
    ids = ids_for(4, 48)
    with torch.no_grad():
        ours = model(ids)
    theirs = hf_logits(tmp_path, ids, gguf_file=path.name)
    torch.testing.assert_close(theirs, ours, atol=GGUF_TOLERANCE[dtype], rtol=0)


def test_gguf_llama_loads_in_transformers(tmp_path: Path, tokenizer: Tokenizer) -> None:
    # q8_0 is checked on GPT-2 below: the quantisation does not depend on the architecture
    gguf_case(tmp_path, tokenizer, tiny_model(LLAMA, ff_dim=96), "f32")


@pytest.mark.parametrize(
    ("options", "dtype"), [(GPT2, "f32"), (GPT2_NO_BIAS_GQA, "q8_0")], ids=["f32", "q8_0-untied"]
)
def test_gguf_gpt2_loads_in_transformers(
    tmp_path: Path, tokenizer: Tokenizer, options: dict[str, Any], dtype: str
) -> None:
    # transformers' GGUF reader builds GPT-2 with 1024 positions and 4 * embed_dim hidden
    # units whatever the file says (llama.cpp reads both): a shape it can load
    model = tiny_model(options, max_seq_len=1024, ff_dim=128)
    gguf_case(tmp_path, tokenizer, model, dtype)


@pytest.mark.parametrize("options", [QWEN3, {"arch": "modern"}], ids=["qwen3", "modern"])
def test_gguf_qwen3_loads_in_transformers(
    tmp_path: Path, tokenizer: Tokenizer, options: dict[str, Any]
) -> None:
    # transformers' GGUF reader assumes Qwen3's head_dim 128 (llama.cpp reads key_length)
    model = tiny_model(options, embed_dim=256, num_heads=2, ff_dim=32, num_layers=1)
    gguf_case(tmp_path, tokenizer, model, "f32")


def test_gguf_layout_follows_llama_cpp(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = tiny_model(GPT2_NO_BIAS_GQA, ff_dim=40)  # 40: rows q8_0 cannot cover
    path = export_gguf(model, tmp_path / "m.gguf", tokenizer, dtype="q8_0")
    reader = gguf.GGUFReader(path)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    assert field("general.architecture") == "gpt2"
    assert field("gpt2.block_count") == 2
    assert field("gpt2.context_length") == 64
    assert field("gpt2.feed_forward_length") == 40
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "llama-bpe"  # lmrs's default GPT-4 pattern
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB
    assert tokens[tokenizer.eot_id] == "<|endoftext|>"
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eot_id
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.eot_id
    assert len(field("tokenizer.ggml.merges")) == len(tokenizer.merges)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["position_embd.weight"] == "F32"
    assert types["blk.0.attn_qkv.weight"] == "Q8_0"
    assert types["blk.0.attn_qkv.bias"] == "F32"  # zeros: lmrs had no bias, GPT-2 has one
    assert types["blk.1.ffn_down.weight"] == "F16"  # 40 columns: not whole q8_0 blocks
    assert types["output_norm.weight"] == "F32"
    assert "output.weight" in types  # untied head
    assert not list(tmp_path.glob(".*tmp*"))
    path = export_gguf(tiny_model(LLAMA), tmp_path / "m.gguf", tokenizer, dtype="bf16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == "BF16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"mlp": "relu2"}, "mlp 'relu2'"),
        ({"norm": "rmsnorm"}, "norm 'rmsnorm'"),
        ({"position": "rope"}, "position 'rope'"),
        ({**LLAMA, "qk_norm": True, "bias": True}, "bias True"),
        ({"logit_softcap": 30.0}, "logit_softcap 30.0"),
        (
            {"arch": "modern", "mlp": "relu2", "logit_softcap": 15.0},
            "mlp 'relu2', logit_softcap 15.0",
        ),
    ],
)
def test_unmappable_options_are_refused_naming_them(
    tmp_path: Path, tokenizer: Tokenizer, options: dict[str, Any], named: str
) -> None:
    model = tiny_model(options)
    for write in (
        lambda: export_huggingface(model, tmp_path / "hf", tokenizer),
        lambda: export_gguf(model, tmp_path / "m.gguf", tokenizer),
    ):
        with pytest.raises(InputError) as info:
            write()
        message = str(info.value)
        assert named in message and "\n" not in message
    assert not (tmp_path / "hf" / "config.json").exists()
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_refuses_llama_biases(tmp_path: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(InputError, match="bias"):
        export_gguf(tiny_model(LLAMA_BIAS), tmp_path / "m.gguf", tokenizer)


# ---- lmrs export / lmrs.export ------------------------------------------------------------


@pytest.fixture()
def run_dir(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    from lmrs.checkpoint.store import save_checkpoint

    model = tiny_model(LLAMA)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint", model, None, {"step": 1}, model.config, tokenizer=tokenizer)
    return run


def test_cli_export_writes_both_formats(
    tmp_path: Path, run_dir: Path, tokenizer: Tokenizer
) -> None:
    from lmrs.checkpoint.store import load_model
    from lmrs.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(run_dir), "-o", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    model, _ = load_model(run_dir)
    ids = ids_for(5)
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(hf_logits(tmp_path / "hf", ids), ours, atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.encode(RUNNING_TEXT, add_special_tokens=False) == tokenizer.encode(RUNNING_TEXT)

    args = ["export", str(run_dir), "--format", "gguf", "--dtype", "f16", "-o"]
    result = runner.invoke(cli, [*args, str(tmp_path / "m.gguf")])
    assert result.exit_code == 0, result.output
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.file_type"].contents() == 1

    result = runner.invoke(cli, ["export", str(run_dir), "--dtype", "q8_0", "-o", "x"])
    assert result.exit_code == 1
    assert result.output.startswith("lmrs: ") and "q8_0" in result.output
    result = runner.invoke(cli, ["export", str(tmp_path / "nowhere"), "-o", "x"])
    assert result.exit_code == 1 and result.output.startswith("lmrs: ")


def test_python_api_export_and_to_huggingface(tmp_path: Path, tokenizer: Tokenizer) -> None:
    import lmrs

    model = tiny_model(GPT2)
    lmrs.export(model, tmp_path / "a", format="hf", tokenizer=tokenizer)
    model.to_huggingface(tmp_path / "b", tokenizer=tokenizer)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match="tokenizer"):
        export(model, tmp_path / "m.gguf", "gguf")
    with pytest.raises(InputError, match="format"):
        export(model, tmp_path / "m", "onnx")


def test_imported_tokenizer_exports_with_its_own_ids(tmp_path: Path) -> None:
    """A vocabulary imported from `tokenizers` (ids not in byte order, end-of-text id 0)
    goes out in both formats with the ids `tokenizers` gives."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(TEXTS, trainer)
    hf.save(str(tmp_path / "source.json"))
    tokenizer = Tokenizer.from_huggingface(tmp_path / "source.json")
    model = tiny_model(GPT2, max_seq_len=1024, ff_dim=128, num_layers=1)
    export_huggingface(model, tmp_path / "hf", tokenizer)
    export_gguf(model, tmp_path / "m.gguf", tokenizer)
    from_folder = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    from_gguf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    for text in TEXTS:
        ids = hf.encode(text).ids
        assert tokenizer.encode(text) == ids
        assert from_folder.encode(text, add_special_tokens=False) == ids
        assert from_gguf.encode(text, add_special_tokens=False) == ids


# ---- whole outputs: an export replaces only its own, and is never a mix of two ------------

EXPORT_POINTS = ("export.tmp_written", "export.old_renamed", "export.new_renamed")
# what is at -o after a crash at each point: the first export, nothing (both whole beside
# it, as temporaries), the second export
AFTER_CRASH = {"export.tmp_written": "A", "export.old_renamed": None, "export.new_renamed": "B"}

EXPORT_TWICE = """
import os, sys
from lmrs import Tokenizer
from lmrs.model.hf_export import export_huggingface
from lmrs.model.gpt import create_model
texts = ["The quick brown fox jumps over the lazy dog. " * 8, "def add(a, b): return a + b" * 6]
dims = dict(max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32)
for label, vocab in (("A", 280), ("B", 300)):
    if label == "B":
        os.environ["LMRS_FAULT_POINT"] = sys.argv[2]
        os.environ["LMRS_FAULT_ACTION"] = "kill"
    tokenizer = Tokenizer.train(texts, vocab, show_progress=False)
    model = create_model(vocab, dropout_rate=0.0, seed=vocab, **dims)
    export_huggingface(model, sys.argv[1], tokenizer)
"""


def exported_vocab(folder: Path) -> int:
    """The vocabulary of an export folder, after checking that every file in it is the one
    its manifest lists (the config, the weights and the tokenizer are one export's)."""
    import hashlib
    import json

    manifest = json.loads((folder / "lmrs_export.json").read_text())
    assert {p.name for p in folder.iterdir()} == {*manifest["files"], "lmrs_export.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest["sha256"]
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    assert len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]) == vocab
    return vocab


@pytest.mark.parametrize("point", EXPORT_POINTS)
def test_a_killed_export_leaves_one_whole_export_or_none(
    tmp_path: Path, point: str, tokenizer: Tokenizer
) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_TWICE, str(out), point],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("LMRS_FAULT")},
    )
    assert done.returncode == -9, done.stderr  # killed at the point, during the second export
    expected = AFTER_CRASH[point]
    if expected is None:
        assert not out.exists()
        # both exports are whole beside it, as temporaries of the dead process
        vocabs = sorted(exported_vocab(p) for p in tmp_path.glob(".out.tmp-*"))
        assert vocabs == [280, 300]
    else:
        assert exported_vocab(out) == {"A": 280, "B": 300}[expected]
    # the next export replaces what is there without --overwrite (lmrs wrote it) and
    # removes the dead process's temporaries
    export_huggingface(tiny_model(GPT2), out, tokenizer)
    assert exported_vocab(out) == VOCAB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_replaces_only_what_lmrs_wrote(
    tmp_path: Path, run_dir: Path, tokenizer: Tokenizer
) -> None:
    from lmrs.cli.main import cli

    runner = CliRunner()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}')
    result = runner.invoke(cli, ["export", str(run_dir), "-o", str(foreign)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("lmrs: ") and "--overwrite" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (foreign / "config.json").read_text() == '{"mine": true}'
    # an earlier export is replaced; a file added to it makes it someone else's again
    out = tmp_path / "out"
    for _ in range(2):
        assert runner.invoke(cli, ["export", str(run_dir), "-o", str(out)]).exit_code == 0
    (out / "README.md").write_text("my model card")
    result = runner.invoke(cli, ["export", str(run_dir), "-o", str(out)])
    assert result.exit_code == 1 and "README.md" in result.output
    assert (out / "README.md").read_text() == "my model card"
    result = runner.invoke(cli, ["export", str(run_dir), "-o", str(foreign), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert exported_vocab(foreign) == VOCAB
    with pytest.raises(InputError, match="overwrite"):
        export_huggingface(tiny_model(GPT2), out, tokenizer)
    # GGUF: one file, replaced atomically; a file that is not GGUF is not replaced
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    args = ["export", str(run_dir), "--format", "gguf", "-o"]
    result = runner.invoke(cli, [*args, str(notes)])
    assert result.exit_code == 1 and "not a GGUF file" in result.output
    assert notes.read_text() == "keep me"
    for _ in range(2):
        assert runner.invoke(cli, [*args, str(tmp_path / "m.gguf")]).exit_code == 0
    assert runner.invoke(cli, [*args, str(notes), "--overwrite"]).exit_code == 0
    assert notes.read_bytes()[:4] == b"GGUF"
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
