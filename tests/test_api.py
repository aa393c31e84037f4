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


def test_tokenizer_use_does_not_import_torch() -> None:
    code = "import sys, lmrs; lmrs.Tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
