"""Intra-op threads that follow the cores actually free while training on a CPU.

PyTorch splits each operation across its threads and waits for the slowest one. When another
process takes one of the cores (a build, a browser, another user's job), the thread sharing
that core makes every operation wait, and OpenMP's spin-waiting threads burn the time that
the other process needs: on 2 cores, training fell to 0.28x its idle tokens/s beside one busy
process at nice 0, while a single thread kept 0.72x of the two threads' idle speed
(`benchmarks/bench_busy.py`, docs/benchmarks.md). Which count is fastest depends on the load
of the moment, so the trainer measures it: a few steps at each candidate count, the fastest
kept, measured again every minute or as soon as the steps slow down by half.

The count changes the speed only: PyTorch's CPU kernels give the same numbers on one thread
as on several (the trainer's curves are compared across thread counts in the tests).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

# steps timed per candidate count in one round of measuring
PROBE_STEPS = 3
# a step right after a change of count (waking or parking threads) is not timed
SETTLE_STEPS = 1
# a candidate whose first timed step is this much slower than the best so far loses at
# once (on an idle machine each round then costs about one slow step)
CLEARLY_SLOWER = 1.25
# measure again after this long, or when the last steps run this much slower than measured
# (one busy core slows two threads 2-3x; step times wander by 20% without any load)
RECHECK_S = 60.0
SLOWDOWN = 1.5
RECENT_STEPS = 5


def candidate_counts(most: int) -> tuple[int, ...]:
    """The thread counts worth measuring on ``most`` threads, most first: all of them, one
    less (one core taken), half, one."""
    return tuple(sorted({most, max(1, most - 1), max(1, most // 2), 1}, reverse=True))


@dataclass
class ThreadGovernor:
    """Call :meth:`after_step` with each training step's seconds; it sets the thread count
    (``set_threads``) to the fastest candidate it measured. :meth:`close` restores the
    count it started from."""

    candidates: tuple[int, ...]
    set_threads: Callable[[int], None] = torch.set_num_threads
    clock: Callable[[], float] = time.perf_counter
    threads: int = field(init=False)
    original: int = field(init=False)
    _queue: list[int] = field(init=False, default_factory=list)
    _samples: dict[int, list[float]] = field(init=False, default_factory=dict)
    _settle: int = field(init=False, default=SETTLE_STEPS + 1)  # + the run's first step
    _probing: bool = field(init=False, default=True)
    _baseline: float = field(init=False, default=0.0)
    _measured_at: float = field(init=False, default=0.0)
    _recent: list[float] = field(init=False, default_factory=list)
    changes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.original = self.threads = self.candidates[0]
        self._start_round()

    @classmethod
    def for_training(cls, device: torch.device, world_size: int) -> Optional[ThreadGovernor]:
        """A governor for a one-process CPU run with several threads, else None (a GPU's
        speed does not hang on the CPU threads; under torchrun each process has its share)."""
        most = torch.get_num_threads()
        if device.type != "cpu" or world_size != 1 or most < 2:
            return None
        return cls(candidate_counts(most))

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.set_threads(threads)
            self.threads = threads
            self.changes += 1
        self._settle = SETTLE_STEPS

    def _start_round(self) -> None:
        """Time the current count first (no switch), then the others."""
        self._probing = True
        self._samples = {}
        self._queue = [n for n in self.candidates if n != self.threads]
        self._samples[self.threads] = []

    def after_step(self, seconds: float) -> None:
        if self._settle > 0:
            self._settle -= 1
            return
        if self._probing:
            timed = self._samples[self.threads]
            timed.append(seconds)
            done = [statistics.median(t) for n, t in self._samples.items() if n != self.threads]
            losing = bool(done) and seconds > CLEARLY_SLOWER * min(done)
            if len(timed) < PROBE_STEPS and not losing:
                return
            if self._queue:
                nxt = self._queue.pop(0)
                self._samples[nxt] = []
                self._use(nxt)
                return
            medians = {n: statistics.median(t) for n, t in self._samples.items()}
            best = min(medians, key=lambda n: (medians[n], -n))  # a tie keeps more threads
            self._use(best)
            self._baseline = medians[best]
            self._measured_at = self.clock()
            self._probing = False
            self._recent = []
            return
        self._recent = [*self._recent[-(RECENT_STEPS - 1) :], seconds]
        slower = (
            len(self._recent) == RECENT_STEPS
            and statistics.median(self._recent) > SLOWDOWN * self._baseline
        )
        if slower or self.clock() - self._measured_at > RECHECK_S:
            self._start_round()

    def close(self) -> None:
        """Give the process back the thread count it had."""
        if self.threads != self.original:
            self.set_threads(self.original)
            self.threads = self.original


__all__ = ["ThreadGovernor", "candidate_counts"]
