"""`lmrs train/sample/eval/plot/quickstart` end to end on a tiny corpus, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lmrs.cli.main import cli
from lmrs.cli.model import parse_duration, stdlib_python_files
from lmrs.tokenizer.core import Tokenizer

TRAIN_ARGS = ["--batch-size", "4", "--seq-len", "32", "--warmup", "5", "--eval-every", "10"]
TINY = ["--eval-batches", "2", "--quiet"]


def write_corpus(directory: Path, files: int = 6, seed: int = 0) -> Path:
    """Small Python-like text files with some non-ASCII characters."""
    directory.mkdir(parents=True, exist_ok=True)
    words = ["def", "return", "value", "self", "import", "class", "for", "in", "naïve", "é"]
    for index in range(files):
        lines = []
        for line in range(60):
            picked = [words[(index * 7 + line * 3 + k * (seed + 1)) % len(words)] for k in range(6)]
            lines.append(f"{' '.join(picked)} = {line * index}")
        (directory / f"file_{index}.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def fails_with(result: Result, pattern: str) -> None:
    assert result.exit_code != 0, result.output
    assert re.search(pattern, result.output), result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus")
    tokenizer = Tokenizer.train(str(corpus), 300, show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    out = root / "run"
    result = run(
        "train",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(root / "tokenizer.json"),
        "--out",
        str(out),
        "--max-steps",
        "20",
        *TRAIN_ARGS,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    assert "trained 20 steps" in result.output
    return {"root": root, "corpus": corpus, "tokenizer": root / "tokenizer.json", "run": out}


def test_train_writes_run(trained: dict[str, Path]) -> None:
    run_dir = trained["run"]
    for name in ("tokens.bin", "tokens.bin.json", "metrics.jsonl", "loss.png"):
        assert (run_dir / name).is_file(), name
    state = json.loads((run_dir / "checkpoint/state.json").read_text())
    assert state["step"] == 20
    assert (run_dir / "checkpoint/tokenizer.json").is_file()


def test_sample_streams_deterministic_text(trained: dict[str, Path]) -> None:
    args = ["sample", "--checkpoint", str(trained["run"]), "--prompt", "def ", "--seed", "3"]
    first = run(*args, "--max-length", "20")
    second = run(*args, "--max-length", "20")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("def ")
    assert first.stdout == second.stdout  # the text; the speed summary goes to stderr
    assert len(first.stdout) > len("def \n")
    assert re.search(r"^\d+ tokens in [\d.]+s \([\d,]+ tokens/s\)$", first.stderr, re.M)
    exact = run(*args, "--max-length", "20", "--dtype", "float32")
    assert exact.exit_code == 0 and exact.stdout.startswith("def ")
    many = run(*args, "--max-length", "5", "--num-samples", "2")
    assert many.output.count("--- sample") == 2


def test_eval_prints_loss_perplexity_bpb(trained: dict[str, Path]) -> None:
    result = run("eval", "--checkpoint", str(trained["run"]), "--corpus", str(trained["corpus"]))
    assert result.exit_code == 0, result.output
    match = re.search(
        r"loss (\d+\.\d+)  perplexity (\d+\.\d+)  bits per byte (\d+\.\d+)", result.output
    )
    assert match, result.output
    loss, ppl, bpb = (float(g) for g in match.groups())
    assert ppl == pytest.approx(2.718281828**loss, rel=1e-2)
    assert 0 < bpb < 8
    # the same tokens through --tokens give the same numbers
    again = run(
        "eval", "--checkpoint", str(trained["run"]), "--tokens", str(trained["run"] / "tokens.bin")
    )
    assert match.group(0) in again.output


def test_plot(trained: dict[str, Path], tmp_path: Path) -> None:
    result = run("plot", str(trained["run"]), "-o", str(tmp_path / "curve.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_skips_a_torn_last_line_and_refuses_bad_ones(tmp_path: Path) -> None:
    """A run killed while writing metrics.jsonl leaves its last line cut short: skipped with
    a warning. A bad line before it (not JSON, nested too deeply, not a record) is refused
    in one line naming the file and the line."""
    lines = [json.dumps({"step": s, "train_loss": 5.0 - s / 10}) for s in range(1, 4)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(lines) + '\n{"step": 4, "train_lo')
    result = run("plot", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "line 4 is cut short" in result.output and (tmp_path / "loss.png").is_file()
    for bad, why in (
        ("{not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"step": "two", "train_loss": 1.0}', "step is not a number"),
        ("[1, 2]", "not a JSON object"),
    ):
        metrics.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
        fails_with(run("plot", str(tmp_path)), rf"^lmrs: {re.escape(str(metrics))}: line 2: {why}")
        assert len(run("plot", str(tmp_path)).output.strip().splitlines()) == 1


HUGE = "99999999999999999999999"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["sample", "--checkpoint", "x", "--top-k", HUGE], "--top-k"),
        (["sample", "--checkpoint", "x", "--seed", str(2**64)], "--seed"),
        (["sample", "--checkpoint", "x", "--seed", "-1"], "--seed"),
        (["train", "--tokens", "x", "--out", "y", "--seed", str(2**64)], "--seed"),
        (["train", "--tokens", "x", "--out", "y", "--batch-size", HUGE], "--batch-size"),
        (["train", "--tokens", "x", "--out", "y", "--seq-len", HUGE], "--seq-len"),
        (["eval", "--checkpoint", "x", "--tokens", "y", "--batch-size", HUGE], "--batch-size"),
        (["quickstart", "--vocab-size", HUGE], "--vocab-size"),
        (["vocab", "x", "--size", HUGE], "--size"),
        (["vocab", "x", "--min-frequency", HUGE], "--min-frequency"),
        (["encode", "x", "-t", "t", "--shard-tokens", HUGE], "--shard-tokens"),
        (["encode", "x", "-t", "t", "--num-parts", HUGE], "--num-parts"),
    ],
)
def test_integers_beyond_what_torch_and_rust_take_name_their_option(
    args: list[str], option: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert option in result.output and result.output.startswith("lmrs: ")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (MemoryError(), "out of memory: reduce --max-length"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), "out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of GPU memory"),
    ],
)
def test_running_out_of_memory_is_one_line(
    error: BaseException, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmrs.cli.model

    def no_memory(*args: object) -> None:
        raise error

    monkeypatch.setattr(lmrs.cli.model, "_load_run", no_memory)
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", "x"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"lmrs: {said}") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    error = RuntimeError("a bug")  # any other RuntimeError keeps its traceback
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", "x"])
    assert result.exception is error


def test_resume_continues_the_run(trained: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    result = run(
        "train",
        "--tokens",
        str(run_dir / "tokens.bin"),
        "--tokenizer",
        str(trained["tokenizer"]),
        "--out",
        str(run_dir),
        "--resume",
        str(run_dir),
        "--max-steps",
        "25",
        *TRAIN_ARGS,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "checkpoint/state.json").read_text())["step"] == 25


def test_sample_errors(trained: dict[str, Path], tmp_path: Path) -> None:
    ckpt = str(trained["run"])
    fails_with(run("sample", "--checkpoint", ckpt, "--temperature", "-1"), "temperature")
    fails_with(run("sample", "--checkpoint", ckpt, "--top-p", "1.5"), "top-p")
    long_prompt = "def value " * 400
    fails_with(run("sample", "--checkpoint", ckpt, "--prompt", long_prompt), "context")
    fails_with(run("sample", "--checkpoint", str(tmp_path / "missing")), "not found")


def test_train_with_muon_optimizer(trained: dict[str, Path], tmp_path: Path) -> None:
    common = ["--tokens", str(trained["run"] / "tokens.bin"), "--tokenizer",
              str(trained["tokenizer"]), *TRAIN_ARGS, *TINY]  # fmt: skip
    out = tmp_path / "muon"
    result = run("train", *common, "--out", str(out), "--max-steps", "4", "--optimizer", "muon",
                 "--embed-lr", "0.02", "--head-lr", "0.001",
                 "--muon-momentum-warmup", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained 4 steps" in result.output
    config = json.loads((out / "checkpoint/train_config.json").read_text())
    assert config["optimizer"] == "muon" and config["weight_decay"] == 0.1
    assert (config["embed_lr"], config["head_lr"], config["min_lr_ratio"]) == (0.02, 0.001, 0.0)
    assert config["muon_momentum_warmup"] == 3
    fails_with(run("train", *common, "--out", str(tmp_path / "bad"), "--embed-lr", "0"),
               "embed-lr")  # fmt: skip


def test_train_errors_write_nothing(trained: dict[str, Path], tmp_path: Path) -> None:
    run_dir = trained["run"]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    other_corpus = write_corpus(tmp_path / "other", seed=5)
    other = Tokenizer.train(str(other_corpus), 280, show_progress=False)
    other.save(str(tmp_path / "other.json"))
    base = ["train", "--max-steps", "2", *TRAIN_ARGS, *TINY]
    # an existing run is not replaced without --resume/--overwrite
    fails_with(
        run(
            *base,
            "--corpus",
            str(trained["corpus"]),
            "--tokenizer",
            str(trained["tokenizer"]),
            "--out",
            str(run_dir),
        ),
        "already holds a trained run",
    )
    # resuming with another tokenizer
    fails_with(
        run(
            *base,
            "--tokens",
            str(run_dir / "tokens.bin"),
            "--tokenizer",
            str(tmp_path / "other.json"),
            "--out",
            str(run_dir),
            "--resume",
            str(run_dir),
        ),
        "tokenizer",
    )
    # a token file from another tokenizer
    fails_with(
        run(
            *base,
            "--tokens",
            str(run_dir / "tokens.bin"),
            "--tokenizer",
            str(tmp_path / "other.json"),
            "--out",
            str(tmp_path / "new"),
        ),
        r"tokens\.bin\.json: written by another tokenizer",
    )
    # a missing tokenizer file, a bad duration
    fails_with(
        run(
            *base,
            "--corpus",
            str(trained["corpus"]),
            "--tokenizer",
            str(tmp_path / "no.json"),
            "--out",
            str(tmp_path / "new2"),
        ),
        "no.json",
    )
    fails_with(
        run(
            "train",
            "--corpus",
            str(trained["corpus"]),
            "--tokenizer",
            str(trained["tokenizer"]),
            "--out",
            str(tmp_path / "new3"),
            "--time-budget",
            "soon",
        ),
        "duration",
    )
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    lock = run_dir / ".lmrs.lock"  # taken (then released) by each refused command, nothing else
    assert {p: t for p, t in after.items() if p != lock} == {
        p: t for p, t in before.items() if p != lock
    }


def test_empty_corpus_is_an_error(trained: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(
        "train",
        "--corpus",
        str(tmp_path / "empty"),
        "--tokenizer",
        str(trained["tokenizer"]),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    fails_with(result, "empty")
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_eval_errors(trained: dict[str, Path], tmp_path: Path) -> None:
    fails_with(run("eval", "--checkpoint", str(trained["run"])), "--corpus")
    fails_with(
        run("eval", "--checkpoint", str(tmp_path), "--corpus", str(trained["corpus"])),
        "not a checkpoint",
    )


def test_quickstart_on_a_given_corpus(trained: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "quickstart",
        "--corpus",
        str(trained["corpus"]),
        "--out",
        str(tmp_path / "qs"),
        "--minutes",
        "0.05",
        "--vocab-size",
        "300",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "4/4 samples" in result.output and "--- 'def ' ---" in result.output
    assert (tmp_path / "qs/checkpoint/model.safetensors").is_file()


def test_quickstart_on_a_record_file(trained: dict[str, Path], tmp_path: Path) -> None:
    """A JSONL corpus (one document per record, --text-field) runs the whole quickstart;
    the token file is the one `lmrs encode` makes from the same records."""
    records = tmp_path / "docs.jsonl"
    docs = [p.read_text() for p in sorted(Path(trained["corpus"]).rglob("*")) if p.is_file()]
    records.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    result = run(
        "quickstart", "--corpus", str(records), "--text-field", "content",
        "--out", str(tmp_path / "qs"), "--minutes", "0.05", "--vocab-size", "300", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4/4 samples" in result.output
    again = run(
        "encode", str(records), "-t", str(tmp_path / "qs/tokenizer.json"),
        "-o", str(tmp_path / "again.bin"), "--text-field", "content",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (tmp_path / "qs/tokens.bin").read_bytes() == (tmp_path / "again.bin").read_bytes()
    missing = run(
        "quickstart", "--corpus", str(records), "--out", str(tmp_path / "qs2"),
        "--minutes", "0.05", "--quiet",
    )  # fmt: skip
    fails_with(missing, "missing field 'text'")


def test_helpers() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400
    files = stdlib_python_files(max_bytes=200_000)
    assert files and all(f.endswith(".py") for f in files)
    assert not any("site-packages" in f or "/test/" in f for f in files)
    assert sum(Path(f).stat().st_size for f in files) <= 200_000


def test_the_seq_len_bound_is_the_models_context() -> None:
    from lmrs.cli.model import SEQ_LEN
    from lmrs.model.config import MAX_CONTEXT

    assert SEQ_LEN.max == MAX_CONTEXT


def test_errors_name_the_users_file_not_a_temporary(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """An atomic write's `.NAME.tmp-PID-...` and eval's encoded `/tmp/lmrs-eval-*/tokens.bin`
    are not files the user named: errors name the target and the corpus instead."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 2.0}) + "\n")
    (tmp_path / "taken").mkdir()
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "-o", str(tmp_path / "taken")])
    fails_with(result, rf"^lmrs: {re.escape(str(tmp_path / 'taken'))}: is a directory")
    assert ".tmp-" not in result.output
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("def f")
    args = ["eval", "--checkpoint", str(trained["run"]), "--corpus", str(short)]
    result = CliRunner().invoke(cli, args)
    fails_with(result, rf"^lmrs: {re.escape(str(short))}: .*too few")
    assert "lmrs-eval-" not in result.output


SHAPE = ["--embed-dim", "192", "--layers", "3", "--heads", "6", "--kv-heads", "2", "--tie-weights"]


def test_every_model_option_is_a_flag_and_a_config_file_repeats_a_run(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    import tomllib

    first = tmp_path / "first"
    args = ["--corpus", str(trained["corpus"]), "--tokenizer", str(trained["tokenizer"])]
    steps = ["--max-steps", "3", "--lr", "0.002", *TRAIN_ARGS, *TINY]
    result = run("train", *args, "--out", str(first), *SHAPE, *steps)
    assert result.exit_code == 0, result.output
    shape = json.loads((first / "checkpoint" / "model_config.json").read_text())
    assert (shape["embed_dim"], shape["num_layers"], shape["num_heads"]) == (192, 3, 6)
    assert shape["num_kv_heads"] == 2 and shape["tie_weights"] is True
    text = (first / "config.toml").read_text()
    written = tomllib.loads(text)
    assert written["embed_dim"] == 192 and written["kv_heads"] == 2 and written["lr"] == 0.002
    assert written["tokenizer"] == str(trained["tokenizer"]) and "out" not in written
    # the file alone trains the same run again: same options, same model, same losses
    second = tmp_path / "second"
    result = run("train", "--config", str(first / "config.toml"), "--out", str(second))
    assert result.exit_code == 0, result.output
    assert (second / "config.toml").read_text() == text
    assert json.loads((second / "checkpoint" / "model_config.json").read_text()) == shape

    def losses(run_dir: Path) -> list[float]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines if "train_loss" in line]

    assert losses(second) == losses(first)
    # a flag wins over the file
    third = tmp_path / "third"
    result = run(
        "train", "--config", str(first / "config.toml"), "--out", str(third), "--lr", "3e-3"
    )
    assert result.exit_code == 0, result.output
    assert tomllib.loads((third / "config.toml").read_text())["lr"] == 0.003


def test_a_bad_config_file_is_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    base = ["train", "--config", str(config), "--out", str(tmp_path / "out")]
    for text, said in (
        ("bogus = 1\n", "unknown option(s) bogus"),
        ("lr = \n", "not valid TOML"),
        ("[train]\nlr = 1\n", "a table"),
    ):
        config.write_text(text)
        fails_with(run(*base), re.escape(f"{config}: ") + ".*" + re.escape(said))
    config.write_text('tokens = "x"\nlr = -1.0\n')
    fails_with(run(*base), "--lr")  # the option's own range checks a value from the file
    fails_with(run(*base[:2], str(tmp_path / "missing.toml"), *base[3:]), "not found")
    assert not (tmp_path / "out").exists()


def test_a_run_of_any_shape_exports_like_the_presets(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    import gguf
    import torch
    import transformers

    import lmrs

    out = tmp_path / "run"
    args = ["--corpus", str(trained["corpus"]), "--tokenizer", str(trained["tokenizer"])]
    result = run("train", *args, "--out", str(out), *SHAPE, "--max-steps", "2", *TRAIN_ARGS, *TINY)
    assert result.exit_code == 0, result.output
    assert run("export", str(out), "-o", str(tmp_path / "hf")).exit_code == 0
    model, tokenizer = lmrs.load(out)
    ids = torch.tensor([tokenizer.encode("def value(self): return naïve")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits.float(), model(ids), atol=1e-4, rtol=0)
    gguf_path = tmp_path / "model.gguf"
    result = run("export", str(out), "-o", str(gguf_path), "--format", "gguf")
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(str(gguf_path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def number(key: str) -> int:
        return int(reader.fields[f"{arch}.{key}"].parts[-1][0])

    assert (number("embedding_length"), number("block_count")) == (192, 3)
    assert (number("attention.head_count"), number("attention.head_count_kv")) == (6, 2)
    names = {tensor.name for tensor in reader.tensors}
    assert "output.weight" not in names  # the tied head is the token embedding, stored once
