"""Loss curves: train and validation loss against step, from a run's metrics.jsonl."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402

from lmrs.atomic import write_atomic  # noqa: E402
from lmrs.errors import InputError, one_line  # noqa: E402

METRICS_FILE = "metrics.jsonl"


def _parse_line(raw: bytes) -> dict[str, Any]:
    """One metrics line as a JSON object; ValueError saying what is wrong with it."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg}") from e
    except ValueError as e:  # bad UTF-8, an integer too long to convert
        raise ValueError(f"not JSON: {one_line(e)}") from e
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    numbers = [key for key in ("train_loss", "val_loss", "val_bpb") if value.get(key) is not None]
    if numbers:
        numbers.append("step")
    for key in numbers:
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"{key} is not a number")
    return value


def read_metrics(path: Union[str, os.PathLike[str]]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file. A bad line is an InputError naming the file and
    the line, except a last line cut short (no newline: a run killed while writing it),
    which is skipped with a warning on stderr."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")  # the last piece: what follows the last newline
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(_parse_line(line))
        except ValueError as e:
            if number == len(lines):
                print(
                    f"lmrs: warning: {path}: line {number} is cut short ({e}; a run killed while "
                    "writing it?); skipped",
                    file=sys.stderr,
                )
                continue
            raise InputError(f"{path}: line {number}: {e}") from e
    return records


def plot_metrics(
    run_dir: Union[str, os.PathLike[str]], out_png: Union[str, os.PathLike[str], None] = None
) -> Path:
    """Draw train and val loss vs step from RUN_DIR/metrics.jsonl into a PNG; returns its path.

    ``out_png`` defaults to ``RUN_DIR/loss.png``. Raises InputError (a ValueError) when the
    run has no loss records.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        raise InputError(f"{run_dir / METRICS_FILE}: no loss records to plot")
    out = Path(out_png) if out_png is not None else run_dir / "loss.png"

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        axes.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.2)
    if val:
        axes.plot(*zip(*val), label="val loss", color="tab:orange", marker="o", markersize=3)
    last_bpb: Optional[float] = next(
        (r["val_bpb"] for r in reversed(records) if r.get("val_bpb") is not None), None
    )
    title = run_dir.name
    if last_bpb is not None:
        title += f"  (val {last_bpb:.3f} bits per byte)"
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()

    out.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    try:
        figure.savefig(image, format="png")
    finally:
        plt.close(figure)
    write_atomic(out, image.getvalue(), mode=0o644)  # a plot is for sharing: world-readable
    return out
