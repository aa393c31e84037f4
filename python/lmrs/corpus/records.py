"""Documents from record files: one document per record of a JSONL / JSON / Parquet / CSV
file or of a Hugging Face ``datasets`` folder (written by ``Dataset.save_to_disk``).

This module turns such a path into an iterator of document batches (lists of str, about
``batch_chars`` each) and counts the records it could not use, so that the Rust scan and
encoder get batches, never one string at a time. ``RecordReader.count_words`` and
``encode_into`` hand Arrow string columns to Rust as their bytes (:mod:`lmrs.corpus.arrow_rows`),
with no Python string per document. Parquet is read a row group at a time
and Arrow files a record batch at a time (memory-mapped): a dataset is never in memory
whole. JSON arrays (``.json`` starting with ``[``) are the exception: ``json`` reads them
whole; JSON lines in a ``.json`` file are read a line at a time.

A bad record (missing field, null, not a string, invalid UTF-8, a JSON syntax error on one
line, JSON nested too deeply to parse) is skipped and counted in :class:`BadRecords`, never
dropped silently; a file that cannot be read at all (not Parquet, truncated, no such
column, a JSON array nested too deeply, a named pipe: record files are read more than
once) is an :class:`~lmrs.errors.InputError` naming it, in one line. A UTF-8 byte-order
mark at the start of a JSON or CSV file is skipped.

With ``num_parts`` / ``part_index`` (``lmrs encode --num-parts N --part-index I``) a reader
yields only its part of the records, contiguous and about equal in size, so that N
processes or machines can encode one record file together and their parts, read in order,
are the file's records in order: JSON lines by byte range (a line belongs to the part where
it starts; each part reads only its range), Parquet by row groups (sizes from the
metadata), ``datasets`` folders by record batches, CSV and JSON arrays by record (every
part parses the file, since a CSV field may hold newlines). A bad record is counted by the
part that owns it.

pyarrow is needed only for Parquet and ``datasets`` folders (``pip install 'lmrs[data]'``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lmrs import _lmrs
from lmrs.corpus.arrow_rows import ArrowBatch, ArrowRows, arrow_rows
from lmrs.errors import InputError
from lmrs.jsonfile import JSONNestingError, load_json, parse_json
from lmrs.prefetch import prefetched

__all__ = [
    "BadRecords",
    "RecordOptions",
    "RecordReader",
    "record_format",
]

# Suffix → format of a record file.
SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
# The files `Dataset.save_to_disk` writes beside its .arrow files.
HF_STATE = "state.json"
HF_INFO = "dataset_info.json"
HF_DICT = "dataset_dict.json"
# A UTF-8 byte-order mark, which some editors write at the start of a file: not text.
BOM = b"\xef\xbb\xbf"
PYARROW_HINT = "install pyarrow (pip install 'lmrs[data]')"

# What Rust is handed: a list of texts, or rows still in an Arrow column's buffers.
RustBatch = Union[list[str], ArrowBatch]


@dataclass(frozen=True)
class RecordOptions:
    """How to read records: the field holding each document's text, and the size of the
    batches handed on (in characters, summed over a batch's texts)."""

    text_field: str = "text"
    # small enough that reading the next batch overlaps encoding this one (lmrs.prefetch)
    batch_chars: int = 1 << 20
    # how many bad records are named (with their line/row) in the summary
    max_examples: int = 5
    # read only part `part_index` of `num_parts` (contiguous, about equal in size)
    num_parts: int = 1
    part_index: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.part_index < self.num_parts:
            raise ValueError(
                f"part_index {self.part_index} is out of range for num_parts {self.num_parts}"
            )


@dataclass
class BadRecords:
    """Records skipped, by reason, with the first few named by file and line/row."""

    max_examples: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, where: str, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> str:
        """One line: how many, why, and the first few (empty when there were none)."""
        if not self.counts:
            return ""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))
        line = f"{self.total} bad records skipped ({reasons}); first: " + "; ".join(self.examples)
        return line


def record_format(path: str | os.PathLike[str]) -> Optional[str]:
    """The record format of `path` ("jsonl", "json", "parquet", "csv", "datasets"), or None
    for anything else (a text file or a folder of text files)."""
    p = Path(path)
    if p.is_dir():
        if (p / HF_DICT).is_file() or ((p / HF_STATE).is_file() and (p / HF_INFO).is_file()):
            return "datasets"
        return None
    return SUFFIXES.get(p.suffix.lower())


def _has_surrogates(text: str) -> bool:
    if text.isascii():  # O(1) in CPython; most documents, and no copy
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class RecordReader:
    """The documents of one record file or ``datasets`` folder.

    ``batches()`` yields lists of texts in record order; after (or during) the iteration
    ``bad`` holds the records skipped, ``num_records`` the documents yielded and
    ``row_groups_read`` the Parquet row groups (or Arrow record batches) read.
    ``count_words`` and ``encode_into`` feed the same documents to Rust, Arrow columns as
    bytes.
    """

    def __init__(
        self, path: str | os.PathLike[str], options: RecordOptions = RecordOptions()
    ) -> None:
        self.path = Path(path)
        self.options = options
        fmt = record_format(self.path)
        if fmt is None:
            raise InputError(
                f"{self.path}: not a record file (expected .jsonl, .json, .parquet, .csv "
                "or a datasets folder)"
            )
        self.format = fmt
        self.bad = BadRecords(options.max_examples)
        self.num_records = 0
        self.row_groups_read = 0
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file or directory")
        if self.format != "datasets" and not stat.S_ISREG(self.path.stat().st_mode):
            # a named pipe can be read only once, and opening it waits for a writer;
            # a record file is opened more than once (a header check, then the records)
            raise InputError(
                f"{self.path}: not a regular file (a pipe, socket or device); a record file "
                "is read more than once: save it to a file first"
            )
        self.check()

    def check(self) -> None:
        """Fails now, before any progress bar, when the file cannot be read at all: not
        Parquet/Arrow, no such column, pyarrow missing (reads the metadata only)."""
        if self.format == "parquet":
            self._open_parquet().close()
        elif self.format == "csv":
            self._check_csv_header()
        elif self.format == "datasets":
            pa = self._pyarrow()
            for path in self._arrow_files():
                with self._arrow_reader(pa, path)[0]:
                    pass

    # ---- public iteration -----------------------------------------------------------

    def batches(self) -> Iterator[list[str]]:
        """Lists of document texts, about ``options.batch_chars`` characters each."""
        for batch in self._batches(as_bytes=False):
            if isinstance(batch, list):  # always, without as_bytes
                yield batch

    def count_words(self, counter: Any, progress: Callable[[int], object]) -> int:
        """Feeds every document to a ``lmrs._lmrs.WordCounter`` (what ``Tokenizer.train``
        calls for a reader); `progress(bytes)` after each batch. Returns the documents."""
        for batch in prefetched(self._batches(as_bytes=True)):
            progress(self._send(batch, counter.add_texts, counter.add_arrow))
        return self.num_records

    def encode_into(self, stream: Any, progress: Callable[[int], object]) -> None:
        """Appends every document to a ``lmrs._lmrs.TokenStream``; `progress(bytes)`."""
        # Python reads batch k+1 while Rust (GIL released) encodes batch k
        for batch in prefetched(self._batches(as_bytes=True)):
            progress(self._send(batch, stream.write, stream.write_arrow))

    def _send(
        self,
        batch: RustBatch,
        texts: Callable[[list[str]], int],
        arrow: Callable[[list[tuple[Any, Any]]], tuple[int, list[int]]],
    ) -> int:
        """Hands `batch` to Rust; returns the bytes taken. Rows that Rust finds not to be
        UTF-8 are counted as bad records."""
        if isinstance(batch, list):
            return texts(batch)
        taken, invalid = arrow(batch.capsules())
        for index in invalid:
            self.bad.add(f"{self.path} row {batch.row_of(index)}", "invalid UTF-8")
        self.num_records += batch.num_rows - len(invalid)
        return taken

    def _batches(self, *, as_bytes: bool) -> Iterator[RustBatch]:
        readers: dict[str, Callable[[], Iterator[Union[str, ArrowRows, None]]]] = {
            "jsonl": self._jsonl,
            "json": self._json,
            "parquet": lambda: self._parquet(as_bytes),
            "csv": lambda: self._part_of_records(self._csv),
            "datasets": lambda: self._datasets(as_bytes),
        }
        batch: list[str] = []
        size = 0
        arrow: list[ArrowRows] = []
        arrow_size = 0
        # Arrow batches grow from batch_chars / 2 to 8x batch_chars: the first is read
        # before any work starts (small: Rust starts sooner), later ones are read while
        # Rust works on the one before (large: fewer calls, each ending in a wait)
        arrow_target = self.options.batch_chars // 2
        for item in readers[self.format]():
            if item is None:  # a bad record, counted where it was read
                continue
            if isinstance(item, ArrowRows):
                if batch:  # keep record order
                    yield batch
                    batch, size = [], 0
                arrow.append(item)
                arrow_size += item.num_bytes
                if arrow_size >= arrow_target:
                    yield ArrowBatch(tuple(arrow))
                    arrow, arrow_size = [], 0
                    arrow_target = min(2 * arrow_target, 8 * self.options.batch_chars)
                continue
            if arrow:  # keep record order
                yield ArrowBatch(tuple(arrow))
                arrow, arrow_size = [], 0
            batch.append(item)
            size += len(item)
            self.num_records += 1
            if size >= self.options.batch_chars:
                yield batch
                batch, size = [], 0
        if arrow:
            yield ArrowBatch(tuple(arrow))
        if batch:
            yield batch

    def texts(self) -> Iterator[str]:
        """The documents one by one (what ``Tokenizer.train`` takes; it batches them)."""
        for batch in self.batches():
            yield from batch

    def describe(self) -> str:
        """A closing line: records read, and the bad ones when there were any."""
        line = f"{self.num_records:,} records from {self.path} ({self.format}"
        if self.options.num_parts > 1:
            line += f", part {self.options.part_index} of {self.options.num_parts}"
        line += ")"
        if self.bad.total:
            line += f"; {self.bad.summary()}"
        return line

    # ---- checks shared by the formats -------------------------------------------------

    def _checked(self, value: Any, where: str) -> Optional[str]:
        """The value as a document, or None after counting why it is not one."""
        field_name = self.options.text_field
        if value is None:
            self.bad.add(where, f"field {field_name!r} is null")
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                self.bad.add(where, "invalid UTF-8")
                return None
        if not isinstance(value, str):
            self.bad.add(where, f"field {field_name!r} is {_type_name(value)}, not a string")
            return None
        if _has_surrogates(value):
            # undecodable bytes (csv) or a lone \ud800 escape (JSON): not text
            self.bad.add(where, "invalid UTF-8")
            return None
        return value

    def _from_object(self, record: Any, where: str) -> Optional[str]:
        if not isinstance(record, dict):
            self.bad.add(where, f"{_type_name(record)}, not an object")
            return None
        if self.options.text_field not in record:
            self.bad.add(where, f"missing field {self.options.text_field!r}")
            return None
        return self._checked(record[self.options.text_field], where)

    def _open(self) -> io.BufferedReader:
        try:
            return open(self.path, "rb")  # noqa: SIM115 (closed by the caller's with)
        except OSError as e:
            raise InputError(f"{self.path}: {e.strerror or e}") from None

    # ---- JSON lines / JSON ------------------------------------------------------------

    def _jsonl(self) -> Iterator[Optional[str]]:
        with self._open() as f:
            yield from self._json_lines(f)

    def _json_lines(self, f: io.BufferedReader) -> Iterator[Optional[str]]:
        """The records of this reader's part of a JSON-lines file (None for a bad one)."""
        start, end, first_line = self._line_range(f)
        f.seek(start)
        for number, raw in enumerate(_lines_until(f, end - start), start=first_line):
            where = f"{self.path} line {number}"
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad.add(where, "invalid UTF-8")
                yield None
                continue
            try:
                record = parse_json(line)
            except json.JSONDecodeError as e:
                self.bad.add(where, f"JSON syntax error ({e.msg})")
                yield None
                continue
            except ValueError as e:  # nested too deeply, or an integer too long
                self.bad.add(where, f"JSON not readable ({_first_line(e)})")
                yield None
                continue
            yield self._from_object(record, where)

    def _line_range(self, f: io.BufferedReader) -> tuple[int, int, int]:
        """(first byte, end byte, number of the first line) of this reader's part: the
        lines that start in its share of the file's bytes."""
        n, i = self.options.num_parts, self.options.part_index
        size = os.fstat(f.fileno()).st_size
        start = _line_start_at_or_after(f, size * i // n, size)
        end = _line_start_at_or_after(f, size * (i + 1) // n, size)
        return start, end, _newlines_before(f, start) + 1

    def _json(self) -> Iterator[str]:
        with self._open() as f:
            head = f.read(4096)
            f.seek(0)
            if not head.removeprefix(BOM).lstrip().startswith(b"["):
                yield from self._json_lines(f)
                return
            try:
                records = load_json(f)  # bytes: a byte-order mark is skipped
            except UnicodeDecodeError:
                raise InputError(
                    f"{self.path}: invalid UTF-8 (a JSON array is read whole)"
                ) from None
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{self.path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                ) from None
            except JSONNestingError:
                raise InputError(f"{self.path}: not readable: JSON nested too deeply") from None
            except ValueError as e:
                raise InputError(f"{self.path}: not readable JSON ({_first_line(e)})") from None

        def each() -> Iterator[Optional[str]]:
            for index, record in enumerate(records):
                yield self._from_object(record, f"{self.path} record {index}")

        yield from self._part_of_records(each)

    def _part_of_records(
        self, read: Callable[[], Iterator[Optional[str]]]
    ) -> Iterator[Optional[str]]:
        """This reader's part of the records `read()` yields (None for a bad one): a first
        pass sizes every record (counting nothing), a second yields the part's records;
        bad records before the part are counted aside, those after it are never read."""
        n, i = self.options.num_parts, self.options.part_index
        if n == 1:
            yield from read()
            return
        owned, self.bad = self.bad, BadRecords(self.options.max_examples)
        try:
            sizes = [0 if text is None else len(text) for text in read()]
            start, end = _lmrs.part_range(sizes, n, i)
            records = read()
            for _ in itertools.islice(records, start):
                pass
        finally:
            self.bad = owned
        yield from itertools.islice(records, end - start)

    # ---- CSV --------------------------------------------------------------------------

    def _csv(self) -> Iterator[Optional[str]]:
        # Documents are often longer than the csv module's default field limit (128 KiB);
        # the limit is process-wide, so it is only ever raised.
        csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
        with self._open() as raw:
            text = _csv_text(raw)
            reader = csv.reader(text)
            try:
                header = next(reader, None)
                if header is None:
                    return
                column = self._csv_column(header)
                for number, row in enumerate(reader, start=1):
                    where = f"{self.path} row {number}"
                    if not row:
                        continue
                    if column >= len(row):
                        self.bad.add(where, f"missing field {self.options.text_field!r}")
                        yield None
                        continue
                    yield self._checked(row[column], where)
            except csv.Error as e:
                raise InputError(f"{self.path} line {reader.line_num}: bad CSV ({e})") from None

    def _csv_column(self, header: list[str]) -> int:
        if self.options.text_field not in header:
            columns = ", ".join(repr(c) for c in header[:10])
            raise InputError(
                f"{self.path}: no column {self.options.text_field!r} "
                f"(columns: {columns}); pass --text-field"
            )
        return header.index(self.options.text_field)

    def _check_csv_header(self) -> None:
        with self._open() as raw:
            text = _csv_text(raw)
            try:
                header = next(csv.reader(text), None)
            except csv.Error as e:
                raise InputError(f"{self.path} line 1: bad CSV ({e})") from None
            if header is not None:
                self._csv_column(header)

    # ---- Arrow: Parquet and datasets folders --------------------------------------------

    def _pyarrow(self) -> Any:
        try:
            import pyarrow
        except ImportError:
            raise InputError(
                f"{self.path}: reading {self.format} needs pyarrow: {PYARROW_HINT}"
            ) from None
        return pyarrow

    def _column_values(
        self, column: Any, first_row: int, as_bytes: bool
    ) -> Iterator[Union[str, ArrowRows]]:
        """The values of one Arrow chunk of the text column, checked; with `as_bytes`,
        as :class:`ArrowRows` pieces where the chunk allows it."""
        pa = self._pyarrow()
        kind = column.type
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)
        ):
            raise InputError(
                f"{self.path}: column {self.options.text_field!r} is {kind}, not a string column"
            )
        if as_bytes:
            pieces = arrow_rows(pa, column, first_row, self.options.batch_chars)
            if pieces is not None:
                yield from pieces
                return
        try:
            values = column.to_pylist()
        except UnicodeDecodeError:
            # a string column holding invalid UTF-8: read its bytes and check each value
            values = column.cast(pa.large_binary()).to_pylist()
        for offset, value in enumerate(values):
            text = self._checked(value, f"{self.path} row {first_row + offset}")
            if text is not None:
                yield text

    def _text_column(self, schema: Any, where: Path) -> None:
        if self.options.text_field not in schema.names:
            columns = ", ".join(repr(c) for c in schema.names[:10])
            raise InputError(
                f"{where}: no column {self.options.text_field!r} (columns: {columns}); "
                "pass --text-field"
            )

    def _open_parquet(self) -> Any:
        pa = self._pyarrow()
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(
                f"{self.path}: not a readable Parquet file ({_first_line(e)})"
            ) from None
        try:
            self._text_column(parquet.schema_arrow, self.path)
        except InputError:
            parquet.close()
            raise
        return parquet

    def _parquet(self, as_bytes: bool) -> Iterator[Union[str, ArrowRows]]:
        pa = self._pyarrow()
        with self._open_parquet() as parquet:
            meta = parquet.metadata
            groups = [meta.row_group(k) for k in range(parquet.num_row_groups)]
            sizes = [self._text_bytes(group) for group in groups]
            start, end = _lmrs.part_range(sizes, self.options.num_parts, self.options.part_index)
            row = sum(group.num_rows for group in groups[:start])
            for index in range(start, end):
                try:
                    table = parquet.read_row_group(
                        index, columns=[self.options.text_field], use_threads=False
                    )
                except (pa.ArrowException, OSError) as e:
                    raise InputError(
                        f"{self.path}: row group {index} unreadable ({_first_line(e)})"
                    ) from None
                self.row_groups_read += 1
                for chunk in table.column(0).chunks:
                    yield from self._column_values(chunk, row, as_bytes)
                    row += len(chunk)

    def _text_bytes(self, group: Any) -> int:
        """Uncompressed bytes of the text column in one Parquet row group (its metadata),
        the size by which row groups are shared out between parts."""
        for j in range(group.num_columns):
            column = group.column(j)
            if column.path_in_schema == self.options.text_field:
                return int(column.total_uncompressed_size)
        return int(group.total_byte_size)

    def _arrow_files(self) -> list[Path]:
        """The Arrow files of a ``datasets`` folder, in order, from its state.json."""
        if (self.path / HF_DICT).is_file():
            splits = _json_field(self.path / HF_DICT, "splits")
            names = ", ".join(str(s) for s in splits) if isinstance(splits, list) else "?"
            first = str(splits[0]) if isinstance(splits, list) and splits else "train"
            raise InputError(
                f"{self.path}: a DatasetDict (splits: {names}); pass one split's folder, "
                f"e.g. {self.path / first}"
            )
        files = _json_field(self.path / HF_STATE, "_data_files")
        if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files
        ):
            raise InputError(f"{self.path / HF_STATE}: '_data_files' is not a list of files")
        paths = []
        for entry in files:
            name = entry["filename"]
            if os.sep in name or "/" in name or name in ("", ".", ".."):
                raise InputError(f"{self.path / HF_STATE}: {name!r} is not a plain file name")
            paths.append(self.path / name)
        return paths

    def _datasets(self, as_bytes: bool) -> Iterator[Union[str, ArrowRows]]:
        pa = self._pyarrow()
        files = self._arrow_files()

        def batches() -> Iterator[Any]:
            for path in files:
                yield from self._arrow_batches(pa, path)

        start, end = 0, None
        if self.options.num_parts > 1:  # record batches are memory-mapped: sizing reads no text
            sizes = [batch.nbytes for batch in batches()]
            start, end = _lmrs.part_range(sizes, self.options.num_parts, self.options.part_index)
        row = 0
        for index, batch in enumerate(itertools.islice(batches(), end)):
            if index >= start:
                self.row_groups_read += 1
                yield from self._column_values(batch.column(0), row, as_bytes)
            row += batch.num_rows

    def _arrow_reader(self, pa: Any, path: Path) -> tuple[Any, Any, Iterable[Any]]:
        """(memory map, reader, its record batches) of one Arrow IPC file, stream or file
        form (``save_to_disk`` writes streams), its schema checked."""
        try:
            source = pa.memory_map(str(path))
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: {_first_line(e)}") from None
        try:
            try:
                reader: Any = pa.ipc.open_stream(source)
                batches: Iterable[Any] = reader
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    file_reader = pa.ipc.open_file(source)
                except (pa.ArrowException, OSError) as e:
                    raise InputError(f"{path}: not an Arrow file ({_first_line(e)})") from None
                reader = file_reader
                batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            self._text_column(reader.schema, path)
        except BaseException:
            source.close()
            raise
        return source, reader, batches

    def _arrow_batches(self, pa: Any, path: Path) -> Iterator[Any]:
        """Record batches of the text column of one Arrow IPC file."""
        source, reader, batches = self._arrow_reader(pa, path)
        with source:
            index = reader.schema.get_field_index(self.options.text_field)
            iterator = iter(batches)
            while True:
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                except (pa.ArrowException, OSError) as e:
                    raise InputError(f"{path}: truncated or corrupt ({_first_line(e)})") from None
                yield batch.select([index])


def _line_start_at_or_after(f: io.BufferedReader, offset: int, size: int) -> int:
    """The offset of the first line that starts at or after `offset`."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    f.seek(offset - 1)
    f.readline()  # to the end of the line holding byte offset - 1
    return f.tell()


def _newlines_before(f: io.BufferedReader, offset: int, chunk: int = 1 << 24) -> int:
    """Line breaks in the file's first `offset` bytes (for line numbers in a part)."""
    f.seek(0)
    count = 0
    while offset > 0:
        data = f.read(min(chunk, offset))
        if not data:
            break
        count += data.count(b"\n")
        offset -= len(data)
    return count


def _lines_until(f: io.BufferedReader, limit: int) -> Iterator[bytes]:
    """Lines from the current position until `limit` bytes have been read."""
    while limit > 0:
        raw = f.readline()
        if not raw:
            return
        limit -= len(raw)
        yield raw


def _csv_text(raw: io.BufferedReader) -> io.TextIOWrapper:
    """A CSV file as text: UTF-8, a byte-order mark skipped (else the first column would be
    named '\\ufefftext'); surrogateescape keeps undecodable bytes visible (as lone
    surrogates) so that one bad row is counted instead of failing the whole file."""
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _json_field(path: Path, key: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = load_json(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data.get(key)
