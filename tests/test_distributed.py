"""Distributed training: real 2-process runs with gloo on loopback (CPU), tiny models.

The same file is the worker: the tests launch ``python tests/test_distributed.py SCENARIO
OUT_DIR`` under torchrun (or as two plain processes with torchrun's environment variables,
when a test needs ranks to fail on their own), and each scenario writes what it saw as JSON
into OUT_DIR for the test to check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lmrs import distributed
from lmrs.distributed import DistContext

THIS_FILE = Path(__file__).resolve()
VOCAB = 97


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a 2-core CI machine
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_torchrun(
    scenario: str, out_dir: Path, *args: str, nproc: int = 2, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N tests/test_distributed.py SCENARIO ...``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        str(THIS_FILE),
        scenario,
        str(out_dir),
        *args,
    ]
    return subprocess.run(
        command, env=_child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks_unsupervised(
    scenario: str, out_dir: Path, *args: str, world_size: int = 2, timeout: float = 60
) -> list[tuple[int, str, float]]:
    """Start the ranks as plain processes (no torchrun agent to stop the others when one
    fails), so a dead or hung rank must be noticed by the survivors themselves.
    Returns (exit code, stderr, seconds) per rank; a rank still running at ``timeout``
    is killed and reported with exit code None → the test fails."""
    port = _free_port()
    procs = []
    start = time.monotonic()
    for rank in range(world_size):
        env = _child_env()
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(THIS_FILE), scenario, str(out_dir), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        remaining = max(0.1, timeout - (time.monotonic() - start))
        try:
            _, err = proc.communicate(timeout=remaining)
            results.append((proc.returncode, err, time.monotonic() - start))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            results.append((None, err, time.monotonic() - start))
    return results


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# ---------------------------------------------------------------------------------------
# Single process: no process group, helpers are identities
# ---------------------------------------------------------------------------------------


def test_single_process_context_without_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert ctx.device == torch.device("cpu")
    assert distributed.all_reduce_mean(torch.tensor(2.5), ctx) == 2.5
    assert distributed.all_reduce_sum(3, ctx) == 3.0
    assert distributed.broadcast_object({"a": 1}, ctx) == {"a": 1}
    distributed.barrier(ctx)
    model = torch.nn.Linear(3, 2)
    assert distributed.wrap_model(model, ctx) is model
    assert distributed.unwrap_model(model) is model
    distributed.cleanup(ctx)


def test_bad_environment_and_arguments_raise_clear_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not set"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside the world of 2"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        distributed.init_distributed("cpu", timeout_s=0)
    with pytest.raises(ValueError, match="unknown strategy 'zero3'"):
        distributed.wrap_model(torch.nn.Linear(2, 2), DistContext(), strategy="zero3")
    with pytest.raises(ValueError, match="--nproc must be at least 1"):
        distributed.launch_local(0, ["train"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="inside torchrun"):
        distributed.launch_local(2, ["train"])


def test_launch_local_command_drops_nproc() -> None:
    argv = ["train", "--nproc", "2", "--corpus", "c", "--nproc=3", "--max-steps", "5"]
    command = distributed.torchrun_command(2, argv)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == [
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "lmrs",
        "train",
        "--corpus",
        "c",
        "--max-steps",
        "5",
    ]


def test_launch_local_runs_lmrs_under_torchrun_and_returns_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # `lmrs --version` exits 0 on every rank; an unknown command exits 2 on every rank
    assert distributed.launch_local(2, ["--version", "--nproc", "2"]) == 0
    assert distributed.launch_local(2, ["no-such-command"]) != 0


# ---------------------------------------------------------------------------------------
# Two processes: collectives, DDP gradient sync, FSDP state dicts
# ---------------------------------------------------------------------------------------


def test_collectives_ddp_and_fsdp_on_two_processes(tmp_path: Path) -> None:
    _check(run_torchrun("collectives", tmp_path))
    seen = json.loads((tmp_path / "collectives.json").read_text())
    assert seen["world_size"] == 2 and seen["backend"] == "gloo"
    assert seen["mean"] == pytest.approx(1.5) and seen["sum"] == pytest.approx(3.0)
    assert seen["broadcast"] == {"from": 0}
    # DDP: each rank saw half the batch, gradients were averaged → both ranks hold the
    # weights a single process gets from the whole batch
    assert seen["ddp_ranks_agree"] and seen["ddp_max_diff_vs_single"] < 1e-6
    assert seen["ddp_state_keys_plain"]
    # FSDP: the gathered full state dict equals the single-process result too
    assert seen["fsdp_max_diff_vs_single"] < 1e-6
    assert seen["fsdp_keys_equal_bare"]
    assert seen["fsdp_roundtrip_max_diff"] == 0.0


def _tiny_model() -> torch.nn.Module:
    from lmrs.model import create_model

    return create_model(
        VOCAB,
        max_seq_len=16,
        embed_dim=32,
        num_heads=2,
        num_layers=2,
        ff_dim=64,
        dropout_rate=0.0,
    )


def _scenario_collectives(ctx: DistContext, out_dir: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {"world_size": ctx.world_size, "backend": ctx.backend}
    seen["mean"] = distributed.all_reduce_mean(float(ctx.rank + 1), ctx)
    seen["sum"] = distributed.all_reduce_sum(torch.tensor(float(ctx.rank + 1)), ctx)
    seen["broadcast"] = distributed.broadcast_object({"from": ctx.rank}, ctx)
    distributed.barrier(ctx)

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (4, 16), generator=generator)
    targets = torch.randint(0, VOCAB, (4, 16), generator=generator)
    mine = slice(2 * ctx.rank, 2 * ctx.rank + 2)

    def one_sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model.compute_loss(x, y).backward()
        optimizer.step()

    single = _tiny_model()
    one_sgd_step(single, ids, targets)
    reference = {k: v.detach().clone() for k, v in single.state_dict().items()}

    def max_diff(state: dict[str, torch.Tensor]) -> float:
        return max(float((state[k] - reference[k]).abs().max()) for k in reference)

    ddp = distributed.wrap_model(_tiny_model(), ctx, "ddp")
    one_sgd_step(ddp, ids[mine], targets[mine])
    ddp_state = distributed.full_state_dict(ddp, ctx)
    seen["ddp_state_keys_plain"] = sorted(ddp_state) == sorted(reference)
    seen["ddp_max_diff_vs_single"] = max_diff(ddp_state)
    gathered = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, ddp_state)
    seen["ddp_ranks_agree"] = all(
        torch.equal(gathered[0][k], other[k]) for other in gathered for k in reference
    )

    fsdp = distributed.wrap_model(_tiny_model(), ctx, "fsdp")
    assert distributed.is_fsdp(fsdp)
    one_sgd_step(fsdp, ids[mine], targets[mine])
    fsdp_state = distributed.full_state_dict(fsdp, ctx)
    if ctx.is_main:
        seen["fsdp_keys_equal_bare"] = sorted(fsdp_state) == sorted(reference)
        seen["fsdp_max_diff_vs_single"] = max_diff(fsdp_state)
    # load the full state back into a fresh sharded model (rank 0's copy is broadcast)
    fresh = distributed.wrap_model(_tiny_model(), ctx, "fsdp")
    distributed.load_full_state_dict(fresh, fsdp_state, ctx)
    again = distributed.full_state_dict(fresh, ctx)
    if ctx.is_main:
        seen["fsdp_roundtrip_max_diff"] = max(
            float((again[k] - fsdp_state[k]).abs().max()) for k in fsdp_state
        )
    return seen


# ---------------------------------------------------------------------------------------
# Worker entry point
# ---------------------------------------------------------------------------------------

SCENARIOS = {
    "collectives": _scenario_collectives,
}


def _worker_main(argv: list[str]) -> int:
    scenario, out_dir = argv[0], Path(argv[1])
    timeout_s = float(os.environ.get("LMRS_TEST_TIMEOUT_S", "60"))
    ctx = distributed.init_distributed("cpu", timeout_s=timeout_s)
    try:
        seen = SCENARIOS[scenario](ctx, out_dir, *argv[2:])
        if ctx.is_main and seen is not None:
            (out_dir / f"{scenario}.json").write_text(json.dumps(seen))
    finally:
        distributed.cleanup(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
