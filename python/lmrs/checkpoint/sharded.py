"""Sharded checkpoints: every rank writes its own part with ``torch.distributed.checkpoint``.

A sharded checkpoint is a checkpoint directory (:mod:`lmrs.checkpoint`) whose weights and
optimizer state are DCP files instead of ``model.safetensors`` / ``optimizer.pt``:

    .metadata           DCP's index of the shards (written by rank 0; marks the format)
    __R_N.distcp        rank R's part of the model and optimizer state
    state.json, model_config.json, train_config.json, tokenizer.json   as in a full one
    model.safetensors   the whole model, only once consolidated (the last save of a run,
                        or ``lmrs checkpoint consolidate``): what sample/eval/export read
    checksums.json      every file above, each rank hashing its own shards; written last

The save is as atomic as a full one: rank 0 makes ``checkpoint.tmp-XXXX`` and tells the
others its name, every rank writes its shards there and hashes them, rank 0 gathers the
hashes, writes the JSON files and checksums.json and renames the directory into place
(:func:`lmrs.checkpoint.commit_checkpoint`) while the others wait at a barrier. A crash
before checksums.json leaves a temporary directory no loader takes. The directory must be
on a file system every rank sees (a shared one across machines).

Loading goes through DCP's resharding: the state is read into this run's own (sharded or
plain) state dicts, so a checkpoint written by N processes resumes on any number,
under FSDP, DDP or a single process (no process group needed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

from torch import nn

from lmrs import distributed as dist_utils
from lmrs.checkpoint.store import (
    CHECKSUMS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    RUN_CHECKPOINT_NAME,
    SHARDED_METADATA_FILE,
    CheckpointError,
    commit_checkpoint,
    file_digest,
    is_checkpoint_dir,
    new_checkpoint_tmp,
    read_checkpoint_json,
    recover_checkpoint,
    resolve_checkpoint_dir,
    run_dir_of,
    verify_file,
    write_run_files,
    write_weights,
)
from lmrs.errors import one_line
from lmrs.jsonfile import read_json_object
from lmrs.runlock import run_lock

SHARD_SUFFIX = ".distcp"


@contextlib.contextmanager
def _quiet_without_group(ctx: dist_utils.DistContext) -> Iterator[None]:
    """DCP warns that it assumes one process when there is no group: here that is meant."""
    with warnings.catch_warnings():
        if not ctx.enabled:
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield


def is_sharded(directory: Path) -> bool:
    """True for a checkpoint written by :func:`save_sharded` (consolidated or not)."""
    return (directory / SHARDED_METADATA_FILE).is_file()


def _own_shards(directory: Path, rank: int) -> list[str]:
    """The shard files rank ``rank`` wrote (DCP names them ``__RANK_N.distcp``)."""
    prefix = f"__{rank}_"
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.startswith(prefix) and p.name.endswith(SHARD_SUFFIX)
    )


def save_sharded(
    final: Path,
    model: nn.Module,
    optimizer: Any,
    ctx: dist_utils.DistContext,
    state: Mapping[str, Any],
    model_config: Any,
    train_config: Any = None,
    tokenizer: Any = None,
    *,
    keep: int = 1,
    consolidate: bool = False,
) -> Optional[Path]:
    """Write a sharded checkpoint at ``final`` (collective: every rank calls it).

    ``consolidate``: also gather the whole model into ``model.safetensors`` (rank 0 holds
    it once, on the CPU). Returns ``final`` on rank 0, None on the others.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = new_checkpoint_tmp(final) if ctx.is_main else None
    tmp = Path(dist_utils.broadcast_object(None if tmp is None else str(tmp), ctx))
    try:
        with dist_utils.collective_guard(ctx, "sharded checkpoint save"), _quiet_without_group(ctx):
            model_state, optimizer_state = get_state_dict(dist_utils.unwrap_model(model), optimizer)
            dcp.save(
                {"model": model_state, "optimizer": optimizer_state},
                storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True),
            )
        # each rank hashes what it wrote, so no rank reads the whole checkpoint
        digests = {name: file_digest(tmp / name) for name in _own_shards(tmp, ctx.rank)}
        every = _gather(digests, ctx)
        full = dist_utils.full_state_dict(model, ctx) if consolidate else None
        path = None
        if ctx.is_main:
            sums: dict[str, Any] = {}
            for part in every:
                sums.update(part)
            sums[SHARDED_METADATA_FILE] = file_digest(tmp / SHARDED_METADATA_FILE)
            if full is not None:
                write_weights(tmp / MODEL_FILE, full)
                sums[MODEL_FILE] = file_digest(tmp / MODEL_FILE)
            for name in write_run_files(tmp, state, model_config, train_config, tokenizer):
                sums[name] = file_digest(tmp / name)
            path = commit_checkpoint(tmp, final, sums, keep=keep)
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist_utils.barrier(ctx)
    return path


def _gather(value: Any, ctx: dist_utils.DistContext) -> list[Any]:
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    with dist_utils.collective_guard(ctx, "checkpoint checksums"):
        dist.all_gather_object(out, value)
    return out


def verify_shards(directory: Path, ctx: dist_utils.DistContext) -> None:
    """Check the DCP files against checksums.json, the work split among the ranks (each
    hashes every ``world_size``-th file); every rank raises the first problem any found."""
    sums_path = directory / CHECKSUMS_FILE
    problem: Optional[str] = None
    if not sums_path.is_file():
        problem = f"{sums_path}: missing (incomplete checkpoint)"
    else:
        try:
            sums = read_json_object(sums_path, "checksums", CheckpointError)
            names = sorted(
                n for n in sums if n == SHARDED_METADATA_FILE or n.endswith(SHARD_SUFFIX)
            )
            for name in names[ctx.rank :: ctx.world_size]:
                verify_file(directory, name, sums[name], sums_path)
            on_disk = {p.name for p in directory.iterdir() if p.name.endswith(SHARD_SUFFIX)}
            unrecorded = sorted(on_disk - set(sums))
            if unrecorded:
                raise CheckpointError(f"{directory / unrecorded[0]}: not recorded in {sums_path}")
        except CheckpointError as e:
            problem = str(e)
    problems = [p for p in _gather(problem, ctx) if p is not None]
    if problems:
        raise CheckpointError(problems[0])


def load_sharded(
    directory: Path, model: nn.Module, optimizer: Any, ctx: dist_utils.DistContext
) -> None:
    """Read a sharded checkpoint into ``model`` (wrapped or not) and ``optimizer``, resharded
    for this run (collective when a process group exists)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    verify_shards(directory, ctx)
    bare = dist_utils.unwrap_model(model)
    try:
        with dist_utils.collective_guard(ctx, "sharded checkpoint load"), _quiet_without_group(ctx):
            model_state, optimizer_state = get_state_dict(bare, optimizer)
            wanted = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(wanted, storage_reader=dcp.FileSystemReader(str(directory)))
            set_state_dict(
                bare,
                optimizer,
                model_state_dict=wanted["model"],
                optim_state_dict=wanted["optimizer"],
            )
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, dist_utils.DistributedError):
            raise
        raise CheckpointError(
            f"{directory / SHARDED_METADATA_FILE}: cannot restore this model and optimizer "
            f"from the sharded checkpoint: {one_line(e)}"
        ) from e


def consolidate(path: Any) -> Path:
    """Give a sharded checkpoint its ``model.safetensors`` (one process, no group): the
    directory is rebuilt beside itself (hard links to its files, copies where links are
    not possible) with the weights and new checksums, then swapped in atomically. Returns
    the checkpoint directory; one that already has the file is left as it is. Holds the
    run's lock (:mod:`lmrs.runlock`): refused while the run trains."""
    with run_lock(run_dir_of(path), "lmrs checkpoint consolidate"):
        return _consolidate(path)


def _consolidate(path: Any) -> Path:
    import torch.distributed.checkpoint as dcp

    from lmrs.checkpoint.store import check_weight_shapes
    from lmrs.model.gpt import GPT

    if not is_checkpoint_dir(Path(path)):  # a run directory: its checkpoint/ may need recovery
        recover_checkpoint(Path(path) / RUN_CHECKPOINT_NAME)
    directory = resolve_checkpoint_dir(path)
    if not is_sharded(directory):
        if (directory / MODEL_FILE).is_file():
            return directory  # a full checkpoint is consolidated by nature
        raise CheckpointError(f"{directory}: not a checkpoint ({MODEL_FILE} missing)")
    if (directory / MODEL_FILE).is_file():
        check_weight_shapes(directory, _model_config(directory))
        return directory
    verify_shards(directory, dist_utils.DistContext())
    config = _model_config(directory)
    model = GPT(config)
    weights = model.state_dict()
    try:
        with _quiet_without_group(dist_utils.DistContext()):
            dcp.load({"model": weights}, storage_reader=dcp.FileSystemReader(str(directory)))
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{directory / SHARDED_METADATA_FILE}: the shards do not hold this model "
            f"({directory / MODEL_CONFIG_FILE}): {one_line(e)}"
        ) from e
    sums = dict(read_json_object(directory / CHECKSUMS_FILE, "checksums", CheckpointError))
    tmp = new_checkpoint_tmp(directory)
    try:
        for name in sums:
            _link_or_copy(directory / name, tmp / name)
        write_weights(tmp / MODEL_FILE, weights)
        sums[MODEL_FILE] = file_digest(tmp / MODEL_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # same step, same run: the unconsolidated copy is replaced, nothing kept or pruned
    return commit_checkpoint(tmp, directory, sums, keep=None)


def _model_config(directory: Path) -> Any:
    from lmrs.model.gpt import ModelConfig

    try:
        return ModelConfig.from_dict(read_checkpoint_json(directory, MODEL_CONFIG_FILE))
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{directory / MODEL_CONFIG_FILE}: invalid model config: {one_line(e)}"
        ) from e


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


__all__ = ["consolidate", "is_sharded", "load_sharded", "save_sharded", "verify_shards"]
