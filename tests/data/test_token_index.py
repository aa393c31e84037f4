"""The document index beside token files (NAME.bin.idx): written by every writer, read
instead of the tokens when opening, checked against them by `lmrs encode --verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from tok_corpus import make_texts, write_corpus

from lmrs import Tokenizer
from lmrs._lmrs import head_tail_sha256
from lmrs.cli.main import cli
from lmrs.data import tokens as data_module
from lmrs.data.encode import encode_corpus
from lmrs.data.tokens import DataError, TokenDataset, index_path, verify_token_data

SEQ_LEN = 8


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_texts(30, seed=2), 300, show_progress=False)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts(30, seed=5) + ["", "literal <|endoftext|> stays text", "Ελληνικά 🙂"]


def _files(tok: Tokenizer, texts: list[str], out: Path) -> Path:
    write_corpus(out.parent / "corpus", texts)
    tok.encode_files(out.parent / "corpus", out, show_progress=False)
    return out


def _texts(tok: Tokenizer, texts: list[str], out: Path) -> Path:
    tok.encode_files(texts, out, show_progress=False)
    return out


def _shards(tok: Tokenizer, texts: list[str], out: Path) -> Path:
    tok.encode_files(texts, out.with_suffix(""), shard_tokens=701, show_progress=False)
    return out.with_suffix("")


def _parts(tok: Tokenizer, texts: list[str], out: Path) -> Path:
    for part in (1, 0, 2):
        tok.encode_files(
            texts, out.with_suffix(""), num_parts=3, part_index=part, show_progress=False
        )
    return out.with_suffix("")


def _records(shard_tokens: int | None) -> Callable[[Tokenizer, list[str], Path], Path]:
    def write(tok: Tokenizer, texts: list[str], out: Path) -> Path:
        records = out.parent / "records.jsonl"
        records.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        target = out if shard_tokens is None else out.with_suffix("")
        encode_corpus(tok, records, target, shard_tokens=shard_tokens, show_progress=False)
        return target

    return write


WRITERS: dict[str, Callable[[Tokenizer, list[str], Path], Path]] = {
    "files": _files,
    "texts": _texts,
    "shards": _shards,
    "parts": _parts,
    "stream": _records(None),
    "stream-shards": _records(593),
}


def _batches(split: Any) -> list[tuple[list[list[int]], list[list[int]]]]:
    out = []
    for step in range(3):
        x, y = split.micro_batch(step, 0, seq_len=SEQ_LEN, global_batch_size=4, seed=1)
        out.append((x.tolist(), y.tolist()))
    for x, y in split.eval_batches(SEQ_LEN, 2, max_batches=3):
        out.append((x.tolist(), y.tolist()))
    return out


def _index_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.idx")) if path.is_dir() else [index_path(path)]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_writes_an_index_that_opens_like_the_scan(
    tok: Tokenizer, texts: list[str], tmp_path: Path, writer: str
) -> None:
    path = WRITERS[writer](tok, texts, tmp_path / "t.bin")
    assert _index_files(path) and all(p.is_file() for p in _index_files(path))
    indexed = TokenDataset(path, tok)
    scanned = TokenDataset(path, tok, use_index=False)
    assert indexed.indexed and not scanned.indexed
    assert indexed.num_documents == scanned.num_documents == len(texts)
    assert np.array_equal(indexed.doc_ends, scanned.doc_ends)
    assert np.array_equal(indexed.doc_starts, scanned.doc_starts)
    assert indexed.doc_bytes is not None and scanned.doc_bytes is not None
    assert np.array_equal(indexed.doc_bytes, scanned.doc_bytes)
    # (files are encoded in path order, not in the order of `texts`)
    assert sorted(indexed.doc_bytes.tolist()) == sorted(len(t.encode("utf-8")) for t in texts)
    for a, b in zip(indexed.split(0.2, seed=3), scanned.split(0.2, seed=3)):
        assert np.array_equal(a.runs, b.runs)
        assert (a.num_bytes, a.bytes_exact) == (b.num_bytes, b.bytes_exact) == (a.num_bytes, True)
        assert _batches(a) == _batches(b)
    report = verify_token_data(path, tok)
    assert report.indexed and report.bytes_checked and report.num_documents == len(texts)


def test_without_a_tokenizer_the_index_still_gives_exact_bytes(
    tok: Tokenizer, texts: list[str], tmp_path: Path
) -> None:
    path = _texts(tok, texts, tmp_path / "t.bin")
    train, val = TokenDataset(path).split(0.2, seed=3)
    exact_train, exact_val = TokenDataset(path, tok).split(0.2, seed=3)
    assert (train.num_bytes, val.num_bytes) == (exact_train.num_bytes, exact_val.num_bytes)
    assert train.bytes_exact and val.bytes_exact
    # the scan without a tokenizer can only estimate them
    assert not TokenDataset(path, use_index=False).split(0.2, seed=3)[1].bytes_exact


@pytest.mark.parametrize("writer", ["texts", "shards"])
def test_opening_with_an_index_reads_no_token(
    tok: Tokenizer, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    path = WRITERS[writer](tok, texts, tmp_path / "t.bin")
    expected = TokenDataset(path, tok, use_index=False).doc_ends

    def no_scan(*args: object) -> None:
        raise AssertionError("the tokens were scanned")

    monkeypatch.setattr(data_module, "_scan_documents", no_scan)
    dataset = TokenDataset(path, tok)
    assert dataset.indexed and np.array_equal(dataset.doc_ends, expected)
    with pytest.raises(AssertionError, match="scanned"):
        TokenDataset(path, tok, use_index=False)


def _big_file(tok: Tokenizer, tmp_path: Path) -> Path:
    """A token file longer than twice the 64 KiB its head/tail checksum covers, so that its
    middle can change without the checksum (or the size) noticing."""
    texts = make_texts(1500, seed=7)
    path = _texts(tok, texts, tmp_path / "big.bin")
    assert path.stat().st_size > 3 * (64 << 10)
    return path


def _overwrite_middle(path: Path, value: int) -> None:
    ids = np.memmap(path, dtype="<u2", mode="r+")
    middle = len(ids) // 2
    ids[middle - 500 : middle + 500] = value
    ids.flush()
    del ids


def test_tokens_replaced_in_the_middle_open_from_the_index_and_verify_catches_it(
    tok: Tokenizer, tmp_path: Path
) -> None:
    path = _big_file(tok, tmp_path)
    before = TokenDataset(path, tok)
    _overwrite_middle(path, tok.eot_id)  # new document boundaries the index does not have
    after = TokenDataset(path, tok)  # opening never looked at the tokens
    assert after.indexed and np.array_equal(after.doc_ends, before.doc_ends)
    with pytest.raises(DataError) as caught:
        verify_token_data(path, tok)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(index_path(path))), message
    assert "does not match" in message

    result = CliRunner().invoke(cli, ["encode", "--verify", str(path), "-t", str(tmp_path / "t")])
    assert result.exit_code != 0  # the tokenizer file named is missing
    tok.save(tmp_path / "tok.json")
    result = CliRunner().invoke(
        cli, ["encode", "--verify", str(path), "-t", str(tmp_path / "tok.json")]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"lmrs: {index_path(path)}:"), result.output
    assert result.output.count("\n") == 1


def test_ids_outside_the_vocabulary_are_refused_by_the_batch_that_reads_them(
    tok: Tokenizer, tmp_path: Path
) -> None:
    path = _big_file(tok, tmp_path)
    _overwrite_middle(path, tok.vocab_size + 5)
    split = TokenDataset(path).full()
    middle = len(split) // 2
    assert split.windows([0], SEQ_LEN)[0].shape == (1, SEQ_LEN)
    with pytest.raises(DataError, match="outside the vocabulary") as caught:
        split.windows([middle], SEQ_LEN)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(DataError, match="outside the vocabulary"):
        verify_token_data(path)


def test_verify_command_reports_a_good_file(
    tok: Tokenizer, texts: list[str], tmp_path: Path
) -> None:
    path = _shards(tok, texts, tmp_path / "t.bin")
    tok.save(tmp_path / "tok.json")
    result = CliRunner().invoke(
        cli, ["encode", "--verify", str(path), "-t", str(tmp_path / "tok.json")]
    )
    assert result.exit_code == 0, result.output
    assert f"{len(texts):,} documents" in result.output
    assert "matches the tokens (document ends and bytes)" in result.output


def _rewrite_index(path: Path, records: np.ndarray, header: list[int] | None = None) -> None:
    """Replace `path`'s index with these (end, bytes) records, and make its sidecar record
    the new file's size and checksum, as a consistent but wrong writer would."""
    idx = index_path(path)
    old = np.fromfile(idx, dtype="<u8")
    fields = header if header is not None else old[1:5].tolist()
    with idx.open("wb") as f:
        f.write(b"lmrs-idx")
        f.write(np.array(fields, dtype="<u8").tobytes())
        f.write(np.asarray(records, dtype="<u8").tobytes())
    sidecar = Path(f"{path}.json")
    meta = json.loads(sidecar.read_text())
    size, checksum = head_tail_sha256(str(idx))
    meta["index"] = {"size_bytes": size, "head_tail_sha256": checksum}
    sidecar.write_text(json.dumps(meta))


def _records_of(path: Path) -> np.ndarray:
    return np.fromfile(index_path(path), dtype="<u8")[5:].reshape(-1, 2).copy()


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: index_path(p).unlink(), "document index not found"),
    "truncated": (
        lambda p: index_path(p).write_bytes(index_path(p).read_bytes()[:-3]),
        "does not match",
    ),
    "overwritten": (
        lambda p: index_path(p).write_bytes(b"x" * index_path(p).stat().st_size),
        "checksum mismatch",
    ),
    "unordered": (
        lambda p: _rewrite_index(p, _records_of(p)[::-1]),
        "not increasing",
    ),
    "bytes": (
        lambda p: _rewrite_index(p, _records_of(p) * np.array([1, 2], dtype=np.uint64)),
        "do not add up",
    ),
    "counts": (
        lambda p: _rewrite_index(p, _records_of(p)[:-1]),
        "bytes for",
    ),
    "header": (
        lambda p: _rewrite_index(p, _records_of(p), [1, 1, 1, 1]),
        "counts 1 documents",
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_bad_index_is_a_one_line_error_naming_it(
    tok: Tokenizer, texts: list[str], tmp_path: Path, corruption: str
) -> None:
    path = _texts(tok, texts, tmp_path / "t.bin")
    damage, expected = CORRUPTIONS[corruption]
    damage(path)
    with pytest.raises(DataError) as caught:
        TokenDataset(path, tok)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(index_path(path))), message
    assert expected in message
    # the scan still reads the data (the tokens are intact)
    assert TokenDataset(path, tok, use_index=False).num_documents == len(texts)


def test_a_consistent_but_wrong_index_is_found_by_verify(
    tok: Tokenizer, texts: list[str], tmp_path: Path
) -> None:
    path = _shards(tok, texts, tmp_path / "t.bin")
    manifest = json.loads((path / "manifest.json").read_text())
    with_ends = [path / n for n in manifest["shards"] if len(_records_of(path / n)) >= 1]
    shard = with_ends[-1]
    records = _records_of(shard)
    assert records[0, 0] >= 2
    records[0, 0] -= 1  # a document end moved by one token; still increasing
    _rewrite_index(shard, records)
    size, checksum = head_tail_sha256(str(index_path(shard)))
    manifest["index_checks"][shard.name] = {"size_bytes": size, "head_tail_sha256": checksum}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert TokenDataset(path, tok).indexed
    with pytest.raises(DataError, match="does not match the data") as caught:
        verify_token_data(path, tok)
    assert str(caught.value).startswith(str(index_path(shard)))


def _as_version_1(sidecar: Path) -> None:
    meta = json.loads(sidecar.read_text())
    meta["version"] = 1
    meta.pop("index", None)
    meta.pop("index_checks", None)
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize("writer", ["texts", "shards"])
def test_version_1_files_without_an_index_open_by_the_scan(
    tok: Tokenizer, texts: list[str], tmp_path: Path, writer: str
) -> None:
    path = WRITERS[writer](tok, texts, tmp_path / "t.bin")
    expected = TokenDataset(path, tok)
    for idx in _index_files(path):
        bin_path = Path(str(idx)[: -len(".idx")])
        idx.unlink()
        _as_version_1(Path(f"{bin_path}.json"))
    if path.is_dir():
        _as_version_1(path / "manifest.json")
    old = TokenDataset(path, tok)
    assert not old.indexed
    assert np.array_equal(old.doc_ends, expected.doc_ends)
    assert old.doc_bytes is not None and expected.doc_bytes is not None
    assert np.array_equal(old.doc_bytes, expected.doc_bytes)
    assert not verify_token_data(path, tok).indexed


def test_a_version_2_sidecar_without_its_index_record_is_refused(
    tok: Tokenizer, texts: list[str], tmp_path: Path
) -> None:
    path = _texts(tok, texts, tmp_path / "t.bin")
    sidecar = Path(f"{path}.json")
    meta = json.loads(sidecar.read_text())
    del meta["index"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="without an 'index'"):
        TokenDataset(path)


def test_open_memory_is_per_document(tok: Tokenizer, texts: list[str], tmp_path: Path) -> None:
    """What an indexed open keeps: arrays of one entry per document, none per token."""
    path = _texts(tok, texts, tmp_path / "t.bin")
    dataset = TokenDataset(path, tok)
    kept = [dataset.doc_ends, dataset.doc_starts, dataset.doc_bytes]
    assert all(a is not None and len(a) == dataset.num_documents for a in kept)
    assert all(
        not isinstance(p, np.ndarray) or isinstance(p, np.memmap) for p in dataset.stream.parts
    )


def test_random_damage_to_an_index_is_refused_or_still_a_valid_partition(
    tok: Tokenizer, texts: list[str], tmp_path: Path
) -> None:
    """Bytes of the index changed and its recorded checksum updated to match (the worst
    case: only the structural checks stand between it and training): the open either
    refuses it in one line or yields documents that still partition the tokens."""
    path = _texts(tok, texts, tmp_path / "t.bin")
    pristine = index_path(path).read_bytes()
    sidecar = Path(f"{path}.json").read_text()
    rng = np.random.default_rng(11)
    outcomes = set()
    for _ in range(40):
        damaged = bytearray(pristine)
        for at in rng.integers(0, len(damaged), size=int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        index_path(path).write_bytes(bytes(damaged))
        Path(f"{path}.json").write_text(sidecar)
        _rewrite_index(path, _records_of(path), np.frombuffer(damaged[8:40], "<u8").tolist())
        try:
            dataset = TokenDataset(path)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(index_path(path))), e
            outcomes.add("refused")
        else:
            ends = dataset.doc_ends
            assert ends[-1] == dataset.num_tokens and (np.diff(ends) > 0).all()
            assert (
                dataset.doc_bytes is not None and dataset.doc_bytes.sum() == dataset.info.num_bytes
            )
            outcomes.add("opened")
    assert "refused" in outcomes
