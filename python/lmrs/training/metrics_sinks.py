"""Where training metrics go besides ``OUT/metrics.jsonl``: TensorBoard and Weights & Biases.

The trainer writes each record (a dict with "step" and train or validation fields) to its
``MetricsLog``; :func:`attach` wraps that log so every record also reaches the sinks
named in ``TrainConfig.log_to``. A sink maps the record's fields to scalar names
(``train/loss``, ``val/bpb``, ...: the same for every sink) and ignores the fields it
does not know. Only rank 0 writes (the trainer passes ``out_dir=None`` elsewhere).

- ``tensorboard``: event files in ``OUT/tensorboard/`` via
  ``torch.utils.tensorboard.SummaryWriter``, flushed after each record (a crash loses
  nothing written). A fresh run removes earlier event files there; a resumed run purges
  the events after its first step, so the curves match ``metrics.jsonl``.
- ``wandb``: ``wandb.init(project="lmrs", dir=OUT, name=OUT's name)`` then ``wandb.log``;
  offline when ``WANDB_MODE=offline`` (wandb's own switch) or when no API key is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Protocol

from lmrs.errors import InputError
from lmrs.options import LOG_SINKS

__all__ = ["SINKS", "SCALARS", "MetricSink", "attach", "check_sinks", "parse_log_option"]

SINKS = LOG_SINKS
TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl field -> scalar name in every sink
SCALARS = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "tokens_per_s": "train/tokens_per_s",
    "grad_norm": "train/grad_norm",
    "val_loss": "val/loss",
    "val_perplexity": "val/perplexity",
    "val_bpb": "val/bpb",
}


class MetricSink(Protocol):
    def write(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class _Log(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...


def parse_log_option(values: Sequence[str]) -> tuple[str, ...]:
    """``--log tensorboard --log wandb`` or ``--log tensorboard,wandb`` → the sink names
    (in order, once each); "jsonl" (the default file, always written) is accepted and
    dropped. Unknown names raise InputError."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name or name == "jsonl":
                continue
            if name not in SINKS:
                raise InputError(f"--log {name}: unknown (choose from jsonl, {', '.join(SINKS)})")
            if name not in names:
                names.append(name)
    return tuple(names)


def check_sinks(names: Sequence[str]) -> None:
    """Fails before training starts when a sink's package is missing."""
    for name in names:
        if name == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise InputError(
                    "--log tensorboard needs the tensorboard package (pip install tensorboard)"
                ) from None
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise InputError(
                    "--log wandb needs the wandb package (pip install wandb)"
                ) from None
        else:
            raise InputError(f"unknown metrics sink {name!r} (choose from {', '.join(SINKS)})")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, name in SCALARS.items():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TensorBoardSink:
    """Scalars into event files under ``OUT/tensorboard``."""

    def __init__(self, out_dir: Path) -> None:
        self.log_dir = out_dir / TENSORBOARD_DIR
        self._writer: Any = None

    def _open(self, first_step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if first_step <= 1 and self.log_dir.is_dir():
            # a fresh run (or --overwrite): the old run's curves must not mix with it
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step drops the events a resumed run is about to write again
        purge = first_step if first_step > 1 else None
        return SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = self._open(step)
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """Scalars logged to a Weights & Biases run (offline without an API key)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._run: Any = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._run is None:
            import wandb

            offline = not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "lmrs"),
                name=self.out_dir.name,
                dir=str(self.out_dir),
                mode="offline" if offline else None,
            )
        self._run.log(scalars, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class SinkedLog:
    """A ``MetricsLog`` whose records also go to the sinks."""

    def __init__(self, log: _Log, sinks: list[MetricSink]) -> None:
        self.log = log
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        step = record.get("step")
        scalars = _scalars(record)
        if isinstance(step, int) and scalars:
            for sink in self.sinks:
                sink.write(step, scalars)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __del__(self) -> None:
        self.close()


def attach(log: _Log, names: Sequence[str], out_dir: Optional[Path]) -> _Log:
    """`log` itself when there is nothing to add (no sinks, no run directory, not rank 0),
    else a log that also writes to each sink in `names`."""
    if not names or out_dir is None:
        return log
    check_sinks(names)
    makers = {"tensorboard": TensorBoardSink, "wandb": WandbSink}
    return SinkedLog(log, [makers[name](Path(out_dir)) for name in names])
