"""The Tokenizer API: training, specials, surrogates, save/load and its errors, exports."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_corpus import make_texts, write_corpus

from lmrs import Tokenizer, TokenizerError

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(
        make_texts(80), 600, special_tokens=["<|pad|>"], min_frequency=1, show_progress=False
    )


def test_vocab_layout(tok: Tokenizer) -> None:
    assert len(tok) == tok.vocab_size == 256 + len(tok.merges) + 2
    assert tok.special_tokens == {EOT: 256 + len(tok.merges), "<|pad|>": tok.vocab_size - 1}
    assert tok.eot_id == tok.special_tokens[EOT]
    assert len(tok.hash) == 64
    assert "vocab_size=600" in repr(tok)


def test_train_from_files_equals_train_from_texts(tmp_path: Path) -> None:
    texts = make_texts(30, seed=3)
    write_corpus(tmp_path / "c", texts)
    from_files = Tokenizer.train(tmp_path / "c", 400, show_progress=False)
    from_texts = Tokenizer.train(iter(texts), 400, show_progress=False)
    assert from_files.merges == from_texts.merges
    stats = from_files.train_stats
    assert stats is not None and stats.num_files == 30
    assert stats.num_bytes == sum(len(t.encode()) for t in texts)
    assert stats.summary().startswith(f"vocab {from_files.vocab_size} tokens from ")


def test_train_on_folder_without_text_raises(tmp_path: Path) -> None:
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02")
    with pytest.raises(TokenizerError, match="no text files"):
        Tokenizer.train(tmp_path, 300, show_progress=False)


def test_special_tokens_default_all_and_opt_out(tok: Tokenizer) -> None:
    text = f"hello{EOT}world<|pad|>"
    pad = tok.special_tokens["<|pad|>"]
    ids = tok.encode(text)
    assert ids.count(tok.eot_id) == 1 and ids[-1] == pad
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)
    assert tok.eot_id not in tok.encode_ordinary(text)
    only_pad = tok.encode(text, allowed_special={"<|pad|>"})
    assert tok.eot_id not in only_pad and only_pad[-1] == pad
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_lone_surrogates_become_replacement_characters(tok: Tokenizer) -> None:
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.decode(tok.encode("x\udfffy")) == "x\ufffdy"
    assert tok.encode_batch(["ok", "\ud800"]) == [tok.encode("ok"), tok.encode("\ufffd")]


def _replace_surrogates(s: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_decode_encode_round_trip(tok: Tokenizer, s: str) -> None:
    expected = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert tok.decode(tok.encode(s)) == expected
    assert tok.decode_bytes(tok.encode_ordinary(s)) == expected.encode("utf-8")
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        assert expected == s


def test_decode_of_a_cut_character_uses_replacement(tok: Tokenizer) -> None:
    ids = tok.encode_ordinary("ǅ")  # not in the training text: two byte tokens
    assert len(ids) == 2
    assert tok.decode(ids[:1]) == "\ufffd"
    assert tok.decode_bytes(ids[:1]) == "ǅ".encode()[:1]
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("bad", [-1, -(2**40), 2**32, 2**70])
def test_decode_of_an_impossible_id_names_it_and_the_vocab_size(tok: Tokenizer, bad: int) -> None:
    expected = f"token id {bad} is out of range \\(vocab size {tok.vocab_size}\\)"
    for decode in (tok.decode, tok.decode_bytes):
        with pytest.raises(ValueError, match=expected):
            decode([1, 2, bad])
    with pytest.raises(ValueError, match=expected):
        tok.decode_batch([[1], [2, bad]])
    if abs(bad) < 2**63:
        with pytest.raises(ValueError, match=expected):
            tok.decode(np.array([1, bad], dtype=np.int64))
    with pytest.raises(ValueError, match=expected):
        tok.id_to_token(bad)
    with pytest.raises(TypeError):
        tok.decode(["a"])  # type: ignore[list-item]


def test_batch_numpy_and_lookup(tok: Tokenizer) -> None:
    texts = make_texts(10, seed=5)
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode_batch(batch) == texts
    arr = tok.encode_to_numpy(texts[0])
    assert arr.dtype == np.uint32 and arr.tolist() == batch[0]
    assert tok.decode(arr) == texts[0]
    assert tok.token_to_id(b"a") == 97 and tok.token_to_id(EOT) == tok.eot_id
    assert tok.token_to_id(b"\xff\xfe\xfd not a token") is None
    top = 256 + len(tok.merges) - 1
    assert tok.token_to_id(tok.id_to_token(top)) == top


def test_a_large_batch_equals_each_text_encoded(tok: Tokenizer) -> None:
    # over 2 MB, with documents cut into parallel units, empty ones and specials
    short = make_texts(400, seed=9)  # ~70 KB
    texts = ["\n".join(short[i:] + short[:i]) for i in range(0, 400, 10)]  # 40 x 70 KB
    texts += ["", f"a{EOT}b", "x" * 300_000, "<|pad|> tail"] + short[:50]
    assert sum(len(t) for t in texts) > 2 << 20
    for allowed in ("all", "none"):
        expected = [tok.encode(t) if allowed == "all" else tok.encode_ordinary(t) for t in texts]
        assert tok.encode_batch(texts, allowed_special=allowed) == expected


def test_from_vocab_and_pickle(tok: Tokenizer) -> None:
    same = Tokenizer.from_vocab(tok.merges, special_tokens=["<|pad|>"])
    assert same.hash == tok.hash
    by_ids = Tokenizer.from_vocab(tok.merges, special_tokens=tok.special_tokens)
    assert by_ids.hash == tok.hash
    with pytest.raises(ValueError, match="not yet defined"):
        Tokenizer.from_vocab([(300, 1)])
    assert pickle.loads(pickle.dumps(tok)).hash == tok.hash


def test_save_load_round_trip_is_atomic(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.hash == tok.hash and back.merges == tok.merges
    assert back.special_tokens == tok.special_tokens
    text = make_texts(1, seed=11)[0]
    assert back.encode(text) == tok.encode(text)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
    data = json.loads(path.read_text())
    assert data["format"] == "lmrs-tokenizer" and data["version"] == 1
    with pytest.raises(TokenizerError, match="missing-dir"):
        tok.save(tmp_path / "missing-dir" / "tok.json")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "No such file"),
        ("truncated", "truncated"),
        ("empty", "empty file"),
        ("version", "unsupported version 3"),
        ("tampered", "hash mismatch"),
        ("bad_merge", "not yet defined"),
        ("not_json", "not a valid lmrs tokenizer"),
    ],
)
def test_load_errors_name_the_file(
    tok: Tokenizer, tmp_path: Path, damage: str, message: str
) -> None:
    path = tmp_path / f"{damage}.json"
    tok.save(path)
    content = path.read_text()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_text(content[: len(content) // 2])
    elif damage == "empty":
        path.write_text("")
    elif damage == "version":
        _edit(path, '"version": 1', '"version": 3')
    elif damage == "tampered":
        a, b = tok.merges[-1]
        _edit(path, f"[{a}, {b}]\n", f"[{b}, {a}]\n")
    elif damage == "bad_merge":
        _edit(path, '"merges": [', '"merges": [\n    [9999, 1],')
    else:
        path.write_text("hello")
    with pytest.raises(TokenizerError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def test_tiktoken_export_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    path = tmp_path / "tok.tiktoken"
    tok.export_tiktoken(path)
    enc = tiktoken.Encoding(
        "x",
        pat_str=tok.pattern,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens=tok.special_tokens,
    )
    for text in make_texts(20, seed=21):
        assert enc.encode(text, allowed_special="all") == tok.encode(text)


def test_huggingface_export_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path / "tokenizer.json"
    tok.export_huggingface(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    for text in make_texts(20, seed=22) + [f"a{EOT}b"]:
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_a_list_of_existing_paths_is_files_and_an_iterator_is_always_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes").write_text("zzzz qqqq " * 40, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    from_file = Tokenizer.train(["notes"], 270, min_frequency=1, show_progress=False)
    assert from_file.train_stats is not None and from_file.train_stats.num_files == 1
    assert len(from_file.encode("zzzz qqqq")) <= 3  # learnt the file's words
    as_text = Tokenizer.train(iter(["notes"] * 40), 270, min_frequency=1, show_progress=False)
    assert len(as_text.encode("notes")) == 1  # learnt the word itself
    assert len(as_text.encode("zzzz")) > 1


@pytest.mark.parametrize("texts", [iter([]), [], ()])
def test_train_on_no_texts_raises(texts: object) -> None:
    with pytest.raises(TokenizerError, match="no texts to train on: the corpus is empty"):
        Tokenizer.train(texts, 300, show_progress=False)
