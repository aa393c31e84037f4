"""Record files (JSONL, JSON, Parquet, CSV, datasets folders) as corpora: the same documents
give the same token ids and vocab as text files; bad records are counted; corrupt files
are one-line errors; Parquet is read a row group at a time."""

from __future__ import annotations

import array
import csv
import json
import sys
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from tok_corpus import make_texts

from lmrs import Tokenizer, _lmrs, add_to_corpus
from lmrs.cli.main import cli
from lmrs.corpus.files import record_folder_name
from lmrs.corpus.records import RecordOptions, RecordReader
from lmrs.errors import InputError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DOCS = [*make_texts(24, seed=3), "", "a literal <|endoftext|> stays text"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def write_text_folder(root: Path, docs: list[str]) -> Path:
    root.mkdir()
    for i, doc in enumerate(docs):
        (root / f"doc{i:04d}.txt").write_bytes(doc.encode("utf-8"))
    return root


def write_jsonl(path: Path, docs: list[str]) -> Path:
    lines = [json.dumps({"id": i, "text": d}) for i, d in enumerate(docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json_array(path: Path, docs: list[str]) -> Path:
    path.write_text(json.dumps([{"text": d} for d in docs]), encoding="utf-8")
    return path


def write_parquet(path: Path, docs: list[str]) -> Path:
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    pq.write_table(table, path, row_group_size=5)  # several row groups
    return path


def write_csv(path: Path, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, doc in enumerate(docs):
            writer.writerow([i, doc])
    return path


def write_datasets(path: Path, docs: list[str]) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": docs, "n": list(range(len(docs)))}).save_to_disk(str(path))
    return path


WRITERS: dict[str, tuple[str, Callable[[Path, list[str]], Path]]] = {
    "jsonl": ("data.jsonl", write_jsonl),
    "json": ("data.json", write_json_array),
    "parquet": ("data.parquet", write_parquet),
    "csv": ("data.csv", write_csv),
    "datasets": ("data_ds", write_datasets),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The text-folder baseline: a tokenizer trained on it and its token file."""
    root = tmp_path_factory.mktemp("ref")
    folder = write_text_folder(root / "texts", DOCS)
    tok = root / "tok.json"
    code, out = run("vocab", str(folder), "--size", "300", "-o", str(tok), "-q")
    assert code == 0, out
    tokens = root / "tokens.bin"
    code, out = run("encode", str(folder), "-t", str(tok), "-o", str(tokens), "-q")
    assert code == 0, out
    return {"folder": folder, "tok": tok, "tokens": tokens}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_same_ids_and_vocab_as_text_files(
    fmt: str, tmp_path: Path, reference: dict[str, Path]
) -> None:
    name, writer = WRITERS[fmt]
    source = writer(tmp_path / name, DOCS)
    tok = tmp_path / "tok.json"
    code, out = run("vocab", str(source), "--size", "300", "-o", str(tok), "-q")
    assert code == 0, out
    assert (
        json.loads(tok.read_text())["merges"] == json.loads(reference["tok"].read_text())["merges"]
    )
    tokens = tmp_path / "tokens.bin"
    code, out = run("encode", str(source), "-t", str(reference["tok"]), "-o", str(tokens), "-q")
    assert code == 0, out
    assert tokens.read_bytes() == reference["tokens"].read_bytes()
    sidecar = json.loads(Path(f"{tokens}.json").read_text())
    expected = json.loads(Path(f"{reference['tokens']}.json").read_text())
    # one document per record, each ended by <|endoftext|>
    assert sidecar["num_documents"] == len(DOCS) == expected["num_documents"]
    assert sidecar["num_bytes"] == expected["num_bytes"]


def test_shards_from_records_concatenate_to_the_single_file(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    source = write_parquet(tmp_path / "d.parquet", DOCS)
    out = tmp_path / "shards"
    code, output = run(
        "encode", str(source), "-t", str(reference["tok"]), "-o", str(out), "--shard-tokens",
        "100", "-q",
    )  # fmt: skip
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) > 1
    joined = b"".join((out / s).read_bytes() for s in manifest["shards"])
    assert joined == reference["tokens"].read_bytes()


def test_parquet_is_read_by_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_parquet(tmp_path / "d.parquet", DOCS)
    groups = pq.ParquetFile(source).num_row_groups
    assert groups > 2

    def whole(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("read the whole file")

    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    reader = RecordReader(source, RecordOptions(batch_chars=1))
    batches = list(reader.batches())
    assert reader.row_groups_read == groups
    assert [t for b in batches for t in b] == DOCS
    assert len(batches) > groups  # batches follow their size, not the row groups


def test_bad_jsonl_records_are_counted_and_named(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    good = ["first document", "second document"]
    lines = [
        json.dumps({"text": good[0]}).encode(),
        b'{"body": "no text field"}',
        b'{"text": 42}',
        b'{"text": "unterminated',
        b'{"text": "bad \xff byte"}',
        b'{"text": null}',
        b'{"text": "lone \\ud800 surrogate"}',
        b"[1, 2]",
        b"",
        json.dumps({"text": good[1]}).encode(),
    ]
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    reader = RecordReader(source, RecordOptions(max_examples=3))
    assert [t for b in reader.batches() for t in b] == good
    assert reader.bad.total == 7
    assert reader.bad.counts["invalid UTF-8"] == 2
    assert reader.bad.counts["missing field 'text'"] == 1
    assert reader.bad.examples[0] == f"{source} line 2: missing field 'text'"
    assert len(reader.bad.examples) == 3

    tokens = tmp_path / "t.bin"
    result = CliRunner().invoke(
        cli, ["encode", str(source), "-t", str(reference["tok"]), "-o", str(tokens), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "7 bad records skipped" in result.output
    assert f"{source} line 3: field 'text' is int, not a string" in result.output
    assert json.loads(Path(f"{tokens}.json").read_text())["num_documents"] == 2


def test_bad_csv_rows_are_counted(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(b'id,text\n1,good one\n2\n3,bad \xfe bytes\n4,"good, two"\n')
    reader = RecordReader(source)
    assert [t for b in reader.batches() for t in b] == ["good one", "good, two"]
    assert reader.bad.counts == {"missing field 'text'": 1, "invalid UTF-8": 1}
    assert reader.bad.examples[1] == f"{source} row 3: invalid UTF-8"
    with pytest.raises(InputError, match=r"bad.csv: no column 'body' \(columns: 'id', 'text'\)"):
        RecordReader(source, RecordOptions(text_field="body"))  # before anything is read


def test_parquet_nulls_and_binary_values(tmp_path: Path) -> None:
    source = tmp_path / "b.parquet"
    table = pa.table({"text": pa.array([b"ok", None, b"\xff\xfe", "caf\u00e9".encode()])})
    pq.write_table(table, source)
    reader = RecordReader(source)
    assert [t for b in reader.batches() for t in b] == ["ok", "café"]
    assert reader.bad.counts == {"field 'text' is null": 1, "invalid UTF-8": 1}


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(b"PAR1 this is not parquet PAR1"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    ],
    ids=["garbage", "truncated"],
)
def test_corrupt_parquet_is_one_line(
    make: Callable[[Path], None], tmp_path: Path, reference: dict[str, Path]
) -> None:
    source = write_parquet(tmp_path / "c.parquet", DOCS)
    make(source)
    code, out = run("encode", str(source), "-t", str(reference["tok"]), "-o", str(tmp_path / "t"))
    assert code != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmrs: {source}"), out
    assert not (tmp_path / "t").exists()


def test_wrong_column_and_datasetdict_are_one_line(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "c.parquet", DOCS)
    code, out = run(
        "vocab", str(source), "--text-field", "body", "-o", str(tmp_path / "t.json"), "-q"
    )
    assert code != 0 and "no column 'body' (columns: 'id', 'text')" in out
    assert len(out.strip().splitlines()) == 1
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="DatasetDict .*pass one split's folder"):
        list(RecordReader(tmp_path / "dd").batches())
    assert list(RecordReader(tmp_path / "dd" / "train").texts()) == ["a", "b"]


def test_missing_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_parquet(tmp_path / "c.parquet", DOCS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError, match=r"install pyarrow \(pip install 'lmrs\[data\]'\)"):
        list(RecordReader(source).batches())


def write_json_lines_dot_json(path: Path, docs: list[str]) -> Path:
    return write_jsonl(path, docs)  # a .json file holding JSON lines, not an array


PART_WRITERS = {**WRITERS, "json-lines": ("lines.json", write_json_lines_dot_json)}


@pytest.mark.parametrize("fmt", sorted(PART_WRITERS))
@pytest.mark.parametrize("num_parts", [2, 3, 40])
def test_parts_of_a_record_file_are_the_whole_file_in_order(
    fmt: str, num_parts: int, tmp_path: Path, reference: dict[str, Path]
) -> None:
    # each part run alone, in any order (as separate machines would), into one folder:
    # its shards, read in the manifest's order, are the single token file's bytes
    name, writer = PART_WRITERS[fmt]
    source = writer(tmp_path / name, DOCS)
    out = tmp_path / "parts"
    documents = []
    for part in reversed(range(num_parts)):
        code, output = run(
            "encode", str(source), "-t", str(reference["tok"]), "-o", str(out),
            "--num-parts", str(num_parts), "--part-index", str(part), "-q",
        )  # fmt: skip
        assert code == 0, output
        documents.append(json.loads(Path(f"{out}/shard-{part:05d}-00000.bin.json").read_text()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing_parts"] == []
    joined = b"".join((out / s).read_bytes() for s in manifest["shards"])
    assert joined == reference["tokens"].read_bytes()
    counts = [d["num_documents"] for d in documents]
    assert sum(counts) == len(DOCS)
    if num_parts < len(DOCS) and fmt != "datasets":  # a datasets folder has one batch here
        assert sum(c > 0 for c in counts) >= 2  # the records are shared out, not all in one


def test_parts_count_each_bad_record_once_with_its_line(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"document {i} " * (i % 7 + 1)}).encode() for i in range(30)]
    lines[4] = b'{"body": "no text"}'
    lines[17] = b'{"text": "unterminated'
    lines[25] = b'{"text": 7}'
    source = tmp_path / "d.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    whole = RecordReader(source)
    expected = list(whole.texts())
    texts: list[str] = []
    examples: list[str] = []
    for part in range(4):
        reader = RecordReader(source, RecordOptions(num_parts=4, part_index=part))
        texts += reader.texts()
        examples += reader.bad.examples
        assert reader.num_records > 0 and f"part {part} of 4" in reader.describe()
    assert texts == expected and len(texts) == 27
    assert (
        examples
        == whole.bad.examples
        == [
            f"{source} line 5: missing field 'text'",
            f"{source} line 18: JSON syntax error (Invalid control character at)",
            f"{source} line 26: field 'text' is int, not a string",
        ]
    )
    # CSV: every part parses the file; the bad rows go to the part that owns them
    table = tmp_path / "d.csv"
    table.write_bytes(b'id,text\n1,"one\ntwo"\n2\n3,bad \xfe\n4,four\n5,five\n')
    seen: list[str] = []
    bad = 0
    for part in range(3):
        reader = RecordReader(table, RecordOptions(num_parts=3, part_index=part))
        seen += reader.texts()
        bad += reader.bad.total
    assert seen == ["one\ntwo", "four", "five"] and bad == 2
    with pytest.raises(ValueError, match="part_index 3 is out of range for num_parts 3"):
        RecordOptions(num_parts=3, part_index=3)


def test_parquet_parts_read_only_their_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_parquet(tmp_path / "d.parquet", DOCS)  # row groups of 5 records
    groups = pq.ParquetFile(source).num_row_groups
    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def spy(self: object, index: int, *args: object, **kwargs: object) -> object:
        read.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    for part in range(2):
        before = len(read)
        reader = RecordReader(source, RecordOptions(num_parts=2, part_index=part))
        assert list(reader.texts())
        assert 0 < len(read) - before < groups
    assert sorted(read) == list(range(groups))  # each row group read by exactly one part


def test_corpus_add_keeps_record_boundaries(tmp_path: Path, reference: dict[str, Path]) -> None:
    source = write_jsonl(tmp_path / "d.jsonl", [*DOCS, "x"])
    with open(source, "ab") as f:
        f.write(b'{"nope": 1}\n')
    corpus = tmp_path / "corpus"
    result = add_to_corpus(source, corpus, show_progress=False)
    assert result.added == len(DOCS) + 1 and result.bad_records is not None
    assert result.bad_records.total == 1
    again = add_to_corpus(source, corpus, show_progress=False)
    assert again.added == 0 and again.unchanged == len(DOCS) + 1
    files = sorted((corpus / record_folder_name(source)).rglob("*.txt"))
    assert [f.read_bytes().decode("utf-8") for f in files] == [*DOCS, "x"]

    code, out = run("corpus", "add", str(source), str(tmp_path / "c2"), "--quiet")
    assert code == 0 and "1 bad records skipped" in out


ARROW_TYPES = [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()]


def arrow_column(docs: list[bytes], kind: object) -> object:
    """An Arrow array of `kind` holding `docs` as is (invalid UTF-8 included: built from
    its buffers, which pyarrow does not validate)."""
    offsets = [0]
    for doc in docs:
        offsets.append(offsets[-1] + len(doc))
    width = "q" if kind in (pa.large_string(), pa.large_binary()) else "i"
    return pa.Array.from_buffers(
        kind,
        len(docs),
        [None, pa.py_buffer(array.array(width, offsets).tobytes()), pa.py_buffer(b"".join(docs))],
    )


@pytest.mark.parametrize("kind", ARROW_TYPES, ids=str)
@pytest.mark.parametrize("batch_chars", [1, 50, 1 << 20])
def test_arrow_columns_go_to_rust_as_bytes(
    kind: object, batch_chars: int, tmp_path: Path, reference: dict[str, Path]
) -> None:
    """Rows that are not UTF-8 are skipped and named by row; the others give the ids and
    vocab of the same documents as text files, whatever the column type and batch size."""
    from lmrs import Tokenizer, _lmrs
    from lmrs.data.encode import encode_corpus, train_tokenizer

    bad_rows = {3, 11}
    raw = [d.encode("utf-8") for d in DOCS]
    for row in sorted(bad_rows):
        raw.insert(row, b"bad \xff\xfe bytes")
    source = tmp_path / "b.parquet"
    table = pa.table({"text": arrow_column(raw, kind)})
    pq.write_table(table, source, row_group_size=7)
    tok = Tokenizer.load(reference["tok"])

    reader = RecordReader(source, RecordOptions(batch_chars=batch_chars))
    out = tmp_path / "tokens.bin"
    with pytest.MonkeyPatch.context() as patch:
        # no Python str per document on a column without nulls
        patch.setattr(RecordReader, "_checked", lambda *_: pytest.fail("a str was made"))
        stream = _lmrs.TokenStream(tok._core, str(out), None)
        reader.encode_into(stream, lambda _n: None)
        stream.finish()
    assert out.read_bytes() == reference["tokens"].read_bytes()
    assert reader.num_records == len(DOCS)
    assert reader.bad.counts == {"invalid UTF-8": 2}
    assert reader.bad.examples == [f"{source} row {row}: invalid UTF-8" for row in sorted(bad_rows)]

    info = encode_corpus(tok, source, tmp_path / "again.bin", show_progress=False)
    assert info["bad_records"] == 2 and info["num_documents"] == len(DOCS)
    trained = train_tokenizer(source, 300, show_progress=False)
    assert trained.train_stats is not None
    assert trained.train_stats.num_files == len(DOCS)
    assert trained.train_stats.num_bytes == sum(len(d) for d in raw) - sum(
        len(raw[row]) for row in bad_rows
    )
    assert (
        json.loads(trained.to_json())["merges"]
        == json.loads(reference["tok"].read_text())["merges"]
    )


def test_arrow_rows_cover_a_sliced_array_in_order() -> None:
    from lmrs.corpus.arrow_rows import arrow_rows

    docs = ["", "a", "bb", "", "cccc", "日本語", "e" * 40, "", "f"]
    whole = pa.array(["skip me", *docs])
    array = whole.slice(1)  # a non-zero Arrow offset
    for max_bytes in (1, 3, 10, 1000):
        pieces = list(arrow_rows(pa, array, 100, max_bytes) or [])
        assert [p.first_row for p in pieces] == [
            100 + sum(q.num_rows for q in pieces[:i]) for i in range(len(pieces))
        ]
        got = []
        for piece in pieces:
            assert piece.num_rows >= 1
            assert piece.num_rows == 1 or piece.num_bytes <= max_bytes
            rows = piece.array.to_pylist()
            assert piece.num_bytes == sum(len(r.encode()) for r in rows)
            got += rows
        assert got == docs
    assert arrow_rows(pa, pa.array(["a", None]), 0, 10) is None  # nulls: counted one by one
    empty = list(arrow_rows(pa, pa.array(["", ""]), 0, 10) or [])
    assert [(p.num_bytes, p.num_rows) for p in empty] == [(0, 2)]


@pytest.mark.parametrize("kind", ["string", "large_string", "binary", "large_binary"])
def test_rust_reads_arrow_arrays_in_place(kind: str, tmp_path: Path) -> None:
    """Every string/binary layout, sliced (non-zero offset), empty, with invalid UTF-8:
    the token file from the capsules equals the one from the same texts as str."""
    docs = [b"skip", "héllo wörld\n".encode(), b"", b"ok \xff bad", "日本語 text".encode(), b"x"]
    storage = "large_binary" if kind.startswith("large") else "binary"
    # a string array holding invalid UTF-8, as a corrupt Parquet file can give
    array = pa.array(docs, type=getattr(pa, storage)()).view(getattr(pa, kind)()).slice(1)
    tokenizer = Tokenizer.train(["hello world 日本語 text ok bad x"] * 3, 300, show_progress=False)
    stream = _lmrs.TokenStream(tokenizer._core, str(tmp_path / "a.bin"), None)
    taken, invalid = stream.write_arrow([array.__arrow_c_array__()])
    assert invalid == [2]  # b"ok \xff bad", counted by the caller as a bad record
    empty_taken, _ = stream.write_arrow([array.slice(1, 0).__arrow_c_array__()])
    stream.finish()
    good = [d.decode() for i, d in enumerate(docs[1:]) if i != 2]
    assert (taken, empty_taken) == (sum(len(d.encode()) for d in good), 0)
    reference = _lmrs.TokenStream(tokenizer._core, str(tmp_path / "b.bin"), None)
    reference.write(good)
    reference.finish()
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    counter = _lmrs.WordCounter(None)
    assert counter.add_arrow([array.__arrow_c_array__()]) == (taken, [2])
    # two arrays in one call: rows counted across them
    halves = [array.slice(0, 2).__arrow_c_array__(), array.slice(2).__arrow_c_array__()]
    assert counter.add_arrow(halves) == (taken, [2])


def test_rust_refuses_arrow_arrays_it_cannot_read_in_place() -> None:
    counter = _lmrs.WordCounter(None)
    with pytest.raises(ValueError, match="has nulls"):
        counter.add_arrow([pa.array(["a", None]).__arrow_c_array__()])
    with pytest.raises(ValueError, match="not a string or binary array"):
        counter.add_arrow([pa.array([1, 2]).__arrow_c_array__()])
    schema, array = pa.array(["a"]).__arrow_c_array__()
    with pytest.raises(ValueError, match="incorrect name"):  # capsules swapped
        counter.add_arrow([(array, schema)])
    assert len(counter) == 0


DEEP = b"[" * 100_000 + b"]" * 100_000  # one line a recursive parser cannot descend


def test_deeply_nested_json_is_a_bad_record_or_a_refused_file(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    """A JSON line nested 100,000 deep is one bad record (vocab, encode, corpus add); a
    JSON array nested so deep is a refused file, one line naming it."""
    lines = [json.dumps({"text": "first document"}).encode(), DEEP, b'{"text": "second"}']
    source = tmp_path / "deep.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    reader = RecordReader(source)
    assert list(reader.texts()) == ["first document", "second"]
    assert reader.bad.examples == [f"{source} line 2: JSON not readable (JSON nested too deeply)"]
    tok = str(reference["tok"])
    for args in (
        ["vocab", str(source), "--size", "260", "-o", str(tmp_path / "t.json"), "-q"],
        ["encode", str(source), "-t", tok, "-o", str(tmp_path / "t.bin"), "-q"],
        ["corpus", "add", str(source), str(tmp_path / "corpus"), "--quiet"],
    ):
        code, out = run(*args)
        assert code == 0 and "1 bad records skipped" in out, out
    array = tmp_path / "deep.json"
    array.write_bytes(b'[{"text": "a"}, ' + DEEP + b"]")
    for args in (
        ["vocab", str(array), "--size", "260", "-o", str(tmp_path / "u.json"), "-q"],
        ["encode", str(array), "-t", tok, "-o", str(tmp_path / "u.bin"), "-q"],
        ["corpus", "add", str(array), str(tmp_path / "corpus2"), "--quiet"],
    ):
        code, out = run(*args)
        assert code == 1 and out.strip() == f"lmrs: {array}: not readable: JSON nested too deeply"
    assert not (tmp_path / "u.json").exists() and not (tmp_path / "u.bin").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_byte_order_mark_is_skipped(fmt: str, tmp_path: Path, reference: dict[str, Path]) -> None:
    """A file saved with a UTF-8 BOM gives the same documents as without it (the first
    JSON line is not bad; the CSV header's first column is 'text', not '\\ufefftext')."""
    name, writer = WRITERS[fmt]
    plain = writer(tmp_path / name, DOCS)
    marked = tmp_path / f"bom-{name}"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    if fmt == "csv":  # text as the first column: the BOM would rename it
        with open(marked, "w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f).writerows([["text"], *([d] for d in DOCS)])
    reader = RecordReader(marked)
    assert list(reader.texts()) == DOCS
    assert reader.bad.total == 0


def test_record_files_in_a_folder_of_text_files_are_warned_about(
    tmp_path: Path, reference: dict[str, Path]
) -> None:
    """A .jsonl among text files is read as plain text (one document): each command says
    so in one line, naming it."""
    folder = write_text_folder(tmp_path / "mixed", DOCS[:3])
    write_jsonl(folder / "records.jsonl", DOCS[3:6])
    tok = str(reference["tok"])
    for args in (
        ["vocab", str(folder), "--size", "260", "-o", str(tmp_path / "t.json"), "-q"],
        ["encode", str(folder), "-t", tok, "-o", str(tmp_path / "t.bin"), "-q"],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert warnings == [
            f"lmrs: warning: {folder / 'records.jsonl'}: record files read as plain text, one "
            "document each (JSON or CSV syntax and all); give each one alone to read its "
            "records as documents"
        ]
    with pytest.warns(UserWarning, match="records.jsonl: record files read as plain text"):
        Tokenizer.train(folder, 260, show_progress=False)
