"""train.py: schedule, weight-decay groups, accumulation, learning, resume, logs; evaluate.py."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_data import FakeTokenizer, make_docs, write_token_file
from torch import nn

from lmrs.data.tokens import TokenDataset, prepare_training_data
from lmrs.model.gpt import create_small_model
from lmrs.training.evaluation import evaluate
from lmrs.training.trainer import TrainConfig, learning_rate_at, parameter_groups, train

VOCAB = 100
# float32: the equalities tested here are exact only without autocast (auto would pick
# bfloat16 on CPUs that have it)
QUIET = dict(show_progress=False, device="cpu", dtype="float32")


def tiny_model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    return create_small_model(
        VOCAB,
        max_seq_len=32,
        embed_dim=32,
        num_heads=2,
        num_layers=1,
        ff_dim=64,
        dropout_rate=dropout,
        seed=seed,
    )


def pattern_docs(count: int = 12) -> list[list[int]]:
    """Easy-to-learn documents: counting sequences."""
    return [[(k + i) % 50 for i in range(120)] for k in range(count)]


def test_warmup_then_cosine() -> None:
    config = TrainConfig(
        learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1, decay="cosine", cooldown_frac=1.0
    )
    assert learning_rate_at(0, config, 110) == pytest.approx(1e-4)
    assert learning_rate_at(4, config, 110) == pytest.approx(5e-4)
    assert learning_rate_at(9, config, 110) == pytest.approx(1e-3)  # warmup ends at the peak
    assert learning_rate_at(10, config, 110) == pytest.approx(1e-3)
    assert learning_rate_at(60, config, 110) == pytest.approx(0.55e-3)  # halfway: mean
    assert learning_rate_at(110, config, 110) == pytest.approx(1e-4)  # floor at the end
    rates = [learning_rate_at(s, config, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # time-based progress replaces the step position
    assert learning_rate_at(50, config, None, progress=0.5) == pytest.approx(0.55e-3)


def test_weight_decay_only_on_matrices() -> None:
    model = tiny_model()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["params"]
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["params"]
    counted = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert counted == sum(p.numel() for p in model.parameters())


def test_gradient_accumulation_equals_one_big_batch() -> None:
    stream = [i % 50 for i in range(400)]
    big = prepare_training_data(stream, batch_size=4, seq_len=16, shuffle=False)[:1]
    small = [(x[i : i + 1], y[i : i + 1]) for x, y in big for i in range(4)]
    one = tiny_model()
    four = tiny_model()
    settings = dict(max_steps=1, learning_rate=1e-2, warmup_steps=0, **QUIET)
    train(one, big, **settings)
    train(four, small, grad_accum_steps=4, **settings)
    for a, b in zip(one.parameters(), four.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # and it did move the weights
    assert not torch.allclose(next(tiny_model().parameters()), next(one.parameters()))


def test_loss_decreases_and_logs_are_written(tmp_path: Path) -> None:
    batches = prepare_training_data(pattern_docs(), batch_size=8, seq_len=16, eot_id=99)
    result = train(
        tiny_model(),
        batches,
        val_data=batches[:2],
        tokenizer=FakeTokenizer(),
        max_steps=60,
        learning_rate=5e-3,
        warmup_steps=5,
        eval_every=30,
        log_every=10,
        out_dir=str(tmp_path / "run"),
        **QUIET,
    )
    assert result.steps == 60 and len(result.losses) == 60
    assert sum(result.losses[-5:]) / 5 < 0.6 * sum(result.losses[:5]) / 5
    final = result.final_eval
    assert final is not None and final.bits_per_byte is not None
    records = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "val_loss" in r] == [30, 60]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 10, 20, 30, 40, 50, 60]
    assert (tmp_path / "run/loss.png").stat().st_size > 1000
    assert (tmp_path / "run/checkpoint/model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run/checkpoint/model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert "lm_head.weight" not in stored and "token_embedding.weight" in stored  # tied: once
    assert "val loss" in result.summary()


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16, eot_id=99)
    settings = dict(max_steps=20, learning_rate=3e-3, warmup_steps=4, log_every=1, **QUIET)
    straight = train(tiny_model(dropout=0.1), batches, out_dir=str(tmp_path / "a"), **settings)
    first = train(
        tiny_model(dropout=0.1), batches, out_dir=str(tmp_path / "b"), stop_at_step=10, **settings
    )
    assert first.steps == 10
    resumed_model = tiny_model(dropout=0.1, seed=123)  # weights come from the checkpoint
    resumed = train(
        resumed_model,
        batches,
        out_dir=str(tmp_path / "b"),
        resume_from=str(tmp_path / "b"),
        **settings,
    )
    assert resumed.start_step == 10 and resumed.steps == 20
    assert first.losses == pytest.approx(straight.losses[:10], abs=1e-6)
    assert resumed.losses == pytest.approx(straight.losses[10:], abs=1e-6)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 21))  # no duplicates after resuming


def test_train_on_token_dataset_reports_bits_per_byte(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(40, low=40, high=80))
    dataset = TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer())
    result = train(
        tiny_model(),
        dataset,
        batch_size=8,
        seq_len=16,
        epochs=1,
        val_fraction=0.2,
        learning_rate=3e-3,
        warmup_steps=2,
        **QUIET,
    )
    assert result.steps == dataset.split(0.2)[0].steps_per_epoch(16, 8)
    final = result.final_eval
    assert final is not None and final.bits_per_byte is not None and final.bits_per_byte > 0


def test_default_validation_split_holds_what_validation_reads(tmp_path: Path) -> None:
    # 200 documents of 20-39 tokens: 10% would be ~590 tokens; 2 batches of 4 x 16 read 129
    write_token_file(tmp_path / "t.bin", make_docs(200, low=20, high=40))
    dataset = TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer())
    config = TrainConfig(batch_size=4, seq_len=16, eval_batches=2)
    reads = 2 * 4 * 16 + 1
    assert config.validation_fraction(dataset.num_tokens) == pytest.approx(
        reads / dataset.num_tokens
    )
    result = train(tiny_model(), dataset, config, max_steps=2, learning_rate=3e-3, **QUIET)
    final = result.final_eval
    assert final is not None and final.tokens == 2 * 4 * 16  # every window it asked for
    train_split, val_split = dataset.split(config.validation_fraction(dataset.num_tokens))
    assert reads <= len(val_split) < reads + 40  # whole documents, one at most past the need
    assert len(train_split) > 0.9 * dataset.num_tokens
    # capped at 10% when validation would read more; an explicit fraction is kept
    hungry = TrainConfig(batch_size=64, seq_len=16, eval_batches=20)
    assert hungry.validation_fraction(dataset.num_tokens) == pytest.approx(0.1)
    assert TrainConfig(val_fraction=0.3).validation_fraction(10) == 0.3
    with pytest.raises(ValueError, match="val_fraction"):
        train(tiny_model(), dataset, val_fraction=1.0, **QUIET)


def test_bad_config_is_rejected() -> None:
    batches = prepare_training_data(pattern_docs(2), batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="optimizer"):
        train(tiny_model(), batches, optimizer="lion", **QUIET)
    with pytest.raises(ValueError, match="learning_rate"):
        train(tiny_model(), batches, learning_rate=-1.0, **QUIET)


class Uniform(nn.Module):
    """Predicts every token with equal probability: loss is exactly ln(vocab)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab) + self.anchor


def test_evaluate_bits_per_byte_formula() -> None:
    batches = prepare_training_data(list(range(200)), batch_size=4, seq_len=10)
    tokens = sum(t.numel() for _, t in batches)
    result = evaluate(Uniform(256), batches, num_bytes=3 * tokens)
    assert result.loss == pytest.approx(math.log(256))
    assert result.perplexity == pytest.approx(256)
    assert result.tokens == tokens
    # total nats / (ln 2 * bytes) = tokens * 8 ln 2 / (ln 2 * 3 tokens) = 8/3
    assert result.bits_per_byte == pytest.approx(8 / 3)
    assert evaluate(Uniform(256), batches).bits_per_byte is None


class StepClock:
    """Stands in for the trainer's clock: time moves one second per forward pass and not
    otherwise, so a budget ends the run after a known number of steps on any machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def tick(self, *_: object) -> None:
        self.now += 1.0

    def read(self) -> float:
        return self.now


@pytest.mark.parametrize("max_steps", [None, 100])
def test_time_budget_stops_the_run(monkeypatch, max_steps) -> None:
    train_module = importlib.import_module("lmrs.training.trainer")
    clock = StepClock()
    fake_time = SimpleNamespace(perf_counter=clock.read, monotonic=clock.read, time=clock.read)
    monkeypatch.setattr(train_module, "time", fake_time)
    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16)
    model = tiny_model()
    model.register_forward_pre_hook(clock.tick)
    passes: list[bool] = []
    model.register_forward_hook(lambda *_: passes.append(model.training))
    result = train(model, batches, time_budget_s=3.5, max_steps=max_steps, warmup_steps=1, **QUIET)
    # checked before each step: 0, 1, 2, 3 s go on, 4 s >= 3.5 s stops; with a step count
    # set, the budget still ends the run long before it
    assert result.steps == 4
    assert len(result.losses) == 4
    assert passes.count(True) == 4  # no training forward pass after the budget ran out


def test_bfloat16_autocast_trains_as_well_as_float32_on_cpu() -> None:
    batches = prepare_training_data(pattern_docs(), batch_size=8, seq_len=16, eot_id=99)
    finals = {}
    for dtype in ("float32", "bfloat16"):
        model = tiny_model()
        settings = {**QUIET, "dtype": dtype}
        result = train(model, batches, max_steps=60, learning_rate=5e-3, **settings)
        assert result.losses[-1] < 0.5 * result.losses[0]
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
        finals[dtype] = result.losses[-1]
    assert finals["bfloat16"] != finals["float32"]  # it did run in another precision
    assert finals["bfloat16"] == pytest.approx(finals["float32"], rel=0.1)


def test_auto_precision_autocasts_only_where_bfloat16_is_native(monkeypatch) -> None:
    train_module = importlib.import_module("lmrs.training.trainer")
    precision = importlib.import_module("lmrs.precision")
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        with train_module.autocast_context(cpu, "auto")():
            assert torch.is_autocast_enabled("cpu") == native
    with train_module.autocast_context(cpu, "float32")():
        assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------------------------
# Evaluation across processes, compile warm-up, resume on other devices, lmrs eval
# ---------------------------------------------------------------------------------------


def _windows(batches: list) -> list[tuple[int, ...]]:
    """The (input row, target row) pairs that count, as tuples, in order."""
    rows = []
    for inputs, targets in batches:
        for x, y in zip(inputs.tolist(), targets.tolist()):
            if y[0] != -100:
                rows.append((*x, *y))
    return rows


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_each_rank_evaluates_its_training_micro_batch_and_all_windows_once(
    tmp_path: Path, world_size: int
) -> None:
    from lmrs.distributed import DistContext
    from lmrs.training.trainer import _val_batches

    write_token_file(tmp_path / "t.bin", make_docs(40, low=40, high=80))
    split = TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer()).full()
    config = TrainConfig(batch_size=48, grad_accum_steps=2, seq_len=8, eval_batches=3)
    single = _val_batches(split, config, DistContext())
    assert [len(x) for x, _ in single] == [24, 24, 24]  # batch_size // grad_accum, 3 batches
    micro = -(-48 // (2 * world_size))
    shares = [
        _val_batches(split, config, DistContext(rank=r, world_size=world_size, enabled=True))
        for r in range(world_size)
    ]
    # the same number of forward passes everywhere, each the size of a training micro-batch
    assert len({len(share) for share in shares}) == 1
    assert all(tuple(x.shape) == (micro, 8) for share in shares for x, _ in share)
    # together: every window of the single-process evaluation, once
    assert [w for share in shares for w in _windows(share)] == _windows(single)


def test_validation_loss_does_not_depend_on_how_the_windows_are_split(tmp_path: Path) -> None:
    from lmrs.distributed import DistContext
    from lmrs.training.evaluation import EvalResult, evaluation_sums
    from lmrs.training.trainer import _val_batches

    write_token_file(tmp_path / "t.bin", make_docs(40, low=40, high=80))
    dataset = TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer())
    split = dataset.full()
    config = TrainConfig(batch_size=5, seq_len=8, eval_batches=3)  # 15 windows
    model = tiny_model()

    def loss(world_size: int) -> tuple[float, float]:
        sums = [
            evaluation_sums(
                model,
                _val_batches(
                    split, config, DistContext(rank=r, world_size=world_size, enabled=True)
                ),
                token_bytes=dataset.token_bytes,
            )
            for r in range(world_size)
        ]
        total = sums[0]
        for more in sums[1:]:
            total = total + more
        result = EvalResult.from_sums(total.nats, total.tokens, total.bytes)
        assert result.tokens == 15 * 8
        return result.loss, result.bits_per_byte or 0.0

    reference = loss(1)
    for world_size in (2, 4, 7):
        assert loss(world_size) == pytest.approx(reference, abs=1e-6)


def test_compile_time_is_kept_out_of_tokens_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    train_module = importlib.import_module("lmrs.training.trainer")
    clock = StepClock()
    fake_time = SimpleNamespace(perf_counter=clock.read, monotonic=clock.read, time=clock.read)
    monkeypatch.setattr(train_module, "time", fake_time)
    compiled: list[object] = []

    def fake_compile(fn: object, *args: object, **kwargs: object) -> object:
        compiled.append(getattr(fn, "__self__", fn))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16)
    model = tiny_model()
    forwards: list[int] = []

    def tick(*_: object) -> None:
        # the first two training forward passes compile: 100 s each; then 1 s per step
        forwards.append(1)
        clock.now += 100.0 if len(forwards) <= 2 else 1.0

    model.register_forward_pre_hook(tick)
    result = train(model, batches, max_steps=6, warmup_steps=1, compile=True, **QUIET)
    assert compiled == [model]  # the bare model itself, not a bound method of a wrapper
    assert result.warmup_s == pytest.approx(200.0)
    assert result.tokens_per_s == pytest.approx(4 * 16 / 1.0)  # steady: one step per second
    assert "compiling" in result.summary()
    assert model._compiled_call_impl is None  # the caller's model runs eagerly again


def test_resume_says_when_cuda_random_states_cannot_be_restored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmrs.checkpoint.store import encode_rng_state
    from lmrs.distributed import DistContext
    from lmrs.training.trainer import _restore_rng

    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state_all", lambda states: restored.append(len(states))
    )
    cpu_state = torch.get_rng_state()
    one = encode_rng_state(cpu_state)
    _restore_rng({"torch": one, "cuda": [one]}, DistContext())  # saved with 1 GPU, 2 visible
    err = capsys.readouterr().err
    assert "CUDA random states for 1 device(s) and 2 are visible" in err
    assert restored == []
    _restore_rng({"torch": one, "cuda": [one, one]}, DistContext())
    assert restored == [2] and capsys.readouterr().err == ""
    _restore_rng({"torch": one, "cuda": [one]}, DistContext(rank=1, is_main=False))
    assert capsys.readouterr().err == ""  # one rank says it, not every rank


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lmrs_eval_reports_the_loss_training_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    from click.testing import CliRunner

    from lmrs import Tokenizer
    from lmrs.cli.main import cli

    corpus, held_out = tmp_path / "corpus", tmp_path / "held-out"
    for folder, count in ((corpus, 8), (held_out, 3)):
        folder.mkdir()
        for i in range(count):
            text = f"document {i} of {folder.name}: " + "to be or not to be, " * (8 + i)
            (folder / f"{i}.txt").write_text(text)
    tokenizer = Tokenizer.train(corpus, 280, show_progress=False)
    tokenizer.encode_files(corpus, str(tmp_path / "train.bin"), show_progress=False)
    tokenizer.encode_files(held_out, str(tmp_path / "val.bin"), show_progress=False)
    model = create_small_model(tokenizer.vocab_size, max_seq_len=32, embed_dim=32, num_layers=1)
    result = train(
        model,
        TokenDataset(tmp_path / "train.bin", tokenizer),
        val_data=TokenDataset(tmp_path / "val.bin", tokenizer).full(),
        tokenizer=tokenizer,
        batch_size=4,
        seq_len=16,
        max_steps=3,
        eval_batches=3,
        out_dir=str(tmp_path / "run"),
        show_progress=False,
        device="cpu",
        dtype=dtype,
    )
    trained = result.final_eval
    assert trained is not None
    reported: list[object] = []
    evaluate_module = importlib.import_module("lmrs.training.evaluation")
    real_evaluate = evaluate_module.evaluate

    def spy(*args: object, **kwargs: object) -> object:
        reported.append(real_evaluate(*args, **kwargs))  # type: ignore[arg-type]
        return reported[-1]

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--tokens", str(tmp_path / "val.bin")]
    args += ["--batch-size", "4", "--max-batches", "3", "--device", "cpu"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    (evaluated,) = reported
    # the same windows under the same autocast (the checkpoint's dtype): the same numbers
    assert evaluated.tokens == trained.tokens  # type: ignore[attr-defined]
    assert evaluated.loss == pytest.approx(trained.loss, abs=1e-6)  # type: ignore[attr-defined]
    assert evaluated.bits_per_byte == pytest.approx(trained.bits_per_byte, abs=1e-6)  # type: ignore[attr-defined]


def test_a_resume_drops_metrics_lines_that_are_not_records(tmp_path: Path) -> None:
    """metrics.jsonl cut back to the resumed step: a line nested too deeply, not an object,
    bad UTF-8 or cut short by a kill is dropped, never a traceback."""
    from lmrs.training.trainer import truncate_metrics

    good = [json.dumps({"step": s, "train_loss": 1.0}).encode() + b"\n" for s in (1, 2, 3)]
    bad = [b"[" * 100_000 + b"]" * 100_000 + b"\n", b"[1, 2]\n", b'{"step": "\xff"}\n']
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(good[0] + bad[0] + good[1] + bad[1] + bad[2] + good[2] + b'{"step": 4, "tr')
    truncate_metrics(path, 2)
    assert path.read_bytes() == good[0] + good[1]
