"""train.py's Trainer: losses read back only when something needs them, the next batch built
on a background thread, and the loop's pieces (step, evaluate, save, restore) on their own."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from lmrs.data.tokens import prepare_training_data
from lmrs.model.gpt import create_small_model
from lmrs.training.trainer import BatchListSource, Trainer, TrainingDiverged, _make_run, train

VOCAB = 64
QUIET: dict[str, Any] = dict(show_progress=False, device="cpu", dtype="float32", eval_every=0)


def tiny_model() -> torch.nn.Module:
    return create_small_model(
        VOCAB, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32, seed=0
    )


def batches(count: int = 8) -> list[Any]:
    docs = [[(k + i) % 50 for i in range(60)] for k in range(count)]
    return prepare_training_data(docs, batch_size=2, seq_len=16)


def test_the_next_batch_is_built_on_a_background_thread() -> None:
    built: list[tuple[int, str]] = []
    original = BatchListSource.micro_batch

    def recording(self: BatchListSource, step: int, *args: Any) -> Any:
        built.append((step, threading.current_thread().name))
        return original(self, step, *args)

    BatchListSource.micro_batch = recording  # type: ignore[method-assign]
    try:
        result = train(tiny_model(), batches(), max_steps=5, warmup_steps=0, **QUIET)
    finally:
        BatchListSource.micro_batch = original  # type: ignore[method-assign]
    assert result.steps == 5
    # every step's batch built exactly once; after the first, while the step before ran
    assert [step for step, _ in built] == [0, 1, 2, 3, 4]
    assert built[0][1] == threading.main_thread().name
    assert all(name.startswith("lmrs-batches") for _, name in built[1:]), built


def test_losses_are_read_back_when_logged_and_a_divergence_names_its_first_step(
    tmp_path: Path,
) -> None:
    model = tiny_model()
    reads: list[int] = []
    losses_seen: list[int] = []
    trainer_read = Trainer.read_losses

    def counting(self: Trainer) -> None:
        losses_seen.append(len(self.unread))
        reads.append(self.step_count)
        trainer_read(self)

    Trainer.read_losses = counting  # type: ignore[method-assign]
    calls = {"n": 0}
    compute_loss = model.compute_loss

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = compute_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 7 else loss  # step 7 onwards

    model.compute_loss = poisoned  # type: ignore[method-assign]
    out = tmp_path / "run"
    try:
        with pytest.raises(TrainingDiverged, match=r"at step 7 .*last good checkpoint"):
            train(
                model, batches(), max_steps=20, warmup_steps=0, log_every=4,
                checkpoint_every=5, out_dir=str(out), **QUIET,
            )  # fmt: skip
    finally:
        Trainer.read_losses = trainer_read  # type: ignore[method-assign]
    # read at the first step, at each log line (4, 8) and before the checkpoint at 5, each
    # time for all the steps since the last read; the divergence at 7 is found at step 8
    assert reads == [1, 4, 5, 8]
    assert losses_seen == [1, 3, 1, 3]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5  # nothing saved after the diverged step
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 4]


def test_trainer_pieces_step_evaluate_save_restore(tmp_path: Path) -> None:
    from lmrs.distributed import DistContext
    from lmrs.options import TrainConfig

    config = TrainConfig(
        max_steps=4, warmup_steps=0, out_dir=str(tmp_path / "run"), eval_batches=2, **QUIET
    )
    data = batches()
    model = tiny_model()
    (tmp_path / "run").mkdir()
    run = _make_run(model, model, data[:2], config, DistContext(), None, tmp_path / "run")
    trainer = Trainer(run, BatchListSource(data, config))
    trainer.begin()
    for _ in range(2):
        assert trainer.keep_going()
        trainer.step()
    result = trainer.evaluate()
    assert result is not None and len(trainer.losses) == 2  # read back before measuring
    trainer.save()
    fresh = tiny_model()
    again = Trainer(
        _make_run(fresh, fresh, data[:2], config, DistContext(), None, None),
        BatchListSource(data, config),
    )
    again.restore(tmp_path / "run")
    assert (again.start_step, again.step_count) == (2, 2)
    assert again.tokens() == trainer.tokens()
    for a, b in zip(again.run.raw_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
