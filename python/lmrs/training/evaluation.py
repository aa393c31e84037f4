"""Evaluation: mean loss, perplexity and bits per byte over a set of batches.

Bits per byte compares models with different tokenizers: the total loss in nats over the
evaluated target tokens, divided by ``ln 2`` and by the UTF-8 bytes those tokens stand for:
``bpb = total_nats / (ln 2 * num_bytes)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from lmrs.data.tokens import Batch, TokenSplit, bytes_of
from lmrs.precision import autocast_context, fast_float32_matmul
from lmrs.progress import tqdm


@dataclass(frozen=True)
class EvalSums:
    """Totals that add up across batches and processes."""

    nats: float = 0.0
    tokens: int = 0
    bytes: Optional[int] = None

    def __add__(self, other: EvalSums) -> EvalSums:
        both = None if self.bytes is None or other.bytes is None else self.bytes + other.bytes
        return EvalSums(self.nats + other.nats, self.tokens + other.tokens, both)


@dataclass(frozen=True)
class EvalResult:
    """Mean loss (nats per token), perplexity, bits per byte (None when bytes unknown)."""

    loss: float
    perplexity: float
    bits_per_byte: Optional[float]
    tokens: int

    @classmethod
    def from_sums(cls, nats: float, tokens: int, num_bytes: Optional[float]) -> EvalResult:
        if tokens <= 0:
            raise ValueError("nothing to evaluate: no target tokens")
        loss = nats / tokens
        perplexity = math.exp(min(loss, 700.0))
        bpb = None if not num_bytes else nats / (math.log(2) * num_bytes)
        return cls(loss=loss, perplexity=perplexity, bits_per_byte=bpb, tokens=tokens)

    def summary(self) -> str:
        text = f"loss {self.loss:.4f}  perplexity {self.perplexity:.2f}"
        if self.bits_per_byte is not None:
            text += f"  bits per byte {self.bits_per_byte:.4f}"
        return text


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _loss_fn(model: nn.Module) -> Any:
    """The model's mean-loss method, or cross-entropy on its logits for a plain module."""
    compute_loss = getattr(model, "compute_loss", None)
    if compute_loss is not None:
        return compute_loss
    return lambda ids, targets: nn.functional.cross_entropy(
        model(ids).float().flatten(0, 1), targets.reshape(-1)
    )


# targets with this value are padding: evaluated (every rank runs the same forward passes)
# but not counted; the models' cross-entropy ignores it too
IGNORE_INDEX = -100


@torch.no_grad()
def evaluation_sums(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    token_bytes: Optional[np.ndarray] = None,
    device: Optional[torch.device] = None,
    autocast: Optional[contextlib.AbstractContextManager[Any]] = None,
) -> EvalSums:
    """Sum of target-token losses (nats), tokens and bytes over ``batches``, in eval mode.

    Targets equal to ``IGNORE_INDEX`` (padding) count for nothing; a batch of nothing but
    padding still runs its forward pass.
    """
    device = device or _model_device(model)
    loss_fn = _loss_fn(model)
    was_training = model.training
    model.eval()
    sums = EvalSums(0.0, 0, 0 if token_bytes is not None else None)
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast or contextlib.nullcontext():
                loss = loss_fn(inputs, targets)
            counted = targets[targets != IGNORE_INDEX]
            count = int(counted.numel())
            if count == 0:
                continue  # the mean over no tokens is NaN, and it weighs nothing
            sums = sums + EvalSums(float(loss) * count, count, bytes_of(counted, token_bytes))
    finally:
        model.train(was_training)
    return sums


def evaluate(
    model: nn.Module,
    data: Union[TokenSplit, Iterable[Batch]],
    *,
    batches: Optional[int] = None,
    num_bytes: Optional[float] = None,
    device: Optional[Union[str, torch.device]] = None,
    batch_size: int = 16,
    seq_len: Optional[int] = None,
    show_progress: bool = False,
    dtype: str = "float32",
) -> EvalResult:
    """Loss, perplexity and bits per byte of ``model`` on ``data``.

    ``data`` is a list of ``(inputs, targets)`` batches or a :class:`TokenSplit` (fixed
    windows covering the split, ``batch_size`` per batch, ``seq_len`` defaulting to the
    model's context). ``batches`` caps the number of batches (windows evenly spread over
    the split). ``num_bytes`` gives the bytes the evaluated target tokens stand for; when
    omitted it is computed exactly from a split whose dataset knows token byte lengths,
    approximated from the split's bytes per token otherwise, and None for plain batches.
    ``show_progress`` draws a tqdm bar. ``dtype`` is a training precision (``auto``,
    ``float32``, ``bfloat16``): evaluate under the autocast training used, and the loss
    equals the one training reported on the same batches.
    """
    torch_device = torch.device(device) if device is not None else _model_device(model)
    token_bytes = None
    batch_iter: Iterable[Batch]
    total: Optional[int] = None
    if isinstance(data, TokenSplit):
        if seq_len is None:
            config = getattr(model, "config", None)
            seq_len = int(getattr(config, "max_seq_len", 128))
        windows = len(data.eval_windows(seq_len))
        total = -(-windows // batch_size) if batches is None else min(batches, windows)
        batch_iter = data.iter_eval_batches(seq_len, batch_size, batches)
        token_bytes = data.token_bytes
    else:
        batch_list = list(data)
        if batches is not None:
            batch_list = batch_list[:batches]
        batch_iter, total = batch_list, len(batch_list)
    if show_progress:
        batch_iter = tqdm(batch_iter, total=total, desc="eval", unit="batch", leave=False)
    with fast_float32_matmul(torch_device):
        sums = evaluation_sums(
            model,
            batch_iter,
            token_bytes=token_bytes,
            device=torch_device,
            autocast=autocast_context(torch_device, dtype)(),
        )
    if num_bytes is None and sums.bytes is not None:
        num_bytes = sums.bytes
    if num_bytes is None and isinstance(data, TokenSplit) and data.num_bytes:
        # Approximate (no token byte lengths): the split's bytes per token × tokens evaluated.
        num_bytes = data.num_bytes * sums.tokens / max(len(data), 1)
    return EvalResult.from_sums(sums.nats, sums.tokens, num_bytes)
