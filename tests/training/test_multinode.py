"""Past one machine, on one machine: a two-"node" job (two torchrun agents meeting at a c10d
rendezvous on localhost, gloo) and an elastic job (torchrun --max-restarts) whose worker is
killed mid-run; both through `lmrs train`, both held to the single-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tolerances import CURVE_RTOL

from lmrs.cli.main import cli

STEPS = 6
CHECKPOINT_STEP = 3
# the same optimisation whatever the split: global batch 8, float32, no dropout
TRAIN_ARGS = [
    "--size", "small", "--batch-size", "8", "--seq-len", "16", "--max-steps", str(STEPS),
    "--warmup", "2", "--lr", "3e-3", "--eval-every", "0", "--eval-batches", "1",
    "--device", "cpu", "--dtype", "float32", "--dropout", "0", "--seed", "3", "--quiet",
    "--log-every", "1",
]  # fmt: skip

# rank 1 of the first attempt dies (no cleanup, like a lost node) in the step after the
# checkpoint; the restarted workers must not, so the kill looks at the restart count
WORKER = """
import os, sys
if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ.get("RANK") == "1":
    from lmrs.model.gpt import GPT
    compute_loss, calls = GPT.compute_loss, [0]
    def dying(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] == int(os.environ["DIE_AT_CALL"]):
                os._exit(7)
        return compute_loss(self, *args, **kwargs)
    GPT.compute_loss = dying
from lmrs.cli.main import main
sys.argv = ["lmrs", *sys.argv[1:]]
main()
"""


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a 2-core CI machine
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_USE_AGENT_STORE", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
                 "TORCHELASTIC_RESTART_COUNT"):  # fmt: skip
        env.pop(name, None)
    env.update(extra)
    return env


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    return [r["train_loss"] for r in train]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lmrs import Tokenizer

    root = tmp_path_factory.mktemp("multinode")
    corpus = root / "corpus"
    corpus.mkdir()
    words = ["def", "return", "value", "self", "import", "class", "for", "in", "naïve"]
    for index in range(6):
        lines = [" ".join(words[(index * 7 + k * 3 + j) % len(words)] for j in range(6))
                 for k in range(80)]  # fmt: skip
        (corpus / f"file_{index}.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.train(str(corpus), 300, show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    tokenizer.encode_files(str(corpus), str(root / "tokens.bin"), show_progress=False)
    return {"root": root, "tokens": root / "tokens.bin", "tokenizer": root / "tokenizer.json"}


def lmrs_args(data: dict[str, Path], out: Path, grad_accum: int, *extra: str) -> list[str]:
    return [
        "train", "--tokens", str(data["tokens"]), "--tokenizer", str(data["tokenizer"]),
        "--out", str(out), "--grad-accum", str(grad_accum), *TRAIN_ARGS, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data: dict[str, Path]) -> list[float]:
    """One process, 4 accumulation steps, uninterrupted."""
    out = data["root"] / "reference"
    done = CliRunner().invoke(cli, lmrs_args(data, out, 4), catch_exceptions=False)
    assert done.exit_code == 0, done.output
    losses = train_losses(out)
    assert losses[-1] < losses[0]
    return losses


def test_two_nodes_at_a_c10d_rendezvous_follow_the_single_process_curve(
    data: dict[str, Path], reference: list[float]
) -> None:
    # the rendezvous store lives here, bound to port 0 and open until both agents are done;
    # is_host=false makes both agents its clients (a multi-node job's shared endpoint)
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, 2, is_master=True, wait_for_workers=False, multi_tenant=True
    )
    out = data["root"] / "two-nodes"
    agents = []
    for node in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{store.port}", "--rdzv-id", "lmrs-two-nodes",
            "--rdzv-conf", "is_host=false", "-m", "lmrs", *lmrs_args(data, out, 2),
        ]  # fmt: skip
        agents.append(
            subprocess.Popen(
                command,
                env=_child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outputs = []
    for agent in agents:
        try:
            outputs.append(agent.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for other in agents:
                other.kill()
            raise
    del store
    for agent, (stdout, stderr) in zip(agents, outputs):
        assert agent.returncode == 0, f"{stdout}\n{stderr}"
    np.testing.assert_allclose(train_losses(out), reference, rtol=CURVE_RTOL, atol=0)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2


def test_elastic_restart_resumes_from_the_newest_checkpoint(
    data: dict[str, Path], reference: list[float], tmp_path: Path
) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = data["root"] / "elastic"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", "1", str(worker),
        *lmrs_args(data, out, 2, "--checkpoint-every", str(CHECKPOINT_STEP), "--dist-timeout",
                   "30"),
    ]  # fmt: skip
    # the first attempt's rank 1 dies in its first micro-step after the step-3 checkpoint
    env = _child_env(DIE_AT_CALL=str(CHECKPOINT_STEP * 2 + 1))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "(exitcode: 7)" in done.stderr, done.stderr  # the kill happened, then the restart
    assert f"restarted job: resuming from {out / 'checkpoint'}" in done.stderr, done.stderr
    from lmrs.checkpoint.store import load_checkpoint

    assert load_checkpoint(out).step == STEPS
    # the curve continues where the checkpoint left it: steps 4-6 by the restarted workers,
    # steps 1-3 kept from the first attempt, all on the uninterrupted single-process curve
    np.testing.assert_allclose(train_losses(out), reference, rtol=CURVE_RTOL, atol=0)


def test_a_restart_does_not_resume_a_run_of_another_configuration(
    data: dict[str, Path], reference: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reference run (4 accumulation steps) is not this one (2): refused, not resumed
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    done = CliRunner().invoke(cli, lmrs_args(data, data["root"] / "reference", 2))
    assert done.exit_code != 0
    assert "a restarted worker found a run of another configuration" in done.output
    assert "Traceback" not in done.output
