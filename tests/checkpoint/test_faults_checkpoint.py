"""Fault injection: a process killed at every named point of a checkpoint save (and of the
atomic file writer) leaves the newest complete state loadable and resumable, and the next
save removes the debris. See lmrs/faults.py for the crash points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmrs.atomic import write_atomic
from lmrs.checkpoint.store import (
    CHECKSUMS_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from lmrs.faults import FAULT_EXIT_CODE, PYTHON_FAULT_POINTS
from lmrs.model.gpt import create_small_model
from lmrs.training.trainer import TrainConfig, train

CHECKPOINT_POINTS = [p for p in PYTHON_FAULT_POINTS if p.startswith("checkpoint.")]
ATOMIC_POINTS = [p for p in PYTHON_FAULT_POINTS if p.startswith("atomic.")]
# where the newest complete checkpoint is after a crash at each point: the old one (step 5)
# until the new directory is complete, the new one (step 10) from then on
STEP_AFTER_CRASH = {
    "checkpoint.tmp_created": 5,
    "checkpoint.weights_written": 5,
    "checkpoint.optimizer_written": 5,
    "checkpoint.files_written": 5,
    "checkpoint.old_renamed": 10,  # only .old-* and the complete .tmp-* are left
    "checkpoint.new_renamed": 10,
    "checkpoint.cleaned": 10,
}
SETTINGS = dict(max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32)

SAVE_SCRIPT = f"""
import sys, torch
from lmrs.checkpoint.store import save_checkpoint
from lmrs.model.gpt import create_small_model
from lmrs.training.trainer import TrainConfig, create_optimizer
model = create_small_model(80, seed=int(sys.argv[2]), **{SETTINGS})
optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
ids = torch.randint(0, 80, (2, 8))
model.compute_loss(ids, ids).backward()
optimizer.step()
save_checkpoint(sys.argv[1], model, optimizer, {{"step": int(sys.argv[3])}}, model.config, {{}})
"""


def save_in_child(directory: Path, step: int, point: str = "", action: str = "") -> int:
    env = {**os.environ, "LMRS_FAULT_POINT": point, "LMRS_FAULT_ACTION": action}
    done = subprocess.run(
        [sys.executable, "-c", SAVE_SCRIPT, str(directory), str(step), str(step)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, FAULT_EXIT_CODE, -9), done.stderr
    return done.returncode


def leftovers(directory: Path) -> list[str]:
    """Siblings of a checkpoint left by its saves (a run's logs and plot are not debris)."""
    return sorted(
        p.name for p in directory.parent.iterdir() if p.name.startswith(f"{directory.name}.")
    )


def test_every_python_point_is_listed_and_reached(tmp_path: Path) -> None:
    assert set(STEP_AFTER_CRASH) == set(CHECKPOINT_POINTS)
    source = Path(__file__).resolve().parents[2] / "python" / "lmrs"
    text = "".join(p.read_text() for p in sorted(source.rglob("*.py")))
    for point in PYTHON_FAULT_POINTS:
        assert f'fault_point("{point}")' in text, point


@pytest.fixture(scope="module")
def saved_at_5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose checkpoint was saved at step 5 by a child process: made once, copied by
    each crash test (a child costs seconds: it imports torch)."""
    run = tmp_path_factory.mktemp("saved") / "run"
    assert save_in_child(run / "checkpoint", 5) == 0
    return run


@pytest.mark.parametrize("action", ["exit", "kill"])
@pytest.mark.parametrize("point", CHECKPOINT_POINTS)
def test_crash_at_each_checkpoint_point(
    tmp_path: Path, saved_at_5: Path, point: str, action: str
) -> None:
    final = tmp_path / "run" / "checkpoint"
    shutil.copytree(saved_at_5, tmp_path / "run")
    code = save_in_child(final, 10, point, action)
    assert code == (-9 if action == "kill" else FAULT_EXIT_CODE)

    resolved = resolve_checkpoint_dir(tmp_path / "run", quiet=True)
    model, saved = load_model(tmp_path / "run")  # verifies every checksum
    assert saved.step == STEP_AFTER_CRASH[point], (point, resolved)
    reference = create_small_model(80, seed=saved.step, **SETTINGS).state_dict()
    # the weights are the ones saved at that step (seeded by the step), not a mix
    assert not torch.equal(model.token_embedding.weight, reference["token_embedding.weight"])

    # a new save after the crash leaves exactly one checkpoint and no debris
    assert save_in_child(final, 15) == 0
    assert leftovers(final) == []
    assert load_checkpoint(tmp_path / "run").step == 15


def test_resume_after_a_crash_continues_from_the_newest_complete_state(
    tmp_path: Path, saved_at_5: Path
) -> None:
    final = tmp_path / "run" / "checkpoint"
    shutil.copytree(saved_at_5, tmp_path / "run")
    assert save_in_child(final, 10, "checkpoint.old_renamed") == FAULT_EXIT_CODE
    assert not final.exists()
    model, _ = load_model(tmp_path / "run")
    batches = [(torch.randint(0, 80, (2, 8)), torch.randint(0, 80, (2, 8)))] * 4
    config = TrainConfig(
        max_steps=12,
        warmup_steps=0,
        show_progress=False,
        dtype="float32",
        eval_every=0,
        out_dir=str(tmp_path / "run"),
    )
    result = train(model, batches, config, resume_from=tmp_path / "run")
    assert result.start_step == 10 and result.steps == 12
    assert leftovers(final) == []
    assert load_checkpoint(final).step == 12


def write_fake(directory: Path, step: int, *, complete: bool = True) -> None:
    model = create_small_model(80, seed=step, **SETTINGS)
    save_checkpoint(directory, model, None, {"step": step}, model.config, {})
    if not complete:
        (directory / CHECKSUMS_FILE).unlink()


def test_recovery_picks_the_highest_step_not_the_name(tmp_path: Path) -> None:
    # names sort the other way round from the steps: a name order would pick step 5
    write_fake(tmp_path / "checkpoint.old-ffff", 5)
    write_fake(tmp_path / "checkpoint.old-0000", 10)
    write_fake(tmp_path / "checkpoint.tmp-9999", 20, complete=False)  # half-written: ignored
    assert resolve_checkpoint_dir(tmp_path, quiet=True) == tmp_path / "checkpoint.old-0000"
    # a corrupted newer copy is passed over too
    weights = tmp_path / "checkpoint.old-0000" / MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert resolve_checkpoint_dir(tmp_path, quiet=True) == tmp_path / "checkpoint.old-ffff"


def test_recovery_says_which_checkpoint_it_used(tmp_path: Path, capfd) -> None:
    write_fake(tmp_path / "checkpoint.old-abcd", 7)
    resolve_checkpoint_dir(tmp_path)
    err = capfd.readouterr().err
    assert "checkpoint.old-abcd" in err and "step 7" in err


def test_no_complete_leftover_is_an_error(tmp_path: Path) -> None:
    write_fake(tmp_path / "checkpoint.tmp-0001", 3, complete=False)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint_dir(tmp_path, quiet=True)


@pytest.mark.parametrize("point", ATOMIC_POINTS)
def test_atomic_write_crash_keeps_old_or_new_and_cleans_up(tmp_path: Path, point: str) -> None:
    target = tmp_path / "file.txt"
    target.write_bytes(b"old")
    script = (
        "import sys; from pathlib import Path; from lmrs.atomic import write_atomic; "
        "write_atomic(Path(sys.argv[1]), b'new')"
    )
    env = {**os.environ, "LMRS_FAULT_POINT": point}
    done = subprocess.run([sys.executable, "-c", script, str(target)], env=env, timeout=120)
    assert done.returncode == FAULT_EXIT_CODE
    assert target.read_bytes() == (b"old" if point == "atomic.tmp_written" else b"new")
    write_atomic(target, b"newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert target.read_bytes() == b"newer"


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", b"x")
        write_fake(tmp_path / "ckpt", 1)
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    for path in (tmp_path / "ckpt").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "ckpt" / STATE_FILE).is_file()


def test_atomic_cleanup_spares_live_writers_and_other_targets(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    leftovers_ = {
        f".data.json.tmp-{dead}-abcd1234": True,  # its process is gone: debris
        f".data.json.tmp-{os.getppid()}-abcd1234": False,  # a live process may be writing
        f".data.json.x.tmp-{dead}-abcd1234": False,  # another target's (data.json.x)
    }
    for name in leftovers_:
        (tmp_path / name).write_bytes(b"partial")
    write_atomic(target, b"{}")
    for name, removed in leftovers_.items():
        assert (tmp_path / name).exists() != removed, name
