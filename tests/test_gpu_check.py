"""benchmarks/gpu_check.py: the smoke run (every section, tiny, on the CPU) passes, so the
first run on a GPU cannot fail for a trivial reason; a crashed or hung section costs only
itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
SECTIONS = ["environment", "float32", "throughput", "resume", "distributed", "eval_memory",
            "sampling"]  # fmt: skip


def _run(
    tmp_path: Path, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return done, json.loads(out.read_text()) if out.exists() else None


def test_smoke_run_passes_every_section(tmp_path: Path) -> None:
    done, summary = _run(tmp_path, timeout=240)
    assert summary is not None, done.stdout + done.stderr
    failures = {
        name: (entry.get("error"), entry.get("traceback") or entry.get("output_tail"))
        for name, entry in summary["sections"].items()
        if not entry["ok"]
    }
    assert failures == {}
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(summary["sections"]) == SECTIONS and summary["smoke"] is True
    sections = summary["sections"]
    # the figures the GPU run is for are there (None where the CPU has no such thing)
    assert set(sections["environment"]["attention"]) >= {"multi_head", "grouped_query", "rotary"}
    assert sections["float32"]["float32_max_diff"] <= 1e-4
    assert {"tokens_per_s", "compile_s", "peak_memory_gib", "host_syncs_per_step"} <= set(
        sections["throughput"]["compiled"]
    )
    assert sections["resume"]["max_diff"] == 0.0
    assert sections["distributed"]["backend"] == "gloo"
    assert sections["sampling"]["logits"]["ok"]
    assert all(f"{name} " in done.stdout for name in SECTIONS)  # one line per section


def test_a_crashed_or_hung_section_costs_only_itself(tmp_path: Path) -> None:
    done, summary = _run(tmp_path, "--only", "_crash,_hang,environment", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    sections = summary["sections"]
    assert list(sections) == ["_crash", "_hang", "environment"]  # the run went on
    assert "signal 6" in sections["_crash"]["error"]  # as NCCL's watchdog aborts a process
    assert sections["_hang"]["error"] == "timed out after 3 s"
    assert sections["_hang"]["seconds"] < 20
    assert sections["environment"]["ok"]
    assert "FAILED" in done.stdout and "summary in" in done.stdout
