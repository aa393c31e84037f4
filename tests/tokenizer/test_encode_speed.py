"""The fast encoder paths give tiktoken's ids: the hand-written o200k and GPT-2 scanners,
the per-text piece cache (texts of 4 KB and more) and the parallel chunks (2 MB and
more), on a vocabulary trained here and handed to Python tiktoken as ranks (tiktoken's
own cl100k/o200k files are downloaded, which these tests cannot do)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrs import Tokenizer
from lmrs.tokenizer.importing import PATTERNS

tiktoken = pytest.importorskip("tiktoken")

PIECES = [
    "the",
    " The",
    " HTML",
    "World's",
    " don't",
    "'LL",
    " 123456",
    "\n",
    "\n\n",
    "   ",
    "\t",
    "!\n/",
    " //",
    " é",
    "Ωμέγα",
    " мир",
    "日本語",
    "한국",
    "\u0915\u093f",
    "\u0301",
    "x" * 40,
    " " * 20,
    "a\u0301b",
    "ǅa",
    "\r\n",
    "😀",
    "#",
    "(",
    ")",
    " =",
    ".",
]


def _mixed_text(n_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        piece = rng.choice(PIECES)
        parts.append(piece)
        size += len(piece.encode())
    return "".join(parts)


@pytest.fixture(scope="module", params=["gpt2", "cl100k", "o200k"])
def pair(request: pytest.FixtureRequest) -> tuple[Tokenizer, object]:
    pattern = request.param
    corpus = [_mixed_text(3000, seed) for seed in range(20)]
    trained = Tokenizer.train(corpus, 600, pattern=pattern, min_frequency=1, show_progress=False)
    ranks = trained.tiktoken_ranks()
    tok = Tokenizer.from_tiktoken(ranks, pattern=pattern, special_tokens=["<|endoftext|>"])
    enc = tiktoken.Encoding(
        "t", pat_str=PATTERNS[pattern], mergeable_ranks=ranks, special_tokens={}
    )
    return tok, enc


def test_long_texts_use_the_cache_and_chunks_with_identical_ids(
    pair: tuple[Tokenizer, object],
) -> None:
    tok, enc = pair
    for n_bytes in (5_000, 60_000, 2_200_000):
        text = _mixed_text(n_bytes, seed=n_bytes)
        expected = enc.encode_ordinary(text)  # type: ignore[attr-defined]
        assert tok.encode_ordinary(text) == expected, n_bytes


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_generated_text_gives_tiktoken_ids(pair: tuple[Tokenizer, object], text: str) -> None:
    tok, enc = pair
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)  # type: ignore[attr-defined]


def _bench_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tokenizer.py"
    spec = importlib.util.spec_from_file_location("bench_tokenizer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # its dataclasses look their module up while being defined; removed after the test
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_bench_ranks_section_checks_ids_and_prints_both_encoders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a trained vocabulary under tiktoken's file name: the section loads it with the
    # cl100k pattern and special tokens in both libraries, as it would the real ranks
    texts = [_mixed_text(2000, seed) for seed in range(6)]
    trained = Tokenizer.train(texts, 400, pattern="cl100k", min_frequency=1, show_progress=False)
    trained.export_tiktoken(tmp_path / "cl100k_base.tiktoken")
    _bench_module(monkeypatch).ranks_section(tmp_path, texts, 1)
    out = capsys.readouterr().out
    assert "CPU: " in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| cl100k |")]
    assert [row[1] for row in rows] == ["lmrs", "tiktoken"]
    for row in rows:
        assert row[2] == "identical"
        assert all(float(cell.strip(" |")) > 0 for cell in row[3:])
