"""One owner of a run directory (lmrs.runlock), and what a writer may remove or must refuse:
a second writer is refused naming the first, a lock dies with its process, leftover cleanup
spares a live writer's files, and a directory holding only the checkpoints an interrupted
save left is still a trained run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_faults_checkpoint import leftovers, save_in_child, write_fake

from lmrs.checkpoint.store import (
    holds_checkpoints,
    kept_name,
    recover_checkpoint,
    remove_checkpoint_leftovers,
    resolve_checkpoint_dir,
)
from lmrs.cli.main import cli
from lmrs.faults import FAULT_EXIT_CODE
from lmrs.runlock import HELD_ENV, LOCK_FILE, RunInUseError, run_lock
from lmrs.tokenizer.core import Tokenizer

HOLD_SCRIPT = """
import sys
from lmrs.runlock import run_lock
with run_lock(sys.argv[1], "lmrs train"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


class Holder:
    """Another process holding a run directory's lock until closed (or killed)."""

    def __init__(self, directory: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[Holder]:
    held = Holder(tmp_path / "run")
    yield held
    if held.process.poll() is None:
        held.kill()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path, holder: Holder) -> None:
    with pytest.raises(RunInUseError) as refused:
        with run_lock(tmp_path / "run", "lmrs checkpoint consolidate"):
            pass
    message = str(refused.value)
    assert f"PID {holder.process.pid}" in message and socket.gethostname() in message
    assert "lmrs train" in message and "\n" not in message
    holder.close()
    with run_lock(tmp_path / "run", "test"):  # released with its holder
        assert (tmp_path / "run" / LOCK_FILE).is_file()


def test_the_lock_dies_with_its_process(tmp_path: Path, holder: Holder) -> None:
    holder.kill()  # kill -9: no cleanup ran, and no stale lock stays
    with run_lock(tmp_path / "run", "test"):
        pass


def test_the_holder_reenters_and_its_children_pass(tmp_path: Path) -> None:
    before = os.environ.get(HELD_ENV)
    with run_lock(tmp_path / "run", "outer"):
        with run_lock(tmp_path / "run", "inner"):  # lmrs train around lmrs.train
            pass
        child = subprocess.run(
            [sys.executable, "-c", HOLD_SCRIPT, str(tmp_path / "run")],
            input="\n",
            capture_output=True,
            text=True,
            timeout=60,
        )  # a process the holder started (torchrun under --nproc) inherits the lock
        assert child.returncode == 0, child.stderr
    assert os.environ.get(HELD_ENV) == before


def test_a_secondary_rank_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = Holder(tmp_path / "run")
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with run_lock(tmp_path / "run", "rank 1"):  # the job's rank 0 holds it once
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunInUseError):
            with run_lock(tmp_path / "run", "rank 0"):
                pass
    finally:
        held.close()


def test_a_refused_run_leaves_no_directory_it_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "a" / "b" / "run", "test"):
            raise ValueError("refused before writing")
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    with run_lock(tmp_path / "kept", "test"):
        (tmp_path / "kept" / "metrics.jsonl").write_text("{}\n")
    assert (tmp_path / "kept" / "metrics.jsonl").is_file()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lockdata")
    corpus = root / "corpus"
    corpus.mkdir()
    for index in range(4):
        text = "\n".join(f"def f{index}_{n}(x): return x * {n}" for n in range(80))
        (corpus / f"f{index}.py").write_text(text + "\n")
    tokenizer = Tokenizer.train(str(corpus), 300, show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    return {"corpus": corpus, "tokenizer": root / "tokenizer.json"}


def train_args(data: dict[str, Path], out: Path) -> list[str]:
    return [
        "train", "--corpus", str(data["corpus"]), "--tokenizer", str(data["tokenizer"]),
        "--out", str(out), "--max-steps", "1", "--batch-size", "2", "--seq-len", "16",
        "--eval-every", "0", "--quiet",
    ]  # fmt: skip


def test_train_is_refused_while_another_process_owns_the_run(
    tmp_path: Path, holder: Holder, data: dict[str, Path]
) -> None:
    result = run(*train_args(data, tmp_path / "run"))
    assert result.exit_code != 0
    assert f"in use by lmrs train (PID {holder.process.pid}" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing written


def test_consolidate_is_refused_while_the_run_trains(tmp_path: Path, holder: Holder) -> None:
    # the trainer's save in progress: a consolidation must neither remove it nor run
    in_progress = tmp_path / "run" / f"checkpoint.tmp-{holder.process.pid}-0123abcd"
    write_fake(tmp_path / "run" / "checkpoint", 4)
    write_fake(in_progress, 5)
    result = run("checkpoint", "consolidate", str(tmp_path / "run"))
    assert result.exit_code != 0 and "in use by lmrs train" in result.output
    result = run("checkpoint", "consolidate", str(tmp_path / "run" / "checkpoint"))
    assert result.exit_code != 0 and "in use by lmrs train" in result.output
    assert in_progress.is_dir()


def test_leftover_cleanup_spares_a_live_writers_directory(tmp_path: Path) -> None:
    final = tmp_path / "checkpoint"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    live = os.getppid()  # a process that exists: it may still be writing
    for name in (f"tmp-{dead}-00000000", f"old-{dead}-11111111", f"tmp-{live}-22222222",
                 f"old-{os.getpid()}-33333333", "old-ffffffff"):  # fmt: skip
        (tmp_path / f"checkpoint.{name}").mkdir()
    assert remove_checkpoint_leftovers(final) == 4
    assert leftovers(final) == [f"checkpoint.tmp-{live}-22222222"]


def test_the_checkpoints_an_interrupted_save_left_are_a_trained_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert not holds_checkpoints(run_dir)
    final = run_dir / "checkpoint"
    assert save_in_child(final, 5) == 0
    assert save_in_child(final, 10, "checkpoint.old_renamed", "kill") == -9
    assert not final.exists() and holds_checkpoints(run_dir)
    # kept ones alone (checkpoint-STEP) are a run as well
    other = tmp_path / "other"
    write_fake(kept_name(other / "checkpoint", 3), 3)
    assert holds_checkpoints(other)
    # a half-written temporary directory is not
    half = tmp_path / "half"
    write_fake(half / "checkpoint.tmp-1-00000000", 3, complete=False)
    assert not holds_checkpoints(half)


def test_a_new_run_does_not_delete_the_checkpoints_an_interrupted_save_left(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    run_dir = tmp_path / "run"
    final = run_dir / "checkpoint"
    assert save_in_child(final, 5) == 0
    assert save_in_child(final, 10, "checkpoint.old_renamed", "kill") == -9
    before = leftovers(final)
    result = run(*train_args(data, run_dir))
    assert result.exit_code != 0 and "already holds a trained run" in result.output
    assert leftovers(final) == before and not final.exists()
    assert resolve_checkpoint_dir(run_dir, quiet=True).name.startswith("checkpoint.tmp-")


def test_a_writer_restores_the_checkpoint_a_crash_left_aside(tmp_path: Path) -> None:
    final = tmp_path / "run" / "checkpoint"
    assert save_in_child(final, 5) == 0
    assert save_in_child(final, 10, "checkpoint.old_renamed") == FAULT_EXIT_CODE
    restored_from = recover_checkpoint(final)
    assert restored_from is not None and ".tmp-" in restored_from.name
    assert resolve_checkpoint_dir(tmp_path / "run", quiet=True) == final
    assert recover_checkpoint(final) is None  # nothing to do once it is there
