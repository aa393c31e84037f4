"""Training data: in-memory batches, memory-mapped token files, splits and batch sampling.

Two ways to feed the trainer:

* :func:`prepare_training_data` turns a few token sequences held in memory into a list of
  ``(inputs, targets)`` batches — handy for notebooks and tests.
* :class:`TokenDataset` opens a token file (``NAME.bin`` + ``NAME.bin.json`` sidecar) or a
  shard directory (``manifest.json``) written by ``Tokenizer.encode_files``, through
  ``np.memmap`` so the corpus is never loaded into memory. Document boundaries and bytes
  come from the document index (``NAME.bin.idx``, version 2 files): opening reads no token,
  only arrays of one entry per document; files without an index (version 1) are scanned
  once. :func:`verify_token_data` scans and compares. ``split()`` holds out whole
  documents for validation; :meth:`TokenSplit.micro_batch` draws training batches as a pure
  function of ``(seed, step)`` so that runs resume exactly and so that 1 process with 4
  accumulation steps and 2 processes with 2 see the same global batch.

Window sampling, for a split of ``L`` tokens and sequence length ``T``: an epoch is a random
offset ``o`` in ``[0, T)`` plus the ``(L - T) // T`` non-overlapping windows of ``T + 1``
tokens starting at ``o + k*T`` (input = first ``T``, target = last ``T``), visited in a
random order. Both the offset and the order are seeded by ``(seed, epoch)`` only, so any
global step maps to its batch with no state carried between steps.

Global batch → micro-batches: the global batch of ``G`` windows is cut into ``W * A`` equal
micro-batches (``W`` processes, ``A`` accumulation steps); rank ``r`` at micro-step ``a``
takes micro-batch ``r * A + a`` (each rank a contiguous block).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from lmrs import _lmrs
from lmrs.errors import InputError
from lmrs.jsonfile import is_plain_name, read_json_object
from lmrs.progress import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]

# Tokens read per chunk while scanning a token file for document boundaries.
SCAN_CHUNK_TOKENS = 1 << 24
# Show a progress bar for the scan from this many tokens on (about a second or more).
SCAN_PROGRESS_MIN_TOKENS = 100_000_000

# The document index NAME.bin.idx (rust/src/tokens/token_index.rs): a header of magic, version,
# num_documents, num_tokens, num_bytes (u64 LE), then (end, bytes) u64 LE per document.
INDEX_MAGIC = b"lmrs-idx"
INDEX_VERSION = 1
INDEX_HEADER_BYTES = 40
# Token-file (sidecar and manifest) versions read: 1 has no index, 2 has one per data file.
TOKEN_FILE_VERSIONS = (1, 2)


class DataError(InputError):
    """A token file, sidecar or data argument is wrong; the message names the file."""


class TokenizerLike(Protocol):
    """What data.py needs from a tokenizer (lmrs.Tokenizer provides it)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def eot_id(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def special_tokens(self) -> dict[str, int]: ...
    def id_to_token(self, id: int) -> bytes: ...


# ---------------------------------------------------------------------------------------
# In-memory batches
# ---------------------------------------------------------------------------------------


def prepare_training_data(
    token_sequences: Sequence[Sequence[int]] | Sequence[int] | np.ndarray,
    batch_size: int = 32,
    seq_len: int = 128,
    shuffle: bool = True,
    seed: int = 0,
    eot_id: Optional[int] = None,
    drop_last: bool = False,
) -> list[Batch]:
    """Cut token sequences into shuffled ``(inputs, targets)`` batches of LongTensors.

    ``token_sequences`` is a list of documents (each a list of ids) or one flat list of ids.
    Documents are joined into one stream, each followed by ``eot_id`` when given. The stream
    is cut into non-overlapping windows of ``seq_len + 1`` tokens (stride ``seq_len``, so no
    target is skipped); a window's inputs are its first ``seq_len`` tokens and its targets
    the same tokens shifted by one. Windows are shuffled with ``seed`` (when ``shuffle``) and
    grouped into batches of ``batch_size``; the last batch may be smaller unless
    ``drop_last``. Raises ValueError if the stream is shorter than one window.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    stream = _join_documents(token_sequences, eot_id)
    num_windows = (len(stream) - 1) // seq_len
    if num_windows < 1:
        raise ValueError(
            f"need at least seq_len + 1 = {seq_len + 1} tokens for one window, got {len(stream)}"
        )
    starts = np.arange(num_windows, dtype=np.int64) * seq_len
    if shuffle:
        starts = np.random.default_rng(seed).permutation(starts)
    offsets = np.arange(seq_len + 1, dtype=np.int64)
    batches: list[Batch] = []
    for first in range(0, num_windows, batch_size):
        chunk = starts[first : first + batch_size]
        if drop_last and len(chunk) < batch_size:
            break
        windows = torch.from_numpy(stream[chunk[:, None] + offsets[None, :]])
        batches.append((windows[:, :-1].contiguous(), windows[:, 1:].contiguous()))
    return batches


def _join_documents(
    token_sequences: Sequence[Sequence[int]] | Sequence[int] | np.ndarray, eot_id: Optional[int]
) -> np.ndarray:
    if isinstance(token_sequences, np.ndarray) and token_sequences.ndim == 1:
        docs: list[Any] = [token_sequences]
    elif len(token_sequences) > 0 and isinstance(token_sequences[0], (int, np.integer)):
        docs = [token_sequences]
    else:
        docs = list(token_sequences)
    parts: list[np.ndarray] = []
    for doc in docs:
        parts.append(np.asarray(doc, dtype=np.int64).reshape(-1))
        if eot_id is not None:
            parts.append(np.array([eot_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenFileInfo:
    """The validated sidecar (or manifest) of a token file or shard directory."""

    path: Path
    dtype: str
    num_tokens: int
    num_documents: int
    vocab_size: int
    tokenizer_hash: str
    eot_id: int
    num_bytes: int


_SIDECAR_FIELDS = ("dtype", "num_tokens", "vocab_size", "tokenizer_hash", "eot_id", "num_bytes")


@dataclass(frozen=True)
class FileCheck:
    """A data file's size and ``head_tail_sha256`` as a sidecar or manifest records them."""

    size_bytes: int
    head_tail_sha256: str


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return read_json_object(path, what, DataError)


def _count(meta: dict[str, Any], key: str, path: Path) -> int:
    """A non-negative integer field (a JSON bool or float is not one)."""
    value = meta[key]
    if type(value) is not int or value < 0:
        raise DataError(f"{path}: field {key!r} is {value!r}, not a non-negative integer")
    return value


def _text(meta: dict[str, Any], key: str, path: Path) -> str:
    value = meta[key]
    if not isinstance(value, str):
        raise DataError(f"{path}: field {key!r} is {value!r}, not a string")
    return value


def _file_check(meta: Any, path: Path, where: str) -> Optional[FileCheck]:
    """The size and checksum in ``meta`` (a sidecar, or a manifest's entry for one shard);
    None when both are absent (files written before lmrs recorded them)."""
    if not isinstance(meta, dict):
        raise DataError(f"{path}: {where} is {meta!r}, not a JSON object")
    if "size_bytes" not in meta and "head_tail_sha256" not in meta:
        return None
    for key in ("size_bytes", "head_tail_sha256"):
        if key not in meta:
            raise DataError(f"{path}: {where} has no {key!r} field")
    checksum = _text(meta, "head_tail_sha256", path)
    if len(checksum) != 64 or any(c not in "0123456789abcdef" for c in checksum):
        raise DataError(f"{path}: {where}: head_tail_sha256 {checksum!r} is not a sha256 hex")
    return FileCheck(_count(meta, "size_bytes", path), checksum)


def _info_from_json(meta: dict[str, Any], path: Path, fmt: str) -> TokenFileInfo:
    if not isinstance(meta.get("format"), str) or meta["format"] != fmt:
        raise DataError(f"{path}: format is {meta.get('format')!r}, expected {fmt!r}")
    if type(meta.get("version")) is not int or meta["version"] not in TOKEN_FILE_VERSIONS:
        raise DataError(f"{path}: unsupported version {meta.get('version')!r} (expected 1 or 2)")
    missing = [k for k in _SIDECAR_FIELDS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    dtype = _text(meta, "dtype", path)
    if dtype not in ("uint16", "uint32"):
        raise DataError(f"{path}: dtype {dtype!r} is not uint16 or uint32")
    return TokenFileInfo(
        path=path,
        dtype=dtype,
        num_tokens=_count(meta, "num_tokens", path),
        num_documents=_count(meta, "num_documents", path) if "num_documents" in meta else 0,
        vocab_size=_count(meta, "vocab_size", path),
        tokenizer_hash=_text(meta, "tokenizer_hash", path),
        eot_id=_count(meta, "eot_id", path),
        num_bytes=_count(meta, "num_bytes", path),
    )


def _verify(bin_path: Path, size: int, recorded: FileCheck, by: Path) -> None:
    """The data file's size and checksum against what ``by`` (its sidecar or manifest)
    recorded; DataError naming the file when they differ."""
    if size != recorded.size_bytes:
        raise DataError(
            f"{bin_path}: size {size} does not match {by.name} ({recorded.size_bytes}): "
            "truncated or replaced?"
        )
    try:
        _, checksum = _lmrs.head_tail_sha256(str(bin_path))
    except _lmrs.TokenizerError as e:  # an I/O error; the message names the file
        raise DataError(str(e)) from e
    if checksum != recorded.head_tail_sha256:
        raise DataError(f"{bin_path}: checksum mismatch with {by.name}: overwritten or replaced?")


@dataclass(frozen=True)
class DocumentIndex:
    """Where each document of a data file ends (exclusive, counted from the file's first
    token) and the UTF-8 bytes of its text: int64 arrays, one entry per document."""

    ends: np.ndarray
    bytes: np.ndarray
    path: Path


def index_path(bin_path: Path) -> Path:
    """``NAME.bin`` → ``NAME.bin.idx``."""
    return Path(str(bin_path) + ".idx")


def _read_index(
    bin_path: Path,
    info: TokenFileInfo,
    recorded: FileCheck,
    sidecar: Path,
    listed: Optional[tuple[FileCheck, Path]] = None,
) -> DocumentIndex:
    """The document index of ``bin_path``, checked against its sidecar (size, checksum and
    counts) and for order; reads only the index (memory-mapped), never a token."""
    path = index_path(bin_path)
    if not path.is_file():
        raise DataError(f"{path}: document index not found (listed by {sidecar.name}); re-encode")
    size = path.stat().st_size
    _verify(path, size, recorded, sidecar)
    if listed is not None:
        _verify(path, size, *listed)

    def bad(problem: str) -> DataError:
        return DataError(
            f"{path}: {problem}; the index is corrupt: re-encode "
            f"(lmrs encode --verify {bin_path} compares it with the tokens)"
        )

    with path.open("rb") as f:
        header = f.read(INDEX_HEADER_BYTES)
    if len(header) < INDEX_HEADER_BYTES or header[:8] != INDEX_MAGIC:
        raise bad("not an lmrs document index")
    version, documents, tokens, num_bytes = np.frombuffer(header[8:], dtype="<u8").tolist()
    if version != INDEX_VERSION:
        raise bad(f"index version {version}, expected {INDEX_VERSION}")
    if (documents, tokens, num_bytes) != (info.num_documents, info.num_tokens, info.num_bytes):
        raise bad(
            f"counts {documents} documents, {tokens} tokens, {num_bytes} bytes, but "
            f"{sidecar.name} says {info.num_documents}, {info.num_tokens}, {info.num_bytes}"
        )
    if size != INDEX_HEADER_BYTES + 16 * documents:
        raise bad(f"{size} bytes for {documents} documents")
    if documents == 0:
        empty = np.zeros(0, dtype=np.int64)
        return DocumentIndex(empty, empty, path)
    records = np.memmap(
        path, dtype="<u8", mode="r", offset=INDEX_HEADER_BYTES, shape=(documents, 2)
    )
    ends = records[:, 0].astype(np.int64)
    doc_bytes = records[:, 1].astype(np.int64)
    del records
    # Values past int64 wrap negative, so these also catch them.
    if ends[0] < 1 or ends[-1] > tokens or (documents > 1 and np.diff(ends).min() < 1):
        raise bad("document ends are not increasing within the token file")
    if doc_bytes.min() < 0 or int(doc_bytes.sum()) != num_bytes:
        raise bad(f"document bytes do not add up to {num_bytes}")
    return DocumentIndex(ends, doc_bytes, path)


def _open_bin(
    bin_path: Path,
    listed: Optional[tuple[FileCheck, Path]] = None,
    listed_index: Optional[tuple[FileCheck, Path]] = None,
    read_index: bool = True,
) -> tuple[TokenFileInfo, np.ndarray, Optional[DocumentIndex]]:
    """A token file and its sidecar, verified, and its document index (None for a version
    1 file, or when not ``read_index``); ``listed``/``listed_index`` are the checks a
    manifest records for the data file and its index, with the manifest's path."""
    sidecar = Path(str(bin_path) + ".json")
    if not bin_path.is_file():
        raise DataError(f"{bin_path}: token file not found")
    meta = _read_json(sidecar, "sidecar")
    info = _info_from_json(meta, sidecar, "lmrs-tokens")
    itemsize = np.dtype(info.dtype).itemsize
    size = bin_path.stat().st_size
    recorded = _file_check(meta, sidecar, "the sidecar")
    if recorded is not None:
        _verify(bin_path, size, recorded, sidecar)
    if listed is not None:
        _verify(bin_path, size, *listed)
    if size != info.num_tokens * itemsize:
        raise DataError(
            f"{bin_path}: size {size} bytes does not match the sidecar "
            f"({info.num_tokens} tokens of {info.dtype})"
        )
    index = None
    if meta["version"] >= 2:
        if "index" not in meta:
            raise DataError(f"{sidecar}: version {meta['version']} sidecar without an 'index'")
        recorded_index = _file_check(meta["index"], sidecar, "the sidecar's index")
        if recorded_index is None:
            raise DataError(f"{sidecar}: the sidecar's index has no size or checksum")
        if read_index:
            index = _read_index(bin_path, info, recorded_index, sidecar, listed_index)
    if info.num_tokens == 0:
        tokens = np.zeros(0, dtype=info.dtype)
    else:
        tokens = np.memmap(bin_path, dtype=np.dtype(info.dtype).newbyteorder("<"), mode="r")
    return info, tokens, index


class TokenStream:
    """One or more memory-mapped token files read as one stream of ids."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p) > 0]
        self.part_starts = np.cumsum([0] + [len(p) for p in self.parts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.part_starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as int64 (may span files)."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        part = int(np.searchsorted(self.part_starts, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self.part_starts[part])
            piece = self.parts[part][offset : offset + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            part += 1
        return out

    def chunks(self, chunk_tokens: int = SCAN_CHUNK_TOKENS) -> Iterable[tuple[int, np.ndarray]]:
        """(global start, tokens) chunks covering the stream, for linear scans."""
        for part, tokens in zip(self.part_starts[:-1], self.parts):
            for first in range(0, len(tokens), chunk_tokens):
                yield int(part) + first, np.asarray(tokens[first : first + chunk_tokens])


def token_byte_lengths(tokenizer: TokenizerLike) -> np.ndarray:
    """UTF-8 bytes each token id stands for in the source text (0 for special tokens)."""
    lengths = np.array(
        [len(tokenizer.id_to_token(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64
    )
    for special_id in tokenizer.special_tokens.values():
        lengths[special_id] = 0
    return lengths


class TokenDataset:
    """A token file or shard directory, memory-mapped, with its document boundaries.

    ``TokenDataset(path, tokenizer=None)``: ``path`` is a ``NAME.bin`` (sidecar beside it) or
    a directory holding ``manifest.json`` and its shards. When a tokenizer is given its
    vocab size, hash and eot id must match the sidecar (else :class:`DataError` naming the
    file), and byte counts per document are computed exactly from the tokens (bits per byte
    are then exact for every split); without it, bytes per split are the sidecar's total
    scaled by the split's share of tokens (an approximation, flagged by ``bytes_exact``).

    Files with a document index (version 2) open from it alone: no token is read, and the
    per-document bytes it records make ``bytes_exact`` true even without a tokenizer;
    ``use_index=False`` scans instead, as for version 1 files (``indexed`` says which).
    Memory at open is a few arrays of one entry per document, whatever the token count.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tokenizer: TokenizerLike | None = None,
        *,
        use_index: bool = True,
    ):
        self.path = Path(path)
        if self.path.is_dir():
            self.info, parts, indexes, counts = self._open_shards(self.path, use_index)
        else:
            self.info, tokens, index = _open_bin(self.path, read_index=use_index)
            parts, indexes, counts = [tokens], [index], [self.info.num_tokens]
        self.stream = TokenStream(parts)
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        self.token_bytes = token_byte_lengths(tokenizer) if tokenizer is not None else None
        # The index file each document's entry came from (for messages), by first document.
        self.index_files: list[tuple[int, Path]] = []
        self.indexed = use_index and all(index is not None for index in indexes)
        if self.indexed:
            self._from_indexes([i for i in indexes if i is not None], counts)
        else:
            self._scan()

    # -- opening -----------------------------------------------------------------------

    @staticmethod
    def _open_shards(
        directory: Path, use_index: bool
    ) -> tuple[TokenFileInfo, list[np.ndarray], list[Optional[DocumentIndex]], list[int]]:
        manifest_path = directory / "manifest.json"
        meta = _read_json(manifest_path, "shard manifest")
        info = _info_from_json(meta, manifest_path, "lmrs-shards")
        shards = meta.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DataError(f"{manifest_path}: 'shards' must be a non-empty list of file names")
        for name in shards:
            if not is_plain_name(name):
                raise DataError(
                    f"{manifest_path}: shard entry {name!r} is not a plain file name "
                    "inside this directory"
                )
        checks = meta.get("shard_checks", {})
        if not isinstance(checks, dict):
            raise DataError(f"{manifest_path}: 'shard_checks' is not a JSON object")
        missing = meta.get("missing_parts") or []
        if missing:
            # training on a partial corpus would be silent data loss: refuse it
            raise DataError(
                f"{manifest_path}: parts {missing!r} of {meta.get('num_parts')!r} are not "
                "encoded yet (finish them, then rebuild the manifest with "
                "`lmrs encode --manifest-only`)"
            )
        index_checks = meta.get("index_checks", {})
        if not isinstance(index_checks, dict):
            raise DataError(f"{manifest_path}: 'index_checks' is not a JSON object")
        if meta["version"] >= 2 and set(index_checks) != set(shards):
            raise DataError(
                f"{manifest_path}: version {meta['version']} manifest without an index check "
                "for every shard"
            )
        parts: list[np.ndarray] = []
        indexes: list[Optional[DocumentIndex]] = []
        counts: list[int] = []
        total = 0
        for name in shards:
            listed = listed_index = None
            if name in checks:
                check = _file_check(checks[name], manifest_path, f"shard_checks[{name!r}]")
                listed = None if check is None else (check, manifest_path)
            if name in index_checks:
                check = _file_check(index_checks[name], manifest_path, f"index_checks[{name!r}]")
                listed_index = None if check is None else (check, manifest_path)
            shard_info, tokens, index = _open_bin(
                directory / name, listed, listed_index, read_index=use_index
            )
            if use_index and listed_index is not None and index is None:
                raise DataError(
                    f"{directory / str(name)}.json: {manifest_path.name} lists a document "
                    "index for this shard, its sidecar none"
                )
            for field in ("dtype", "vocab_size", "tokenizer_hash", "eot_id"):
                if getattr(shard_info, field) != getattr(info, field):
                    raise DataError(
                        f"{directory / str(name)}: {field} {getattr(shard_info, field)!r} "
                        f"differs from the manifest's {getattr(info, field)!r}"
                    )
            parts.append(tokens)
            indexes.append(index)
            counts.append(shard_info.num_tokens)
            total += shard_info.num_tokens
        if total != info.num_tokens:
            raise DataError(
                f"{manifest_path}: num_tokens {info.num_tokens} but the shards hold {total}"
            )
        return info, parts, indexes, counts

    def _check_tokenizer(self, tokenizer: TokenizerLike) -> None:
        where = self.path / "manifest.json" if self.path.is_dir() else f"{self.path}.json"
        if self.info.tokenizer_hash != tokenizer.hash:
            raise DataError(
                f"{where}: written by another tokenizer (hash {self.info.tokenizer_hash[:12]!r}…, "
                f"the given tokenizer's is {tokenizer.hash[:12]}…)"
            )
        if self.info.vocab_size != tokenizer.vocab_size:
            raise DataError(
                f"{where}: vocab_size {self.info.vocab_size} but the tokenizer has "
                f"{tokenizer.vocab_size}"
            )
        if self.info.eot_id != tokenizer.eot_id:
            raise DataError(
                f"{where}: eot_id {self.info.eot_id} but the tokenizer's is {tokenizer.eot_id}"
            )

    def _from_indexes(self, indexes: list[DocumentIndex], counts: list[int]) -> None:
        """Document arrays from the data files' indexes (file-local ends made global)."""
        offsets = np.cumsum([0] + counts[:-1], dtype=np.int64)
        first_doc = 0
        for index in indexes:
            self.index_files.append((first_doc, index.path))
            first_doc += len(index.ends)
        ends = [index.ends + offset for index, offset in zip(indexes, offsets)]
        doc_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        last = int(doc_ends[-1]) if len(doc_ends) else 0
        if last != self.num_tokens:
            where = indexes[-1].path if indexes else self.path
            raise DataError(
                f"{where}: the document index ends at token {last} but the data at "
                f"{self.num_tokens}; re-encode"
            )
        if len(doc_ends) != self.info.num_documents:
            raise DataError(
                f"{self.path}: the document indexes hold {len(doc_ends)} documents, the "
                f"manifest says {self.info.num_documents}; re-encode"
            )
        self._set_documents(doc_ends, np.concatenate([index.bytes for index in indexes]))

    def _scan(self) -> None:
        """Document arrays from one pass over the tokens (files without an index)."""
        self._set_documents(*_scan_documents(self.stream, self.info, self.token_bytes, self.path))

    def _set_documents(self, doc_ends: np.ndarray, doc_bytes: np.ndarray | None) -> None:
        self.doc_ends = doc_ends.astype(np.int64, copy=False)
        self.doc_starts = np.concatenate([[0], self.doc_ends[:-1]]).astype(np.int64)
        self.doc_bytes: np.ndarray | None = doc_bytes

    def index_file_of(self, document: int) -> Path:
        """The index file that holds ``document``'s entry (an indexed dataset only)."""
        firsts = [first for first, _ in self.index_files]
        position = max(int(np.searchsorted(firsts, document, side="right")) - 1, 0)
        return self.index_files[position][1]

    # -- views -------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    @property
    def num_documents(self) -> int:
        return len(self.doc_ends)

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def eot_id(self) -> int:
        return self.info.eot_id

    def full(self) -> TokenSplit:
        """All documents as one split."""
        return self._split_of(np.arange(self.num_documents), "all")

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[TokenSplit, TokenSplit]:
        """(train, val) by whole documents, ``val_fraction`` of the tokens held out.

        Documents are visited in a seeded random order and moved to validation until it
        holds at least ``val_fraction`` of the tokens (at least one document, never all).
        With a single document there is nothing to split by, so its last ``val_fraction``
        of tokens is held out instead (documented fallback).
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if self.num_documents == 0:
            raise DataError(f"{self.path}: token file is empty")
        if self.num_documents == 1:
            return self._split_single_document(val_fraction)
        order = np.random.default_rng(seed).permutation(self.num_documents)
        sizes = (self.doc_ends - self.doc_starts)[order]
        target = val_fraction * self.num_tokens
        count = int(np.searchsorted(np.cumsum(sizes), target, side="left")) + 1
        count = min(max(count, 1), self.num_documents - 1)
        val_docs = np.sort(order[:count])
        train_docs = np.sort(order[count:])
        return self._split_of(train_docs, "train"), self._split_of(val_docs, "val")

    def _split_of(self, docs: np.ndarray, name: str) -> TokenSplit:
        starts = self.doc_starts[docs]
        ends = self.doc_ends[docs]
        tokens = int((ends - starts).sum())
        if self.doc_bytes is not None:
            num_bytes, exact = int(self.doc_bytes[docs].sum()), True
        else:
            num_bytes = round(self.info.num_bytes * tokens / max(self.num_tokens, 1))
            exact = False
        return TokenSplit(self, _merge_runs(starts, ends), num_bytes, exact, name)

    def _split_single_document(self, val_fraction: float) -> tuple[TokenSplit, TokenSplit]:
        cut = int(round(self.num_tokens * (1.0 - val_fraction)))
        pieces = []
        for name, lo, hi in (("train", 0, cut), ("val", cut, self.num_tokens)):
            runs = np.array([[lo, hi]], dtype=np.int64)
            if self.token_bytes is not None:
                num_bytes = int(self.token_bytes[self.stream.read(lo, hi - lo)].sum())
                exact = True
            else:
                num_bytes = round(self.info.num_bytes * (hi - lo) / self.num_tokens)
                exact = False
            pieces.append(TokenSplit(self, runs, num_bytes, exact, name))
        return pieces[0], pieces[1]


def _scan_documents(
    stream: TokenStream, info: TokenFileInfo, token_bytes: np.ndarray | None, path: Path
) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass over the tokens: document ends (after each eot), bytes per document (with
    ``token_bytes``), and the id range checked. Memory: per-document arrays and one chunk."""
    ends: list[np.ndarray] = []
    doc_bytes: list[np.ndarray] = []
    bytes_so_far = 0
    max_id = -1
    bar = tqdm(
        total=len(stream),
        desc=f"scan {path.name}",
        unit="tok",
        unit_scale=True,
        leave=False,
        disable=len(stream) < SCAN_PROGRESS_MIN_TOKENS,
    )
    for start, chunk in stream.chunks():
        bar.update(len(chunk))
        if len(chunk):
            max_id = max(max_id, int(chunk.max()))
        if max_id >= info.vocab_size:
            raise DataError(
                f"{path}: token id {max_id} is outside the vocabulary "
                f"(vocab_size {info.vocab_size})"
            )
        eot_at = np.flatnonzero(chunk == info.eot_id)
        ends.append(eot_at + start + 1)
        if token_bytes is not None:
            cumulative = np.cumsum(token_bytes[chunk]) + bytes_so_far
            doc_bytes.append(cumulative[eot_at])
            bytes_so_far = int(cumulative[-1]) if len(cumulative) else bytes_so_far
    bar.close()
    doc_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if len(doc_ends) == 0 or doc_ends[-1] != len(stream):
        # Tokens after the last eot form one more (unterminated) document.
        doc_ends = np.append(doc_ends, len(stream)) if len(stream) else doc_ends
        if token_bytes is not None:
            doc_bytes.append(np.array([bytes_so_far], dtype=np.int64))
    if token_bytes is None:
        return doc_ends.astype(np.int64), None
    cumulative_bytes = np.concatenate(doc_bytes) if doc_bytes else np.zeros(0, np.int64)
    return doc_ends.astype(np.int64), np.diff(np.concatenate([[0], cumulative_bytes])).astype(
        np.int64
    )


def _merge_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sorted [start, end) ranges with touching neighbours merged: an (n, 2) array."""
    if len(starts) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    run_starts = starts[np.concatenate([[0], breaks])]
    run_ends = ends[np.concatenate([breaks - 1, [len(ends) - 1]])]
    return np.stack([run_starts, run_ends], axis=1).astype(np.int64)


class TokenSplit:
    """A subset of a TokenDataset's documents, read as one virtual stream.

    The documents of a split are concatenated (each still ends with its eot token), so a
    window may run from one document into the next, as it does in an unsplit token file.
    """

    def __init__(
        self, dataset: TokenDataset, runs: np.ndarray, num_bytes: int, bytes_exact: bool, name: str
    ) -> None:
        self.dataset = dataset
        self.runs = runs
        self.run_offsets = np.concatenate([[0], np.cumsum(runs[:, 1] - runs[:, 0])]).astype(
            np.int64
        )
        self.num_bytes = num_bytes
        self.bytes_exact = bytes_exact
        self.name = name
        self._epoch_cache: tuple[tuple[int, int, int, int], int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.run_offsets[-1])

    @property
    def num_tokens(self) -> int:
        return len(self)

    @property
    def token_bytes(self) -> np.ndarray | None:
        return self.dataset.token_bytes

    def __repr__(self) -> str:
        return (
            f"TokenSplit({self.name!r}, {len(self)} tokens, {len(self.runs)} runs, "
            f"{self.num_bytes} bytes)"
        )

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of this split's virtual stream."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        run = int(np.searchsorted(self.run_offsets, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self.run_offsets[run])
            run_start, run_end = int(self.runs[run, 0]), int(self.runs[run, 1])
            take = min(length - filled, run_end - run_start - offset)
            out[filled : filled + take] = self.dataset.stream.read(run_start + offset, take)
            filled += take
            run += 1
        return out

    def windows(self, starts: Sequence[int] | np.ndarray, seq_len: int) -> Batch:
        """(inputs, targets) LongTensors for windows of ``seq_len + 1`` tokens at ``starts``."""
        rows = np.stack([self.read(int(s), seq_len + 1) for s in starts])
        # An indexed file was never scanned for the id range: a bad id (a corrupt file) is
        # caught here, per batch, rather than as an out-of-range embedding lookup.
        vocab_size = self.dataset.vocab_size
        if rows.size and int(rows.max()) >= vocab_size:
            raise DataError(
                f"{self.dataset.path}: token id {int(rows.max())} is outside the vocabulary "
                f"(vocab_size {vocab_size}); check it with lmrs encode --verify"
            )
        tensor = torch.from_numpy(rows)
        return tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous()

    # -- training batches ---------------------------------------------------------------

    def windows_per_epoch(self, seq_len: int) -> int:
        """Non-overlapping windows of ``seq_len + 1`` tokens an epoch visits."""
        count = (len(self) - seq_len) // seq_len
        if count < 1:
            raise DataError(
                f"{self.dataset.path}: the {self.name} split has {len(self)} tokens, too few "
                f"for one window of seq_len + 1 = {seq_len + 1}"
            )
        return count

    def steps_per_epoch(self, seq_len: int, global_batch_size: int) -> int:
        """Optimizer steps per pass over the split (at least 1)."""
        return max(1, self.windows_per_epoch(seq_len) // global_batch_size)

    def global_batch_starts(
        self, step: int, seq_len: int, global_batch_size: int, seed: int
    ) -> np.ndarray:
        """Start positions of the global batch of ``step``: a pure function of its arguments."""
        count = self.windows_per_epoch(seq_len)
        per_epoch = max(1, count // global_batch_size)
        epoch, index = divmod(step, per_epoch)
        offset, order = self._epoch_order(seed, epoch, seq_len, count)
        # With fewer windows than one batch, the permutation wraps around.
        picks = order[(index * global_batch_size + np.arange(global_batch_size)) % count]
        return offset + picks.astype(np.int64) * seq_len

    def _epoch_order(
        self, seed: int, epoch: int, seq_len: int, count: int
    ) -> tuple[int, np.ndarray]:
        """(window offset, window order) of an epoch; the last one is kept (a cache only)."""
        key = (seed, epoch, seq_len, count)
        if self._epoch_cache is None or self._epoch_cache[0] != key:
            rng = np.random.default_rng([seed, epoch])
            offset = int(rng.integers(0, seq_len))
            self._epoch_cache = (key, offset, rng.permutation(count))
        return self._epoch_cache[1], self._epoch_cache[2]

    def micro_batch(
        self,
        step: int,
        micro_step: int,
        *,
        seq_len: int,
        global_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> Batch:
        """Micro-batch ``rank * accum_steps + micro_step`` of the global batch of ``step``."""
        size = micro_batch_size(global_batch_size, world_size, accum_steps)
        starts = self.global_batch_starts(step, seq_len, global_batch_size, seed)
        index = rank * accum_steps + micro_step
        return self.windows(starts[index * size : (index + 1) * size], seq_len)

    # -- validation batches -------------------------------------------------------------

    def eval_windows(self, seq_len: int, max_windows: int | None = None) -> np.ndarray:
        """Fixed window starts covering the split (evenly spaced when capped)."""
        count = (len(self) - 1) // seq_len
        if count < 1:
            raise DataError(
                f"{self.dataset.path}: the {self.name} split has {len(self)} tokens, too few "
                f"for one window of seq_len + 1 = {seq_len + 1}"
            )
        starts = np.arange(count, dtype=np.int64) * seq_len
        if max_windows is not None and max_windows < count:
            starts = starts[np.linspace(0, count - 1, max_windows).round().astype(np.int64)]
        return starts

    def iter_eval_batches(
        self,
        seq_len: int,
        batch_size: int,
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Deterministic validation batches, read lazily; rank ``r`` of ``W`` takes ``r::W``."""
        cap = None if max_batches is None else max_batches * batch_size
        starts = self.eval_windows(seq_len, cap)
        firsts = range(0, len(starts), batch_size)
        for first in list(firsts)[rank::world_size]:
            yield self.windows(starts[first : first + batch_size], seq_len)

    def eval_batches(
        self,
        seq_len: int,
        batch_size: int,
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> list[Batch]:
        """:meth:`iter_eval_batches` as a list (for a small, reused validation set)."""
        return list(self.iter_eval_batches(seq_len, batch_size, max_batches, rank, world_size))


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_token_data` checked."""

    path: Path
    num_tokens: int
    num_documents: int
    indexed: bool
    bytes_checked: bool


def verify_token_data(
    path: str | os.PathLike[str], tokenizer: TokenizerLike | None = None
) -> VerifyReport:
    """Scan every token of a token file or shard directory and compare with its document
    index: the same document ends, the same bytes per document (with a tokenizer), every
    id inside the vocabulary. DataError naming the index file at the first difference.
    A file without an index (version 1) is scanned only (``indexed`` false)."""
    dataset = TokenDataset(path, tokenizer)
    report = VerifyReport(
        dataset.path,
        dataset.num_tokens,
        dataset.num_documents,
        dataset.indexed,
        dataset.indexed and tokenizer is not None,
    )
    if not dataset.indexed:
        return report  # opening it was the scan
    ends, doc_bytes = _scan_documents(
        dataset.stream, dataset.info, dataset.token_bytes, dataset.path
    )
    pairs = [("ends at token", dataset.doc_ends, ends)]
    if doc_bytes is not None and dataset.doc_bytes is not None:
        pairs.append(("has bytes", dataset.doc_bytes, doc_bytes))
    for what, indexed, scanned in pairs:
        count = min(len(indexed), len(scanned))
        differ = np.flatnonzero(indexed[:count] != scanned[:count])
        if len(differ) == 0 and len(indexed) == len(scanned):
            continue
        first = int(differ[0]) if len(differ) else count
        raise DataError(
            f"{dataset.index_file_of(first)}: document {first} {what} {_at(indexed, first)} in "
            f"the index but {_at(scanned, first)} in the tokens ({len(indexed)} vs "
            f"{len(scanned)} documents); the index does not match the data: re-encode"
        )
    return report


def _at(values: np.ndarray, i: int) -> str:
    return str(int(values[i])) if i < len(values) else "(none)"


def micro_batch_size(global_batch_size: int, world_size: int, accum_steps: int) -> int:
    """Sequences per micro-batch; the global batch must split evenly."""
    parts = world_size * accum_steps
    if global_batch_size % parts != 0:
        raise ValueError(
            f"batch size {global_batch_size} does not split into {world_size} process(es) x "
            f"{accum_steps} accumulation step(s); use a multiple of {parts}"
        )
    return global_batch_size // parts


def bytes_of(targets: torch.Tensor, token_bytes: np.ndarray | None) -> int | None:
    """Source-text bytes the target tokens stand for (None when unknown)."""
    if token_bytes is None:
        return None
    return int(token_bytes[targets.reshape(-1).cpu().numpy()].sum())


__all__ = [
    "Batch",
    "DataError",
    "DocumentIndex",
    "TokenDataset",
    "TokenSplit",
    "TokenStream",
    "bytes_of",
    "micro_batch_size",
    "prepare_training_data",
    "token_byte_lengths",
    "verify_token_data",
]
