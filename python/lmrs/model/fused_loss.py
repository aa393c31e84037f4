"""The output head, the logit soft-cap and the cross-entropy, a few rows at a time.

``F.cross_entropy(softcap(hidden @ head.T), targets)`` written plainly materialises the
logits (batch x sequence x vocabulary: 16 x 128 x 5,000 floats = 41 MB) and walks them
about eight times forward and back (the product, the division, tanh, the multiplication,
log-softmax, their gradients), each walk a fresh allocation. On a CPU that memory traffic
costs more than the matrix product: 100 ms of a 220 ms forward for the small model with
soft-capping on an AVX2 EPYC. Here the rows are taken a chunk at a time (a few MB, so
every walk stays in cache), and the gradient with respect to the logits is formed while
they are at hand: the loss is the end of the graph, so the backward pass only has to
scale two precomputed gradients (the same trick as Liger Kernel's fused linear
cross-entropy). Memory for the logits drops from the whole batch to one chunk.

It computes the same function as :meth:`lmrs.model.GPT.forward` followed by
``F.cross_entropy``; ``tests/model/test_fused_loss.py`` checks loss and gradients against that.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["head_cross_entropy"]

CHUNK_BYTES = 8 << 20  # float32 logits per chunk: stays in L3; 2-16 MB measured, 8-16 best


def _chunk_rows(vocab_size: int, rows: int) -> int:
    return max(64, min(rows, CHUNK_BYTES // (4 * vocab_size)))


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, cap: Optional[float], out: Optional[torch.Tensor]
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(float32 logits, tanh of the scaled logits or None) of one chunk of rows; ``out``:
    a float32 buffer of at least as many rows to write the product into, or None."""
    if out is not None:
        logits = torch.mm(hidden, weight.T, out=out[: hidden.shape[0]])
    else:
        logits = (hidden @ weight.T).float()
    if cap is None:
        return logits, None
    squashed = logits.div_(cap).tanh_()  # in place: the chunk is ours
    return squashed * cap, squashed


def _float32_products(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the chunks' products are float32 (no autocast, float32 inputs): then one
    float32 buffer takes every chunk's logits, since a fresh allocation per chunk costs its
    page faults each time (about a quarter of the chunk's arithmetic on a CPU), and the
    weight's gradient accumulates in place."""
    return (
        hidden.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled(hidden.device.type)
    )


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        cap: Optional[float],
        ignore_index: int,
    ) -> torch.Tensor:
        valid = targets != ignore_index
        count = valid.sum().to(torch.float32)  # 0: nan, as F.cross_entropy gives
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = _chunk_rows(weight.shape[0], hidden.shape[0])
        float32 = _float32_products(hidden, weight)
        buffer = (
            torch.empty((step, weight.shape[0]), dtype=torch.float32, device=hidden.device)
            if float32
            else None
        )
        arange = torch.arange(step, device=hidden.device)
        for first in range(0, hidden.shape[0], step):
            rows = slice(first, first + step)
            h, t, keep = hidden[rows], targets[rows], valid[rows]
            logits, squashed = _chunk_logits(h, weight, cap, buffer)
            # loss = logsumexp - picked, with the exponentials computed once and kept for
            # the gradient (torch.logsumexp would walk the chunk four times and throw
            # them away)
            logits.sub_(logits.amax(dim=1, keepdim=True))
            safe_t = torch.where(keep, t, torch.zeros_like(t))
            picked = logits.gather(1, safe_t[:, None]).squeeze(1)
            sums = logits.exp_().sum(dim=1)
            total += ((sums.log() - picked) * keep).sum()
            if not want_grad:
                continue
            # d(mean loss)/d(logits) = (softmax - one_hot) / count on kept rows, 0 elsewhere
            weight_of_row = keep.to(torch.float32) / count
            grad = logits.mul_((weight_of_row / sums)[:, None])
            grad[arange[: grad.shape[0]], safe_t] -= weight_of_row
            if squashed is not None:  # d(cap * tanh(z / cap))/dz = 1 - tanh^2
                grad.mul_(1.0 - squashed * squashed)
            grad = grad.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad @ weight).to(grad_hidden.dtype)
            if grad_weight is not None:
                if float32:
                    grad_weight.addmm_(grad.T, h)
                else:
                    grad_weight += (grad.T @ h.to(weight.dtype)).float()
        ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        scaled = [None if g is None else g * grad_output.to(g.dtype) for g in grads]
        return (*scaled, None, None, None)


def head_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: Optional[float] = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``targets`` (N,) under the logits
    ``softcap * tanh(hidden @ weight.T / softcap)`` (plain ``hidden @ weight.T`` without a
    cap), rows whose target is ``ignore_index`` left out; ``hidden`` is (N, D). Eager
    only: under torch.compile the model computes the plain expression, which the compiler
    fuses itself."""
    return _HeadCrossEntropy.apply(hidden, weight, targets, softcap, ignore_index)
