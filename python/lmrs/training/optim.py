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

Data parallelism. Newton-Schulz needs each matrix whole and costs a few matrix products per
matrix, so under several processes the work is split and the results exchanged, giving every
rank the update one process would compute (the iteration is deterministic: whichever rank
runs it on the same input gets the same bits). The matrices are taken in a fixed order,
grouped by shape, in chunks of ``world_size``; the ``k``-th of a chunk belongs to rank ``k``.

- Replicated parameters (DDP, ``distributed=True``): the gradients are already averaged, so
  every rank updates every momentum buffer (cheap, element-wise), orthogonalises only its own
  matrix of each chunk, and one ``all_gather`` per chunk hands each rank the others'.
- Parameters sharded on dim 0 (FSDP2 ``fully_shard``: DTensors, ``Shard(0)`` on a 1-D mesh):
  the momentum buffer is a DTensor sharded like its parameter and updated shard by shard; one
  ``all_to_all`` per chunk sends every rank's rows of matrix ``k`` to rank ``k``, which
  assembles it whole and orthogonalises it, and a second ``all_to_all`` sends each rank back
  its rows of every result. Each rank keeps only its shard. Any other DTensor layout is
  gathered whole on every rank (``full_tensor``), orthogonalised everywhere and re-sharded.

Checkpoints need nothing special: the state is one momentum buffer per matrix (a DTensor
under FSDP), which the full-state-dict helpers of :mod:`lmrs.distributed` gather and restore
like AdamW's moments, so a run resumes on any number of processes and either strategy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from lmrs.precision import native_bf16

# quintic Newton-Schulz coefficients tuned for the steepest slope at zero (Jordan 2024): five
# iterations bring every singular value into roughly [0.7, 1.2], which is close enough
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U V^T`` of ``matrix = U S V^T``, by a quintic Newton-Schulz iteration.

    Runs in bfloat16 where the device multiplies it natively (the iteration only needs the
    singular values near 1, not exact), in float32 elsewhere: on a CPU without AVX512-BF16
    a bfloat16 product is emulated, about 20x slower than float32 (0.14 s against 0.006 s
    for one 256 x 1024 step on an AVX2 EPYC), which made Muon steps take seconds.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    dtype = torch.bfloat16 if native_bf16(matrix.device) else torch.float32
    x = matrix.to(dtype, copy=True)
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

    ``distributed=True``: the parameters are replicated on every rank of the default process
    group and their gradients already averaged (DDP); the orthogonalisation is split across
    the ranks (module docstring). Every rank must call :meth:`step` (it is collective then).
    Parameters sharded by FSDP2 are always handled across their own mesh, whatever this says.
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
        distributed: bool = False,
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
        self.distributed = distributed
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
            if group["use_muon"]:
                self._muon_group_step(group)
                continue
            for param in group["params"]:
                if param.grad is not None:
                    self._adamw_update(param, param.grad, group)
        return loss

    def _muon_group_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        momentum = group["momentum"]
        lookahead = []
        for param in params:
            state = self.state[param]
            if not state:
                # like the parameter: a DTensor sharded the same way under FSDP
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = _local(state["momentum_buffer"])
            grad = _local(param.grad)
            buffer.lerp_(grad, 1 - momentum)
            lookahead.append(grad.lerp(buffer, momentum))  # one momentum step ahead (Nesterov)
        for chunk in _chunks(params, self._replicated_world()):
            directions = _orthogonalize_chunk(
                [params[i] for i in chunk], [lookahead[i] for i in chunk], group["ns_steps"]
            )
            for i, direction in zip(chunk, directions):
                self._apply_muon(params[i], direction, group)

    def _replicated_world(self) -> int:
        if self.distributed and dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    @staticmethod
    def _apply_muon(param: torch.Tensor, direction: torch.Tensor, group: dict) -> None:
        lr = group["lr"]
        rows, cols = param.shape  # the whole matrix's shape, also for a DTensor
        local = _local(param)
        local.mul_(1 - lr * group["weight_decay"])
        local.add_(direction.to(local.dtype), alpha=-lr * 0.2 * math.sqrt(max(rows, cols)))

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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (the tensor itself otherwise). Under ``no_grad`` it is
    the DTensor's own storage, so in-place updates of it update the parameter."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _dim0_sharded(param: torch.Tensor) -> bool:
    return (
        isinstance(param, DTensor)
        and param.device_mesh.ndim == 1
        and tuple(param.placements) == (Shard(0),)
    )


def _chunks(params: list[torch.Tensor], replicated_world: int) -> list[list[int]]:
    """Indices of ``params`` in chunks whose ``k``-th matrix is orthogonalised by rank ``k``:
    same shape and layout, at most as many as the ranks that share the work, in the order of
    first appearance (the same on every rank)."""
    by_kind: dict[tuple[Any, ...], list[int]] = {}
    for i, param in enumerate(params):
        if isinstance(param, DTensor):
            mesh = param.device_mesh
            kind: tuple[Any, ...] = (tuple(param.shape), id(mesh), tuple(param.placements))
            width = mesh.size() if _dim0_sharded(param) else 1
        else:
            kind, width = (tuple(param.shape), None, None), replicated_world
        by_kind.setdefault((*kind, width), []).append(i)
    return [
        indices[start : start + key[-1]]
        for key, indices in by_kind.items()
        for start in range(0, len(indices), key[-1])
    ]


def _orthogonalize_chunk(
    params: list[torch.Tensor], lookahead: list[torch.Tensor], steps: int
) -> list[torch.Tensor]:
    """The orthogonalised update of each matrix of one chunk (from :func:`_chunks`), as this
    rank's part of it: the whole matrix for plain tensors, the local shard for DTensors."""
    first = params[0]
    if _dim0_sharded(first):
        return _sharded_chunk(params, lookahead, steps)
    if isinstance(first, DTensor):
        # an unusual layout: every rank gathers and orthogonalises the whole matrix
        out = []
        for param, local in zip(params, lookahead):
            whole = DTensor.from_local(
                local, param.device_mesh, param.placements, shape=param.shape,
                stride=param.stride(),
            ).full_tensor()  # fmt: skip
            direction = orthogonalize(whole, steps)
            out.append(distribute_tensor(direction, param.device_mesh, param.placements).to_local())
        return out
    if len(params) == 1:  # a chunk of one: nobody else to share it with
        return [orthogonalize(lookahead[0], steps)]
    # a chunk of several plain matrices only exists when the work is split (DDP)
    world, rank = dist.get_world_size(), dist.get_rank()
    if rank < len(params):
        mine = orthogonalize(lookahead[rank], steps)
    else:  # a short last chunk: this rank has no matrix in it, but joins the exchange
        mine = torch.zeros(first.shape, dtype=torch.bfloat16, device=first.device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine.contiguous())
    return gathered[: len(params)]


def _sharded_chunk(
    params: list[torch.Tensor], lookahead: list[torch.Tensor], steps: int
) -> list[torch.Tensor]:
    """Chunk of FSDP2 matrices (``Shard(0)`` on a 1-D mesh): rank ``k`` assembles matrix
    ``k`` from everyone's rows, orthogonalises it and sends each rank its rows back.

    FSDP2 splits dim 0 as ``torch.chunk`` does: rows ``[r*c, min((r+1)*c, n))`` on rank
    ``r``, ``c = ceil(n / world)``; every shard travels padded to ``c`` rows so that one
    ``all_to_all`` moves them all (padding rows are zeros and are cut off again)."""
    group = params[0].device_mesh.get_group()
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    rows, cols = params[0].shape
    per_rank = -(-rows // world)
    device = lookahead[0].device
    expected = max(0, min((rank + 1) * per_rank, rows) - rank * per_rank)
    for local in lookahead:
        if local.shape[0] != expected:
            raise RuntimeError(
                f"Muon expected FSDP shards of {expected} rows on rank {rank}, got "
                f"{local.shape[0]} (a layout other than torch.chunk's)"
            )
    send = torch.zeros(world * per_rank, cols, dtype=lookahead[0].dtype, device=device)
    for k, local in enumerate(lookahead):
        send[k * per_rank : k * per_rank + expected] = local
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # the pieces arrive in rank order, each padded at its end; only the last non-empty one
    # can be short, so the first `rows` rows are the whole matrix
    back = torch.zeros(world * per_rank, cols, dtype=torch.bfloat16, device=device)
    if rank < len(params):
        back[:rows] = orthogonalize(received[:rows], steps)
    mine = torch.empty_like(back)
    dist.all_to_all_single(mine, back, group=group)
    return [mine[k * per_rank : k * per_rank + expected] for k in range(len(params))]


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
    """:func:`parameter_groups` with the hidden matrices moved to a Muon group: the token
    embeddings (``role`` "embed") and the output head ("head") stay on AdamW (decayed),
    biases and norms on AdamW without decay ("no_decay"). Every group has a ``role`` (also
    "muon", and "adamw" for weights of more than 2 dimensions), which the learning-rate
    schedule reads (``embed_lr``, ``head_lr``, ``muon_lr``).

    The output head is any submodule named ``lm_head`` (lmrs and Hugging Face models); a
    tied head is the token embedding itself. Orthogonalising a vocabulary-sized projection
    or a lookup table does not help: their rows are updated by how often a token occurs.
    """
    embed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = {
        id(p)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "lm_head"
        for p in module.parameters()
    } - embed  # a tied head is the embedding: one tensor, in the embedding's group
    decay, no_decay = parameter_groups(model, weight_decay)
    roles: dict[str, list[nn.Parameter]] = {"muon": [], "embed": [], "head": [], "adamw": []}
    for parameter in decay["params"]:
        if id(parameter) in embed:
            roles["embed"].append(parameter)
        elif id(parameter) in head:
            roles["head"].append(parameter)
        else:
            roles["muon" if parameter.dim() == 2 else "adamw"].append(parameter)
    groups = [
        {"params": roles["muon"], "weight_decay": weight_decay, "use_muon": True, "role": "muon"},
        *(
            {"params": roles[role], "weight_decay": weight_decay, "role": role}
            for role in ("embed", "head", "adamw")
        ),
        {**no_decay, "role": "no_decay"},
    ]
    return [group for group in groups if group["params"]]
