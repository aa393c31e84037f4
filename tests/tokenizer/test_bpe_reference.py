"""Our trainer and encoder against plain references: a minbpe-style Python BPE,
rustbpe's merges and tiktoken's encoding with our ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
from tok_corpus import make_texts

from lmrs import Tokenizer
from lmrs._lmrs import GPT4_PATTERN


def reference_train(texts: list[str], num_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE: recount all pairs, merge the most frequent (ties: smaller pair)."""
    words = Counter(p for t in texts for p in regex.findall(GPT4_PATTERN, t))
    seqs = {w: list(w.encode("utf-8")) for w in words}
    merges = []
    for i in range(num_merges):
        pairs: Counter[tuple[int, int]] = Counter()
        for w, ids in seqs.items():
            for pair in zip(ids, ids[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, ids in seqs.items():
            out, j = [], 0
            while j < len(ids):
                if j + 1 < len(ids) and (ids[j], ids[j + 1]) == best:
                    out.append(256 + i)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            seqs[w] = out
    return merges


def reference_encode(merges: list[tuple[int, int]], text: str) -> list[int]:
    """minbpe encode: per piece, keep merging the present pair that was learned first."""
    rank = {pair: i for i, pair in enumerate(merges)}
    out = []
    for piece in regex.findall(GPT4_PATTERN, text):
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            new, merged, j = 256 + rank[pair], [], 0
            while j < len(ids):
                if j + 1 < len(ids) and (ids[j], ids[j + 1]) == pair:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(ids[j])
                    j += 1
            ids = merged
        out.extend(ids)
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts(60, seed=1)


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]) -> Tokenizer:
    return Tokenizer.train(texts, 256 + 200 + 1, min_frequency=1, show_progress=False)


def test_merges_equal_reference(texts: list[str], tokenizer: Tokenizer) -> None:
    assert tokenizer.merges == reference_train(texts, 200)
    assert len(tokenizer.merges) == 200


def test_encode_equals_reference_on_held_out_text(tokenizer: Tokenizer) -> None:
    for text in make_texts(20, seed=99):
        assert tokenizer.encode_ordinary(text) == reference_encode(tokenizer.merges, text)


def test_merges_equal_rustbpe(texts: list[str]) -> None:
    # a plain import, not importorskip: rustbpe is in the test extra, and a skip here would
    # hide that this comparison never ran
    import rustbpe

    theirs = rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(texts), 256 + 300, pattern=GPT4_PATTERN)
    ours = Tokenizer.train(texts, 256 + 300 + 1, min_frequency=1, show_progress=False)
    assert len(ours.merges) == 300  # the comparison covers 300 learned merges, not only bytes
    assert dict(theirs.get_mergeable_ranks()) == ours.tiktoken_ranks()


def test_encode_equals_tiktoken_with_our_ranks(tokenizer: Tokenizer) -> None:
    pytest.importorskip("tiktoken")
    enc = tokenizer.to_tiktoken()
    held_out = make_texts(40, seed=7) + ["<|endoftext|> in text", "", " ", "\n\n\n  x  "]
    for text in held_out:
        assert tokenizer.encode_ordinary(text) == enc.encode_ordinary(text)
        assert tokenizer.encode(text) == enc.encode(text, allowed_special="all")
    assert tokenizer.encode_batch(held_out) == enc.encode_batch(held_out, allowed_special="all")


def test_long_run_of_one_character_encodes_correctly() -> None:
    pytest.importorskip("tiktoken")
    tok = Tokenizer.train(["a" * 300 + " b" * 50] * 3, 300, min_frequency=1, show_progress=False)
    enc = tok.to_tiktoken()
    for text in ["a" * 40_000, "a" * 40_001 + "b", " " + "a" * 12_345]:
        ids = tok.encode_ordinary(text)
        assert ids == enc.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert len(ids) < len(text) // 8  # long merges were used, not bytes


def test_big_text_encoded_in_parallel_chunks_equals_tiktoken(tokenizer: Tokenizer) -> None:
    pytest.importorskip("tiktoken")
    text = "".join(make_texts(400, seed=12)) * 30  # > 2 MB: cut into chunks, encoded in parallel
    assert len(text.encode()) > 2 << 20
    assert tokenizer.encode_ordinary(text) == tokenizer.to_tiktoken().encode_ordinary(text)
