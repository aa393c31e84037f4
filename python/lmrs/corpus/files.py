"""Building a training corpus: copy the text files of a source tree into a corpus folder.

The corpus folder is what `lmrs vocab`, `lmrs encode` and `lmrs train` read. Copying keeps
relative paths, so adding the same tree twice changes nothing (idempotent), and adding a
second tree puts it beside the first. Symlinked folders are followed, as `lmrs vocab`
follows them, each real folder once (a link back up the tree is no loop).

A record file (or ``datasets`` folder) becomes the folder ``NAME-HASH/`` of one text file
per record, HASH being the first 8 hex digits of the sha256 of the source's resolved path:
two sources of the same name (``a/data.jsonl``, ``b/data.jsonl``) never write into one
folder, so adding one never replaces a document of the other. Adding the same source again
updates its own folder: identical documents are left alone, changed ones rewritten.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmrs.atomic import write_atomic
from lmrs.corpus.records import BadRecords, RecordOptions, RecordReader, record_format
from lmrs.progress import tqdm

# Record documents are written this many to a folder (a corpus folder may get millions).
RECORDS_PER_FOLDER = 10_000

# A file whose invalid UTF-8 bytes exceed this fraction is "beyond repair" (binary or
# another encoding); below it, the few bad bytes become U+FFFD and the file is kept.
MAX_INVALID_FRACTION = 0.01


@dataclass
class AddResult:
    """What `add_to_corpus` did."""

    added: int = 0
    unchanged: int = 0
    repaired: int = 0
    skipped_binary: int = 0
    skipped_invalid: int = 0
    bytes_added: int = 0
    # (file, reason) for each source file that could not be read; the copy goes on
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    # records skipped when SRC was a record file (None for text files)
    bad_records: BadRecords | None = None

    @property
    def skipped(self) -> int:
        return self.skipped_binary + self.skipped_invalid

    def summary(self, corpus_dir: str | os.PathLike[str]) -> str:
        mb = self.bytes_added / 1e6
        parts = [f"added {self.added} files ({mb:.1f} MB)", f"{self.unchanged} unchanged"]
        if self.repaired:
            parts.append(f"{self.repaired} repaired (bad UTF-8 bytes replaced)")
        parts.append(f"{self.skipped} skipped (not text)")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable (skipped, named above)")
        if self.bad_records is not None and self.bad_records.total:
            parts.append(f"{self.bad_records.total} bad records skipped (named above)")
        return ", ".join(parts) + f" -> {corpus_dir}"


def normalize_extensions(extensions: Sequence[str] | None) -> set[str] | None:
    """Accept '.py', 'py' or '*.py'; None or empty means every file."""
    if not extensions:
        return None
    return {"." + ext.lstrip("*").lstrip(".").lower() for ext in extensions}


def iter_source_files(
    src: Path, extensions: set[str] | None, exclude: Path | None = None
) -> Iterator[Path]:
    """Files under `src` in sorted order, skipping hidden folders and `exclude`. Symlinked
    folders are followed, as `lmrs vocab` and `lmrs encode` follow them, and by the same
    rule: a link to a folder that holds it (a loop) is skipped."""
    if src.is_file():
        yield src
        return
    # the folders from `src` down to each folder walked: a link to one of them is a loop
    above: dict[str, frozenset[tuple[int, int]]] = {str(src): frozenset(_folder_ids(src))}
    for root, dirs, files in os.walk(src, followlinks=True):
        root_path = Path(root)
        kept = []
        for d in sorted(dirs):
            if d.startswith(".") or d == "__pycache__":
                continue
            if exclude is not None and (root_path / d).resolve() == exclude:
                continue
            folder = _folder_ids(root_path / d)
            if not folder or folder[0] in above[root]:
                continue
            above[os.path.join(root, d)] = above[root] | {folder[0]}
            kept.append(d)
        dirs[:] = kept
        del above[root]
        for name in sorted(files):
            path = root_path / name
            if extensions is not None and path.suffix.lower() not in extensions:
                continue
            if path.is_file():
                yield path


def _folder_ids(path: Path) -> list[tuple[int, int]]:
    """[(device, inode)] of a folder, following links; [] when it cannot be read."""
    try:
        info = path.stat()
    except OSError:
        return []
    return [(info.st_dev, info.st_ino)]


def record_folder_name(src: Path) -> str:
    """The corpus folder of a record source: its name (a file's without the suffix) and a
    short hash of its resolved path, so that two sources never share a folder."""
    name = src.name if src.is_dir() else src.stem
    digest = hashlib.sha256(os.fsencode(src.resolve())).hexdigest()[:8]
    return f"{name}-{digest}"


def to_text(data: bytes) -> tuple[str | None, str]:
    """The file as UTF-8 text and why: ("...", "ok" | "repaired") or (None, "binary" | "invalid").

    A few bad bytes are repaired (replaced by U+FFFD); NUL bytes mean binary.
    """
    if b"\x00" in data:
        return None, "binary"
    try:
        return data.decode("utf-8"), "ok"
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # Each invalid byte sequence becomes one U+FFFD; count them against the size.
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        if bad > MAX_INVALID_FRACTION * max(len(data), 1):
            return None, "invalid"
        return text, "repaired"


def add_to_corpus(
    src: str | os.PathLike[str],
    corpus_dir: str | os.PathLike[str],
    extensions: Sequence[str] | None = None,
    *,
    text_field: str = "text",
    show_progress: bool = True,
) -> AddResult:
    """Copy the text files under `src` (matching `extensions`) into `corpus_dir`.

    When `src` is a record file (.jsonl, .json, .parquet, .csv) or a ``datasets`` folder,
    each record's `text_field` becomes one text file (one document):
    ``CORPUS/NAME-HASH/KKKKK/NNNNNNNNN.txt`` (:func:`record_folder_name`: two sources of one
    name never share a folder), numbered in record order, so the corpus keeps the record
    boundaries; bad records are counted in ``AddResult.bad_records``.

    Relative paths are kept (a single file lands at the top of the corpus). Files with NUL
    bytes, or with more than 1% invalid UTF-8, are skipped and counted; files with a few
    bad bytes are copied with those bytes replaced by U+FFFD, so every corpus file is valid
    UTF-8. A file already present with the same content is left alone. A file that cannot
    be read is skipped and listed in ``AddResult.unreadable`` with the reason.
    """
    src_path = Path(src)
    if not src_path.exists():
        raise FileNotFoundError(f"{src_path}: no such file or directory")
    corpus_path = Path(corpus_dir)
    if corpus_path.exists() and not corpus_path.is_dir():
        raise NotADirectoryError(f"{corpus_path}: exists and is not a directory")
    corpus_path.mkdir(parents=True, exist_ok=True)
    if record_format(src_path) is not None:
        return _add_records(src_path, corpus_path, text_field, show_progress)
    exts = normalize_extensions(extensions)
    base = src_path.parent if src_path.is_file() else src_path
    files = list(iter_source_files(src_path, exts, exclude=corpus_path.resolve()))

    result = AddResult()
    for path in tqdm(files, desc="corpus", unit="file", disable=not show_progress):
        try:
            raw = path.read_bytes()
        except OSError as e:
            # one unreadable file (permissions, EIO on a bad sector) must not stop the copy
            result.unreadable.append((str(path), e.strerror or str(e)))
            continue
        text, kind = to_text(raw)
        if text is None:
            if kind == "binary":
                result.skipped_binary += 1
            else:
                result.skipped_invalid += 1
            continue
        data = text.encode("utf-8")
        if kind == "repaired":
            result.repaired += 1
        _store(corpus_path / path.relative_to(base), data, result)
    return result


def _store(dest: Path, data: bytes, result: AddResult) -> None:
    """Write one document unless an identical copy is already there (re-adding is a no-op)."""
    if dest.is_file() and dest.read_bytes() == data:
        result.unchanged += 1
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data)
    result.added += 1
    result.bytes_added += len(data)


def _add_records(src: Path, corpus_path: Path, text_field: str, show_progress: bool) -> AddResult:
    reader = RecordReader(src, RecordOptions(text_field=text_field))
    result = AddResult(bad_records=reader.bad)
    base = corpus_path / record_folder_name(src)
    index = 0
    with tqdm(desc="corpus", unit="record", disable=not show_progress) as bar:
        for batch in reader.batches():
            for text in batch:
                dest = base / f"{index // RECORDS_PER_FOLDER:05d}" / f"{index:09d}.txt"
                index += 1
                _store(dest, text.encode("utf-8"), result)
            bar.update(len(batch))
    return result
