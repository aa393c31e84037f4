"""Any pre-tokenization pattern keeps every character: text it does not match is encoded
as pieces of its own, in training counts and in encoding, so decode(encode(x)) == x."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_corpus import make_texts, write_corpus

from lmrs import Tokenizer
from lmrs.cli.main import cli

# Atoms that take a quantifier, and zero-width assertions that do not; any sequence or
# alternation of them compiles.
ATOMS = [
    "x",
    "a",
    "é",
    "中",
    " ",
    r"\w",
    r"\s",
    r"\d",
    r"\p{L}",
    r"\p{N}",
    r"[a-c]",
    r"[^\s]",
    r"[^a-z\s]",
    ".",
    "(?:ab)",
    "(?:x|y)",
    r"(?i:[sdmt]|ll)",
]
QUANTIFIERS = ["", "", "*", "+", "?", "{1,3}", "*?", "+?", "??", "++", "?+"]
ASSERTIONS = [r"\b", "^", "$", "(?=a)", "(?!x)", "(?<=b)", r"(?<!\s)"]

term = st.one_of(
    st.builds(lambda a, q: a + q, st.sampled_from(ATOMS), st.sampled_from(QUANTIFIERS)),
    st.sampled_from(ASSERTIONS),
)
branch = st.lists(term, min_size=0, max_size=4).map("".join)
patterns = st.lists(branch, min_size=1, max_size=4).map("|".join)

# Characters the atoms single out, plus any code point at all (no lone surrogates: those
# are not valid str for the encoder's UTF-8 view and are tested in test_tokenizer.py).
characters = st.one_of(
    st.sampled_from(list("xyabé中 \t\n\r0123456789.,!'ßΩ🙂") + ["\u0301", "\u00a0", "\u2028"]),
    st.characters(blacklist_categories=("Cs",)),
)
texts = st.text(characters, max_size=60)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns, text=texts)
def test_encode_round_trips_for_any_pattern(pattern: str, text: str) -> None:
    tok = Tokenizer.from_vocab([(120, 120), (104, 101), (257, 108)], pattern=pattern)
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(pattern=patterns, corpus=st.lists(texts, min_size=1, max_size=5), text=texts)
def test_a_tokenizer_trained_with_any_pattern_round_trips(
    pattern: str, corpus: list[str], text: str
) -> None:
    # an iterator is always texts: a list whose every str names a path on disk (such as
    # ["/"], which Hypothesis found) is taken as files to read
    tok = Tokenizer.train(iter(corpus), 300, pattern=pattern, min_frequency=1, show_progress=False)
    for sample in [*corpus, text]:
        assert tok.decode(tok.encode_ordinary(sample)) == sample


def test_unmatched_text_is_counted_in_training() -> None:
    # 'x*' matches only runs of x: everything else is gap text, and it must be learnt.
    tok = Tokenizer.train(
        ["hello world xx " * 50], 300, pattern="x*", min_frequency=1, show_progress=False
    )
    assert tok.decode(tok.encode("hello world xx")) == "hello world xx"
    assert tok.token_to_id(b"hello") is not None
    assert len(tok.encode("hello world ")) < len("hello world ")


def test_lmrs_vocab_with_a_partial_pattern_gives_a_sensible_tokenizer(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", make_texts(30, seed=5))
    out = tmp_path / "tok.json"
    result = CliRunner().invoke(
        cli, ["vocab", str(tmp_path / "c"), "--size", "400", "--pattern", "x*", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400, "the gap text is counted, so there are pairs to merge"
    for text in make_texts(10, seed=6):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode())
