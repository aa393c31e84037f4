"""The public API surface of `import lmrs`."""

from __future__ import annotations

import subprocess
import sys

import lmrs


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
    # importing lmrs.train (the module) must leave lmrs.train the function, in any order
    code = (
        "import lmrs.evaluate, lmrs.generate, lmrs.train\n"
        "import lmrs\n"
        "from lmrs.train import TrainConfig\n"
        "print(callable(lmrs.train), callable(lmrs.evaluate), callable(lmrs.generate),\n"
        "      lmrs.train.__module__, lmrs.evaluate.__module__, lmrs.generate.__module__,\n"
        "      TrainConfig.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "True",
        "True",
        "True",
        "lmrs.train",
        "lmrs.evaluate",
        "lmrs.generate",
        "TrainConfig",
    ]
