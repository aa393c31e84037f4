"""Training throughput with one core taken by another process, against the idle machine.

Each setting trains the `lmrs quickstart` shape (small preset, modern architecture, Muon,
batch 16 x 128, vocabulary 2000) for ``--seconds`` in a fresh process (OpenMP reads its
settings when torch loads), once on the idle machine and once beside a busy loop (a
``while True: pass`` process at nice 19, like a build or a browser tab), interleaved. It
prints tokens/s idle and busy per setting, under the CPU line.

    python benchmarks/bench_busy.py [--seconds 20] [--nice 0] [--repeats 2]
        [--settings adaptive,fixed,passive,threads1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_common import cpu_description

CHILD = r"""
import json, sys, torch
from lmrs.model.gpt import create_small_model
from lmrs.options import DEFAULT_ARCH
from lmrs.training.trainer import TrainConfig, train
seconds, adapt = float(sys.argv[1]), sys.argv[2] == "adapt"
torch.manual_seed(0)
model = create_small_model(2000, max_seq_len=256, arch=DEFAULT_ARCH)
ids = torch.randint(0, 2000, (64, 16, 129))
batches = [(row[:, :-1].contiguous(), row[:, 1:].contiguous()) for row in ids]
config = TrainConfig(batch_size=16, seq_len=128, time_budget_s=seconds, warmup_steps=20,
                     eval_every=0, show_progress=False, adapt_threads=adapt)
result = train(model, batches, config)
print(json.dumps({"tokens_per_s": result.tokens_per_s, "steps": result.steps,
                  "threads": torch.get_num_threads()}))
"""

# setting -> (environment of the training process on top of this one's minus CLEARED,
# whether the thread count adapts: TrainConfig.adapt_threads)
SETTINGS: dict[str, tuple[dict[str, str], bool]] = {
    "adaptive": ({}, True),  # what `lmrs train` does by itself
    "fixed": ({}, False),  # torch's own count (all cores), as before lmrs.training.cpu_threads
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),  # OpenMP threads sleep, not spin
    "threads1": ({"OMP_NUM_THREADS": "1"}, False),
}
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def train_once(setting: str, seconds: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    extra, adapt = SETTINGS[setting]
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(seconds), "adapt" if adapt else "fixed"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def busy_loop(nice: int) -> subprocess.Popen[bytes]:
    """A process that keeps one core busy, at niceness ``nice``."""
    code = f"import os\nos.nice({nice})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--nice", type=int, default=19, help="niceness of the busy loop")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved")
    args = parser.parse_args()
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    print(cpu_description())
    idle: dict[str, list[float]] = {name: [] for name in names}
    busy: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:  # every setting idle, then every setting beside the busy loop
            idle[name].append(train_once(name, args.seconds)["tokens_per_s"])
            print(f"  {name}: idle {idle[name][-1]:,.0f} tok/s")
        busy_process = busy_loop(args.nice)
        try:
            time.sleep(1.0)
            for name in names:
                busy[name].append(train_once(name, args.seconds)["tokens_per_s"])
                print(f"  {name}: busy {busy[name][-1]:,.0f} tok/s")
        finally:
            busy_process.kill()
            busy_process.wait()
        time.sleep(5.0)  # the machine settles before the next idle runs
    print(
        f"\ntraining {args.seconds:g} s per run, quickstart shape, mean of {args.repeats} runs; "
        f"busy: one `while True` at nice {args.nice}"
    )
    reference = statistics.mean(idle[names[0]])
    print(f"| setting | idle tok/s | busy tok/s | busy / idle | busy / {names[0]} idle |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        mean_idle, mean_busy = statistics.mean(idle[name]), statistics.mean(busy[name])
        print(
            f"| {name} | {mean_idle:,.0f} | {mean_busy:,.0f} | {mean_busy / mean_idle:.2f} "
            f"| {mean_busy / reference:.2f} |"
        )


if __name__ == "__main__":
    main()
