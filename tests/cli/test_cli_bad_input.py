"""The CLI's bad-input matrix: each case exits non-zero with one line on stderr naming the
file or option at fault, no traceback, and every file that existed before is byte-identical
afterwards (nothing lost, nothing half-written)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lmrs.cli.main import cli
from lmrs.tokenizer.core import Tokenizer

TINY = ["--batch-size", "4", "--seq-len", "16", "--warmup", "0", "--eval-every", "0"]
TINY += ["--eval-batches", "1", "--quiet", "--dtype", "float32"]


def write_corpus(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "naïve", "x", "y", "z", "über", "return"]
    for index in range(4):
        lines = [
            " ".join(words[(index * 3 + line * (seed + 2) + k) % len(words)] for k in range(5))
            for line in range(40)
        ]
        (directory / f"doc_{index}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def snapshot(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def refused(result: Result, pattern: str) -> str:
    """The one stderr line of a refused command; asserts exit code and form."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmrs: "), lines
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus, two tokenizers and a small rotary-position run trained for 4 steps."""
    root = tmp_path_factory.mktemp("bad")
    corpus = write_corpus(root / "corpus")
    Tokenizer.train(str(corpus), 300, show_progress=False).save(str(root / "tok.json"))
    other = write_corpus(root / "other_corpus", seed=3)
    Tokenizer.train(str(other), 290, show_progress=False).save(str(root / "other.json"))
    result = run(
        "train", "--corpus", str(corpus), "--tokenizer", str(root / "tok.json"),
        "--out", str(root / "run"), "--max-steps", "4", "--position", "rope", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def unchanged(world: Path) -> Iterator[Path]:
    before = snapshot(world)
    yield world
    after = snapshot(world)
    assert after == before, sorted(set(after) ^ set(before)) or [
        name for name in before if after.get(name) != before[name]
    ]


def train_args(world: Path, *extra: str, tokenizer: str = "tok.json") -> list[str]:
    return [
        "train", "--corpus", str(world / "corpus"), "--tokenizer", str(world / tokenizer),
        "--max-steps", "2", *TINY, *extra,
    ]  # fmt: skip


def test_out_is_a_regular_file(unchanged: Path) -> None:
    target = unchanged / "corpus" / "doc_0.txt"
    refused(run(*train_args(unchanged, "--out", str(target))), "is not a directory")


def test_out_is_not_writable(unchanged: Path) -> None:
    refused(run(*train_args(unchanged, "--out", "/proc/lmrs-run")), "/proc/lmrs-run")


def test_lr_infinite_is_refused_before_any_work(unchanged: Path, tmp_path: Path) -> None:
    line = refused(run(*train_args(unchanged, "--out", str(tmp_path / "r"), "--lr", "inf")), "inf")
    assert "learning_rate" in line
    assert not (tmp_path / "r").exists()


def test_diverging_run_names_the_step_and_keeps_the_last_checkpoint(
    unchanged: Path, tmp_path: Path
) -> None:
    shutil.copytree(unchanged / "run", tmp_path / "run")
    before = snapshot(tmp_path / "run" / "checkpoint")
    result = run(
        *train_args(unchanged, "--out", str(tmp_path / "run"), "--resume", str(tmp_path / "run")),
        "--lr", "1e30", "--max-steps", "12",
    )  # fmt: skip
    line = refused(result, "training loss became")
    assert "at step" in line and "checkpoint it resumed from is unchanged" in line
    assert snapshot(tmp_path / "run" / "checkpoint") == before


def test_resume_with_another_tokenizer_writes_nothing(unchanged: Path) -> None:
    result = run(
        *train_args(unchanged, "--out", str(unchanged / "run"), "--resume", str(unchanged / "run"),
                    tokenizer="other.json")
    )  # fmt: skip
    refused(result, "vocab_size")


def test_resume_with_a_contradicting_size(unchanged: Path) -> None:
    run_dir = str(unchanged / "run")
    args = train_args(unchanged, "--out", run_dir, "--resume", run_dir)
    refused(run(*args, "--size", "full"), "--size full")
    refused(run(*args, "--position", "learned"), "--position learned")


def test_resume_from_nowhere(unchanged: Path, tmp_path: Path) -> None:
    args = train_args(unchanged, "--out", str(tmp_path / "r"), "--resume", str(tmp_path / "no"))
    refused(run(*args), "checkpoint directory not found")


def test_missing_tokenizer(unchanged: Path, tmp_path: Path) -> None:
    result = run(*train_args(unchanged, "--out", str(tmp_path / "r"), tokenizer="none.json"))
    refused(result, "none.json")


def test_sample_prompt_longer_than_a_rotary_context(unchanged: Path) -> None:
    result = run("sample", "--checkpoint", str(unchanged / "run"), "--prompt", "alpha " * 700)
    refused(result, "exceeds the model's context")


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_sample_bad_temperature(unchanged: Path, value: str) -> None:
    result = run("sample", "--checkpoint", str(unchanged / "run"), "--temperature", value)
    refused(result, "--temperature")


def test_sample_rust_engine_in_float32(unchanged: Path) -> None:
    result = run(
        "sample", "--checkpoint", str(unchanged / "run"), "--engine", "rust", "--dtype", "float32"
    )
    refused(result, "rust decoding engine")


def test_sample_from_a_file(unchanged: Path) -> None:
    result = run("sample", "--checkpoint", str(unchanged / "tok.json"))
    refused(result, "is a file")


def corrupted_copy(world: Path, tmp_path: Path, name: str, mutate) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(world / "run", run_dir)
    path = run_dir / "checkpoint" / name
    path.write_bytes(mutate(path.read_bytes()))
    return run_dir


def flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    flipped = bytes(b ^ 0x5A for b in data[middle : middle + 100])
    return data[:middle] + flipped + data[middle + 100 :]


CORRUPTIONS = {
    "flipped": flip_middle,
    "truncated": lambda data: data[: len(data) // 3],
    "emptied": lambda data: b"",
}
CHECKPOINT_FILES = [
    "model.safetensors", "optimizer.pt", "state.json", "model_config.json", "train_config.json",
    "tokenizer.json",
]  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_corrupted_checkpoint_file_is_named(
    world: Path, tmp_path: Path, name: str, kind: str
) -> None:
    run_dir = corrupted_copy(world, tmp_path, name, CORRUPTIONS[kind])
    before = snapshot(run_dir)
    if name == "optimizer.pt":  # only a resume reads it
        args = train_args(world, "--out", str(run_dir), "--resume", str(run_dir))
        result = run(*args, "--max-steps", "6")
    else:
        result = run("sample", "--checkpoint", str(run_dir), "--max-length", "5")
    refused(result, name)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("model_config.json", "embed_dim", "wide"),
        ("model_config.json", "num_layers", -1),
        ("state.json", "step", "ten"),
        ("model_config.json", "position", ["rope"]),
    ],
)
def test_wrong_json_types_in_an_unchecked_checkpoint(
    world: Path, tmp_path: Path, name: str, field: str, value: object
) -> None:
    """Checkpoints written before checksums.json existed are not verified: their content
    must still be checked, each bad value a one-line error naming the file."""

    def retype(data: bytes) -> bytes:
        content = json.loads(data)
        content[field] = value
        return json.dumps(content).encode()

    run_dir = corrupted_copy(world, tmp_path, name, retype)
    (run_dir / "checkpoint" / "checksums.json").unlink()
    if name == "state.json":
        args = train_args(world, "--out", str(run_dir), "--resume", str(run_dir))
        result = run(*args, "--max-steps", "6")
    else:
        result = run("sample", "--checkpoint", str(run_dir), "--max-length", "5")
    refused(result, name)


def test_corpus_add_skips_and_names_an_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_corpus(tmp_path / "src")
    bad = source / "doc_1.txt"
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == bad:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = run("corpus", "add", str(source), str(tmp_path / "corpus"), "--quiet")
    assert result.exit_code == 0, result.output
    assert f"skipped {bad}: Input/output error" in result.stderr
    assert "1 unreadable" in result.stdout
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == [
        "doc_0.txt", "doc_2.txt", "doc_3.txt",
    ]  # fmt: skip


def test_debug_shows_the_traceback(unchanged: Path, tmp_path: Path) -> None:
    args = train_args(unchanged, "--out", str(tmp_path / "r"), tokenizer="none.json")
    result = CliRunner().invoke(cli, ["--debug", *args])
    assert result.exit_code != 0
    assert result.exception is not None and not isinstance(result.exception, SystemExit)
    os.environ.pop("LMRS_DEBUG", None)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 768 KiB tmpfs: room for the tokens, not for a checkpoint (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: never busy


def test_full_disk_names_the_checkpoint(world: Path, small_disk: Path) -> None:
    out = small_disk / "run"
    result = run(*train_args(world, "--out", str(out)))
    line = refused(result, "no space left on device writing")
    assert str(out / "checkpoint") in line
    assert not any(p.name.startswith("checkpoint") for p in out.iterdir())  # no half checkpoint


def test_train_on_an_empty_corpus_keeps_the_runs_tokens(unchanged: Path, tmp_path: Path) -> None:
    """The resumed run's tokens.bin (and .idx, .json) are not removed by a corpus with no
    text: the input is refused before anything is written."""
    (tmp_path / "empty").mkdir()
    run_dir = str(unchanged / "run")
    args = train_args(unchanged, "--out", run_dir, "--resume", run_dir, "--max-steps", "6")
    args[args.index("--corpus") + 1] = str(tmp_path / "empty")
    refused(run(*args), "empty")


def write_no_text(kind: str, where: Path) -> Path:
    """An input without one usable document."""
    if kind == "empty folder":
        where.mkdir()
    elif kind == "binary files":
        where.mkdir()
        (where / "a.bin").write_bytes(b"\x00\x01\x02")
    elif kind == "bad records":
        where = where.with_suffix(".jsonl")
        where.write_text('{"body": "no text field"}\n{"text": 3}\n', encoding="utf-8")
    else:
        where = where.with_suffix(".csv")
        where.write_text("id,text\n", encoding="utf-8")
    return where


@pytest.mark.parametrize("shards", [False, True])
@pytest.mark.parametrize("kind", ["empty folder", "binary files", "bad records", "empty csv"])
def test_encode_with_no_usable_text_keeps_the_old_output(
    unchanged: Path, tmp_path: Path, kind: str, shards: bool
) -> None:
    out = tmp_path / ("keep" if shards else "keep.bin")
    options = ["--shard-tokens", "500"] if shards else []
    tokenizer = str(unchanged / "tok.json")
    encoded = run("encode", str(unchanged / "corpus"), "-t", tokenizer, "-o", str(out), *options)
    assert encoded.exit_code == 0, encoded.output
    before = snapshot(tmp_path)
    source = write_no_text(kind, tmp_path / "nothing")
    line = refused(run("encode", str(source), "-t", tokenizer, "-o", str(out), "-q", *options), "")
    assert str(source) in line or f"{out}: not written: the input is empty" in line
    assert f"{out} not written" in line or f"{out}: not written" in line
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("nothing")} == before


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_a_record_file_that_is_a_named_pipe_is_refused_by_name(
    unchanged: Path, tmp_path: Path, suffix: str
) -> None:
    """A pipe cannot be read twice (and opening it waits for a writer): refused by name
    before it is opened, for every command that reads records."""
    pipe = tmp_path / f"data{suffix}"
    os.mkfifo(pipe)
    results: list[Result] = []
    commands = [
        ["vocab", str(pipe), "-o", str(tmp_path / "t.json"), "-q"],
        ["encode", str(pipe), "-t", str(unchanged / "tok.json"), "-o", str(tmp_path / "t.bin")],
        ["corpus", "add", str(pipe), str(tmp_path / "corpus"), "--quiet"],
    ]
    worker = threading.Thread(target=lambda: [results.append(run(*c)) for c in commands])
    worker.start()
    worker.join(20)
    hung = worker.is_alive()
    while worker.is_alive():  # blocked opening the pipe: a writer that closes at once frees it
        with contextlib.suppress(OSError):
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(0.1)
    assert not hung, "a command waits for ever on a named pipe"
    assert len(results) == len(commands)
    for result in results:
        refused(result, f"{pipe}: not a regular file")
