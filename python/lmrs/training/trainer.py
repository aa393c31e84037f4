"""The training loop: optimiser, learning-rate schedule, accumulation, eval, logs, checkpoints.

``train(model, data, config)`` runs AdamW (weight decay on matrices only; or Adam, SGD, or
Muon on the hidden matrices from :mod:`lmrs.training.optim`) with linear warmup, a hold at the peak
and a decay (warmup-stable-decay by default, :func:`learning_rate_at`),
gradient clipping and accumulation, bf16 autocast where the device supports it, optional
``torch.compile``, and data parallelism across processes launched by torchrun
(:mod:`lmrs.distributed`). Rank 0 alone draws the progress bar, appends to
``OUT/metrics.jsonl``, writes ``OUT/checkpoint`` and ``OUT/loss.png``.

Every batch is a pure function of ``(seed, step)`` (see :mod:`lmrs.data`), and a checkpoint
holds the RNG states, so a resumed run continues exactly where an uninterrupted one would.

Reading order: :func:`train` sets up the process group, :func:`_train` wraps the model and
builds a :class:`Trainer` (the model and optimizer, the schedule, the data cursor, the
clocks), and :func:`_loop` is the loop itself: ``step()``, then a log line, an evaluation
or a checkpoint when one is due, then ``finish()``. A step leaves its loss (and gradient
norm) on the device; they are read back once per log line, evaluation or checkpoint, so
GPU steps are not serialised by the host, and the next step's batches are built on a
background thread (pinned memory on CUDA) while the current step runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from lmrs import distributed as dist_utils
from lmrs.atomic import write_atomic
from lmrs.checkpoint.store import (
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RUN_CHECKPOINT_NAME,
    CheckpointError,
    capture_rng_state,
    config_differences,
    load_checkpoint,
    load_model_weights,
    read_optimizer_state,
    restore_rng_state,
    save_checkpoint,
    verified_file,
)
from lmrs.data.tokens import Batch, TokenDataset, TokenSplit, micro_batch_size, token_byte_lengths
from lmrs.errors import LmrsError, one_line
from lmrs.options import TRAIN_DTYPES, TrainConfig
from lmrs.precision import autocast_context, fast_float32_matmul, uses_bf16
from lmrs.progress import tqdm
from lmrs.runlock import run_lock
from lmrs.training.cpu_threads import ThreadGovernor
from lmrs.training.evaluation import IGNORE_INDEX, EvalResult, evaluation_sums
from lmrs.training.metrics_sinks import attach as attach_sinks
from lmrs.training.optim import MuonAdamW, muon_parameter_groups, parameter_groups

DTYPES = TRAIN_DTYPES  # the name this module exported before options.py
METRICS_FILE = "metrics.jsonl"
COMPILE_WARMUP_STEPS = 2  # steps of each compiled session left out of tokens/s


@dataclass
class TrainResult:
    """What a run did; ``losses[i]`` is the training loss of step ``start_step + i + 1``."""

    steps: int
    start_step: int
    losses: list[float]
    tokens: int
    elapsed_s: float
    tokens_per_s: float
    evals: list[tuple[int, EvalResult]] = field(default_factory=list)
    out_dir: Optional[Path] = None
    checkpoint: Optional[Path] = None
    # time of the first steps left out of tokens_per_s (compilation, with config.compile)
    warmup_s: float = 0.0

    @property
    def final_eval(self) -> Optional[EvalResult]:
        return self.evals[-1][1] if self.evals else None

    def summary(self) -> str:
        text = (
            f"trained {self.steps - self.start_step} steps (to step {self.steps}, "
            f"{self.tokens:,} tokens) in {self.elapsed_s:.1f} s, {self.tokens_per_s:,.0f} tokens/s"
        )
        if self.warmup_s:
            text += f" (after {self.warmup_s:.1f} s compiling)"
        if self.losses:
            text += f"; train loss {self.losses[-1]:.4f}"
        final = self.final_eval
        if final is not None:
            text += f"; val loss {final.loss:.4f}"
            if final.bits_per_byte is not None:
                text += f", bits per byte {final.bits_per_byte:.4f}"
        return text


# ---------------------------------------------------------------------------------------
# Schedule and optimiser
# ---------------------------------------------------------------------------------------


class TrainingDiverged(LmrsError, FloatingPointError):
    """The loss stopped being a finite number; nothing is saved after that step."""


def learning_rate_at(
    step: int, config: TrainConfig, total_steps: Optional[int], progress: Optional[float] = None
) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warmup, hold, decay to a floor.

    Warmup raises the rate linearly over ``warmup_steps`` steps to ``learning_rate``. The
    rest of the run is split by ``cooldown_frac``: the rate holds at its peak for the first
    ``1 - cooldown_frac`` of it, then ``decay`` ("cosine" or "linear") takes it down to
    ``learning_rate * min_lr_ratio`` at the end. ``cooldown_frac=1`` decays over the whole
    run; smaller values (the default: linear over the last 40%) are the trapezoid /
    warmup-stable-decay schedule of modded-nanogpt and nanochat. ``progress`` (0..1), when
    given, replaces the step-based position (time-budgeted runs: the fraction of the budget
    spent, since their number of steps is not known in advance). This is the base rate;
    :func:`set_learning_rates` gives each parameter group its share of it.
    """
    peak = config.learning_rate
    floor = peak * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if progress is None:
        if total_steps is None:
            return peak
        decay_steps = max(1, total_steps - config.warmup_steps)
        progress = (step - config.warmup_steps) / decay_steps
    progress = min(max(progress, 0.0), 1.0)
    hold = 1.0 - config.cooldown_frac
    if progress <= hold:
        return peak
    progress = (progress - hold) / config.cooldown_frac
    if config.decay == "linear":
        return peak + (floor - peak) * progress
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def set_learning_rates(optimizer: Any, lr: float, config: TrainConfig) -> None:
    """Give each parameter group the base rate ``lr``, scaled by ``muon_lr / learning_rate``
    for Muon's matrices, ``embed_lr / learning_rate`` for the token embeddings and
    ``head_lr / learning_rate`` for the output head where those are set (the group's
    ``role``, :func:`lmrs.training.optim.muon_parameter_groups`), so every group follows the same
    schedule shape."""
    peaks = {"muon": config.muon_lr, "embed": config.embed_lr, "head": config.head_lr}
    for group in optimizer.param_groups:
        peak = peaks.get("muon" if group.get("use_muon") else group.get("role", ""))
        group["lr"] = lr * (peak / config.learning_rate if peak else 1.0)


def muon_momentum_at(step: int, config: TrainConfig) -> float:
    """Muon's momentum for optimizer step ``step`` (0-based): ``muon_momentum_start``
    rising linearly to ``muon_momentum`` over ``muon_momentum_warmup`` steps, then held."""
    if step >= config.muon_momentum_warmup:
        return config.muon_momentum
    share = step / config.muon_momentum_warmup
    return config.muon_momentum_start + share * (config.muon_momentum - config.muon_momentum_start)


def set_muon_momentum(optimizer: Any, momentum: float) -> None:
    """Give Muon's groups (the hidden matrices) the momentum ``momentum``."""
    for group in optimizer.param_groups:
        if group.get("use_muon"):
            group["momentum"] = momentum


def create_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, *, distributed: bool = False
) -> Any:
    """The optimizer of ``config.optimizer``. ``distributed``: the model is replicated on the
    ranks of the default process group (DDP), so Muon splits its orthogonalisation among
    them; FSDP-sharded parameters are recognised by their type whatever it says."""
    lr = config.learning_rate
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        return MuonAdamW(
            muon_parameter_groups(model, config.weight_decay),
            lr=lr,
            betas=betas,
            eps=config.eps,
            momentum=config.muon_momentum,
            distributed=distributed,
        )
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "adam":
        for group in groups:
            group["weight_decay"] = 0.0  # plain Adam: no decay (use adamw for decoupled decay)
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=config.eps, **fused)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=config.eps, **fused)


# ---------------------------------------------------------------------------------------
# Data sources: the micro-batch of (step, micro step, rank) as a pure function
# ---------------------------------------------------------------------------------------


class SplitSource:
    """Training windows from a TokenSplit (global batch sampler of lmrs.data)."""

    def __init__(self, split: TokenSplit, config: TrainConfig) -> None:
        self.split = split
        self.config = config

    def steps_per_epoch(self, world_size: int) -> int:
        return self.split.steps_per_epoch(self.config.seq_len, self.config.batch_size)

    def tokens_per_step(self, world_size: int) -> int:
        return self.config.batch_size * self.config.seq_len

    def micro_batch(self, step: int, micro: int, rank: int, world_size: int) -> Batch:
        return self.split.micro_batch(
            step,
            micro,
            seq_len=self.config.seq_len,
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            rank=rank,
            world_size=world_size,
            accum_steps=self.config.grad_accum_steps,
        )


class BatchListSource:
    """Training batches from a list (prepare_training_data); each is one micro-batch.

    One optimizer step takes ``world_size * grad_accum_steps`` consecutive batches (rank
    ``r`` micro-step ``a`` takes number ``r * A + a``); epoch 0 keeps the list's order, later
    epochs shuffle it with ``(seed, epoch)``.
    """

    def __init__(self, batches: Sequence[Batch], config: TrainConfig) -> None:
        if not batches:
            raise ValueError("no training batches given")
        self.batches = list(batches)
        self.config = config

    def steps_per_epoch(self, world_size: int) -> int:
        return max(1, len(self.batches) // (world_size * self.config.grad_accum_steps))

    def tokens_per_step(self, world_size: int) -> int:
        per_batch = self.batches[0][1].numel()
        return per_batch * world_size * self.config.grad_accum_steps

    def micro_batch(self, step: int, micro: int, rank: int, world_size: int) -> Batch:
        per_step = world_size * self.config.grad_accum_steps
        epoch, index = divmod(step, self.steps_per_epoch(world_size))
        position = (index * per_step + rank * self.config.grad_accum_steps + micro) % len(
            self.batches
        )
        if epoch > 0:
            order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.batches))
            position = int(order[position])
        return self.batches[position]


# ---------------------------------------------------------------------------------------
# Metrics log
# ---------------------------------------------------------------------------------------


def _metrics_step(line: bytes) -> Optional[float]:
    """The step of one metrics.jsonl line (0 when it has none); None for a line that is
    not a record (cut short by a kill, bad UTF-8, nested too deeply, not an object)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resumed run rewrites what came after); lines
    that are not records are dropped."""
    if not path.is_file():
        return
    kept = []
    with open(path, "rb") as f:
        for line in f:
            recorded = _metrics_step(line)
            if recorded is not None and recorded <= step:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
    write_atomic(path, b"".join(kept), mode=0o644)


class MetricsLog:
    """Appends one JSON object per line to OUT/metrics.jsonl (rank 0 only)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@dataclass
class _Run:
    """The pieces of a run shared by the helpers below."""

    config: TrainConfig
    ctx: dist_utils.DistContext
    model: nn.Module  # wrapped (DDP / FSDP) — train and eval through this
    raw_model: nn.Module
    optimizer: Any
    autocast: Callable[[], Any]
    val_batches: list[Batch]
    token_bytes: Optional[np.ndarray]
    tokenizer: Any
    out_dir: Optional[Path]
    bytes_per_token: Optional[float] = None  # approximate bpb when token bytes are unknown


def _resolve_data(
    data: Any, val_data: Any, config: TrainConfig
) -> tuple[Union[SplitSource, BatchListSource], Any]:
    if isinstance(data, TokenDataset):
        if val_data is None:
            fraction = config.validation_fraction(data.num_tokens)
            train_split, val_split = data.split(fraction, config.seed)
            return SplitSource(train_split, config), val_split
        return SplitSource(data.full(), config), val_data
    if isinstance(data, TokenSplit):
        return SplitSource(data, config), val_data
    return BatchListSource(data, config), val_data


def eval_batch_per_rank(config: TrainConfig, world_size: int) -> int:
    """Sequences each process evaluates per forward pass: its share of ``eval_batch_size``,
    by default the training micro-batch (the memory training has already shown it needs)."""
    return max(1, -(-config.eval_rows() // world_size))


def _val_batches(val: Any, config: TrainConfig, ctx: dist_utils.DistContext) -> list[Batch]:
    """This rank's share of the fixed validation windows.

    The windows are the same whatever the number of processes (``eval_batches`` batches of
    ``eval_batch_size``, by default ``batch_size // grad_accum_steps``), and together the
    ranks evaluate each exactly once, so the validation loss does not depend on the world
    size. Every rank runs the same number of forward passes (FSDP gathers parameters in
    each); where a rank's share runs short, its batches are filled with padding rows whose
    targets are ``IGNORE_INDEX`` and count for nothing.
    """
    if val is None:
        return []
    if isinstance(val, TokenDataset):
        val = val.full()
    if isinstance(val, TokenSplit):
        total = val.eval_batches(config.seq_len, config.eval_rows(), config.eval_batches)
        per_rank = eval_batch_per_rank(config, ctx.world_size)
    else:
        total = list(val)[: config.eval_batches]
        per_rank = max((len(x) for x, _ in total), default=1)
        per_rank = max(1, -(-per_rank // ctx.world_size))
    if not ctx.enabled or not total:
        return total
    return _rank_share(total, ctx.rank, ctx.world_size, per_rank)


def _rank_share(total: list[Batch], rank: int, world_size: int, per_rank: int) -> list[Batch]:
    """Rank ``rank``'s contiguous share of the rows of ``total``, in batches of ``per_rank``
    rows, as many batches on every rank (padding rows where a share runs short)."""
    rows = [(x[i], y[i]) for x, y in total for i in range(len(x))]
    share = -(-len(rows) // world_size)

    def groups(r: int) -> list[list[int]]:
        """Row indices of rank r's batches: full batches of one sequence length."""
        out: list[list[int]] = []
        for index in range(r * share, min(len(rows), (r + 1) * share)):
            same_length = bool(out) and rows[out[-1][0]][0].shape == rows[index][0].shape
            if same_length and len(out[-1]) < per_rank:
                out[-1].append(index)
            else:
                out.append([index])
        return out

    passes = max(len(groups(r)) for r in range(world_size))
    batches = []
    for indices in groups(rank) + [[]] * (passes - len(groups(rank))):
        inputs = [rows[i][0] for i in indices]
        targets = [rows[i][1] for i in indices]
        # padding repeats a real row (so the forward pass sees ordinary tokens) and
        # ignores its targets; shape stays (per_rank, seq), one compiled shape
        filler = rows[indices[0] if indices else 0]
        inputs += [filler[0]] * (per_rank - len(indices))
        targets += [torch.full_like(filler[1], IGNORE_INDEX)] * (per_rank - len(indices))
        batches.append((torch.stack(inputs), torch.stack(targets)))
    return batches


def _evaluate(run: _Run) -> Optional[EvalResult]:
    if not run.val_batches:
        return None
    with dist_utils.collective_guard(run.ctx, "evaluation"):
        sums = evaluation_sums(
            run.model,
            run.val_batches,
            token_bytes=run.token_bytes,
            device=run.ctx.device,
            autocast=run.autocast(),
        )
    nats = dist_utils.all_reduce_sum(sums.nats, run.ctx)
    tokens = int(round(dist_utils.all_reduce_sum(sums.tokens, run.ctx)))
    num_bytes = None
    if sums.bytes is not None:
        num_bytes = dist_utils.all_reduce_sum(sums.bytes, run.ctx)
    elif run.bytes_per_token:
        num_bytes = tokens * run.bytes_per_token
    return EvalResult.from_sums(nats, tokens, num_bytes)


def _save(run: _Run, state: dict[str, Any], *, last: bool = False) -> Optional[Path]:
    """Gather full state dicts (collective under FSDP) and write the checkpoint on rank 0;
    with ``checkpoint_format="sharded"`` every rank writes its part instead
    (lmrs.checkpoint.sharded), and the ``last`` save of a session also writes the whole
    model as model.safetensors."""
    if run.config.checkpoint_format == "sharded" and run.out_dir is not None:
        from lmrs.checkpoint.sharded import save_sharded

        return save_sharded(
            run.out_dir / RUN_CHECKPOINT_NAME,
            run.model,
            run.optimizer,
            run.ctx,
            state,
            run.raw_model.config if hasattr(run.raw_model, "config") else {},
            run.config,
            run.tokenizer,
            keep=run.config.keep_checkpoints,
            consolidate=last,
        )
    model_state = dist_utils.full_state_dict(run.model, run.ctx)
    optimizer_state = dist_utils.full_optimizer_state_dict(run.model, run.optimizer, run.ctx)
    path = None
    if run.ctx.is_main and run.out_dir is not None:
        path = save_checkpoint(
            run.out_dir / RUN_CHECKPOINT_NAME,
            None,
            None,
            state,
            run.raw_model.config if hasattr(run.raw_model, "config") else {},
            run.config,
            run.tokenizer,
            model_state=model_state,
            optimizer_state=optimizer_state,
            keep=run.config.keep_checkpoints,
        )
    dist_utils.barrier(run.ctx)
    return path


def _resume(run: _Run, resume_from: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """Load weights and optimizer state; returns the checkpoint's state.

    Under FSDP only rank 0 reads the weights and the optimizer state (the loaders broadcast
    them tensor by tensor and each rank keeps its shard), so no other rank ever holds them
    whole; a file rank 0 cannot read stops every rank with the same error.
    """
    checkpoint = load_checkpoint(resume_from, tokenizer=run.tokenizer)
    current = run.raw_model.config.to_dict() if hasattr(run.raw_model, "config") else {}
    differences = config_differences(checkpoint.model_config, current) if current else []
    if differences:
        raise CheckpointError(
            f"{checkpoint.path / MODEL_CONFIG_FILE}: saved for a different model: "
            + ", ".join(differences)
        )
    from lmrs.checkpoint.sharded import is_sharded, load_sharded

    if is_sharded(checkpoint.path):
        load_sharded(checkpoint.path, run.model, run.optimizer, run.ctx)
        return checkpoint.state
    sharded = run.ctx.enabled and dist_utils.is_fsdp(run.model)
    weights: dict[str, torch.Tensor] = {}
    optimizer_state: dict[str, Any] = {}
    problem: Optional[str] = None
    if run.ctx.is_main or not sharded:
        try:
            weights = load_model_weights(verified_file(checkpoint.path, MODEL_FILE))
            optimizer_state = read_optimizer_state(checkpoint.path)
        except CheckpointError as e:
            if not sharded:
                raise
            problem = str(e)
    if sharded:
        problem = dist_utils.broadcast_object(problem, run.ctx)
        if problem is not None:
            raise CheckpointError(problem)
    dist_utils.load_full_state_dict(run.model, weights, run.ctx)
    optimizer_path = checkpoint.path / OPTIMIZER_FILE
    try:
        dist_utils.load_full_optimizer_state_dict(
            run.model, run.optimizer, optimizer_state, run.ctx
        )
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"{optimizer_path}: does not fit this optimizer: {one_line(e)}"
        ) from e
    return checkpoint.state


def _restore_rng(state: dict[str, Any], ctx: dist_utils.DistContext) -> None:
    """Restore the saved RNG states, saying on stderr what cannot be restored."""
    saved_cuda = state.get("cuda")
    if torch.cuda.is_available() and ctx.is_main:
        visible = torch.cuda.device_count()
        saved = len(saved_cuda) if isinstance(saved_cuda, list) else 0
        if saved != visible:
            print(
                f"lmrs: the checkpoint has CUDA random states for {saved} device(s) and "
                f"{visible} are visible: CUDA random streams (dropout) start afresh, so the "
                "resumed run will not repeat an uninterrupted one exactly",
                file=sys.stderr,
            )
    restore_rng_state(state)


def train(
    model: nn.Module,
    data: Union[Sequence[Batch], TokenDataset, TokenSplit],
    config: Optional[TrainConfig] = None,
    *,
    val_data: Union[Sequence[Batch], TokenSplit, TokenDataset, None] = None,
    tokenizer: Any = None,
    resume_from: Union[str, os.PathLike[str], None] = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` on ``data``; keyword overrides replace :class:`TrainConfig` fields.

    ``data``: a list of ``(inputs, targets)`` batches (:func:`lmrs.prepare_training_data`),
    a :class:`TokenDataset` (split into train/val by document: ``val_fraction``, by default
    the tokens validation reads, at most 10%) or a
    :class:`TokenSplit`. ``val_data``: batches or a split to evaluate on. ``tokenizer``:
    saved with checkpoints and used for exact bits per byte. ``resume_from``: a checkpoint
    or run directory to continue from (weights, optimizer, step, RNG states).
    Example: ``train(model, batches, epochs=3, learning_rate=1e-3)``.
    """
    config = replace(config or TrainConfig(), **overrides)
    config.validate()
    owns_group = not torch.distributed.is_initialized()
    ctx = dist_utils.init_distributed(config.device, config.dist_timeout_s)
    lock = run_lock(config.out_dir, "lmrs.train", primary=ctx.is_main) if config.out_dir else None
    try:
        with lock or contextlib.nullcontext(), fast_float32_matmul(ctx.device):
            return _train(model, data, config, ctx, val_data, tokenizer, resume_from)
    finally:
        if owns_group:  # a group the caller created is the caller's to destroy
            dist_utils.cleanup(ctx)


def _train(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    ctx: dist_utils.DistContext,
    val_data: Any,
    tokenizer: Any,
    resume_from: Union[str, os.PathLike[str], None],
) -> TrainResult:
    source, val = _resolve_data(data, val_data, config)
    _check_fits(model, source, config, ctx)
    out_dir = Path(config.out_dir) if config.out_dir else None
    if out_dir is not None and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed + ctx.rank)  # dropout; every batch is chosen by (seed, step)
    raw_model = dist_utils.unwrap_model(model)
    wrapped = dist_utils.wrap_model(
        raw_model,
        ctx,
        config.strategy,
        param_dtype=torch.bfloat16 if uses_bf16(ctx.device, config.dtype) else None,
        compile=config.compile,
    )
    try:
        run = _make_run(raw_model, wrapped, val, config, ctx, tokenizer, out_dir)
        trainer = Trainer(run, source)
        if resume_from is not None:
            trainer.restore(resume_from)
        return _loop(trainer)
    finally:
        if config.compile:
            dist_utils.uncompile(raw_model)


def _loop(trainer: Trainer) -> TrainResult:
    """The training loop: a step, then whatever is due after it, until the run ends."""
    trainer.begin()
    bar = trainer.progress_bar()
    try:
        with trainer.prefetching():
            while trainer.keep_going():
                trainer.step()
                bar.update(1)
                if trainer.log_due():
                    trainer.log(bar)
                if trainer.eval_due():
                    trainer.evaluate(bar)
                if trainer.checkpoint_due():
                    trainer.save()
    except KeyboardInterrupt:
        bar.close()
        trainer.save_interrupted()
        raise
    finally:
        if trainer.threads is not None:
            trainer.threads.close()
    bar.close()
    return trainer.finish()


def _check_fits(
    model: nn.Module, source: Union[SplitSource, BatchListSource], config: TrainConfig,
    ctx: dist_utils.DistContext,
) -> None:  # fmt: skip
    """The token file's vocabulary and the sequence length fit the model; the global batch
    splits among the processes."""
    if not isinstance(source, SplitSource):
        return
    micro_batch_size(config.batch_size, ctx.world_size, config.grad_accum_steps)
    model_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    data_vocab = source.split.dataset.vocab_size
    if model_vocab is not None and model_vocab < data_vocab:
        raise ValueError(
            f"{source.split.dataset.path}: vocab_size {data_vocab} is larger than the "
            f"model's ({model_vocab})"
        )
    model_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if model_len is not None and config.seq_len > model_len:
        raise ValueError(
            f"seq_len {config.seq_len} is longer than the model's context ({model_len})"
        )


def _make_run(
    raw_model: nn.Module,
    wrapped: nn.Module,
    val: Any,
    config: TrainConfig,
    ctx: dist_utils.DistContext,
    tokenizer: Any,
    out_dir: Optional[Path],
) -> _Run:
    """The optimizer, the validation windows and the byte counts of bits per byte."""
    token_bytes = None
    if isinstance(val, (TokenSplit, TokenDataset)):
        token_bytes = val.dataset.token_bytes if isinstance(val, TokenSplit) else val.token_bytes
    elif tokenizer is not None:
        token_bytes = token_byte_lengths(tokenizer)
    run = _Run(
        config=config,
        ctx=ctx,
        model=wrapped,
        raw_model=raw_model,
        optimizer=create_optimizer(raw_model, config, ctx.device, distributed=ctx.enabled),
        autocast=autocast_context(ctx.device, config.dtype),
        val_batches=_val_batches(val, config, ctx),
        token_bytes=token_bytes,
        tokenizer=tokenizer,
        out_dir=out_dir,
    )
    if token_bytes is None and isinstance(val, TokenSplit) and len(val) and val.num_bytes:
        run.bytes_per_token = val.num_bytes / len(val)
    return run


class _Prefetcher:
    """Builds the micro-batches of the next step on a background thread (into pinned memory
    on CUDA, so the copy to the device runs asynchronously) while the current step runs."""

    def __init__(self, source: Union[SplitSource, BatchListSource], run: _Run) -> None:
        self.source = source
        self.ctx = run.ctx
        self.accum = run.config.grad_accum_steps
        self.pin = run.ctx.device.type == "cuda"
        self.pool: Optional[ThreadPoolExecutor] = None
        self.pending: Optional[tuple[int, Future[list[Batch]]]] = None

    def build(self, step: int) -> list[Batch]:
        """This rank's micro-batches of ``step`` (a pure function of the step)."""
        batches = []
        for micro in range(self.accum):
            inputs, targets = self.source.micro_batch(
                step, micro, self.ctx.rank, self.ctx.world_size
            )
            if self.pin:
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            batches.append((inputs, targets))
        return batches

    def take(self, step: int, next_step: Optional[int]) -> list[Batch]:
        """Step ``step``'s micro-batches; starts building ``next_step``'s."""
        pending, self.pending = self.pending, None
        batches = pending[1].result() if pending and pending[0] == step else self.build(step)
        if next_step is not None:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmrs-batches")
            self.pending = (next_step, self.pool.submit(self.build, next_step))
        return batches

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool, self.pending = None, None


class Trainer:
    """One run's moving parts: the model and its optimizer (in ``run``), the schedule, the
    data cursor (``step``) and the clocks. The loop (:func:`_loop`) calls ``step()`` and then
    whatever is due; losses stay on the device until a log line, an evaluation, a
    checkpoint or the end needs them, so a GPU step never waits for the host."""

    def __init__(self, run: _Run, source: Union[SplitSource, BatchListSource]) -> None:
        self.run = run
        self.config = config = run.config
        self.ctx = run.ctx
        self.source = source
        self.steps_per_epoch = source.steps_per_epoch(self.ctx.world_size)
        self.tokens_per_step = source.tokens_per_step(self.ctx.world_size)
        self.start_step = self.step_count = 0
        self.elapsed_before, self.tokens_before = 0.0, 0
        self.resumed = False
        self.losses: list[float] = []
        # (step, lr, loss summed over the ranks on the device) not yet read back
        self.unread: list[tuple[int, float, torch.Tensor]] = []
        self.grad_norm: Optional[torch.Tensor] = None
        self.lr = config.learning_rate
        self.evals: list[tuple[int, EvalResult]] = []
        self.checkpoint_path: Optional[Path] = None
        self.metrics: Any = MetricsLog(None)
        self.metrics_path: Optional[Path] = None
        # compiling happens in the first steps (and DDP rebuilds its buckets in the second):
        # their time is reported apart, not averaged into tokens/s
        self.warmup_steps = COMPILE_WARMUP_STEPS if config.compile else 0
        self.train_time = self.warmup_time = 0.0
        self.session_start = time.perf_counter()
        self.window: tuple[float, int] = (self.session_start, 0)  # (time, step) of last log
        self.batches = _Prefetcher(source, run)
        adapt = config.adapt_threads and not config.compile  # compiled kernels fix their count
        self.threads = (
            ThreadGovernor.for_training(self.ctx.device, self.ctx.world_size) if adapt else None
        )
        total = config.max_steps
        if total is None and config.epochs is not None:
            total = max(1, math.ceil(config.epochs * self.steps_per_epoch))
        if total is None and config.time_budget_s is None:
            total = self.steps_per_epoch  # default: one epoch
        self.total_steps = total
        self.last_step = total
        if config.stop_at_step is not None:
            self.last_step = min(total or config.stop_at_step, config.stop_at_step)

    # --- where the run is ----------------------------------------------------------------

    def restore(self, resume_from: Union[str, os.PathLike[str]]) -> None:
        """Continue from a checkpoint: weights, optimizer, step, clocks, RNG states."""
        state = _resume(self.run, resume_from)
        self.start_step = self.step_count = int(state.get("step", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.tokens_before = int(state.get("tokens", 0))
        self.resumed = True
        # The checkpoint holds rank 0's RNG state; other ranks draw fresh dropout streams,
        # so only single-process (and rank 0) dropout continues bit for bit.
        _restore_rng(state.get("rng", {}), self.ctx)
        if self.ctx.rank > 0:
            torch.manual_seed(self.config.seed + self.ctx.rank + 1_000_003 * self.start_step)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    def tokens(self) -> int:
        return self.tokens_before + (self.step_count - self.start_step) * self.tokens_per_step

    def keep_going(self) -> bool:
        """False once the schedule's last step is done or the time budget is spent; sets
        the learning rate of the next step otherwise."""
        if self.last_step is not None and self.step_count >= self.last_step:
            return False
        progress = None
        budget = self.config.time_budget_s
        if budget is not None:
            elapsed = self.elapsed()
            if self.ctx.enabled:  # every rank stops at the same step
                elapsed = dist_utils.all_reduce_mean(elapsed, self.ctx)
            if elapsed >= budget:
                return False
            progress = elapsed / budget
            if self.total_steps is not None:
                warmup = self.config.warmup_steps
                steps = (self.step_count - warmup) / max(1, self.total_steps - warmup)
                progress = max(progress, steps)
        self.lr = learning_rate_at(self.step_count, self.config, self.total_steps, progress)
        set_learning_rates(self.run.optimizer, self.lr, self.config)
        if self.config.optimizer == "muon" and self.config.muon_momentum_warmup:
            set_muon_momentum(self.run.optimizer, muon_momentum_at(self.step_count, self.config))
        return True

    # --- one optimizer step --------------------------------------------------------------

    @contextlib.contextmanager
    def prefetching(self) -> Iterator[None]:
        """Around the loop: the batch thread stops with it, however it ends."""
        try:
            yield
        finally:
            self.batches.close()

    def step(self) -> None:
        """One optimizer step over ``grad_accum_steps`` micro-batches; its loss is summed
        over the ranks on the device and read back later (:meth:`read_losses`)."""
        run, ctx, step = self.run, self.ctx, self.step_count
        following = step + 1 if self.last_step is None or step + 1 < self.last_step else None
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=ctx.device)
        accum = self.config.grad_accum_steps
        with dist_utils.collective_guard(ctx, f"training step {step + 1}"):
            for micro, (inputs, targets) in enumerate(self.batches.take(step, following)):
                inputs = inputs.to(ctx.device, non_blocking=True)
                targets = targets.to(ctx.device, non_blocking=True)
                with dist_utils.micro_step(run.model, ctx, last=micro == accum - 1):
                    with run.autocast():
                        loss = run.model.compute_loss(inputs, targets)
                    (loss / accum).backward()
                loss_sum += loss.detach().float()
            if self.config.grad_clip > 0:
                self.grad_norm = torch.nn.utils.clip_grad_norm_(
                    run.model.parameters(), self.config.grad_clip
                )
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            summed = dist_utils.all_reduce_sum_on_device(loss_sum / accum, ctx)
        self.unread.append((step + 1, self.lr, summed))
        step_time = time.perf_counter() - started
        if self.threads is not None:
            self.threads.after_step(step_time)
        if step - self.start_step < self.warmup_steps:
            self.warmup_time += step_time
        else:
            self.train_time += step_time
        self.step_count += 1

    def read_losses(self) -> None:
        """Bring the losses of the steps since the last read to the host (one wait for the
        device), stopping the run at the first that is not a finite number."""
        if not self.unread:
            return
        values = torch.stack([loss for _, _, loss in self.unread]).tolist()
        for (step, lr, _), value in zip(self.unread, values):
            value = value / self.ctx.world_size
            if not math.isfinite(value):
                self.unread = []
                raise self._diverged(step, lr, value)
            self.losses.append(value)
        self.unread = []

    def _diverged(self, step: int, lr: float, value: float) -> TrainingDiverged:
        kept = (
            f"; the last good checkpoint ({self.checkpoint_path}) is kept"
            if self.checkpoint_path is not None
            else "; the checkpoint it resumed from is unchanged"
            if self.resumed
            else "; no checkpoint was written"
        )
        return TrainingDiverged(
            f"training loss became {value} at step {step} "
            f"(learning rate {lr:.3g}): lower --lr{kept}"
        )

    # --- what is due after a step --------------------------------------------------------

    def finishing(self) -> bool:
        return self.last_step is not None and self.step_count >= self.last_step

    def log_due(self) -> bool:
        step = self.step_count
        return step % self.config.log_every == 0 or step == self.start_step + 1

    def eval_due(self) -> bool:
        every = self.config.eval_every
        return bool(every) and self.step_count % every == 0 and not self.finishing()

    def checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return bool(every) and self.step_count % every == 0 and not self.finishing()

    def begin(self) -> None:
        """Open the metrics (OUT/metrics.jsonl cut back to the resumed step, or started
        afresh, plus the sinks of ``config.log_to``; rank 0 only), start the clocks."""
        out_dir, ctx = self.run.out_dir, self.ctx
        self.metrics_path = out_dir / METRICS_FILE if out_dir is not None else None
        if ctx.is_main and self.metrics_path is not None:
            if self.start_step > 0:
                truncate_metrics(self.metrics_path, self.start_step)
            elif self.metrics_path.exists():
                self.metrics_path.unlink()
        main_dir = out_dir if ctx.is_main else None
        log = MetricsLog(main_dir and self.metrics_path)
        self.metrics = attach_sinks(log, self.config.log_to, main_dir)
        self.session_start = time.perf_counter()
        self.window = (self.session_start, self.step_count)
        self.run.model.train()

    def progress_bar(self) -> Any:
        return tqdm(
            total=self.last_step,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not (self.ctx.is_main and self.config.show_progress),
            dynamic_ncols=True,
        )

    def log(self, bar: Any) -> None:
        """A metrics line for this step: loss, rate, throughput since the last line."""
        self.read_losses()
        now = time.perf_counter()
        since, at = self.window
        tokens_per_s = (self.step_count - at) * self.tokens_per_step / max(now - since, 1e-9)
        self.window = (now, self.step_count)
        loss = self.losses[-1]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        record: dict[str, Any] = {
            "step": self.step_count,
            "train_loss": loss,
            "lr": self.lr,
            "tokens_per_s": tokens_per_s,
            "tokens": self.tokens(),
            "elapsed_s": self.elapsed(),
        }
        if self.grad_norm is not None:
            record["grad_norm"] = float(self.grad_norm)
        self.metrics.write(record)

    def evaluate(self, bar: Any = None) -> Optional[EvalResult]:
        """Validation loss now (all ranks together), logged; the model back in training."""
        self.read_losses()  # a diverged run stops before it is measured or saved
        result = _evaluate(self.run)
        if result is not None:
            self.evals.append((self.step_count, result))
            self.metrics.write(_eval_record(self.step_count, result))
            if bar is not None and self.ctx.is_main and self.config.show_progress:
                bar.write(f"step {self.step_count}: val {result.summary()}")
        self.run.model.train()
        self.window = (time.perf_counter(), self.step_count)  # tokens/s counts steps only
        return result

    def save(self, *, last: bool = False) -> Optional[Path]:
        self.read_losses()  # nothing is saved after a diverged step
        self.checkpoint_path = _save(self.run, self.state(), last=last)
        self.window = (time.perf_counter(), self.step_count)
        return self.checkpoint_path

    def save_interrupted(self) -> None:
        """Ctrl-C: one process saves where it is (several could not agree on a step)."""
        if self.ctx.enabled or self.run.out_dir is None or self.step_count <= self.start_step:
            return
        path = self.save(last=True)
        print(f"interrupted at step {self.step_count}; checkpoint saved to {path}")

    def state(self) -> dict[str, Any]:
        """state.json of a checkpoint at this step."""
        last = self.evals[-1] if self.evals else None
        return {
            "step": self.step_count,
            "epoch": self.step_count / self.steps_per_epoch,
            "tokens": self.tokens(),
            "elapsed_s": self.elapsed(),
            "data": {"seed": self.config.seed, "steps_per_epoch": self.steps_per_epoch},
            "rng": capture_rng_state(),
            "metrics": {} if last is None else {"step": last[0], **asdict(last[1])},
            "world_size": self.ctx.world_size,
        }

    def finish(self) -> TrainResult:
        """The final evaluation, checkpoint and plot; what the run did."""
        self.read_losses()
        step, out_dir = self.step_count, self.run.out_dir
        result = _evaluate(self.run)
        if result is not None:
            self.evals.append((step, result))
            self.metrics.write(_eval_record(step, result))
        if out_dir is not None and step > self.start_step:
            self.save(last=True)
            if self.ctx.is_main and self.metrics_path is not None and self.metrics_path.exists():
                from lmrs.training.plot import plot_metrics

                with contextlib.suppress(ValueError):
                    plot_metrics(out_dir)
        session_tokens = (step - self.start_step) * self.tokens_per_step
        train_time, warmup_time = self.train_time, self.warmup_time
        steady_tokens = max(0, step - self.start_step - self.warmup_steps) * self.tokens_per_step
        if steady_tokens == 0:  # a run too short to get past compiling: count it all
            steady_tokens, train_time, warmup_time = session_tokens, train_time + warmup_time, 0.0
        outcome = TrainResult(
            steps=step,
            start_step=self.start_step,
            losses=self.losses,
            tokens=session_tokens,
            elapsed_s=time.perf_counter() - self.session_start,
            tokens_per_s=steady_tokens / train_time if train_time > 0 else 0.0,
            evals=self.evals,
            out_dir=out_dir,
            checkpoint=self.checkpoint_path,
            warmup_s=warmup_time,
        )
        if self.ctx.is_main and self.config.show_progress:
            print(outcome.summary())
        return outcome


def _eval_record(step: int, result: EvalResult) -> dict[str, Any]:
    return {
        "step": step,
        "val_loss": result.loss,
        "val_perplexity": result.perplexity,
        "val_bpb": result.bits_per_byte,
    }


__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "create_optimizer",
    "learning_rate_at",
    "muon_momentum_at",
    "set_learning_rates",
    "parameter_groups",
    "train",
]
