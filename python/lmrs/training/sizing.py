"""Sizing a model to a time budget: measure candidate shapes on this device, pick by a rule.

``lmrs train --time-budget 10m`` without ``--size`` calls :func:`size_for_budget`. It trains
each candidate of :data:`LADDER` (smallest first) for a few seconds on random tokens — the
real model, optimizer, device and dtype: forward, backward and optimizer step — and turns
the measured tokens/s into the tokens that shape could see in the rest of the budget.

The rule (:func:`choose_shape`, pure, no timing): compute-optimal training sees about
``tokens_per_param`` tokens per parameter. Hoffmann et al. 2022 ("Chinchilla") found 20 at
large scale; measured here, on held-out Shakespeare with the default recipe and 4-minute CPU
budgets, 3 tokens per non-embedding parameter (the small shape, 2.135 bits per byte) beat 19
(tiny, 2.156) and 0.6 (medium, 2.239), so the default target is 5. Parameters
are counted without the embedding tables and the output head (Kaplan et al. 2020's
"non-embedding" count: at the vocabulary sizes lmrs trains, a 5,000 x 128 table would
otherwise outweigh the network). Each candidate gets ``ratio = tokens reachable / params``
and the one whose ratio is nearest the target on a log scale wins (twice too many tokens is
as far off as half too few); on a tie the larger model wins. A model far too big for the
budget would see a few tokens per parameter, one far too small would repeat a tiny network
over many more tokens than it can use.

The probe time counts against the budget: the run gets what is left. Measuring stops early
once a candidate reaches fewer tokens per parameter than the target (larger shapes, slower
and bigger, would only be further below it, so none of them could be nearer), when the
probe's own time allowance is spent, or when a shape does not fit in the device's memory.

Under torchrun rank 0 alone measures (one process's tokens/s times the number of processes
is the job's, communication not counted) and every rank receives its decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch import nn

from lmrs.options import PRESETS, TOKENS_PER_PARAM

PROBE_FRACTION = 0.05  # at most this share of the budget goes to measuring
PROBE_SECONDS = (1.0, 5.0)  # each candidate is timed for budget/100 seconds within this range
MAX_PROBE_SECONDS = 60.0


@dataclass(frozen=True)
class Shape:
    """One candidate: the model's width and depth, and the batch it trains with."""

    name: str
    embed_dim: int
    num_heads: int
    num_layers: int
    ff_dim: int
    batch_size: int  # global batch, sequences per optimizer step
    seq_len: int

    def model_fields(self) -> dict[str, int]:
        """The :class:`lmrs.model.ModelConfig` fields this shape sets."""
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "ff_dim": self.ff_dim,
            "max_seq_len": self.seq_len,
        }


def _preset_shape(name: str, batch_size: int, seq_len: int) -> Shape:
    """The size preset ``name`` of lmrs.options.PRESETS as a rung, with its batch."""
    p = PRESETS[name]
    return Shape(name, p["embed_dim"], p["num_heads"], p["num_layers"], p["ff_dim"],
                 batch_size, seq_len)  # fmt: skip


# smallest to largest; "small" and "full" are the presets of lmrs.options.PRESETS; widths
# grow with depth (head size 32 to 64), batches and contexts with the model, as in GPT-2/3;
# small-4's FFN is 3x its width, not 4x: at 10 minutes on 2 CPU cores it is better on code
# and equal on prose, with 8-10% more tokens/s (docs/recipe.md, sitting 6 and the last section)
LADDER: tuple[Shape, ...] = (
    Shape("tiny", 64, 2, 2, 256, 16, 128),
    _preset_shape("small", 16, 128),
    Shape("small-4", 128, 4, 4, 384, 32, 128),
    Shape("medium", 192, 6, 4, 768, 16, 256),
    _preset_shape("full", 32, 256),
    Shape("large", 384, 6, 8, 1536, 32, 512),
    Shape("xl", 512, 8, 10, 2048, 32, 512),
    Shape("gpt2", 768, 12, 12, 3072, 64, 1024),
    Shape("gpt2-medium", 1024, 16, 24, 4096, 64, 1024),
)


@dataclass(frozen=True)
class Measurement:
    """What the probe saw for one shape: non-embedding parameters, tokens per second of the
    whole job, and whether it fit in memory at all."""

    shape: Shape
    params: int
    tokens_per_s: float
    fits: bool = True


@dataclass(frozen=True)
class Row:
    """One candidate's line in the decision."""

    measurement: Measurement
    tokens: float  # tokens reachable in the training time
    tokens_per_param: float

    def describe(self) -> str:
        m = self.measurement
        shape = m.shape
        head = (
            f"{shape.name:>12}: {shape.num_layers} layers x {shape.embed_dim} wide, batch "
            f"{shape.batch_size} x {shape.seq_len}, {m.params / 1e6:.2f}M params"
        )
        if not m.fits:
            return head + ", does not fit in memory"
        return (
            f"{head}, {m.tokens_per_s:,.0f} tokens/s -> {self.tokens / 1e6:.1f}M tokens, "
            f"{self.tokens_per_param:.1f} tokens/param"
        )


@dataclass(frozen=True)
class Decision:
    """The chosen shape and why: every measured candidate, the time the run has left."""

    shape: Shape
    rows: tuple[Row, ...]
    train_seconds: float
    tokens_per_param: float
    probe_seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"sizing: {self.probe_seconds:.1f} s measuring (counted against the budget), "
            f"{self.train_seconds:.0f} s left to train; target {self.tokens_per_param:g} "
            "tokens per non-embedding parameter"
        ]
        out += ["  " + row.describe() for row in self.rows]
        chosen = next(r for r in self.rows if r.measurement.shape == self.shape)
        out.append(
            f"sizing: chose {self.shape.name} ({chosen.tokens_per_param:.1f} tokens/param, "
            f"the nearest to {self.tokens_per_param:g}); --size small|full forces a preset"
        )
        return out


def choose_shape(
    measurements: Sequence[Measurement],
    train_seconds: float,
    tokens_per_param: float = TOKENS_PER_PARAM,
    probe_seconds: float = 0.0,
) -> Decision:
    """The rule: the shape whose reachable tokens per parameter is nearest the target (log
    scale), the larger on a tie. Shapes that did not fit are listed, never chosen."""
    if train_seconds <= 0:
        raise ValueError(f"no time left to train ({train_seconds:.1f} s)")
    if tokens_per_param <= 0:
        raise ValueError(f"tokens_per_param must be > 0, got {tokens_per_param}")
    rows = []
    for m in measurements:
        tokens = m.tokens_per_s * train_seconds if m.fits else 0.0
        rows.append(Row(m, tokens, tokens / max(m.params, 1)))
    usable = [r for r in rows if r.measurement.fits and r.tokens > 0]
    if not usable:
        raise ValueError("no candidate shape could be measured on this device")

    def distance(row: Row) -> tuple[float, int]:
        return abs(math.log(row.tokens_per_param / tokens_per_param)), -row.measurement.params

    best = min(usable, key=distance)
    return Decision(best.measurement.shape, tuple(rows), train_seconds, tokens_per_param,
                    probe_seconds)  # fmt: skip


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside embedding tables and the output head (tied ones counted once)."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "lm_head":
            skip.update(id(p) for p in module.parameters())
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in skip and id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def measure_shape(
    build: Callable[[Shape], nn.Module],
    shape: Shape,
    config: Any,
    device: torch.device,
    *,
    seconds: float,
    vocab_size: int,
    world_size: int = 1,
) -> Measurement:
    """Train ``build(shape)`` on random tokens for about ``seconds`` (after one untimed step)
    with ``config``'s optimizer, precision and accumulation; tokens/s of the whole job.

    Each process trains ``batch_size / (world_size * grad_accum_steps)`` sequences per
    micro-step, so one process's tokens/s times ``world_size`` is the job's."""
    from lmrs.precision import autocast_context
    from lmrs.training.trainer import create_optimizer

    model = build(shape)
    params = non_embedding_parameters(model)
    accum = config.grad_accum_steps
    rows = fit_batch(shape.batch_size, world_size, accum) // (world_size * accum)
    try:
        model.to(device).train()
        optimizer = create_optimizer(model, replace(config, seq_len=shape.seq_len), device)
        autocast = autocast_context(device, config.dtype)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (rows, shape.seq_len + 1), generator=generator)
        inputs, targets = ids[:, :-1].to(device), ids[:, 1:].to(device)

        def step() -> None:
            for _ in range(accum):
                with autocast():
                    loss = model.compute_loss(inputs, targets)
                (loss / accum).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # allocations, kernel selection, lazy optimizer state: not timed
        _synchronize(device)
        steps, started = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - started < seconds:
            step()
            steps += 1
            _synchronize(device)
        elapsed = time.perf_counter() - started
    except torch.OutOfMemoryError:
        return Measurement(shape, params, 0.0, fits=False)
    finally:
        if device.type == "cuda":
            model.to("cpu")  # free the device for the next candidate and the real run
            torch.cuda.empty_cache()
    tokens = steps * accum * rows * shape.seq_len * world_size
    return Measurement(shape, params, tokens / elapsed)


def fit_batch(batch_size: int, world_size: int, accum: int) -> int:
    """``batch_size`` rounded up to a multiple of ``world_size * accum`` (each process then
    takes whole sequences per micro-step)."""
    unit = world_size * accum
    return -(-batch_size // unit) * unit


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def probe_seconds_per_shape(budget_s: float) -> float:
    low, high = PROBE_SECONDS
    return min(high, max(low, budget_s / 100))


def size_for_budget(
    build: Callable[[Shape], nn.Module],
    config: Any,
    device: torch.device,
    *,
    vocab_size: int,
    world_size: int = 1,
    candidates: Optional[Sequence[Shape]] = None,
    tokens_per_param: float = TOKENS_PER_PARAM,
    seconds_per_shape: Optional[float] = None,
    log: Callable[[str], None] = lambda line: None,
) -> Decision:
    """Measure ``candidates`` (smallest first) and choose one for ``config.time_budget_s``.

    ``build(shape)`` makes the model (the caller's architecture options, the shape's size).
    ``candidates`` default to :data:`LADDER`.
    ``log`` receives a line per measured shape as it is measured. The decision's
    ``train_seconds`` is the budget minus the time spent here."""
    budget = config.time_budget_s
    if budget is None or budget <= 0:
        raise ValueError("sizing needs a time budget (time_budget_s)")
    candidates = LADDER if candidates is None else candidates
    if not candidates:
        raise ValueError("no candidate shapes to measure")
    each = seconds_per_shape if seconds_per_shape is not None else probe_seconds_per_shape(budget)
    # bounded also in seconds: under torchrun the other ranks wait for rank 0 meanwhile
    allowance = min(budget * PROBE_FRACTION, MAX_PROBE_SECONDS)
    started = time.perf_counter()
    measured: list[Measurement] = []
    for shape in candidates:
        m = measure_shape(build, shape, config, device, seconds=each, vocab_size=vocab_size,
                          world_size=world_size)  # fmt: skip
        measured.append(m)
        spent = time.perf_counter() - started
        remaining = budget - spent
        if not m.fits:
            log(f"  {shape.name}: does not fit in memory")
            break
        reachable = m.tokens_per_s * max(remaining, 0.0) / max(m.params, 1)
        log(f"  measured {shape.name}: {m.tokens_per_s:,.0f} tokens/s, "
            f"{reachable:.1f} tokens/param")  # fmt: skip
        if reachable < tokens_per_param or spent >= allowance:  # larger: only further below
            break
    probe = time.perf_counter() - started
    if probe >= budget:
        raise ValueError(
            f"measuring shapes took the whole time budget ({probe:.1f} of {budget:g} s): "
            "give a longer budget or choose a shape with --size"
        )
    return choose_shape(measured, budget - probe, tokens_per_param, probe)


def model_builder(vocab_size: int, options: dict[str, Any]) -> Callable[[Shape], nn.Module]:
    """``build(shape)`` for :func:`size_for_budget`: an lmrs GPT of that shape with the
    other :class:`lmrs.model.ModelConfig` fields from ``options``."""
    from lmrs.model.gpt import create_model

    def build(shape: Shape) -> nn.Module:
        return create_model(vocab_size, **{**options, **shape.model_fields()})

    return build


def sized_run(
    build: Callable[[Shape], nn.Module],
    config: Any,
    ctx: Any,
    *,
    vocab_size: int,
    batch_size: Optional[int] = None,
    seq_len: Optional[int] = None,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> tuple[nn.Module, Any, Decision]:
    """Rank 0 sizes (:func:`size_for_budget`), every rank receives the decision and builds
    the chosen model; returns it, ``config`` with the chosen batch and sequence length (an
    explicit ``batch_size`` / ``seq_len`` wins) and the probe time taken off the budget, and
    the decision (its lines printed through ``log`` on rank 0)."""
    from lmrs import distributed

    decision: Optional[Decision] = None
    problem: Optional[str] = None
    if ctx.is_main:
        try:
            decision = size_for_budget(
                build, config, ctx.device, vocab_size=vocab_size,
                world_size=ctx.world_size, log=log, **kwargs,
            )  # fmt: skip
        except ValueError as error:
            problem = str(error)
    decision, problem = distributed.broadcast_object((decision, problem), ctx)
    if problem is not None or decision is None:
        raise ValueError(problem or "sizing failed")
    chosen = decision
    if ctx.is_main:
        for line in chosen.lines():
            log(line)
    shape = replace(
        chosen.shape,
        batch_size=batch_size
        or fit_batch(chosen.shape.batch_size, ctx.world_size, config.grad_accum_steps),
        seq_len=seq_len or chosen.shape.seq_len,
    )
    sized = replace(
        config,
        batch_size=shape.batch_size,
        seq_len=shape.seq_len,
        time_budget_s=chosen.train_seconds,
    )
    return build(shape), sized, chosen


__all__ = [
    "LADDER",
    "TOKENS_PER_PARAM",
    "Decision",
    "Measurement",
    "Shape",
    "choose_shape",
    "measure_shape",
    "model_builder",
    "non_embedding_parameters",
    "size_for_budget",
    "sized_run",
]
