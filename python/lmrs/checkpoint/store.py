"""Checkpoints: everything a resume or a sample needs, written atomically.

A checkpoint is a directory (DESIGN.md):

    model.safetensors   weights (a plain, unwrapped state dict; tied weights stored once)
    optimizer.pt        optimizer state (torch.save of a plain state dict)
    state.json          step, epoch, tokens seen, RNG states, metrics so far
    model_config.json   ModelConfig.to_dict()
    train_config.json   the TrainConfig as a dict
    tokenizer.json      the tokenizer the model was trained with (when known)
    checksums.json      size and SHA-256 of every file above; written last, so its presence
                        marks a complete checkpoint, and every load verifies what it reads

It is written into ``DIR.tmp-PID-XXXX`` (each file fsynced) and renamed into place; an
existing ``DIR`` is first renamed to ``DIR.old-PID-XXXX`` and removed after the new one is in
place, so a crash at any point leaves either the old or the new checkpoint complete. When
``DIR`` is missing (a crash between the two renames), :func:`resolve_checkpoint_dir` takes the
complete, verified ``DIR.old-*`` / ``DIR.tmp-*`` with the highest recorded step (at equal
steps the ``.tmp-*``, the newer write) and says so on stderr; a writer, holding the run's lock
(:mod:`lmrs.runlock`), first puts that one back in ``DIR``'s place
(:func:`recover_checkpoint`). Each successful save removes the ``.tmp-*`` / ``.old-*``
leftovers of earlier crashes whose writing process is gone (the PID in their name).

A training run directory holds its latest checkpoint in ``RUN/checkpoint``; every loader
accepts the run directory or the checkpoint directory. With ``keep > 1`` the checkpoint a
save replaces is renamed to ``RUN/checkpoint-STEP`` instead of being removed (the rename
takes the place of the ``.old-*`` one, so there is no extra crash window), and the kept
ones beyond the newest ``keep - 1`` are removed, as are kept ones with a step above the new
checkpoint's (the future of a run that resumed from an earlier step). Given a run directory,
the loaders check ``RUN/checkpoint`` against its checksums when kept checkpoints exist
beside it and fall back to the newest complete one that verifies, saying so on stderr.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmrs.atomic import default_mode, fsync_dir, fsync_file, process_gone
from lmrs.distributed import regrouped_optimizer_state, unwrap_model
from lmrs.errors import InputError, one_line
from lmrs.faults import fault_point
from lmrs.jsonfile import is_plain_name, read_json_object

PathLike = Union[str, "os.PathLike[str]"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
MODEL_CONFIG_FILE = "model_config.json"
TRAIN_CONFIG_FILE = "train_config.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKSUMS_FILE = "checksums.json"
RUN_CHECKPOINT_NAME = "checkpoint"
# torch.distributed.checkpoint's metadata file: its presence marks a sharded checkpoint
SHARDED_METADATA_FILE = ".metadata"

# Model config fields that do not change the weights: a checkpoint loads across them.
CONFIG_FIELDS_NOT_IN_WEIGHTS = {"dropout_rate", "gradient_checkpointing", "seed"}


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or does not fit; the message names the file."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read (weights and optimizer state go into the objects)."""

    path: Path
    state: dict[str, Any]
    model_config: dict[str, Any]
    train_config: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def tokenizer_path(self) -> Optional[Path]:
        path = self.path / TOKENIZER_FILE
        return path if path.is_file() else None


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    raise TypeError(f"cannot turn {type(config).__name__} into a config dict")


def _field_defaults(config: Any) -> dict[str, Any]:
    """Defaults of a config dataclass: a field added after a checkpoint was saved takes its
    default there (new fields default to the older code's behaviour)."""
    if not is_dataclass(config) or isinstance(config, type):
        return {}
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as checksums.json records them."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def save_model_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors; tensors sharing memory (tied weights) stored once."""
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state_dict.items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read weights written by :func:`save_model_weights`, tied names restored."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights: {one_line(e)}") from e
    try:
        aliases = json.loads(header.get("__metadata__", {}).get("aliases", "{}"))
        for alias, target in aliases.items():
            tensors[alias] = tensors[target]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed 'aliases' metadata: {one_line(e)}") from e
    for name, tensor in tensors.items():
        # training never saves a non-finite weight (a NaN loss stops it first): such a
        # value is damage that no checksum recorded (a checkpoint from before checksums)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values: corrupted")
    return tensors


def encode_rng_state(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng_state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Torch RNG states (CPU and every CUDA device) as JSON-friendly strings."""
    state: dict[str, Any] = {"torch": encode_rng_state(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [encode_rng_state(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where CUDA is present)."""
    if "torch" in state:
        torch.set_rng_state(decode_rng_state(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [decode_rng_state(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(
    directory: PathLike,
    model: Optional[nn.Module],
    optimizer: Optional[torch.optim.Optimizer],
    state: Mapping[str, Any],
    model_config: Any,
    train_config: Any = None,
    tokenizer: Any = None,
    *,
    model_state: Optional[Mapping[str, torch.Tensor]] = None,
    optimizer_state: Optional[Mapping[str, Any]] = None,
    keep: int = 1,
) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    ``model_state`` / ``optimizer_state`` override the state dicts taken from ``model`` /
    ``optimizer`` (for distributed runs that gather full state dicts first). ``tokenizer`` is
    anything with ``save(path)`` (an ``lmrs.Tokenizer``) or a path to a tokenizer file.
    ``keep``: checkpoints to keep, this one included (the older ones as ``NAME-STEP``).
    """
    final = Path(directory)
    tmp = new_checkpoint_tmp(final)
    with _removed_on_failure(tmp, final):
        if model_state is None:
            if model is None:
                raise ValueError("save_checkpoint needs a model or a model_state")
            model_state = unwrap_model(model).state_dict()
        names = [MODEL_FILE]
        _write_checked(tmp / MODEL_FILE, lambda p: save_model_weights(model_state, p))
        fault_point("checkpoint.weights_written")
        if optimizer_state is None and optimizer is not None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            _write_checked(tmp / OPTIMIZER_FILE, lambda p: torch.save(optimizer_state, p))
            names.append(OPTIMIZER_FILE)
            fault_point("checkpoint.optimizer_written")
        names += write_run_files(tmp, state, model_config, train_config, tokenizer)
        fault_point("checkpoint.files_written")
        checksums = {name: file_digest(tmp / name) for name in names}
    return commit_checkpoint(tmp, final, checksums, keep=keep)


def write_run_files(
    tmp: Path, state: Mapping[str, Any], model_config: Any, train_config: Any, tokenizer: Any
) -> list[str]:
    """state.json, model_config.json, train_config.json and tokenizer.json (when there is a
    tokenizer) into ``tmp``, each fsynced; returns their names."""
    names = []
    for name, value in (
        (STATE_FILE, dict(state)),
        (MODEL_CONFIG_FILE, _as_dict(model_config)),
        (TRAIN_CONFIG_FILE, _as_dict(train_config)),
    ):
        _write_checked(tmp / name, lambda p, v=value: _fsync_write(p, _json_bytes(v)))
        names.append(name)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            source = Path(tokenizer)
            _write_checked(tmp / TOKENIZER_FILE, lambda p: shutil.copyfile(source, p))
        else:
            _write_checked(tmp / TOKENIZER_FILE, lambda p: tokenizer.save(str(p)))
        names.append(TOKENIZER_FILE)
    return names


def write_weights(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``model.safetensors`` at ``path`` (:func:`save_model_weights`), fsynced."""
    _write_checked(path, lambda p: save_model_weights(state_dict, p))


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, final: Path) -> Iterator[None]:
    """Around the writes of a checkpoint save: on any failure the temporary directory goes,
    and an OSError becomes one line naming ``final`` (full disk, permissions)."""
    try:
        yield
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, final) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_checkpoint_tmp(final: Path) -> Path:
    """A fresh ``final.tmp-XXXX`` directory beside ``final``, for a save to fill."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise CheckpointError(f"{final}: exists and is not a directory")
    tmp = final.with_name(f"{final.name}.tmp-{_writer_tag()}")
    tmp.mkdir()
    os.chmod(tmp, 0o777 & ~(0o666 ^ default_mode()))  # like mkdir under the umask, not 0700
    fault_point("checkpoint.tmp_created")
    return tmp


def commit_checkpoint(
    tmp: Path, final: Path, checksums: Mapping[str, Any], *, keep: Optional[int] = 1
) -> Path:
    """Finish a save: write ``checksums`` (``{file: file_digest}`` of every file in ``tmp``)
    as checksums.json, then put ``tmp`` in ``final``'s place (the replaced checkpoint kept as
    ``final-STEP`` when ``keep > 1``), prune kept ones and remove crash leftovers.
    ``keep=None``: a rewrite of the same checkpoint, which replaces it and prunes nothing."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    with _removed_on_failure(tmp, final):
        # written last: its presence marks the directory as a complete checkpoint
        _write_checked(
            tmp / CHECKSUMS_FILE, lambda p: _fsync_write(p, _json_bytes(dict(checksums)))
        )
        fsync_dir(tmp)
        _replace_dir(tmp, final, keep=keep or 1)
    if keep is not None:
        prune_kept_checkpoints(final, keep, _saved_step(final))
    remove_checkpoint_leftovers(final)
    fault_point("checkpoint.cleaned")
    return final


def _write_checked(path: Path, write: Any) -> None:
    """Run ``write(path)``, then give the file normal permissions and fsync it."""
    try:
        write(path)
    except (RuntimeError, SafetensorError) as e:
        # torch.save's zip writer and safetensors report OS errors as their own types,
        # with the OS error only in the text: a full disk must still read as one
        text = str(e)
        if "No space left on device" in text or "file write failed" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    os.chmod(path, default_mode())
    fsync_file(path)


def _write_error(error: OSError, final: Path) -> OSError:
    """The same error, naming the checkpoint (not the temporary file that failed)."""
    return OSError(error.errno, error.strerror or str(error), str(final))


def _writer_tag() -> str:
    """``PID-XXXXXXXX``: the writing process (so that only a dead writer's debris is
    removed) and a random part (so that no two saves share a name)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _writer_gone(leftover: Path) -> bool:
    """Whether the process that wrote ``NAME.tmp-PID-XXXX`` / ``.old-PID-XXXX`` is gone (or
    is this one, whose own saves are finished); names without a PID come from versions
    before the run lock, whose writers cannot still be saving into a locked run."""
    tag = leftover.name.rsplit(".", 1)[-1].split("-")
    if len(tag) == 3 and tag[1].isdigit():
        pid = int(tag[1])
        return pid == os.getpid() or process_gone(pid)
    return True


def checkpoint_leftovers(final: Path) -> list[Path]:
    """``final``'s ``.tmp-*`` / ``.old-*`` sibling directories (saves in progress or crashed)."""
    if not final.parent.is_dir():
        return []
    return [
        path
        for kind in ("tmp", "old")
        for path in sorted(final.parent.glob(f"{glob.escape(final.name)}.{kind}-*"))
        if path.is_dir() and not path.is_symlink()
    ]


def remove_checkpoint_leftovers(final: Path) -> int:
    """Remove ``final``'s ``.tmp-*`` / ``.old-*`` siblings whose writer is gone (debris of
    crashed saves); a live writer's temporary directory is left alone."""
    removed = 0
    for stale in checkpoint_leftovers(final):
        if _writer_gone(stale):
            shutil.rmtree(stale, ignore_errors=True)
            removed += 1
    return removed


def holds_checkpoints(run_dir: PathLike) -> bool:
    """Whether ``run_dir`` holds any checkpoint of a trained run: ``checkpoint/``, kept
    ``checkpoint-STEP`` ones, or the complete copies an interrupted save left beside them."""
    final = Path(run_dir) / RUN_CHECKPOINT_NAME
    return final.exists() or bool(kept_checkpoints(final)) or _newest_leftover(final) is not None


def recover_checkpoint(final: Path) -> Optional[Path]:
    """Put the newest complete copy of a missing ``final`` (left by a save or consolidation
    that died between its two renames) back in its place; returns what it restored from.
    Only a writer holding the run's lock calls this: readers resolve without renaming."""
    if final.exists():
        return None
    recovered = _newest_leftover(final)
    if recovered is None:
        return None
    directory, step = recovered
    os.rename(directory, final)
    fsync_dir(final.parent)
    remove_checkpoint_leftovers(final)  # the copy it replaced, if a dead writer left one
    print(
        f"lmrs: {final} was missing (a save was interrupted); restored it from "
        f"{directory.name} (step {step})",
        file=sys.stderr,
    )
    return directory


def kept_checkpoints(final: Path) -> list[tuple[int, Path]]:
    """``final``'s kept predecessors ``final-STEP`` as (step, path), oldest first."""
    kept = []
    if final.parent.is_dir():
        for path in final.parent.glob(f"{glob.escape(final.name)}-*"):
            suffix = path.name[len(final.name) + 1 :]
            if suffix.isdigit() and path.is_dir() and not path.is_symlink():
                kept.append((int(suffix), path))
    return sorted(kept)


def kept_name(final: Path, step: int) -> Path:
    return final.with_name(f"{final.name}-{step}")


def prune_kept_checkpoints(final: Path, keep: int, step: Optional[int]) -> None:
    """Keep the newest ``keep - 1`` of ``final``'s kept checkpoints with a step below
    ``step`` (the one just saved); remove the rest, those above ``step`` included."""
    kept = kept_checkpoints(final)
    older = [path for s, path in kept if step is None or s < step]
    stale = [path for s, path in kept if step is not None and s >= step]
    for path in stale + older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)


def _saved_step(directory: Path) -> Optional[int]:
    """The step of a complete checkpoint (checksums.json present), else None."""
    if not (directory / CHECKSUMS_FILE).is_file():
        return None
    try:
        step = _read_json(directory / STATE_FILE).get("step", 0)
    except CheckpointError:
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def _replace_dir(tmp: Path, final: Path, *, keep: int = 1) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is kept until the rename is done
    (as ``final-STEP`` for good when ``keep > 1``)."""
    if final.exists():
        step = _saved_step(final) if keep > 1 else None
        aside = kept_name(final, step) if step is not None else None
        if aside is None or aside.exists():
            aside = final.with_name(f"{final.name}.old-{_writer_tag()}")
        os.rename(final, aside)
        fault_point("checkpoint.old_renamed")
        os.rename(tmp, final)
        fault_point("checkpoint.new_renamed")
        fsync_dir(final.parent)
        if ".old-" in aside.name:
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
        fault_point("checkpoint.new_renamed")
        fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def resolve_checkpoint_dir(path: PathLike, *, quiet: bool = False) -> Path:
    """The checkpoint directory for ``path``: itself, or a run directory's ``checkpoint/``.

    When that directory is missing but a crashed save left complete copies beside it
    (``NAME.old-*``, ``NAME.tmp-*``, kept ``NAME-STEP``), the one with the highest recorded
    step whose files match their checksums is used, and a line on stderr says which (unless
    ``quiet``). A run directory whose ``checkpoint/`` has kept predecessors beside it falls
    back the same way when ``checkpoint/`` does not match its checksums.
    """
    path = Path(path)
    if is_checkpoint_dir(path):
        return path
    candidate = path if not path.exists() else path / RUN_CHECKPOINT_NAME
    problem = None
    if is_checkpoint_dir(candidate):
        if not kept_checkpoints(candidate):
            return candidate
        try:
            verify_checkpoint(candidate)
            return candidate
        except CheckpointError as e:
            problem = str(e)
    elif candidate.exists():
        return _not_a_checkpoint(path)
    recovered = _newest_leftover(candidate)
    if recovered is not None:
        directory, step = recovered
        if not quiet:
            why = problem or f"{candidate} is missing (a save was interrupted)"
            print(f"lmrs: {why}; using {directory} (step {step})", file=sys.stderr)
        return directory
    if problem is not None:
        raise CheckpointError(problem)
    return _not_a_checkpoint(path)


# TrainConfig fields that change how a run reports, not what it computes
REPORTING_FIELDS = {"show_progress", "log_to", "dist_timeout_s", "adapt_threads"}


def checkpoint_of_run(run_dir: PathLike, train_config: Any) -> Optional[Path]:
    """The newest complete checkpoint in ``run_dir`` saved with ``train_config`` (fields
    that only change the reporting aside), or None: what a restarted job continues from."""
    try:
        path = resolve_checkpoint_dir(run_dir, quiet=True)
        saved = read_checkpoint_json(path, TRAIN_CONFIG_FILE)
    except CheckpointError:
        return None
    current = _as_dict(train_config)
    same = all(
        saved.get(key) == value for key, value in current.items() if key not in REPORTING_FIELDS
    )
    return path if same else None


def is_checkpoint_dir(path: Path) -> bool:
    """A checkpoint directory (full or sharded, complete or not), not a run directory."""
    return (path / MODEL_FILE).is_file() or (path / SHARDED_METADATA_FILE).is_file()


def run_dir_of(path: PathLike) -> Path:
    """The directory a checkpoint writer locks (:mod:`lmrs.runlock`): ``path`` for a run
    directory, the parent for a checkpoint directory (where its ``.tmp-*`` / ``.old-*`` /
    kept siblings are made)."""
    path = Path(path)
    return path.parent if is_checkpoint_dir(path) else path


def _not_a_checkpoint(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if path.is_file():
        raise CheckpointError(f"{path}: is a file, not a checkpoint or run directory")
    raise CheckpointError(f"{path}: not a checkpoint ({MODEL_FILE} missing)")


def _newest_leftover(candidate: Path) -> Optional[tuple[Path, int]]:
    """The complete, verified ``candidate.old-*`` / ``.tmp-*`` / kept ``candidate-STEP``
    with the highest step; at equal steps a ``.tmp-*`` (the newer write: a consolidation
    rewrites the same step) before an ``.old-*`` before a kept one."""
    best: Optional[tuple[int, int, Path]] = None
    kept = [path for _, path in kept_checkpoints(candidate)]
    for directory in checkpoint_leftovers(candidate) + kept:
        try:
            verify_checkpoint(directory, require_checksums=True)
            step = int(_read_json(directory / STATE_FILE).get("step", 0))
        except (CheckpointError, TypeError, ValueError):
            continue
        rank = 2 if ".tmp-" in directory.name else 1 if ".old-" in directory.name else 0
        if best is None or (step, rank) > best[:2]:
            best = (step, rank, directory)
    return None if best is None else (best[2], best[0])


def verify_checkpoint(directory: Path, *, require_checksums: bool = False) -> None:
    """Check every file against checksums.json; CheckpointError names the first that differs.

    Checkpoints from before checksums.json pass unchecked unless ``require_checksums``.
    """
    sums_path = directory / CHECKSUMS_FILE
    if not sums_path.is_file():
        if require_checksums:
            raise CheckpointError(f"{sums_path}: missing (incomplete checkpoint)")
        return
    for name, expected in read_json_object(sums_path, "checksums", CheckpointError).items():
        verify_file(directory, name, expected, sums_path)


def verify_file(directory: Path, name: str, expected: Any, sums_path: Path) -> None:
    """One file of a checkpoint against its checksums.json entry."""
    if not is_plain_name(name) or not isinstance(expected, dict):
        raise CheckpointError(f"{sums_path}: malformed entry {name!r}")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        actual = file_digest(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from e
    if actual["size"] != expected.get("size"):
        raise CheckpointError(
            f"{path}: size {actual['size']} does not match the checkpoint's record "
            f"({expected.get('size')!r}): truncated or replaced"
        )
    if actual["sha256"] != expected.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted")


def verified_file(directory: Path, name: str) -> Path:
    """``directory/name`` after checking it against checksums.json (when there is one)."""
    sums_path = directory / CHECKSUMS_FILE
    if sums_path.is_file():
        sums = read_json_object(sums_path, "checksums", CheckpointError)
        if name not in sums:
            if (directory / name).exists():
                raise CheckpointError(f"{directory / name}: not recorded in {sums_path}")
        else:
            verify_file(directory, name, sums[name], sums_path)
    return directory / name


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    return read_json_object(path, "checkpoint file", CheckpointError)


def read_checkpoint_json(directory: Path, name: str) -> dict[str, Any]:
    """A JSON file of a checkpoint, verified against checksums.json."""
    return _read_json(verified_file(directory, name))


# state.json fields a resume reads, and the types they must have
STATE_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "tokens": (int,),
    "elapsed_s": (int, float),
    "epoch": (int, float),
    "world_size": (int,),
    "rng": (dict,),
    "metrics": (dict,),
    "data": (dict,),
}


def check_state(state: Mapping[str, Any], path: Path) -> None:
    """state.json's fields have the types a resume needs (bool is not a number here)."""
    for key, types in STATE_TYPES.items():
        if key not in state:
            continue
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(f"{path}: {key!r} must be {types[0].__name__}, got {value!r}")
        if key in ("step", "tokens") and value < 0:
            raise CheckpointError(f"{path}: {key!r} must be >= 0, got {value}")
    rng = state.get("rng", {})
    for key in ("torch",):
        if key in rng and not isinstance(rng[key], str):
            raise CheckpointError(f"{path}: rng.{key} must be a string")


def check_train_config(train_config: Mapping[str, Any], path: Path) -> None:
    """train_config.json is a valid TrainConfig (or empty: saved without one)."""
    if not train_config:
        return
    from lmrs.options import TrainConfig

    try:
        TrainConfig.from_dict(dict(train_config)).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid training config: {one_line(e)}") from e


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Fields that change the weights and differ, as 'name saved != current'."""
    keys = sorted((set(saved) | set(current)) - CONFIG_FIELDS_NOT_IN_WEIGHTS)
    return [
        f"{key} {saved.get(key)!r} != {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def check_tokenizer(directory: Path, model_config: Mapping[str, Any], tokenizer: Any) -> None:
    """The checkpoint's tokenizer must be ``tokenizer`` (same hash, same vocab size)."""
    vocab_size = model_config.get("vocab_size")
    if vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{directory / MODEL_CONFIG_FILE}: model has vocab_size {vocab_size} but the "
            f"tokenizer has {tokenizer.vocab_size}"
        )
    saved_path = directory / TOKENIZER_FILE
    if saved_path.is_file():
        saved_hash = read_checkpoint_json(directory, TOKENIZER_FILE).get("hash")
        if saved_hash is not None and saved_hash != tokenizer.hash:
            raise CheckpointError(
                f"{saved_path}: the checkpoint was trained with another tokenizer "
                f"(hash {str(saved_hash)[:12]}…, given {tokenizer.hash[:12]}…)"
            )


def load_checkpoint(
    directory: PathLike,
    model: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    *,
    tokenizer: Any = None,
    map_location: Union[str, torch.device] = "cpu",
) -> Checkpoint:
    """Read a checkpoint, loading weights into ``model`` and state into ``optimizer``.

    Checks, each failing with a :class:`CheckpointError` naming the file: required files
    present, the model's config equal to the saved one (fields that change weights), the
    tokenizer's hash and vocab size equal to the checkpoint's, weights matching the model.
    """
    path = resolve_checkpoint_dir(directory)
    model_config = read_checkpoint_json(path, MODEL_CONFIG_FILE)
    train_config = read_checkpoint_json(path, TRAIN_CONFIG_FILE)
    state = read_checkpoint_json(path, STATE_FILE)
    check_state(state, path / STATE_FILE)
    check_train_config(train_config, path / TRAIN_CONFIG_FILE)
    if tokenizer is not None:
        check_tokenizer(path, model_config, tokenizer)
    if model is not None:
        plain = unwrap_model(model)
        config = getattr(plain, "config", None)
        current = _as_dict(config)
        if current:
            saved = {**_field_defaults(config), **model_config}
            differences = config_differences(saved, current)
            if differences:
                raise CheckpointError(
                    f"{path / MODEL_CONFIG_FILE}: saved for a different model: "
                    + ", ".join(differences)
                )
        load_weights_into(plain, verified_file(path, MODEL_FILE))
    if optimizer is not None:
        optimizer_state = read_optimizer_state(path, map_location)
        try:
            if model is not None:
                optimizer_state = regrouped_optimizer_state(
                    unwrap_model(model), optimizer, optimizer_state
                )
            optimizer.load_state_dict(optimizer_state)
        except Exception as e:  # noqa: BLE001 - a state of the wrong shape fails in many ways
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE}: cannot restore optimizer: {one_line(e)}"
            ) from e
    return Checkpoint(path=path, state=state, model_config=model_config, train_config=train_config)


def load_weights_into(model: nn.Module, weights_path: Path) -> None:
    """Loads the weights file (already checked against checksums.json) into `model`,
    every tensor by name and shape."""
    weights = load_model_weights(weights_path)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{weights_path}: weights do not fit the model: "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from e


def read_optimizer_state(
    directory: Path, map_location: Union[str, torch.device] = "cpu"
) -> dict[str, Any]:
    """optimizer.pt of a checkpoint, verified; CheckpointError naming it if it is missing,
    does not match its checksum, or does not unpickle to a dict."""
    path = directory / OPTIMIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, cannot resume the optimizer")
    try:
        state = torch.load(
            verified_file(directory, OPTIMIZER_FILE), map_location=map_location, weights_only=True
        )
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise nearly anything
        raise CheckpointError(f"{path}: cannot read the optimizer state: {one_line(e)}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: cannot read the optimizer state: not a dict")
    return state


def check_weight_shapes(path: Path, config: Any, *, weights_path: Optional[Path] = None) -> None:
    """The weights file holds exactly the tensors ``config`` describes, compared on the
    safetensors header before any memory is allocated: a config edited to absurd sizes
    is an error naming it, never an attempt to allocate them. `weights_path`: the
    checkpoint's weights file when the caller has already checked it against
    checksums.json (it is checked here otherwise)."""
    from lmrs.model.gpt import GPT

    if weights_path is None:
        weights_path = verified_file(path, MODEL_FILE)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: cannot read weights: {one_line(e)}") from e
    if not isinstance(aliases, dict):
        raise CheckpointError(f"{weights_path}: malformed 'aliases' metadata")
    for alias, target in aliases.items():
        if target in stored:
            stored[alias] = stored[target]
    # cheap checks first, so that an absurd depth or width is never even built on "meta"
    layers = {name.split(".")[1] for name in stored if name.startswith("blocks.")}
    embedding = stored.get("token_embedding.weight")
    if len(layers) != config.num_layers or embedding != (config.vocab_size, config.embed_dim):
        raise CheckpointError(
            f"{path / MODEL_CONFIG_FILE}: does not describe the weights in {MODEL_FILE} "
            f"({len(layers)} layers and embedding {embedding} there; the config gives "
            f"{config.num_layers} and {(config.vocab_size, config.embed_dim)})"
        )
    try:
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in GPT(config).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError, TypeError) as e:
        raise CheckpointError(
            f"{path / MODEL_CONFIG_FILE}: cannot build this model: {one_line(e)}"
        ) from e
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            raise CheckpointError(
                f"{path / MODEL_CONFIG_FILE}: does not describe the weights in {MODEL_FILE}: "
                f"{name} is {stored.get(name)} there, the config gives {expected.get(name)}"
            )


def load_model(
    directory: PathLike, *, device: Union[str, torch.device] = "cpu"
) -> tuple[nn.Module, Checkpoint]:
    """A GPT built from the checkpoint's model config, weights loaded, in eval mode."""
    from lmrs.model.gpt import GPT, ModelConfig

    path = resolve_checkpoint_dir(directory)
    if not (path / MODEL_FILE).is_file() and (path / SHARDED_METADATA_FILE).is_file():
        raise CheckpointError(
            f"{path}: a sharded checkpoint without {MODEL_FILE}: run "
            f"`lmrs checkpoint consolidate {path}` first"
        )
    config_dict = read_checkpoint_json(path, MODEL_CONFIG_FILE)
    try:
        config = ModelConfig.from_dict(config_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path / MODEL_CONFIG_FILE}: invalid model config: {one_line(e)}"
        ) from e
    # hashed once (a large weights file took two full reads): shapes from its header,
    # then the tensors
    weights_path = verified_file(path, MODEL_FILE)
    check_weight_shapes(path, config, weights_path=weights_path)
    model = GPT(config)
    checkpoint = load_checkpoint(path)
    load_weights_into(model, weights_path)
    model.to(device).eval()
    return model, checkpoint
