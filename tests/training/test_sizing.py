"""sizing.py: the compute-optimal rule (pure, given throughputs), the measuring probe on tiny
shapes, the decision passed to every rank, and `lmrs train --time-budget` with no --size."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmrs.distributed import DistContext
from lmrs.model.gpt import create_model
from lmrs.options import PRESETS, TrainConfig
from lmrs.training import sizing
from lmrs.training.sizing import (
    Measurement,
    Shape,
    choose_shape,
    measure_shape,
    model_builder,
    non_embedding_parameters,
    size_for_budget,
    sized_run,
)

A = Shape("a", 32, 2, 1, 64, 4, 16)
B = Shape("b", 48, 2, 2, 96, 4, 16)
C = Shape("c", 64, 2, 2, 128, 8, 32)
TINY_LADDER = (A, B, C)
OPTIONS = {"dropout_rate": 0.0}
QUIET = dict(device="cpu", dtype="float32", show_progress=False)


def test_rule_picks_the_shape_nearest_the_target_tokens_per_parameter() -> None:
    measured = [
        Measurement(A, params=1_000, tokens_per_s=1_000.0),  # 100 s: 100 tokens/param
        Measurement(B, params=10_000, tokens_per_s=2_500.0),  # 25 tokens/param
        Measurement(C, params=100_000, tokens_per_s=1_000.0),  # 1 token/param
    ]
    decision = choose_shape(measured, train_seconds=100.0, tokens_per_param=20.0)
    assert decision.shape == B
    assert [row.tokens_per_param for row in decision.rows] == [100.0, 25.0, 1.0]
    # the same throughputs with ten times the time: the largest is now nearest 20
    assert choose_shape(measured, train_seconds=1000.0).shape == C
    # and a target of 100 prefers the smallest
    assert choose_shape(measured, 100.0, tokens_per_param=100.0).shape == A


def test_rule_compares_on_a_log_scale_and_breaks_ties_towards_the_larger_model() -> None:
    # 40 and 10 tokens/param are equally far from 20 (a factor of 2 each way)
    measured = [Measurement(A, 1_000, 400.0), Measurement(B, 4_000, 400.0)]
    decision = choose_shape(measured, train_seconds=100.0, tokens_per_param=20.0)
    assert [r.tokens_per_param for r in decision.rows] == [40.0, 10.0]
    assert decision.shape == B
    # 45 vs 11.25: 45 is nearer on a log scale (2.25x) than 11.25 (1.78x)? no: 1.78 < 2.25
    measured = [Measurement(A, 1_000, 450.0), Measurement(B, 4_000, 450.0)]
    assert choose_shape(measured, 100.0, tokens_per_param=20.0).shape == B
    measured = [Measurement(A, 1_000, 300.0), Measurement(B, 4_000, 300.0)]  # 30 vs 7.5
    assert choose_shape(measured, 100.0, tokens_per_param=20.0).shape == A


def test_rule_never_picks_a_shape_that_did_not_fit_and_refuses_when_nothing_did() -> None:
    measured = [Measurement(A, 1_000, 100.0), Measurement(B, 20_000, 0.0, fits=False)]
    decision = choose_shape(measured, train_seconds=100.0)  # A: 10 tokens/param
    assert decision.shape == A
    assert "does not fit" in decision.lines()[2]
    with pytest.raises(ValueError, match="no candidate"):
        choose_shape([Measurement(A, 1_000, 0.0, fits=False)], 100.0)
    with pytest.raises(ValueError, match="no time left"):
        choose_shape(measured, train_seconds=0.0)


def test_decision_lines_say_what_each_candidate_would_reach_and_the_choice() -> None:
    measured = [Measurement(A, 2_000_000, 40_000.0), Measurement(B, 8_000_000, 12_000.0)]
    decision = choose_shape(measured, train_seconds=600.0, probe_seconds=7.5)
    lines = decision.lines()
    assert len(lines) == 2 + len(measured)
    assert "7.5 s measuring (counted against the budget)" in lines[0]
    assert "600 s left to train" in lines[0]
    assert "2.00M params" in lines[1] and "40,000 tokens/s" in lines[1]
    assert "24.0M tokens" in lines[1] and "12.0 tokens/param" in lines[1]
    assert lines[-1].startswith("sizing: chose a (12.0 tokens/param")


def test_non_embedding_parameters_leave_out_tables_and_head() -> None:
    for tie in (True, False):
        model = create_model(300, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2,
                             ff_dim=64, tie_weights=tie)  # fmt: skip
        blocks = sum(p.numel() for p in model.blocks.parameters())
        expected = sum(p.numel() for p in model.parameters()) - sum(
            m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
        )
        if not tie:
            expected -= model.lm_head.weight.numel()
        assert non_embedding_parameters(model) == expected
        assert blocks <= expected < blocks + 1_000  # the blocks and a final norm


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_ladder_grows_and_its_named_rungs_are_the_presets(arch: str) -> None:
    # measuring stops at the first shape below the target, which is only sound if every
    # later shape is larger; "small" and "full" must stay what --size small|full builds
    counts = []
    for shape in sizing.LADDER:
        with torch.device("meta"):
            model = create_model(5_000, arch=arch, **shape.model_fields())
        counts.append(non_embedding_parameters(model))
        assert shape.embed_dim % shape.num_heads == 0, shape.name
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    names = [shape.name for shape in sizing.LADDER]
    assert len(set(names)) == len(names)
    for name, preset in PRESETS.items():
        shape = next(s for s in sizing.LADDER if s.name == name)
        assert {k: shape.model_fields()[k] for k in preset} == preset


def test_measuring_trains_the_real_model_and_reports_its_throughput() -> None:
    config = TrainConfig(optimizer="muon", **QUIET)
    built: list[Shape] = []

    def build(shape: Shape) -> torch.nn.Module:
        built.append(shape)
        return model_builder(300, OPTIONS)(shape)

    before = build(A).state_dict()
    measured = measure_shape(build, A, config, torch.device("cpu"), seconds=0.05,
                             vocab_size=300, world_size=1)  # fmt: skip
    assert measured.shape == A and measured.fits
    assert measured.params == non_embedding_parameters(build(A))
    assert measured.tokens_per_s > 0
    assert built == [A, A, A]
    assert all(torch.equal(v, build(A).state_dict()[k]) for k, v in before.items())


def test_size_for_budget_measures_smallest_first_and_charges_the_probe() -> None:
    config = TrainConfig(time_budget_s=30.0, **QUIET)
    seen: list[str] = []
    decision = size_for_budget(
        model_builder(300, OPTIONS), config, torch.device("cpu"), vocab_size=300,
        candidates=TINY_LADDER, seconds_per_shape=0.02, log=seen.append,
    )  # fmt: skip
    names = [row.measurement.shape.name for row in decision.rows]
    assert names == ["a", "b", "c"][: len(names)] and names[0] == "a"
    assert len(seen) == len(names)
    assert decision.shape.name in names
    assert 0 < decision.probe_seconds and decision.train_seconds == pytest.approx(
        30.0 - decision.probe_seconds
    )
    best = min(
        decision.rows, key=lambda r: abs(math.log(r.tokens_per_param / sizing.TOKENS_PER_PARAM))
    )
    assert decision.shape == best.measurement.shape
    # a shape already below the target stops the measuring: larger ones, slower and bigger,
    # could only be further below it, so nothing larger is tried
    stopped = size_for_budget(
        model_builder(300, OPTIONS), config, torch.device("cpu"), vocab_size=300,
        candidates=TINY_LADDER, seconds_per_shape=0.02, tokens_per_param=1e12,
    )  # fmt: skip
    assert [row.measurement.shape for row in stopped.rows] == [A]


def test_sized_run_builds_the_choice_with_explicit_batch_and_length_winning() -> None:
    config = TrainConfig(time_budget_s=20.0, batch_size=99, seq_len=99, **QUIET)
    lines: list[str] = []
    model, sized, decision = sized_run(
        model_builder(300, OPTIONS), config, DistContext(), vocab_size=300,
        candidates=(A,), seconds_per_shape=0.02, log=lines.append,
    )  # fmt: skip
    assert decision.shape == A
    assert (sized.batch_size, sized.seq_len) == (A.batch_size, A.seq_len)
    assert sized.time_budget_s == pytest.approx(decision.train_seconds) and sized.time_budget_s < 20
    assert (model.config.embed_dim, model.config.num_layers) == (A.embed_dim, A.num_layers)
    assert model.config.dropout_rate == 0.0  # the caller's options are kept
    assert lines[-1].startswith("sizing: chose a")
    model, sized, _ = sized_run(
        model_builder(300, OPTIONS), config, DistContext(), vocab_size=300,
        candidates=(A,), seconds_per_shape=0.02, batch_size=6, seq_len=24,
    )  # fmt: skip
    assert (sized.batch_size, sized.seq_len, model.config.max_seq_len) == (6, 24, 24)
    with pytest.raises(ValueError, match="whole time budget"):
        sized_run(model_builder(300, OPTIONS), replace(config, time_budget_s=1e-3),
                  DistContext(), vocab_size=300, candidates=(A,))  # fmt: skip
    with pytest.raises(ValueError, match="time budget"):
        sized_run(model_builder(300, OPTIONS), TrainConfig(**QUIET), DistContext(),
                  vocab_size=300, candidates=(A,))  # fmt: skip


def test_lmrs_train_with_a_budget_and_no_size_picks_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_cli_model import write_corpus

    from lmrs.cli.main import cli
    from lmrs.tokenizer.core import Tokenizer

    corpus = write_corpus(tmp_path / "corpus", files=3)
    Tokenizer.train(str(corpus), 300, show_progress=False).save(str(tmp_path / "tok.json"))
    monkeypatch.setattr(sizing, "LADDER", (A, B))
    monkeypatch.setattr(sizing, "PROBE_SECONDS", (0.02, 0.02))
    common = ["train", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tok.json"),
              "--eval-batches", "1", "--quiet", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(
        cli, [*common, "--time-budget", "4s", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    chosen = next(line for line in lines if line.startswith("sizing: chose "))
    name = chosen.split()[2]
    shape = next(s for s in (A, B) if s.name == name)
    assert any("counted against the budget" in line for line in lines)
    saved = json.loads((tmp_path / "run/checkpoint/model_config.json").read_text())
    assert (saved["embed_dim"], saved["num_layers"]) == (shape.embed_dim, shape.num_layers)
    train_config = json.loads((tmp_path / "run/checkpoint/train_config.json").read_text())
    assert train_config["time_budget_s"] < 4.0 and train_config["seq_len"] == shape.seq_len
    # --size forces the preset: no measuring
    forced = CliRunner().invoke(
        cli, [*common, "--time-budget", "1s", "--out", str(tmp_path / "forced"), "--size", "small"]
    )
    assert forced.exit_code == 0, forced.output
    assert "sizing:" not in forced.output
    saved = json.loads((tmp_path / "forced/checkpoint/model_config.json").read_text())
    assert saved["embed_dim"] == 128
