"""Property tests: checkpoints whose JSON files are replaced by random structures, or
mutated (keys retyped, deleted, bytes truncated), load or fail with CheckpointError, never
any other exception. Run with and without checksums.json (an old checkpoint's files are
read unverified, so their content checks are what stands between them and a crash)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmrs.checkpoint.store import CheckpointError, load_checkpoint, load_model, save_checkpoint
from lmrs.model.gpt import create_small_model
from lmrs.training.trainer import TrainConfig, create_optimizer

JSON_FILES = ["state.json", "model_config.json", "train_config.json", "checksums.json"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    model = create_small_model(
        64, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2, ff_dim=32
    )
    optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
    state = {"step": 3, "tokens": 96, "elapsed_s": 1.5, "rng": {}, "metrics": {}}
    save_checkpoint(directory, model, optimizer, state, model.config, TrainConfig())
    return directory


def mutate(text: str, data: st.DataObject) -> bytes:
    content = json.loads(text)
    kind = data.draw(st.sampled_from(["replace", "retype", "delete", "truncate", "add"]))
    if kind == "replace" or not isinstance(content, dict) or not content:
        return json.dumps(data.draw(json_values)).encode()
    key = data.draw(st.sampled_from(sorted(content)))
    if kind == "retype":
        content[key] = data.draw(json_values)
    elif kind == "delete":
        del content[key]
    elif kind == "add":
        content[data.draw(st.text(max_size=8))] = data.draw(json_values)
    else:
        raw = json.dumps(content).encode()
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    return json.dumps(content).encode()


def load_everything(directory: Path) -> None:
    model, saved = load_model(directory)
    optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
    load_checkpoint(directory, model, optimizer)
    assert saved.step >= 0


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), name=st.sampled_from(JSON_FILES), checked=st.booleans())
def test_mutated_checkpoint_json_loads_or_fails_cleanly(
    original: Path, data: st.DataObject, name: str, checked: bool
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "checkpoint"
        shutil.copytree(original, directory)
        if not checked and name != "checksums.json":
            (directory / "checksums.json").unlink()
        path = directory / name
        path.write_bytes(mutate(path.read_text(), data))
        try:
            load_everything(directory)
        except CheckpointError as e:
            message = str(e)
            assert "\n" not in message and message.startswith(str(directory)), message
        else:
            if checked and name != "checksums.json":
                raise AssertionError(f"a changed {name} passed its checksum")


def test_unchanged_copy_loads(original: Path, tmp_path: Path) -> None:
    shutil.copytree(original, tmp_path / "c")
    load_everything(tmp_path / "c")


def any_json(value: Any) -> bytes:
    return json.dumps(value).encode()
