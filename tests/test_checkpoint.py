"""checkpoint.py: round trip, atomic replace, clear errors; plot.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lmrs.checkpoint as checkpoint_module
from lmrs.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from lmrs.model import create_small_model
from lmrs.plot import plot_metrics
from lmrs.train import TrainConfig


class SavedTokenizer:
    def __init__(self, hash: str, vocab_size: int = 80) -> None:
        self.hash = hash
        self.vocab_size = vocab_size

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps({"format": "lmrs-tokenizer", "hash": self.hash}))


def model_and_optimizer(seed: int = 0, **overrides):
    settings = dict(max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32)
    model = create_small_model(80, seed=seed, **{**settings, **overrides})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 80, (2, 8))
    model.compute_loss(ids, ids).backward()
    optimizer.step()
    return model, optimizer


def save(directory: Path, model, optimizer, step: int = 5, tokenizer=None) -> Path:
    return save_checkpoint(
        directory,
        model,
        optimizer,
        {"step": step},
        model.config,
        TrainConfig(),
        tokenizer,
    )


def test_round_trip(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer()
    path = save(tmp_path / "ckpt", model, optimizer, tokenizer=SavedTokenizer("a" * 64))
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(
        [
            "model.safetensors",
            "optimizer.pt",
            "state.json",
            "model_config.json",
            "train_config.json",
            "tokenizer.json",
            "checksums.json",
        ]
    )
    fresh, fresh_optimizer = model_and_optimizer(seed=9)
    loaded = load_checkpoint(path, fresh, fresh_optimizer, tokenizer=SavedTokenizer("a" * 64))
    assert loaded.step == 5 and loaded.train_config["batch_size"] == 32
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    # tied weights stay one tensor after loading
    assert fresh.lm_head.weight.data_ptr() == fresh.token_embedding.weight.data_ptr()
    stored = safe_open(str(path / "model.safetensors"), "pt").keys()
    assert len(stored) == len(model.state_dict()) - 1  # the tied head is stored once
    saved_state = optimizer.state_dict()["state"]
    for key, value in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(value["exp_avg"], saved_state[key]["exp_avg"])
    # load_model builds the model from the saved config; a run directory works too
    run = tmp_path / "run"
    save(run / "checkpoint", model, optimizer)
    assert resolve_checkpoint_dir(run) == run / "checkpoint"
    rebuilt, _ = load_model(run)
    ids = torch.randint(0, 80, (1, 8))
    model.eval()
    assert torch.allclose(rebuilt(ids), model(ids))


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    model, optimizer = model_and_optimizer()
    path = save(tmp_path / "ckpt", model, optimizer, step=5)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path / "ckpt", model, optimizer, step=6)
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left
    monkeypatch.undo()
    save(tmp_path / "ckpt", model, optimizer, step=7)
    assert load_checkpoint(tmp_path / "ckpt").step == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer()
    path = save(tmp_path / "ckpt", model, optimizer)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json: missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        load_checkpoint(path)


def test_config_and_tokenizer_mismatch(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer()
    path = save(tmp_path / "ckpt", model, optimizer, tokenizer=SavedTokenizer("a" * 64))
    other, _ = model_and_optimizer(embed_dim=32)
    with pytest.raises(CheckpointError, match=r"model_config\.json: .*embed_dim 16 != 32"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: .*another tokenizer"):
        load_checkpoint(path, tokenizer=SavedTokenizer("b" * 64))
    with pytest.raises(CheckpointError, match="vocab_size 80 but the tokenizer has 90"):
        load_checkpoint(path, tokenizer=SavedTokenizer("a" * 64, vocab_size=90))
    # a different dropout does not change the weights: loads fine
    same_shape, _ = model_and_optimizer(dropout_rate=0.3)
    load_checkpoint(path, same_shape)


def test_plot_metrics(tmp_path: Path) -> None:
    records = [{"step": s, "train_loss": 5.0 / s} for s in range(1, 30)]
    records += [{"step": 10, "val_loss": 0.6, "val_bpb": 1.2}, {"step": 29, "val_loss": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_metrics(tmp_path)
    assert out == tmp_path / "loss.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="no loss records"):
        plot_metrics(tmp_path, tmp_path / "other.png")
