"""`lmrs train --log tensorboard`: event files beside metrics.jsonl with the same scalars;
`--log wandb` offline holds the same values; `--log` errors are one line; a record-file
corpus trains like a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmrs.cli.main import cli
from lmrs.errors import InputError
from lmrs.tokenizer.core import Tokenizer
from lmrs.training.metrics_sinks import SCALARS, TensorBoardSink, check_sinks, parse_log_option

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TRAIN = ["--batch-size", "4", "--seq-len", "16", "--warmup", "2", "--eval-every", "10"]
TINY = ["--eval-batches", "1", "--quiet", "--max-steps", "11"]


def write_jsonl(path: Path) -> Path:
    words = ["alpha", "beta", "gamma", "delta", "naïve", "x = 1", "return"]
    docs = [" ".join(words[(i * 3 + k) % len(words)] for k in range(40)) for i in range(30)]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    return path


def scalars_from_events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def scalars_from_jsonl(path: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key, tag in SCALARS.items():
            if key in record:
                out.setdefault(tag, []).append((record["step"], record[key]))
    return out


def test_tensorboard_events_match_metrics_jsonl(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl")
    tok = Tokenizer.train(corpus.read_text().splitlines(), 300, show_progress=False)
    tok.save(tmp_path / "tok.json")
    out = tmp_path / "run"
    args = ["train", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tok.json")]
    result = CliRunner().invoke(
        cli, [*args, "--out", str(out), "--log", "tensorboard", *TRAIN, *TINY]
    )
    assert result.exit_code == 0, result.output
    assert (out / "metrics.jsonl").is_file() and (out / "loss.png").is_file()
    # the corpus was read as records: 30 documents, each ended by <|endoftext|>
    assert json.loads((out / "tokens.bin.json").read_text())["num_documents"] == 30
    expected = scalars_from_jsonl(out / "metrics.jsonl")
    got = scalars_from_events(out / "tensorboard")
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "val/bpb"} <= set(got)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_fresh_run_replaces_old_events_and_resume_purges(tmp_path: Path) -> None:
    first = TensorBoardSink(tmp_path)
    for step in (1, 10, 20):
        first.write(step, {"train/loss": float(step)})
    first.close()
    resumed = TensorBoardSink(tmp_path)  # a resume from step 10 writes step 11 first
    resumed.write(11, {"train/loss": 11.0})
    resumed.close()
    steps = [s for s, _ in scalars_from_events(tmp_path / "tensorboard")["train/loss"]]
    assert steps == [1, 10, 11]  # step 20 of the first session purged
    fresh = TensorBoardSink(tmp_path)  # a new run (--overwrite) starts at step 1
    fresh.write(1, {"train/loss": 5.0})
    fresh.close()
    assert scalars_from_events(tmp_path / "tensorboard")["train/loss"] == [(1, 5.0)]


def test_log_option_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_log_option(["tensorboard,wandb", "tensorboard"]) == ("tensorboard", "wandb")
    assert parse_log_option(["jsonl"]) == ()
    with pytest.raises(InputError, match="--log mlflow: unknown"):
        parse_log_option(["mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(InputError, match=r"--log wandb needs the wandb package \(pip install"):
        check_sinks(["wandb"])
    result = CliRunner().invoke(
        cli, ["train", "--tokens", "x.bin", "--tokenizer", "t.json", "--out", "r", "--log", "wandb"]
    )
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("lmrs: --log wandb needs")


def test_wandb_offline_run_holds_the_metrics_jsonl_values(tmp_path: Path) -> None:
    """`--log wandb` without an API key logs offline into the run directory: every scalar
    of metrics.jsonl (tag and value as wandb's JSON writes it) reaches the run's .wandb
    file. A subprocess, so that wandb's service and hooks stay out of this process."""
    pytest.importorskip("wandb")
    corpus = write_jsonl(tmp_path / "docs.jsonl")
    tok = Tokenizer.train(corpus.read_text().splitlines(), 300, show_progress=False)
    tok.save(tmp_path / "tok.json")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "cfg"), WANDB_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_DATA_DIR=str(tmp_path / "data"))  # fmt: skip
    args = ["train", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tok.json")]
    result = subprocess.run(
        [sys.executable, "-m", "lmrs", *args, "--out", str(out), "--log", "wandb", *TRAIN, *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list((out / "wandb").rglob("*"))
    logged = files[0].read_bytes()
    expected = scalars_from_jsonl(out / "metrics.jsonl")
    assert {"train/loss", "train/lr", "val/loss", "val/bpb"} <= set(expected)
    for tag, points in expected.items():
        assert tag.encode() in logged, tag
        for step, value in points:
            assert json.dumps(value).encode() in logged, (tag, step, value)
