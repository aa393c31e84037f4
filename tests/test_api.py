"""The public API surface of `import lmrs`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lmrs
import lmrs.checkpoint.store


def test_every_public_name_resolves() -> None:
    for name in lmrs.__all__:
        assert getattr(lmrs, name) is not None, name


def test_unknown_name_raises_attribute_error() -> None:
    try:
        lmrs.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("lmrs.no_such_thing did not raise")


def test_tokenizer_use_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, lmrs\n"
        "tok = lmrs.Tokenizer.train(['hello world, hello there'] * 20, 280, show_progress=False)\n"
        "assert tok.decode(tok.encode('hello there')) == 'hello there'\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_decode_accepts_numpy_arrays_and_tensors() -> None:
    import numpy as np
    import torch

    tok = lmrs.Tokenizer.train(["abc abd abe"] * 10, 270, show_progress=False)
    ids = tok.encode("abd abc")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "abd abc"
    assert tok.decode(torch.tensor([ids])[0]) == "abd abc"
    assert tok.decode(tok.encode_to_numpy("abe")) == "abe"


def test_functions_are_not_hidden_by_their_modules() -> None:
    # the modules that define lmrs.train/evaluate/generate have other names (no module
    # named like a function, no module-class swap): importing them changes nothing
    code = (
        "import lmrs.training.evaluation, lmrs.model.generation, lmrs.training.trainer\n"
        "import lmrs\n"
        "from lmrs.training.trainer import TrainConfig\n"
        "print(callable(lmrs.train), callable(lmrs.evaluate), callable(lmrs.generate),\n"
        "      lmrs.train.__module__, lmrs.evaluate.__module__, lmrs.generate.__module__,\n"
        "      TrainConfig.__name__, type(lmrs).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "True",
        "True",
        "True",
        "lmrs.training.trainer",
        "lmrs.training.evaluation",
        "lmrs.model.generation",
        "TrainConfig",
        "module",
    ]


def test_load_gives_a_trained_runs_model_and_tokenizer(tmp_path: Path) -> None:
    import torch

    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(200)]
    tokenizer = lmrs.Tokenizer.train(texts, 300, show_progress=False)
    model = lmrs.create_small_model(tokenizer.vocab_size, max_seq_len=32, seed=0)
    batches = lmrs.prepare_training_data(tokenizer.encode("".join(texts)), 16, 4)
    lmrs.train(model, batches, max_steps=2, show_progress=False, out_dir=str(tmp_path / "run"),
               tokenizer=tokenizer, eval_every=0, dtype="float32")  # fmt: skip
    model, tok = lmrs.load(tmp_path / "run")  # unpacks as the two things a user needs
    assert not model.training and tok.vocab_size == tokenizer.vocab_size
    loaded = lmrs.load(tmp_path / "run" / "checkpoint")
    assert loaded.checkpoint.step == 2 and loaded.path == tmp_path / "run" / "checkpoint"
    # the same weights the run saved, and generation through them
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    ids = lmrs.generate(
        model, tok.encode("def "), 8, temperature=0, dtype="float32", stop_tokens=[tok.eot_id]
    )
    text = loaded.generate("def ", max_length=8, temperature=0, dtype="float32")
    assert text == tok.decode(ids)
    # a damaged checkpoint is one line naming the file
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(lmrs.checkpoint.CheckpointError, match="model.safetensors"):
        lmrs.load(tmp_path / "run")
