"""checkpoint.py: round trip, atomic replace, clear errors; plot.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lmrs.checkpoint.store as checkpoint_module
from lmrs.checkpoint.store import (
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from lmrs.model.gpt import create_small_model
from lmrs.training.plot import plot_metrics
from lmrs.training.trainer import TrainConfig


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


def test_load_model_reads_the_weights_file_for_its_checksum_once(tmp_path, monkeypatch) -> None:
    model, optimizer = model_and_optimizer()
    path = save(tmp_path / "ckpt", model, optimizer)
    digested: list[str] = []
    real_digest = checkpoint_module.file_digest

    def counting_digest(file: Path):
        digested.append(Path(file).name)
        return real_digest(file)

    monkeypatch.setattr(checkpoint_module, "file_digest", counting_digest)
    rebuilt, _ = load_model(path)
    assert digested.count("model.safetensors") == 1
    ids = torch.randint(0, 80, (1, 8))
    model.eval()
    assert torch.equal(rebuilt(ids), model(ids))
    # and a corrupted weights file is still caught
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(path)


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


def test_keep_checkpoints_keeps_the_newest_k_and_falls_back_past_a_corrupt_one(
    tmp_path: Path, capfd
) -> None:
    model, optimizer = model_and_optimizer()
    run = tmp_path / "run"
    final = run / "checkpoint"
    for step in range(1, 6):
        save_checkpoint(final, model, optimizer, {"step": step}, model.config, keep=3)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "checkpoint-3", "checkpoint-4"]
    assert [load_checkpoint(run / n).step for n in ("checkpoint-3", "checkpoint-4")] == [3, 4]
    assert resolve_checkpoint_dir(run) == final  # verified: it is intact
    # a corrupted newest checkpoint leaves the previous one in use, said on stderr
    weights = final / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    capfd.readouterr()
    rebuilt, saved = load_model(run)
    assert saved.step == 4 and saved.path == run / "checkpoint-4"
    err = capfd.readouterr().err
    assert "checksum mismatch" in err and "checkpoint-4 (step 4)" in err
    # the checkpoint named explicitly is not swapped for another
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(final)
    # a run resumed from step 4 that saves step 5 again: kept checkpoints at or above the
    # new step are its abandoned future and go
    save_checkpoint(final, model, optimizer, {"step": 5}, model.config, keep=3)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "checkpoint-3", "checkpoint-4"]
    assert load_checkpoint(run).step == 5
    # keep=1 (the default) leaves one checkpoint, as before
    save_checkpoint(final, model, optimizer, {"step": 6}, model.config)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_all_kept_checkpoints_corrupt_is_one_error(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer()
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(run / "checkpoint", model, optimizer, {"step": step}, {}, keep=2)
    for name in ("checkpoint", "checkpoint-1"):
        (run / name / "state.json").write_text('{"step": 99}')
    with pytest.raises(CheckpointError, match=r"checkpoint/state\.json: .*(size|checksum)"):
        resolve_checkpoint_dir(run, quiet=True)


def test_training_keeps_the_last_k_checkpoints(tmp_path: Path) -> None:
    from lmrs.training.trainer import train

    model, _ = model_and_optimizer()
    batches = [(torch.randint(0, 80, (2, 8)), torch.randint(0, 80, (2, 8)))] * 4
    run = tmp_path / "run"
    config = TrainConfig(
        max_steps=8, warmup_steps=0, show_progress=False, dtype="float32", eval_every=0,
        checkpoint_every=2, keep_checkpoints=3, out_dir=str(run),
    )  # fmt: skip
    train(model, batches, config)
    kept = sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint"))
    assert kept == ["checkpoint", "checkpoint-4", "checkpoint-6"]
    assert load_checkpoint(run).step == 8
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        TrainConfig(keep_checkpoints=0).validate()
