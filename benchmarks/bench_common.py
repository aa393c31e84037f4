"""What every benchmark does the same way: the CPU line each table is printed under, and
best-of-N timing. No torch import, so the tokenizer benchmarks stay light."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

# /proc/cpuinfo flag -> how the feature is printed (the encoders' and the decoding kernels')
CPU_FLAGS = {
    "sse4_2": "SSE4.2",
    "bmi2": "BMI2",
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
}


def cpu_description() -> str:
    """The CPU's model name and which of the features above it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        return f"CPU: {model} (features unknown: no /proc/cpuinfo)"
    features = ", ".join(
        f"{name} {'yes' if flag in flags else 'no'}" for flag, name in CPU_FLAGS.items()
    )
    return f"CPU: {model}, {os.cpu_count()} logical cores; {features}"


def best_seconds(work: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``work`` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def best_of(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run every entry ``repeats`` times, interleaved (so that a drift in the machine's
    speed hits them alike); keep each one's best (highest) rate."""
    best = {name: 0.0 for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best
