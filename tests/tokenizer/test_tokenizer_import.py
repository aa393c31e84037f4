"""Importing tiktoken ranks and Hugging Face tokenizer.json: identical ids to those libraries,
version-2 files, version-1 files unchanged, and one-line errors for what lmrs cannot
reproduce. Vocabularies are trained here (no downloads)."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_corpus import make_texts
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmrs import Tokenizer, TokenizerError, _lmrs
from lmrs.cli.main import cli as cli_main
from lmrs.tokenizer.importing import PATTERNS, bytes_to_unicode

EOT = "<|endoftext|>"
# Llama 3's Split pattern (tiktoken's cl100k without the possessive quantifiers)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
STDLIB = Path(json.__file__).parent.parent
REAL_FILES = ["json/decoder.py", "textwrap.py", "html/entities.py", "unicodedata.py"]


def _real_texts() -> list[str]:
    texts = []
    for name in REAL_FILES:
        path = STDLIB / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8")[:30_000])
    assert texts, f"no standard-library sources under {STDLIB}"
    return texts


def _train_hf(vocab_size: int = 700) -> HFTokenizer:
    """A byte-level BPE trained by `tokenizers`: specials get ids 0 and 1, the byte
    alphabet 2..257 in its own (not byte) order, then the merges."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOT, "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(make_texts(120, seed=7) + _real_texts()[:1], trainer)
    return hf


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    _train_hf().save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_llama_style_file(hf_file: Path) -> Path:
    """The same vocab, Llama 3 style: Split(regex) + ByteLevel(use_regex=false) and
    ignore_merges."""
    data = json.loads(hf_file.read_text())
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": LLAMA3_PATTERN},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    data["model"]["ignore_merges"] = True
    path = hf_file.with_name("llama_style.json")
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def hf(hf_file: Path) -> HFTokenizer:
    return HFTokenizer.from_file(str(hf_file))


@pytest.fixture(scope="module")
def imported(hf_file: Path) -> Tokenizer:
    return Tokenizer.from_huggingface(hf_file)


def _hf_ids(hf: HFTokenizer, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False).ids


def test_hf_import_keeps_hf_ids(hf: HFTokenizer, imported: Tokenizer) -> None:
    vocab = hf.get_vocab()
    assert imported.byte_ids != list(range(256)), "the trained ids must not be in byte order"
    assert imported.byte_ids[ord("a")] == vocab["a"]
    assert imported.special_tokens == {EOT: 0, "<|pad|>": 1}
    assert imported.eot_id == 0 and imported.eot_token == EOT
    assert imported.vocab_size == hf.get_vocab_size() == 700
    assert imported.merge_rule == "hf" and imported.file_version == 2
    for text in make_texts(40, seed=11) + _real_texts():
        ids = imported.encode(text)
        assert ids == _hf_ids(hf, text)
        assert imported.decode(ids) == text == hf.decode(ids)
    text = f"one{EOT}two<|pad|>"
    assert imported.encode(text) == _hf_ids(hf, text)


@settings(max_examples=120, deadline=None)
@given(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
    | st.text(alphabet=" \t\n\rab'sé1.,", max_size=40)
)
def test_hf_ids_on_generated_text(hf: HFTokenizer, imported: Tokenizer, text: str) -> None:
    assert imported.encode(text) == _hf_ids(hf, text)
    assert imported.decode(imported.encode(text)) == text


def test_llama_style_split_and_ignore_merges(hf_llama_style_file: Path) -> None:
    hf = HFTokenizer.from_file(str(hf_llama_style_file))
    tok = Tokenizer.from_huggingface(hf_llama_style_file)
    assert tok.pattern == LLAMA3_PATTERN and tok.merge_rule == "hf-ignore-merges"
    for text in [*make_texts(30, seed=5), *_real_texts(), "  trailing \n\n  ", "x\r\n\r\ny"]:
        assert tok.encode(text) == _hf_ids(hf, text)


def _all_split_merges_file(tok: Tokenizer, path: Path) -> HFTokenizer:
    """What transformers' tiktoken converter writes (Llama 3): every split of a token into
    two tokens is a merge, ordered by the token's rank, so several merges make one token."""
    chars = bytes_to_unicode()
    ranks = tok.tiktoken_ranks()

    def s(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges += [(s(a), s(b)) for a, b in splits]
    vocab = {s(t): r for t, r in ranks.items()}
    vocab.update(tok.special_tokens)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(list(tok.special_tokens))
    hf.save(str(path))
    return hf


def test_several_merges_making_one_token(imported: Tokenizer, tmp_path: Path) -> None:
    hf = _all_split_merges_file(imported, tmp_path / "all_splits.json")
    tok = Tokenizer.from_huggingface(tmp_path / "all_splits.json")
    assert len(tok.merges) > len(imported.merges)
    for text in make_texts(30, seed=9) + _real_texts():
        assert tok.encode(text) == _hf_ids(hf, text)


def _ranks_file(tok: Tokenizer, path: Path) -> dict[bytes, int]:
    tok.export_tiktoken(path)
    return tok.tiktoken_ranks()


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", "o200k"])
def test_tiktoken_import_gives_tiktoken_ids(
    imported: Tokenizer, hf: HFTokenizer, tmp_path: Path, pattern: str
) -> None:
    ranks = _ranks_file(imported, tmp_path / "v.tiktoken")
    specials = {EOT: 0, "<|pad|>": 1}
    tok = Tokenizer.from_tiktoken(tmp_path / "v.tiktoken", pattern=pattern, special_tokens=specials)
    enc = tiktoken.Encoding(
        "test", pat_str=PATTERNS[pattern], mergeable_ranks=ranks, special_tokens=specials
    )
    assert tok.merge_rule == "tiktoken" and tok.eot_id == 0
    texts = [*make_texts(30, seed=3), *_real_texts(), "a\n  ", "x" * 3000, "é" * 700]
    for text in texts:
        ids = tok.encode_ordinary(text)
        assert ids == enc.encode_ordinary(text)
        assert tok.decode(ids) == text
    assert tok.encode(f"a{EOT}b") == enc.encode(f"a{EOT}b", allowed_special="all")
    if pattern == "gpt2":
        # a vocab trained consistently (by tokenizers): tiktoken's rule and Hugging
        # Face's merge-list order agree on it
        for text in texts[:-2]:
            assert tok.encode(text) == _hf_ids(hf, text)


@pytest.fixture(scope="module")
def tiktoken_pair(imported: Tokenizer) -> tuple[Tokenizer, tiktoken.Encoding]:
    ranks = imported.tiktoken_ranks()
    tok = Tokenizer.from_tiktoken(ranks, pattern="cl100k", special_tokens=[EOT])
    enc = tiktoken.Encoding(
        "t", pat_str=PATTERNS["cl100k"], mergeable_ranks=ranks, special_tokens={}
    )
    return tok, enc


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80))
def test_tiktoken_ids_on_generated_text(
    tiktoken_pair: tuple[Tokenizer, tiktoken.Encoding], text: str
) -> None:
    tok, enc = tiktoken_pair
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)


def test_o200k_pattern_is_tiktokens_spelling() -> None:
    import inspect

    import tiktoken_ext.openai_public as openai_public

    source = inspect.getsource(openai_public.o200k_base)
    parts = _lmrs.O200K_PATTERN.split("|")
    assert all(part in source for part in parts)
    assert _lmrs.GPT2_PATTERN in inspect.getsource(openai_public)


def test_named_special_tokens_and_eot_added(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    plain = Tokenizer.from_tiktoken(ranks, pattern="gpt4")
    assert plain.special_tokens == {EOT: 257} and plain.file_version == 1
    named = Tokenizer.from_tiktoken(ranks, pattern="cl100k", special_tokens=["<|a|>"])
    assert named.special_tokens == {"<|a|>": 257, EOT: 258} and named.eot_id == 258
    preset = Tokenizer.from_tiktoken(ranks, pattern="cl100k")
    assert preset.special_tokens[EOT] == 100257 and preset.vocab_size == 100277
    assert preset.decode([100000]) == ""  # an id no token has decodes to nothing


def test_save_load_pickle_keep_imported_ids(imported: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "imported.json"
    imported.save(path)
    content = json.loads(path.read_text())
    assert content["version"] == 2 and content["merge_rule"] == "hf"
    assert content["byte_ids"] == imported.byte_ids
    back = Tokenizer.load(path)
    assert back.hash == imported.hash and back.merges_with_ids == imported.merges_with_ids
    text = make_texts(1, seed=2)[0] + EOT
    assert back.encode(text) == imported.encode(text)
    assert pickle.loads(pickle.dumps(imported)).encode(text) == imported.encode(text)
    edited = path.read_text().replace('"merge_rule": "hf"', '"merge_rule": "tiktoken"')
    (tmp_path / "edited.json").write_text(edited)
    with pytest.raises(TokenizerError, match="edited.json: hash mismatch"):
        Tokenizer.load(tmp_path / "edited.json")


def test_version_1_files_are_unchanged(tmp_path: Path) -> None:
    tok = Tokenizer.train(make_texts(30), 400, special_tokens=["<|pad|>"], show_progress=False)
    path = tmp_path / "v1.json"
    tok.save(path)
    content = json.loads(path.read_text())
    assert content["version"] == 1 and "byte_ids" not in content
    canonical = {
        "format": "lmrs-tokenizer",
        "version": 1,
        "pattern": content["pattern"],
        "merges": content["merges"],
        "special_tokens": dict(sorted(content["special_tokens"].items())),
    }
    compact = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
    assert content["hash"] == hashlib.sha256(compact.encode()).hexdigest()
    back = Tokenizer.load(path)
    assert back.hash == tok.hash and back.byte_ids == list(range(256))
    text = make_texts(1, seed=4)[0]
    assert back.encode(text) == tok.encode(text)
    # its tiktoken export imports back to the very same tokenizer
    tok.export_tiktoken(tmp_path / "v1.tiktoken")
    again = Tokenizer.from_tiktoken(
        tmp_path / "v1.tiktoken", pattern=tok.pattern, special_tokens=tok.special_tokens
    )
    assert again.hash == tok.hash and again.file_version == 1


def test_hf_export_of_imported_keeps_ids(imported: Tokenizer, tmp_path: Path) -> None:
    imported.export_huggingface(tmp_path / "out.json")
    hf = HFTokenizer.from_file(str(tmp_path / "out.json"))
    for text in make_texts(20, seed=13) + [f"a{EOT}b"]:
        assert _hf_ids(hf, text) == imported.encode(text)


def _edited(hf_file: Path, tmp_path: Path, edit: Any) -> Path:
    data = json.loads(hf_file.read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def _one_line_error(path: Path, match: str, **kwargs: Any) -> None:
    loader = Tokenizer.from_tiktoken if path.suffix == ".tiktoken" else Tokenizer.from_huggingface
    with pytest.raises(TokenizerError) as info:
        loader(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    assert match in message, message


def test_unrepresentable_hf_tokenizers_are_refused(hf_file: Path, tmp_path: Path) -> None:
    wordpiece = HFTokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "wp.json"))
    _one_line_error(tmp_path / "wp.json", "model is WordPiece, not BPE")

    def nfc(d: dict[str, Any]) -> None:
        d["normalizer"] = {"type": "NFC"}

    _one_line_error(_edited(hf_file, tmp_path, nfc), "normalizer NFC")

    def prefix(d: dict[str, Any]) -> None:
        d["pre_tokenizer"]["add_prefix_space"] = True

    _one_line_error(_edited(hf_file, tmp_path, prefix), "add_prefix_space")

    def metaspace(d: dict[str, Any]) -> None:
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}

    _one_line_error(_edited(hf_file, tmp_path, metaspace), "does not end with ByteLevel")

    def extra_token(d: dict[str, Any]) -> None:
        d["model"]["vocab"]["zzzq"] = 5000

    _one_line_error(_edited(hf_file, tmp_path, extra_token), "neither a byte nor made by a merge")

    (tmp_path / "junk.json").write_text("{not json")
    _one_line_error(tmp_path / "junk.json", "not a tokenizer.json")


def test_bad_tiktoken_files_are_refused(tmp_path: Path) -> None:
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    path = tmp_path / "bad.tiktoken"
    path.write_text("\n".join([*lines[:10], "not-a-valid-line", *lines[10:]]))
    _one_line_error(path, "line 11", pattern="gpt2")
    path.write_text("\n".join([*lines, "%%%% 256"]))
    _one_line_error(path, "line 257", pattern="gpt2")
    path.write_text("\n".join(lines[:-1]))
    _one_line_error(path, "no token for byte 0xff", pattern="gpt2")
    unbuildable = base64.b64encode(b"xyz").decode()
    path.write_text("\n".join([*lines, f"{unbuildable} 256"]))
    _one_line_error(path, "not the merge of two tokens", pattern="gpt2")


def test_cli_converts(hf_file: Path, imported: Tokenizer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "from_hf.json"
    result = runner.invoke(cli_main, ["vocab", "--from", str(hf_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Tokenizer.load(out).hash == imported.hash
    imported.export_tiktoken(tmp_path / "v.tiktoken")
    out2 = tmp_path / "from_tiktoken.json"
    args = ["vocab", "--from", str(tmp_path / "v.tiktoken"), "-o", str(out2)]
    result = runner.invoke(cli_main, args)
    assert result.exit_code != 0 and "--pattern" in result.output
    result = runner.invoke(cli_main, [*args, "--pattern", "gpt2", "--special", "<|pad|>"])
    assert result.exit_code == 0, result.output
    tok = Tokenizer.load(out2)
    assert tok.special_tokens["<|pad|>"] == 700 and tok.eot_id == 701
    result = runner.invoke(cli_main, ["vocab", "--from", str(tmp_path / "missing.json")])
    assert result.exit_code != 0 and "missing.json" in result.output


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
