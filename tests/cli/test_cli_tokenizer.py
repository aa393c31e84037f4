"""`lmrs vocab` and `lmrs encode`: happy paths and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tok_corpus import make_texts, write_corpus

from lmrs import Tokenizer
from lmrs.cli.main import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_vocab_then_encode(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", make_texts(30, seed=8))
    write_corpus(tmp_path / "c" / "py", ["x = 1\n"], suffix=".py")
    tok_path = tmp_path / "tok.json"
    code, out = run(
        "vocab",
        str(tmp_path / "c"),
        "--size",
        "400",
        "-o",
        str(tok_path),
        "--special",
        "<|pad|>",
        "--ext",
        ".txt",
        "-q",
    )
    assert code == 0, out
    assert out.startswith("vocab 400 tokens from ") and str(tok_path) in out
    tok = Tokenizer.load(tok_path)
    assert "<|pad|>" in tok.special_tokens and tok.vocab_size == 400

    bin_path = tmp_path / "tokens.bin"
    code, out = run(
        "encode",
        str(tmp_path / "c"),
        "-t",
        str(tok_path),
        "-o",
        str(bin_path),
        "--ext",
        "txt",
        "-q",
    )
    assert code == 0, out
    assert "tokens from 30 documents" in out and "tokens/s" in out
    sidecar = json.loads(Path(f"{bin_path}.json").read_text())
    assert sidecar["num_tokens"] == len(np.memmap(bin_path, dtype=np.uint16, mode="r"))

    shards = tmp_path / "shards"
    for part in ("0", "1"):
        code, out = run(
            "encode",
            str(tmp_path / "c"),
            "-t",
            str(tok_path),
            "-o",
            str(shards),
            "--num-parts",
            "2",
            "--part-index",
            part,
            "-q",
        )
        assert code == 0, out
    code, out = run("encode", str(tmp_path / "c"), "-o", str(shards), "--manifest-only")
    assert code == 0 and "missing" not in out, out
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["num_documents"] == 31  # the .py file too: no --ext


def test_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", make_texts(5))
    code, out = run(
        "encode",
        str(tmp_path / "c"),
        "-t",
        str(tmp_path / "nope.json"),
        "-o",
        str(tmp_path / "t.bin"),
    )
    assert code != 0
    assert out.strip().count("\n") == 0 and "nope.json" in out
    assert not (tmp_path / "t.bin").exists()

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "lmrs-tokenizer", "version": 9}')
    code, out = run("encode", str(tmp_path / "c"), "-t", str(bad), "-o", str(tmp_path / "t.bin"))
    assert code != 0 and "bad.json" in out and "version 9" in out
    assert out.strip().count("\n") == 0

    code, out = run("vocab", str(tmp_path / "missing"), "-o", str(tmp_path / "v.json"))
    assert code != 0 and "missing" in out and not (tmp_path / "v.json").exists()
    code, out = run("vocab", str(tmp_path / "c"), "--pattern", "(", "-o", str(tmp_path / "v.json"))
    assert code != 0 and "pattern" in out and not (tmp_path / "v.json").exists()
    assert out.strip().count("\n") == 0


def test_vocab_from_a_deeply_nested_tokenizer_json_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "tokenizer.json"
    source.write_bytes(b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    code, out = run("vocab", "--from", str(source), "-o", str(tmp_path / "v.json"))
    assert code == 1 and not (tmp_path / "v.json").exists()
    assert out.strip() == f"lmrs: {source}: not a tokenizer.json (JSON nested too deeply)"


def test_a_file_that_shrinks_while_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files' sizes are taken before they are read: one read shorter (truncated by
    another process meanwhile) is named in a warning by vocab and encode."""
    import lmrs.tokenizer.core

    paths = write_corpus(tmp_path / "c", make_texts(6))
    shrunk = paths[2]
    whole = shrunk.read_bytes()
    real = lmrs.tokenizer.core._file_sizes

    def sizes_then_truncate(files: list[Path]) -> list[int]:
        before = real(files)
        shrunk.write_bytes(shrunk.read_bytes()[:5])  # as if cut while being read
        return before

    monkeypatch.setattr(lmrs.tokenizer.core, "_file_sizes", sizes_then_truncate)
    tok = tmp_path / "t.json"
    for args in (
        ["vocab", str(tmp_path / "c"), "--size", "260", "-o", str(tok), "-q"],
        ["encode", str(tmp_path / "c"), "-t", str(tok), "-o", str(tmp_path / "t.bin"), "-q"],
    ):
        shrunk.write_bytes(whole)
        code, out = run(*args)
        assert code == 0, out
        assert f"lmrs: warning: {shrunk}: changed while being read" in out
