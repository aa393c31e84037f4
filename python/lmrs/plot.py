"""Loss curves: train and validation loss against step, from a run's metrics.jsonl."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402

from lmrs.atomic import write_atomic  # noqa: E402

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Union[str, os.PathLike[str]]) -> list[dict]:
    """The records of a metrics.jsonl file (a bad line raises ValueError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number} is not JSON: {e.msg}") from e
    return records


def plot_metrics(
    run_dir: Union[str, os.PathLike[str]], out_png: Union[str, os.PathLike[str], None] = None
) -> Path:
    """Draw train and val loss vs step from RUN_DIR/metrics.jsonl into a PNG; returns its path.

    ``out_png`` defaults to ``RUN_DIR/loss.png``. Raises ValueError when the run has no
    loss records.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        raise ValueError(f"{run_dir / METRICS_FILE}: no loss records to plot")
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
