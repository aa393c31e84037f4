"""lmrs.training.cpu_threads: the trainer's thread count follows the measured step times (a fake
clock and fake step times here: no timing in tests), and the count changes no number."""

from __future__ import annotations

import numpy as np
import torch

from lmrs.training.cpu_threads import RECHECK_S, ThreadGovernor, candidate_counts


class Machine:
    """Step times per thread count, a clock, and the counts the governor set."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds = seconds
        self.now = 0.0
        self.set: list[int] = []

    def governor(self, candidates: tuple[int, ...]) -> ThreadGovernor:
        return ThreadGovernor(candidates, set_threads=self.set.append, clock=lambda: self.now)

    def run(self, governor: ThreadGovernor, steps: int) -> None:
        for _ in range(steps):
            step = self.seconds[governor.threads]
            self.now += step
            governor.after_step(step)


def test_candidates_cover_one_core_taken_and_one_thread() -> None:
    assert candidate_counts(2) == (2, 1)
    assert candidate_counts(8) == (8, 7, 4, 1)
    assert candidate_counts(1) == (1,)


def test_an_idle_machine_keeps_every_thread() -> None:
    machine = Machine({2: 0.2, 1: 0.34})
    governor = machine.governor((2, 1))
    machine.run(governor, 200)
    assert governor.threads == 2
    # one losing step at one thread per round: the first, then one a minute
    assert machine.set.count(1) <= 1 + int(machine.now / RECHECK_S)
    assert machine.set[-1] == 2


def test_a_busy_core_moves_training_to_the_free_one_and_back() -> None:
    machine = Machine({2: 0.2, 1: 0.34})
    governor = machine.governor((2, 1))
    machine.run(governor, 20)
    assert governor.threads == 2
    machine.seconds = {2: 0.7, 1: 0.36}  # another process takes a core: two threads collapse
    machine.run(governor, 20)  # noticed within a few steps, without waiting a minute
    assert governor.threads == 1
    machine.seconds = {2: 0.2, 1: 0.34}  # the other process ends
    machine.run(governor, int(RECHECK_S / 0.34) + 20)  # found again at the next check
    assert governor.threads == 2
    governor.close()
    assert governor.threads == governor.original == 2


def test_close_restores_the_count_it_started_from() -> None:
    machine = Machine({4: 0.5, 3: 0.3, 2: 0.4, 1: 0.6})
    governor = machine.governor((4, 3, 2, 1))
    machine.run(governor, 30)
    assert governor.threads == 3
    governor.close()
    assert machine.set[-1] == 4 and governor.threads == 4


def test_the_thread_count_changes_no_number() -> None:
    """Training with the count adapting (and so switching while it measures) gives the
    losses of training at a fixed count: the count is a matter of speed only."""
    from lmrs.model.gpt import create_small_model
    from lmrs.training.trainer import TrainConfig, train

    if torch.get_num_threads() < 2:
        torch.set_num_threads(2)
    ids = torch.randint(0, 300, (12, 4, 33), generator=torch.Generator().manual_seed(0))
    batches = [(row[:, :-1].contiguous(), row[:, 1:].contiguous()) for row in ids]
    losses = {}
    for adapt in (False, True):
        model = create_small_model(300, max_seq_len=32, seed=0)
        config = TrainConfig(
            max_steps=12, warmup_steps=2, eval_every=0, show_progress=False, dtype="float32",
            device="cpu", adapt_threads=adapt,
        )  # fmt: skip
        losses[adapt] = train(model, batches, config).losses
    before = torch.get_num_threads()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-6, atol=0)
    assert torch.get_num_threads() == before  # the run gave its count back
