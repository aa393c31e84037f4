"""torch.distributed setup and teardown for data-parallel training.

One process per device, launched by ``torchrun`` (or ``lmrs train --nproc N``, which
re-runs itself under torchrun through :func:`launch_local`). :func:`init_distributed` reads
torchrun's environment and returns a :class:`DistContext`; with no torchrun environment (or
a world of one) no process group is created and every helper here is a cheap no-op, so the
training loop has a single code path.

Failure behaviour: the process group is created with a timeout, so a collective whose peer
died or hangs raises after ``timeout_s`` instead of blocking forever, and the failure becomes
a :class:`DistributedError` with a one-line message. Which errors are collective failures is
decided by type and by where they were raised, never by their text: gloo reports a closed
connection or a timeout as a plain ``RuntimeError``, so the helpers here that only
communicate convert whatever they raise, DDP's gradient all-reduce runs through a hook that
records its failures on the :class:`DistContext`, and :func:`collective_guard` converts a
``torch.distributed.DistError`` (NCCL, store and network failures) or a ``RuntimeError``
raised while such a failure was recorded; any other error passes through unchanged. Not
covered on gloo (their plain ``RuntimeError`` passes through): FSDP's own all-gathers and
reduce-scatters, and the one-off exchange in DDP's second forward that rebuilds its buckets.
torchrun stops the remaining ranks as soon as one rank exits with an error.

Under NCCL (CUDA) a dead or hung peer is usually *not* seen as a :class:`DistributedError`:
NCCL collectives run asynchronously, and the failure is found by NCCL's watchdog thread
after ``timeout_s``. With ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (set to 1 here unless the
environment says otherwise) the watchdog aborts the communicator and then the whole
process, with torch's "Watchdog caught collective operation timeout" on stderr and no
Python exception; torchrun then stops the other ranks. What can be converted is: a
``DistError`` raised on the calling thread (a communicator already aborted, a failed
store or connection), by :func:`collective_guard`. The last complete checkpoint is kept in
every case. Give ``timeout_s`` (``lmrs train --dist-timeout``) room for the longest time
one rank works alone, such as rank 0 encoding a large corpus while the others wait.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from lmrs.errors import LmrsError, one_line
from lmrs.options import STRATEGIES

# prefixes that wrappers add to parameter names: DDP / FSDP1 (`module.`), torch.compile
# (`_orig_mod.`); checkpoints use the plain names of the bare model
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


class DistributedError(LmrsError, RuntimeError):
    """A collective failed: another rank stopped, hung past the timeout, or is unreachable."""


class CollectiveFailures:
    """The errors the communication hooks saw, in order (the hooks run on backend threads,
    and the error that reaches the caller may be a re-wrapped copy of a different type)."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def record(self, error: BaseException) -> None:
        self.errors.append(error)


@dataclass
class DistContext:
    """Where this process sits in the job. ``enabled`` is True when a process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    enabled: bool = False
    backend: Optional[str] = None
    timeout_s: float = 300.0
    failures: CollectiveFailures = field(
        default_factory=CollectiveFailures, repr=False, compare=False
    )


def resolve_device(
    device: str = "auto", local_rank: int = 0, distributed: bool = False
) -> torch.device:
    """``"auto"`` → CUDA (``cuda:local_rank``) → MPS (single process only) → CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        # MPS has no collective backend: a multi-process job falls back to the CPU (gloo)
        if not distributed and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif resolved.type == "mps" and distributed:
        raise ValueError("multi-process training is not supported on MPS (no collective backend)")
    return resolved


def _env_int(name: str, default: Optional[int] = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"environment variable {name} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistContext:
    """Create the process group described by torchrun's environment variables.

    A process group that already exists is used as it is (its size, one included).
    ``WORLD_SIZE`` absent or 1 → a single-process context (no process group). Otherwise
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` must be set (torchrun does).
    NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if dist.is_initialized():
        return _existing_group(device, timeout_s)
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world_size} must be at least 1")
    if world_size == 1:
        local_rank = _env_int("LOCAL_RANK", 0)
        resolved = resolve_device(device, local_rank)
        if resolved.type == "cuda":
            # kernels, caching allocator and the fused optimizer's buffers follow the current
            # device; without this a run on cuda:1 would also allocate on cuda:0
            torch.cuda.set_device(resolved)
        return DistContext(device=resolved, local_rank=local_rank, timeout_s=timeout_s)

    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside the world of {world_size} processes")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set (launch with torchrun)")

    resolved = resolve_device(device, local_rank, distributed=True)
    if resolved.type == "cuda" and device in ("auto", "cuda"):
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {visible} CUDA device(s) are visible: "
                f"start at most {visible} processes per machine (--nproc-per-node)"
            )
    if resolved.type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(resolved)
        # make NCCL honour the timeout: a stuck collective aborts the communicator and
        # raises instead of blocking the process forever
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    else:
        backend = "gloo"

    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = resolved
        store = _attempt_store(world_size, timeout_s)
        if store is None:
            kwargs["init_method"] = "env://"
        dist.init_process_group(
            backend=backend,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            **kwargs,
        )
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=resolved,
        is_main=rank == 0,
        enabled=True,
        backend=backend,
        timeout_s=timeout_s,
    )


def _attempt_store(world_size: int, timeout_s: float) -> Optional[dist.Store]:
    """Under torchrun's shared agent store, this restart attempt's own view of it.

    torchrun (``--max-restarts``) keeps its store across restarts, and torch no longer
    prefixes the workers' keys by attempt: a restarted rank could read a dead rank's
    address from the attempt before and fail to connect. None: plain ``env://``."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        _env_int("MASTER_PORT"),
        world_size,
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    return dist.PrefixStore(f"lmrs/attempt_{attempt}", client)


def _existing_group(device: str, timeout_s: float) -> DistContext:
    """The context of a process group the caller created, used as it is, whatever its size:
    a group of one still wraps the model in DDP or FSDP (how the GPU check runs both on a
    single GPU). The caller made the group, so the caller destroys it."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK", rank)
    resolved = resolve_device(device, local_rank, distributed=True)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=resolved,
        is_main=rank == 0,
        enabled=True,
        backend=str(dist.get_backend()),
        timeout_s=timeout_s,
    )


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group (safe to call twice, or with no group)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _failure(ctx: DistContext, what: str, cause: BaseException) -> DistributedError:
    detail = one_line(cause)
    return DistributedError(
        f"rank {ctx.rank}: {what} failed: another rank stopped or is unreachable "
        f"(timeout {ctx.timeout_s:g} s): {detail}"
    )


@contextlib.contextmanager
def collective_guard(ctx: DistContext, what: str = "collective") -> Iterator[None]:
    """Turn a failed collective into a one-line :class:`DistributedError`.

    Wrap anything that communicates (a DDP backward, an eval reduction, a barrier): a dead
    or hung peer then reads as "rank 0: all_reduce failed: another rank stopped ... (timeout
    300 s)" rather than a backend stack trace. Converted: a ``torch.distributed.DistError``,
    and a ``RuntimeError`` raised after a communication hook recorded a failure inside the
    block (gloo's errors are plain RuntimeErrors); every other error propagates unchanged.
    """
    if not ctx.enabled:
        yield
        return
    recorded = len(ctx.failures.errors)
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as error:
        if isinstance(error, dist.DistError):
            raise _failure(ctx, what, error) from error
        seen = ctx.failures.errors[recorded:]
        if not seen:
            raise
        # the hook's error names the collective; the one raised here may be a wrapped copy
        raise _failure(ctx, what, seen[0]) from error


@contextlib.contextmanager
def _communicating(ctx: DistContext, what: str) -> Iterator[None]:
    """Around a call that does nothing but communicate: any RuntimeError it raises (gloo
    gives no more specific type) is a collective failure."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as error:
        raise _failure(ctx, what, error) from error


def _recording_all_reduce(failures: CollectiveFailures, bucket):  # type: ignore[no-untyped-def]
    """DDP's default gradient all-reduce (average: divide, then sum), with its failures
    recorded: DDP raises them from backward as RuntimeErrors that say nothing of their
    origin. ``bucket`` is a ``dist.GradBucket`` and the result a
    ``torch.futures.Future[torch.Tensor]``, unannotated because DDP compares the hook's
    annotations with those classes and this module's annotations are strings."""
    tensor = bucket.buffer()
    tensor.div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def finished(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        try:
            return done.value()[0]
        except Exception as error:
            failures.record(error)
            raise

    return future.then(finished)


def reduction_dtype(device: torch.device) -> torch.dtype:
    """The dtype loss and evaluation sums are reduced in on ``device``: float64, except on
    MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def all_reduce_sum(value: Union[float, int, torch.Tensor], ctx: DistContext) -> float:
    """Sum of ``value`` over all ranks, as a Python float (the value itself with no group)."""
    if not ctx.enabled:
        if isinstance(value, torch.Tensor):
            # to the host first, then widen: the device may have no float64 (MPS)
            return float(value.detach().cpu().double().sum())
        return float(value)
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(ctx.device).to(reduction_dtype(ctx.device)).clone()
    else:
        tensor = torch.tensor(float(value), dtype=reduction_dtype(ctx.device), device=ctx.device)
    with _communicating(ctx, "all_reduce"):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.sum().item())


def all_reduce_sum_on_device(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``value`` over all ranks, left on the device in the reduction dtype: nothing
    waits for the device (read it later, e.g. ``float(...)``, once for many steps)."""
    tensor = value.detach().to(ctx.device).to(reduction_dtype(ctx.device)).clone()
    if ctx.enabled:
        with _communicating(ctx, "all_reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: Union[float, int, torch.Tensor], ctx: DistContext) -> float:
    """Mean of ``value`` over all ranks, as a Python float (see :func:`all_reduce_sum`)."""
    return all_reduce_sum(value, ctx) / ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait for every rank. On gloo a monitored barrier names the rank that did not arrive."""
    if not ctx.enabled:
        return
    with _communicating(ctx, "barrier"):
        if ctx.backend == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=ctx.timeout_s))
        elif ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    with _communicating(ctx, "broadcast"):
        dist.broadcast_object_list(holder, src=src)
    return holder[0]


# --- model wrapping ---------------------------------------------------------------------


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules to shard one by one: the transformer blocks when the model has them."""
    for name in ("blocks", "layers", "h"):
        container = getattr(model, name, None)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container) > 0:
            return list(container)
    transformer = getattr(model, "transformer", None)
    if isinstance(transformer, nn.Module) and transformer is not model:
        return _fsdp_units(transformer)
    return []


class _LossForward(nn.Module):
    """Routes ``compute_loss`` through ``forward``.

    DDP synchronises gradients only for what runs through ``DDP.forward``; the model's own
    ``compute_loss`` calls the bare model and would skip the all-reduce silently.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model  # `.module`, like DDP, so generic unwrapping loops reach the model

    def forward(
        self, ids: torch.Tensor, targets: Optional[torch.Tensor] = None, **kwargs: Any
    ) -> Any:
        if targets is None:
            return self.module(ids, **kwargs)
        return self.module.compute_loss(ids, targets, **kwargs)


class DataParallel(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel with the model's ``compute_loss(ids, targets)`` kept usable.

    ``wrapped(ids)`` gives logits and ``wrapped.compute_loss(ids, targets)`` the loss, both
    through DDP's forward, so gradients are averaged across ranks in backward.
    """

    def compute_loss(self, ids: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> Any:
        return self(ids, targets, **kwargs)


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    strategy: str = "ddp",
    *,
    param_dtype: Optional[torch.dtype] = None,
    compile: bool = False,
) -> nn.Module:
    """Move ``model`` to ``ctx.device``, optionally compile it, and wrap it for data parallelism.

    ``"ddp"``: :class:`DataParallel` (DistributedDataParallel: every rank holds the whole
    model and optimizer state; gradients are averaged in backward). ``"fsdp"``: FSDP2
    ``fully_shard`` on each transformer block and on the root, so parameters, gradients and
    optimizer state are split across ranks; build the optimizer *after* wrapping. With no
    process group the model is only moved. In every case the result keeps ``model(ids)``
    and ``model.compute_loss(ids, targets)``; call those on the wrapped model (not on
    :func:`unwrap_model`'s result) while training, and enter :func:`micro_step` around each
    accumulation micro-step.

    ``param_dtype`` (FSDP only): the dtype parameters are gathered in for the forward and
    backward (bfloat16 when training under bf16 autocast); gradients are still reduced in
    float32 and the sharded parameters and optimizer state stay float32. ``compile``:
    ``torch.compile`` the bare model in place (each block under FSDP) *before* wrapping, so
    the compiled code is the model's and the wrapper's hooks and collectives stay outside
    it; :func:`uncompile` undoes it.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    model = model.to(ctx.device)
    sharded = ctx.enabled and strategy == "fsdp"
    if compile:
        units = _fsdp_units(model) if sharded else []
        # FSDP2 gathers each block's parameters in hooks around the block: compiling the
        # blocks one by one keeps those hooks between compiled regions
        for unit in units or [model]:
            unit.compile()
    if not ctx.enabled:
        return model
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # buffers are not broadcast before each forward: the model's only buffers are the
        # rotary tables, computed the same on every rank, and the broadcast would be one more
        # collective per step that no failure hook sees
        parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        # newer torch renames the option and warns on the old name; both skip the forward sync
        option = (
            "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
        )
        wrapped = DataParallel(_LossForward(model), device_ids=device_ids, **{option: False})
        wrapped.register_comm_hook(ctx.failures, _recording_all_reduce)
        return wrapped

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype,
        # summing the ranks' gradients in bfloat16 would lose their low bits
        reduce_dtype=torch.float32 if param_dtype is not None else None,
    )
    # tied weights (lm head = token embedding) must live in the same FSDP unit: the root
    # owns everything outside the blocks, so sharding only the blocks keeps the tie intact.
    # FSDP2 hooks the root's forward, which compute_loss calls, so both stay usable.
    for unit in _fsdp_units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def uncompile(model: nn.Module) -> None:
    """Undo :func:`wrap_model`'s in-place compile: the caller's model runs eagerly again."""
    for module in unwrap_model(model).modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


@contextlib.contextmanager
def micro_step(model: nn.Module, ctx: DistContext, last: bool) -> Iterator[None]:
    """Around one gradient-accumulation micro-step (its forward and backward).

    Gradients are exchanged only on the ``last`` micro-step of an optimizer step: DDP skips
    its all-reduce inside ``no_sync()``, FSDP2 (which has no ``no_sync``) its reduce-scatter
    after ``set_requires_gradient_sync(False)`` and keeps the unsharded gradients until then.
    """
    if not ctx.enabled or (last and not is_fsdp(model)):
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    bare = unwrap_model(model)
    setter = getattr(bare, "set_requires_gradient_sync", None)
    if setter is None:
        yield
        return
    # set on every micro-step (True on the last), so no step inherits an earlier one's flag
    setter(last)
    yield


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP / FSDP1 / torch.compile wrappers (FSDP2 wraps in place)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, _LossForward):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif type(model).__name__ == "FullyShardedDataParallel" and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    """True when ``model`` (or what it wraps) is sharded with FSDP2 ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap_model(model), FSDPModule)


def _plain_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
        key = key.replace("._fsdp_wrapped_module.", ".").replace("._orig_mod.", ".")
    return key


def full_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The whole model's weights with plain keys, on CPU, for a checkpoint.

    Collective under FSDP: every rank must call it; rank 0 gets the gathered tensors and
    the other ranks an empty dict. Under DDP (or one process) every rank gets its own
    (identical) copy. The result loads into a bare model on any number of processes.
    """
    if ctx.enabled and is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        with collective_guard(ctx, "state_dict gather"):
            state = get_model_state_dict(
                unwrap_model(model),
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
    else:
        state = unwrap_model(model).state_dict()
    plain = {_plain_key(k): v.detach().to("cpu", copy=True) for k, v in state.items()}
    # each copy above is a tensor of its own, so tied weights (lm head = token embedding)
    # would be saved twice and load untied: point every name of a shared parameter at one
    for names in _tied_names(unwrap_model(model)):
        present = [name for name in names if name in plain]
        for name in present[1:]:
            plain[name] = plain[present[0]]
    return plain


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one parameter (tied weights), plain keys."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(_plain_key(name))
    return [names for names in groups.values() if len(names) > 1]


def full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> dict[str, Any]:
    """The whole optimizer state keyed by parameter name, on CPU, for a checkpoint.

    One format for every strategy and world size (``state`` and each group's ``params``
    use the bare model's parameter names), so a DDP checkpoint resumes under FSDP and the
    other way round; ``torch.optim.Optimizer.load_state_dict`` also reads it (it matches
    parameters by position). Collective under FSDP: every rank must call it, rank 0 gets
    the gathered state, other ranks may get an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    with collective_guard(ctx, "optimizer state gather"):
        return get_optimizer_state_dict(
            unwrap_model(model),
            optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )


def _named_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """``optimizer.state_dict()``'s positional ids replaced by parameter names."""
    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(ordered):
        raise ValueError(
            f"saved optimizer state has {len(saved)} parameters, the optimizer {len(ordered)}"
        )
    rename = dict(zip(saved, ordered))
    return {
        "state": {rename[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [rename[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def load_full_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext
) -> None:
    """Load plain-key weights (from :func:`full_state_dict`) into a possibly wrapped model.

    Under FSDP every rank must call it; only rank 0's ``state`` is read (it is broadcast;
    the other ranks may pass ``{}``). Under DDP load before wrapping, or on every rank (DDP
    also broadcasts rank 0 at wrap).
    """
    if ctx.enabled and is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        with collective_guard(ctx, "state_dict broadcast"):
            # a copy: set_model_state_dict replaces the dict's tensors with shards in place
            set_model_state_dict(
                unwrap_model(model),
                dict(state),
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
            )
        return
    unwrap_model(model).load_state_dict(state)


def _positional_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """Name-keyed optimizer state mapped onto this optimizer's positional ids, by name."""
    names = {id(p): name for name, p in model.named_parameters()}
    position = {
        names[id(p)]: i
        for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])
    }

    def index(name: str) -> int:
        if name not in position:
            raise ValueError(f"saved optimizer state has parameter {name!r}, the model does not")
        return position[name]

    return {
        "state": {index(name): value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [index(name) for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], ctx: DistContext
) -> None:
    """Inverse of :func:`full_optimizer_state_dict`; also reads ``optimizer.state_dict()``'s
    positional form. Under FSDP the call is collective (call it before the first backward)
    and only rank 0's state is read and broadcast: the other ranks may pass ``{}``, so they
    never hold the whole state. The optimizer keeps its own ``fused`` / ``foreach`` choices."""
    raw = unwrap_model(model)
    sharded = ctx.enabled and is_fsdp(model)
    if sharded and not ctx.is_main:
        state = {}  # rank 0's state is broadcast; the others' is never read
    positional = bool(state) and is_positional_state(state)
    if state:
        state = _keep_implementation(optimizer, regrouped_optimizer_state(raw, optimizer, state))
    if not sharded:
        if not positional:
            state = _positional_optimizer_state(raw, optimizer, state)
        optimizer.load_state_dict(state)
        return

    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if positional:
        state = _named_optimizer_state(raw, optimizer, state)
    with collective_guard(ctx, "optimizer state load"):
        set_optimizer_state_dict(
            raw,
            optimizer,
            state,
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        )


def is_positional_state(state: dict[str, Any]) -> bool:
    """True for ``optimizer.state_dict()``'s form (parameters by position), False for the
    name-keyed form of :func:`full_optimizer_state_dict`, which training saves."""
    return any(isinstance(i, int) for g in state.get("param_groups", []) for i in g["params"])


def regrouped_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """A name-keyed `state` whose parameter groups are not the optimizer's (a checkpoint of
    an earlier lmrs: Muon's AdamW matrices were one group before the embeddings and the
    head had a group each), regrouped as the optimizer groups its parameters: each group
    takes the settings of the saved group that held its first parameter, and its own
    ``role`` / ``use_muon``. Unchanged when the groups already match, and for the
    positional form (its ids cannot be matched by name)."""
    if is_positional_state(state):
        return state
    names = {id(p): name for name, p in model.named_parameters()}
    current = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    saved_groups = state["param_groups"]
    if [list(g["params"]) for g in saved_groups] == current:
        return state
    holder = {name: group for group in saved_groups for name in group["params"]}
    missing = [name for names_ in current for name in names_ if name not in holder]
    if missing or len(holder) != sum(len(names_) for names_ in current):
        return state  # not a regrouping: the loaders' own checks name the difference
    groups = []
    for group, params in zip(optimizer.param_groups, current):
        if not params:
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": []})
            continue
        own = {k: group[k] for k in ("role", "use_muon") if k in group}
        groups.append({**holder[params[0]], **own, "params": params})
    return {**state, "param_groups": groups}


# how an optimizer runs, not what it learned: chosen for this run's device, never restored
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _keep_implementation(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each param group's implementation choices (``fused``, ``foreach``, ...)
    taken from ``optimizer``: a CPU checkpoint resumed on CUDA keeps the fused kernels, and
    torch also decides from these keys where to put the restored ``step`` counters.

    A new dict (the nested dicts copied, the tensors shared): the loaders replace entries
    in place, and the caller's state must stay as it was."""
    groups = state.get("param_groups", [])
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"saved optimizer state has {len(groups)} parameter groups, "
            f"the optimizer {len(optimizer.param_groups)}"
        )
    return {
        **state,
        "state": {key: dict(value) for key, value in state.get("state", {}).items()},
        "param_groups": [
            {**saved, **{k: current[k] for k in _IMPLEMENTATION_KEYS if k in current}}
            for saved, current in zip(groups, optimizer.param_groups)
        ],
    }


# --- launching --------------------------------------------------------------------------


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the re-run must not re-launch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command :func:`launch_local` runs: torchrun, standalone, ``-m lmrs ARGV``.

    ``--standalone`` binds torchrun's rendezvous store to port 0 (the kernel picks a free
    one) and the workers connect to that store, so no port is chosen before it is bound."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--standalone",
        "-m",
        "lmrs",
        *strip_nproc(argv),
    ]


def launch_local(nproc: int, argv: list[str]) -> int:
    """Re-run ``lmrs ARGV`` as ``nproc`` processes on this machine; returns torchrun's exit code.

    ``argv`` is the lmrs command line after the program name (``sys.argv[1:]``, e.g.
    ``["train", "--corpus", "data", "--nproc", "2"]``); ``--nproc`` is removed from it.
    On CPU each process gets an equal share of the cores (``OMP_NUM_THREADS``) unless set.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ValueError("--nproc cannot be used inside torchrun (the job is already distributed)")
    env = dict(os.environ)
    # with this opt-out torchrun picks a free port, closes it and has rank 0 bind it later:
    # another process can take it in between
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    if "OMP_NUM_THREADS" not in env and not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        return subprocess.run(torchrun_command(nproc, argv), env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130
