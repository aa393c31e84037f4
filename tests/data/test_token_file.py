"""Token files per DESIGN.md: raw ids + sidecar, shards + manifest, parts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from tok_corpus import make_texts, write_corpus

from lmrs import Tokenizer, TokenizerError
from lmrs._lmrs import head_tail_sha256
from lmrs.data.tokens import DataError, TokenDataset


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(make_texts(40, seed=2), 500, show_progress=False)


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    texts = make_texts(25, seed=4) + ["literal <|endoftext|> stays text", ""]
    paths = write_corpus(tmp_path / "corpus", texts)  # sorted: the encoding order
    return tmp_path / "corpus", [p.read_bytes().decode("utf-8") for p in paths]


def expected_stream(tok: Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out += tok.encode_ordinary(doc) + [tok.eot_id]
    return out


def read_shards(directory: Path, manifest: dict) -> list[int]:
    return [
        int(i)
        for name in manifest["shards"]
        for i in np.memmap(directory / name, dtype=manifest["dtype"], mode="r")
    ]


def test_single_file_and_sidecar(tok: Tokenizer, corpus: tuple[Path, list[str]]) -> None:
    root, docs = corpus
    out = root.parent / "tokens.bin"
    info = tok.encode_files(root, out, show_progress=False)
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert {k: v for k, v in info.items() if k != "skipped_files"} == sidecar
    assert sidecar["format"] == "lmrs-tokens" and sidecar["version"] == 2
    assert sidecar["dtype"] == "uint16"
    assert sidecar["num_documents"] == len(docs)
    assert sidecar["num_bytes"] == sum(len(d.encode()) for d in docs)
    assert sidecar["vocab_size"] == tok.vocab_size
    assert sidecar["tokenizer_hash"] == tok.hash
    assert sidecar["eot_id"] == tok.eot_id
    ids = np.memmap(out, dtype=np.uint16, mode="r")
    assert ids.tolist() == expected_stream(tok, docs)
    assert sidecar["num_tokens"] == len(ids)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "corpus",
        "tokens.bin",
        "tokens.bin.idx",
        "tokens.bin.json",
    ]


def test_texts_and_non_text_files(tok: Tokenizer, tmp_path: Path) -> None:
    texts = ["one doc", "two <|endoftext|>"]
    info = tok.encode_files(texts, tmp_path / "t.bin", show_progress=False)
    assert np.fromfile(tmp_path / "t.bin", np.uint16).tolist() == expected_stream(tok, texts)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("hello")
    (tmp_path / "c" / "b.bin").write_bytes(b"\x00\x01binary")
    info = tok.encode_files(tmp_path / "c", tmp_path / "c.bin", show_progress=False)
    assert info["num_documents"] == 1
    assert info["skipped_files"] == [str(tmp_path / "c" / "b.bin")]


def test_shards_and_manifest(tok: Tokenizer, corpus: tuple[Path, list[str]]) -> None:
    root, docs = corpus
    out = root.parent / "shards"
    manifest = tok.encode_files(root, out, shard_tokens=200, show_progress=False)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["format"] == "lmrs-shards" and on_disk["shards"] == manifest["shards"]
    stream = expected_stream(tok, docs)
    assert len(manifest["shards"]) == -(-len(stream) // 200)
    assert read_shards(out, manifest) == stream
    assert manifest["num_tokens"] == len(stream)
    assert manifest["num_documents"] == len(docs)
    assert manifest["num_bytes"] == sum(len(d.encode()) for d in docs)
    for name in manifest["shards"][:-1]:
        assert json.loads((out / f"{name}.json").read_text())["num_tokens"] == 200
    # Writing again replaces the directory (no stale shards).
    again = tok.encode_files(root, out, shard_tokens=10_000, show_progress=False)
    assert len(again["shards"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        *again["shards"],
        again["shards"][0] + ".idx",
        again["shards"][0] + ".json",
    ]


def test_parts_are_disjoint_and_complete(tok: Tokenizer, corpus: tuple[Path, list[str]]) -> None:
    root, docs = corpus
    out = root.parent / "parts"
    for part in (0, 2):
        partial = tok.encode_files(root, out, num_parts=3, part_index=part, show_progress=False)
        assert 1 in partial["missing_parts"]
    tok.encode_files(root, out, num_parts=3, part_index=1, shard_tokens=50, show_progress=False)
    manifest = Tokenizer.build_manifest(out)
    assert manifest["missing_parts"] == [] and manifest["num_parts"] == 3
    assert read_shards(out, manifest) == expected_stream(tok, docs)
    assert manifest["num_documents"] == len(docs)


def test_bad_arguments_and_foreign_directory(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="part_index"):
        tok.encode_files(["x"], tmp_path / "p", num_parts=2, part_index=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a shard directory"):
        tok.encode_files(["x"], mine, shard_tokens=10, show_progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(TokenizerError, match="no-such-dir"):
        tok.encode_files(["x"], tmp_path / "no-such-dir" / "t.bin", show_progress=False)
    assert not (tmp_path / "no-such-dir").exists()


def test_uint32_when_vocab_exceeds_uint16(tmp_path: Path) -> None:
    # Every byte pair as a merge, the pairs starting with "a" last: "aa" gets id > 65535.
    pairs = [(a, b) for a in range(256) for b in range(256) if a != 97]
    big = Tokenizer.from_vocab(pairs + [(97, b) for b in range(256)])
    assert big.vocab_size > 65536
    info = big.encode_files(["a" * 7_000, "b"], tmp_path / "big.bin", show_progress=False)
    assert info["dtype"] == "uint32"
    ids = np.memmap(tmp_path / "big.bin", dtype=np.uint32, mode="r").tolist()
    assert ids == big.encode_ordinary("a" * 7_000) + [big.eot_id, 98, big.eot_id]
    assert ids[0] == big.token_to_id(b"aa") > 65535


def test_sidecar_and_manifest_record_size_and_checksum(
    tok: Tokenizer, corpus: tuple[Path, list[str]]
) -> None:
    root, _ = corpus
    out = root.parent / "tokens.bin"
    info = tok.encode_files(root, out, show_progress=False)
    assert (info["size_bytes"], info["head_tail_sha256"]) == head_tail_sha256(str(out))
    shards = root.parent / "shards"
    manifest = tok.encode_files(root, shards, shard_tokens=100, show_progress=False)
    assert sorted(manifest["shard_checks"]) == sorted(manifest["shards"])
    for name, check in manifest["shard_checks"].items():
        assert (check["size_bytes"], check["head_tail_sha256"]) == head_tail_sha256(
            str(shards / name)
        )
    TokenDataset(out, tokenizer=tok)
    TokenDataset(shards, tokenizer=tok)


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[:-2]))
    elif how == "header flipped":
        data[0] ^= 0xFF
        data[1] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "tail flipped":
        data[-1] ^= 0x40
        path.write_bytes(bytes(data))
    elif how == "replaced":  # another valid token file of the same length
        path.write_bytes(bytes(reversed(data)))


@pytest.mark.parametrize("how", ["truncated", "header flipped", "tail flipped", "replaced"])
@pytest.mark.parametrize("layout", ["file", "shards"])
def test_a_damaged_token_file_is_one_line_naming_it(
    tok: Tokenizer, corpus: tuple[Path, list[str]], how: str, layout: str
) -> None:
    root, _ = corpus
    if layout == "file":
        out = victim = root.parent / "tokens.bin"
        tok.encode_files(root, out, show_progress=False)
    else:
        out = root.parent / "shards"
        manifest = tok.encode_files(root, out, shard_tokens=100, show_progress=False)
        victim = out / manifest["shards"][1]
    corrupt(victim, how)
    with pytest.raises(DataError) as info:
        TokenDataset(out)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{victim}: ")
    expected = "truncated or replaced" if how == "truncated" else "checksum mismatch"
    assert expected in message


def test_temporaries_sit_beside_the_target_and_outputs_have_normal_permissions(
    tok: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    # leftovers of crashed writers of these targets (a process id that cannot exist)
    dead = "999999999-1-0"
    (out / f".shards.tmp-{dead}").mkdir()
    (out / f".shards.tmp-{dead}" / "shard-00000.bin").write_bytes(b"half")
    (out / f"shards.old-{dead}").mkdir()
    (out / f".t.bin.tmp-{dead}").write_bytes(b"half")
    (out / f".tok.json.tmp-{dead}").write_bytes(b"{")
    for _ in range(2):
        tok.encode_files(["a b c", "d e"], out / "shards/", shard_tokens=3, show_progress=False)
        tok.encode_files(["a b c", "d e"], out / "t.bin", show_progress=False)
        tok.save(out / "tok.json")
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "shards",
        "t.bin",
        "t.bin.idx",
        "t.bin.json",
        "tok.json",
    ]
    umask = os.umask(0)
    os.umask(umask)
    files = [out / "t.bin", out / "t.bin.idx", out / "t.bin.json", out / "tok.json"]
    files += list((out / "shards").iterdir())
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((out / "shards").stat().st_mode) == 0o777 & ~umask


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("shards", [None, 20])
def test_no_documents_is_an_error_and_keeps_the_old_output(
    tok: Tokenizer, corpus: tuple[Path, list[str]], shards: int | None
) -> None:
    """An input with no usable text (no files, only binary files, no texts) is refused
    before anything is written: the token file (or shard directory) there stays whole."""
    root, _ = corpus
    out = root.parent / ("kept" if shards else "kept.bin")
    tok.encode_files(root, out, shard_tokens=shards, show_progress=False)
    folder = out if shards else out.parent
    before = files_in(folder)
    (root.parent / "empty").mkdir()
    (root.parent / "binary").mkdir()
    (root.parent / "binary" / "a.dat").write_bytes(b"\x00\x01 not text")
    with pytest.raises(TokenizerError, match="empty: no files to encode"):
        tok.encode_files(root.parent / "empty", out, shard_tokens=shards, show_progress=False)
    with pytest.raises(ValueError, match="not written: the input is empty .1 files, none"):
        tok.encode_files(root.parent / "binary", out, shard_tokens=shards, show_progress=False)
    with pytest.raises(ValueError, match="not written: the input is empty"):
        tok.encode_files(iter([]), out, shard_tokens=shards, show_progress=False)
    assert files_in(folder) == before


def test_an_empty_part_is_still_written(tok: Tokenizer, tmp_path: Path) -> None:
    """More parts than documents: a part with none writes its (empty) shard."""
    info = tok.encode_files(["one document"], tmp_path / "p", num_parts=2, part_index=1)
    assert info["num_parts"] == 2 and info["missing_parts"] == [0]


@pytest.mark.parametrize("clash", ["tokenizer", "num_parts"])
def test_a_refused_part_leaves_nothing_in_the_shared_folder(
    tok: Tokenizer, corpus: tuple[Path, list[str]], clash: str
) -> None:
    root, _ = corpus
    out = root.parent / "parts"
    tok.encode_files(root, out, num_parts=2, part_index=0, show_progress=False)
    before = files_in(out)
    other = Tokenizer.train(make_texts(10, seed=9), 300, show_progress=False)
    encoder, num_parts = (other, 2) if clash == "tokenizer" else (tok, 3)
    with pytest.raises(ValueError, match="shard-00000-00000.bin.json: a shard of another run"):
        encoder.encode_files(root, out, num_parts=num_parts, part_index=1, show_progress=False)
    assert files_in(out) == before
