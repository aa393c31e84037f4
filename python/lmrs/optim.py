"""Muon for the hidden weight matrices, AdamW for everything else, as one torch optimizer.

Muon ("MomentUm Orthogonalized by Newton-Schulz", Keller Jordan 2024) keeps a Nesterov
momentum of each 2-D weight's gradient and replaces it, before the update, by the nearest
semi-orthogonal matrix: every singular value of the step is pushed towards 1, so the rare
directions of the gradient move as fast as the dominant ones. In small GPTs it reaches a
given loss in noticeably fewer tokens than AdamW, for a few small matrix products per
weight per step. It only makes sense for the matrices *inside* the network: embeddings,
the output head, biases and LayerNorm gains stay on AdamW.

One optimizer (rather than a Muon and an AdamW side by side) so the training loop, the
learning-rate schedule, checkpoints and resume see the usual ``param_groups`` and
``state_dict``. The learning rate of a Muon group is the AdamW rate: each matrix's step is
scaled by ``0.2 * sqrt(max(rows, cols))`` so its RMS matches a typical AdamW step (Moonshot
AI, "Muon is Scalable for LLM Training", 2025), the same rule as ``torch.optim.Muon(...,
adjust_lr_fn="match_rms_adamw")``, which the tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable, Optional

import torch
from torch import nn

# quintic Newton-Schulz coefficients tuned for the steepest slope at zero (Jordan 2024): five
# iterations bring every singular value into roughly [0.7, 1.2], which is close enough
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U V^T`` of ``matrix = U S V^T``, by a quintic Newton-Schulz iteration.

    Runs in bfloat16: the iteration only needs the singular values near 1, not exact.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = matrix.to(torch.bfloat16, copy=True)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T  # iterate on the wide orientation: the Gram matrix is the smaller one
    x.div_(x.norm().clamp(min=eps))  # Frobenius norm >= spectral norm: all singular values <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups marked ``use_muon=True`` (2-D parameters only), AdamW on the rest.

    Every group takes ``lr`` and ``weight_decay`` (decoupled, as in AdamW); Muon groups also
    ``momentum`` and ``ns_steps``, AdamW groups ``betas`` and ``eps``.
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            ns_steps=ns_steps,
            use_muon=False,
        )
        super().__init__(list(groups), defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = self._muon_update if group["use_muon"] else self._adamw_update
            for param in group["params"]:
                if param.grad is not None:
                    update(param, param.grad, group)
        return loss

    def _muon_update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer = state["momentum_buffer"]
        momentum = group["momentum"]
        buffer.lerp_(grad, 1 - momentum)
        nesterov = grad.lerp(buffer, momentum)  # look one momentum step ahead
        direction = orthogonalize(nesterov, group["ns_steps"])
        lr = group["lr"]
        rows, cols = param.shape
        param.mul_(1 - lr * group["weight_decay"])
        param.add_(direction.to(param.dtype), alpha=-lr * 0.2 * math.sqrt(max(rows, cols)))

    def _adamw_update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        param.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (embeddings, linear weights) decay; biases and norms do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def muon_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """:func:`parameter_groups` with the hidden matrices moved to a Muon group: embeddings
    and the output head stay on AdamW (decayed), biases and norms on AdamW without decay.

    The output head is any submodule named ``lm_head`` (lmrs and Hugging Face models); a
    tied head is the token embedding itself. Orthogonalising a vocabulary-sized projection
    or a lookup table does not help: their rows are updated by how often a token occurs.
    """
    on_adamw = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "lm_head":
            on_adamw.update(id(p) for p in module.parameters())
    decay, no_decay = parameter_groups(model, weight_decay)
    muon, adamw = [], []
    for parameter in decay["params"]:
        hidden = parameter.dim() == 2 and id(parameter) not in on_adamw
        (muon if hidden else adamw).append(parameter)
    groups = [
        {"params": muon, "weight_decay": weight_decay, "use_muon": True},
        {**decay, "params": adamw},
        no_decay,
    ]
    return [group for group in groups if group["params"]]
