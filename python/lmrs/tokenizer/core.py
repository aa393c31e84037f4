"""Tokenizer: a thin Python class over the Rust BPE engine (``lmrs._lmrs``).

Ids of a trained tokenizer: 0..255 are bytes, 256.. the merges in training order, then
the special tokens (``<|endoftext|>`` always, first). An imported one
(``from_tiktoken``, ``from_huggingface``) keeps its library's ids. The file format is
described in DESIGN.md.

Text rules:

- ``encode`` recognises special tokens written in the text by default
  (``allowed_special="all"``, like Hugging Face tokenizers; tiktoken raises instead).
  Pass ``"none"`` (or use ``encode_ordinary``) to treat them as plain text; token files
  always do that, so a literal ``<|endoftext|>`` in a corpus file cannot fake a
  document boundary.
- Lone surrogates (``"\\ud800"``, which cannot be UTF-8) are replaced by U+FFFD before
  encoding, as tiktoken does; nothing raises.
- Decoding bytes that are not valid UTF-8 (ids cut inside a character) gives U+FFFD for
  each bad sequence (``errors="replace"``); ``decode_bytes`` returns the exact bytes.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union, runtime_checkable

from lmrs import _lmrs
from lmrs._lmrs import TokenizerError
from lmrs.atomic import write_atomic
from lmrs.corpus.records import SUFFIXES as RECORD_SUFFIXES
from lmrs.errors import warn
from lmrs.progress import tqdm
from lmrs.tokenizer.importing import (
    TIKTOKEN_SPECIAL_TOKENS,
    bytes_to_unicode,
    read_huggingface,
    read_tiktoken_ranks,
    resolve_pattern,
    with_eot,
)

if TYPE_CHECKING:
    import numpy as np
    import tiktoken

__all__ = ["Tokenizer", "TokenizerError", "TrainStats"]

PathLike = Union[str, "os.PathLike[str]"]
AllowedSpecial = Union[str, Iterable[str]]

# the old private name (export_gguf.py imports it)
_bytes_to_unicode = bytes_to_unicode

# Texts are handed to Rust in batches of about this many bytes (GIL released per batch).
TEXT_BATCH_BYTES = 8 << 20


@dataclass
class TrainStats:
    """What `Tokenizer.train` did; `summary()` is the CLI's closing line."""

    num_bytes: int = 0
    num_files: int = 0
    files_skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    num_words: int = 0
    num_merges: int = 0
    vocab_size: int = 0
    scan_seconds: float = 0.0
    merge_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.scan_seconds + self.merge_seconds

    def summary(self) -> str:
        mb = self.num_bytes / 1e6
        line = f"vocab {self.vocab_size} tokens from {mb:.1f} MB in {self.seconds:.1f} s"
        if self.files_skipped:
            line += f" ({self.files_skipped} files skipped: not text)"
        return line


@runtime_checkable
class WordSource(Protocol):
    """A corpus that feeds a ``WordCounter`` itself, batch by batch (a record file's
    :class:`~lmrs.corpus.records.RecordReader` hands Arrow columns over as bytes)."""

    def count_words(self, counter: Any, progress: Callable[[int], object]) -> int:
        """Counts every document into `counter`, calling `progress(bytes)` per batch;
        returns the number of documents."""
        ...


def _replace_surrogates(text: str) -> str:
    """Lone surrogates → U+FFFD (a valid surrogate pair becomes its character)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _is_path(item: object) -> bool:
    return isinstance(item, os.PathLike) or (isinstance(item, str) and os.path.exists(item))


def _as_paths(corpus: Any) -> list[Path] | None:
    """The corpus as a list of roots (files or folders), or None when it is texts.

    A str or PathLike is one root; a list/tuple is a list of roots when every item is a
    PathLike or a str naming something on disk; anything else iterable is texts.
    """
    if isinstance(corpus, (str, os.PathLike)):
        return [Path(corpus)]
    if isinstance(corpus, (list, tuple)) and corpus and all(_is_path(c) for c in corpus):
        return [Path(c) for c in corpus]
    return None


def _collect_files(roots: Sequence[Path], extensions: Sequence[str] | None) -> list[Path]:
    """The files under `roots`; warns when record files (.jsonl, .csv...) are among them:
    they are read as plain text here, JSON or CSV syntax and all (the commands read a
    record file given alone as records, one document per record)."""
    files: list[Path] = []
    for root in roots:
        files.extend(Path(p) for p in _lmrs.collect_files(str(root), list(extensions or ())))
    records = [f for f in files if f.suffix.lower() in RECORD_SUFFIXES]
    if records:
        names = ", ".join(str(f) for f in records[:3])
        more = f" and {len(records) - 3} more" if len(records) > 3 else ""
        warn(
            f"{names}{more}: record files read as plain text, one document each (JSON or "
            "CSV syntax and all); give each one alone to read its records as documents"
        )
    return files


def _file_sizes(files: Sequence[Path]) -> list[int]:
    """The sizes of `files` before they are read (compared with what was read)."""
    return [f.stat().st_size for f in files]


def _check_sizes(
    files: Sequence[Path], sizes: Sequence[int], skipped: Iterable[str], bytes_read: int
) -> None:
    """Warns, naming them, when files changed while they were read: the text bytes read
    differ from the sizes of the files read (all but `skipped`) at the start."""
    skip = set(skipped)
    kept = [(f, size) for f, size in zip(files, sizes) if str(f) not in skip]
    expected = sum(size for _, size in kept)
    if bytes_read == expected:
        return
    changed = [str(f) for f, size in kept if _size_now(f) != size] or ["a file"]
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    warn(
        f"{', '.join(changed[:3])}{more}: changed while being read ({bytes_read:,} bytes "
        f"read, {expected:,} at the start); what was read is used"
    )


def _size_now(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _progress_callback(bar: tqdm) -> Callable[[int], None]:
    def update(total: int) -> None:
        bar.update(total - bar.n)

    return update


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"corpus items must be str, got {type(text).__name__}")
        batch.append(text)
        size += len(text)
        if size >= TEXT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class Tokenizer:
    """A byte-level BPE tokenizer: merges + pre-tokenization pattern + special tokens."""

    EOT = "<|endoftext|>"

    def __init__(self, core: _lmrs.CoreTokenizer) -> None:
        self._core = core
        self._special_tokens: dict[str, int] = dict(core.special_tokens)
        self.train_stats: Optional[TrainStats] = None

    # ---- construction -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        corpus: Any,
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = (),
        min_frequency: int = 2,
        max_token_length: int | None = None,
        pattern: str | None = None,
        extensions: Sequence[str] | None = None,
        show_progress: bool = True,
    ) -> Tokenizer:
        """Train on `corpus`: a folder (walked recursively, sorted, hidden entries
        skipped), a file, a list of those, an iterable of str (one text each), or a
        :class:`WordSource` such as a :class:`~lmrs.corpus.records.RecordReader`. A list or tuple
        whose every item names something on disk is paths; texts that might all be paths
        (such as ``["/"]``) go in as an iterator, ``iter(texts)``, which is always texts.

        `vocab_size` counts bytes, merges and special tokens. Pairs seen fewer than
        `min_frequency` times are not merged (so the vocab may come out smaller).
        Files that are not text (NUL bytes, invalid UTF-8) are skipped and counted in
        `train_stats`.
        """
        stats = TrainStats()
        counter = _lmrs.WordCounter(None if pattern is None else resolve_pattern(pattern))
        start = time.perf_counter()
        roots = _as_paths(corpus)
        if roots is not None:
            files = _collect_files(roots, extensions)
            sizes = _file_sizes(files)
            with tqdm(
                total=sum(sizes), unit="B", unit_scale=True, desc="scan", disable=not show_progress
            ) as bar:
                counted = counter.add_files([str(f) for f in files], _progress_callback(bar))
            stats.num_bytes = counted["bytes_read"]
            stats.num_files = counted["files_read"]
            stats.files_skipped = counted["files_skipped"]
            stats.skipped_paths = [str(p) for p in counted["skipped_paths"]]
            if stats.num_files == 0:
                where = ", ".join(str(r) for r in roots)
                raise TokenizerError(
                    f"{where}: no text files to train on "
                    f"({len(files)} files found, {stats.files_skipped} not text)"
                )
            _check_sizes(files, sizes, stats.skipped_paths, stats.num_bytes)
        elif isinstance(corpus, WordSource):
            with tqdm(unit="B", unit_scale=True, desc="scan", disable=not show_progress) as bar:

                def progress(num_bytes: int) -> None:
                    stats.num_bytes += num_bytes
                    bar.update(num_bytes)

                stats.num_files = corpus.count_words(counter, progress)
            if stats.num_files == 0:
                where = getattr(corpus, "path", "the corpus")
                raise TokenizerError(f"{where}: no documents to train on")
        else:
            if isinstance(corpus, (str, bytes)) or not isinstance(corpus, Iterable):
                raise TypeError("corpus must be a path, a list of paths or an iterable of str")
            with tqdm(unit="B", unit_scale=True, desc="scan", disable=not show_progress) as bar:
                for batch in _batches(corpus):
                    try:
                        taken = counter.add_texts(batch)
                    except UnicodeEncodeError:
                        taken = counter.add_texts([_replace_surrogates(t) for t in batch])
                    bar.update(taken)
                    stats.num_bytes += taken
                    stats.num_files += len(batch)
            if stats.num_files == 0:
                raise TokenizerError("no texts to train on: the corpus is empty")
        stats.scan_seconds = time.perf_counter() - start
        stats.num_words = len(counter)

        num_special = len({cls.EOT, *special_tokens})
        with tqdm(
            total=max(vocab_size - 256 - num_special, 0),
            unit="merge",
            desc="merge",
            disable=not show_progress,
        ) as bar:
            core, stats.merge_seconds = counter.train(
                vocab_size,
                list(special_tokens),
                min_frequency,
                max_token_length,
                _progress_callback(bar),
            )
        tokenizer = cls(core)
        stats.num_merges = len(core.merges)
        stats.vocab_size = core.vocab_size
        tokenizer.train_stats = stats
        return tokenizer

    @classmethod
    def from_vocab(
        cls,
        merges: Sequence[tuple[int, int]],
        *,
        pattern: str | None = None,
        special_tokens: Sequence[str] | dict[str, int] | None = None,
    ) -> Tokenizer:
        """A tokenizer from merges (merge i makes token 256 + i). `special_tokens` is a
        list of names (ids assigned after the merges, `<|endoftext|>` first) or a
        {name: id} dict whose ids must follow the merges without gaps."""
        merges = [(int(a), int(b)) for a, b in merges]
        if isinstance(special_tokens, dict):
            core = _lmrs.CoreTokenizer.from_parts(
                merges, pattern or _lmrs.GPT4_PATTERN, list(special_tokens.items())
            )
        else:
            core = _lmrs.CoreTokenizer.from_merges(merges, pattern, list(special_tokens or ()))
        return cls(core)

    @classmethod
    def from_tiktoken(
        cls,
        path_or_ranks: PathLike | dict[bytes, int],
        *,
        pattern: str,
        special_tokens: Sequence[str] | dict[str, int] | None = None,
    ) -> Tokenizer:
        """A tokenizer from tiktoken's ranks: a `.tiktoken` file ("base64(token) rank"
        per line) or a {token bytes: rank} dict; rank == id, as in tiktoken.

        `pattern` is a regex or a name: "gpt2" (r50k/p50k), "cl100k", "o200k", "gpt4".
        `special_tokens`: a {name: id} dict, or names (ids after the highest rank), or
        None: tiktoken's own for a named pattern ("cl100k" gets <|endoftext|> 100257...),
        else none. <|endoftext|> is added after all ids when absent. Encoding then gives
        tiktoken's ids for `tiktoken.Encoding(name, pat_str, mergeable_ranks,
        special_tokens)` built on the same ranks.
        """
        where = "ranks" if isinstance(path_or_ranks, dict) else str(path_or_ranks)
        if isinstance(path_or_ranks, dict):
            ranks = {bytes(token): int(rank) for token, rank in path_or_ranks.items()}
        else:
            ranks = read_tiktoken_ranks(path_or_ranks)
        next_id = max(ranks.values(), default=-1) + 1
        preset = TIKTOKEN_SPECIAL_TOKENS.get(pattern.lower().removesuffix("_base"), {})
        if isinstance(special_tokens, dict):
            specials = {str(name): int(id) for name, id in special_tokens.items()}
        elif special_tokens is None:
            usable = all(id >= next_id for id in preset.values())
            specials = dict(preset) if usable else {}
        else:
            names = list(dict.fromkeys(special_tokens))
            specials = {name: next_id + i for i, name in enumerate(names)}
        ids_after = max([next_id - 1, *specials.values()]) + 1
        specials, eot = with_eot(specials, ids_after)
        try:
            core = _lmrs.CoreTokenizer.from_ranks(
                resolve_pattern(pattern), list(ranks.items()), list(specials.items()), eot
            )
        except TokenizerError:
            raise
        except ValueError as e:
            raise TokenizerError(f"{where}: {e}") from None
        return cls(core)

    @classmethod
    def from_huggingface(cls, path: PathLike) -> Tokenizer:
        """A tokenizer from a Hugging Face `tokenizer.json` holding a byte-level BPE
        (GPT-2, Llama 3, Qwen style: model BPE, ByteLevel pre-tokenizer and decoder, no
        normalizer), with its ids and its added tokens as special tokens. `encode` then
        gives the ids of `tokenizers` with `add_special_tokens=False` (lmrs adds no
        BOS/EOS itself). Anything lmrs cannot reproduce exactly is a TokenizerError
        naming the file and the reason. The end-of-text token is <|endoftext|> (or
        <|end_of_text|>, </s>, <eos>); when none exists <|endoftext|> is added after
        all ids."""
        hf = read_huggingface(path)
        try:
            core = _lmrs.CoreTokenizer.from_ids(
                hf.pattern,
                hf.byte_ids,
                hf.merges,
                list(hf.special_tokens.items()),
                hf.eot,
                hf.merge_rule,
            )
        except TokenizerError:
            raise
        except ValueError as e:
            raise TokenizerError(f"{path}: {e}") from None
        return cls(core)

    @classmethod
    def load(cls, path: PathLike) -> Tokenizer:
        """Load a tokenizer JSON; TokenizerError names the file when it is missing,
        truncated, of another version or edited (hash mismatch)."""
        return cls(_lmrs.CoreTokenizer.load(str(path)))

    def save(self, path: PathLike) -> None:
        """Write the tokenizer JSON (temporary file + rename: never half-written)."""
        self._core.save(str(path))

    def to_json(self) -> str:
        return self._core.to_json()

    # ---- properties -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    @property
    def eot_id(self) -> int:
        return self._core.eot_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def pattern(self) -> str:
        return self._core.pattern

    @property
    def merges(self) -> list[tuple[int, int]]:
        return self._core.merges

    @property
    def hash(self) -> str:
        return self._core.hash

    @property
    def merges_with_ids(self) -> list[tuple[int, int, int]]:
        """(a, b, id) per merge in rank order: merge joins tokens a and b into id."""
        return self._core.merges_with_ids

    @property
    def byte_ids(self) -> list[int]:
        """The id of each byte value (range(256) for a tokenizer lmrs trained)."""
        return self._core.byte_ids

    @property
    def merge_rule(self) -> str:
        """The merge rule: "tiktoken" (lmrs's own), "hf" or "hf-ignore-merges"."""
        return self._core.merge_rule

    @property
    def eot_token(self) -> str:
        """The special token that ends a document (`eot_id` is its id)."""
        return self._core.eot_token

    @property
    def file_version(self) -> int:
        """The tokenizer file version `save` writes: 1, or 2 for imported ids."""
        return self._core.file_version

    def ordinary_ids(self) -> list[int]:
        """The ids of the non-special tokens, ascending (gaps possible when imported)."""
        return sorted({*self.byte_ids, *(id for _, _, id in self.merges_with_ids)})

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        specials = list(self._special_tokens)
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={specials}, hash={self.hash[:12]!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (e.g. into DataLoader workers) rebuilds from the file content.
        return (_rebuild, (self.to_json(),))

    # ---- encoding -------------------------------------------------------------------

    def _allowed_ids(self, allowed_special: AllowedSpecial) -> list[int] | None:
        """None means all; raises on names that are not special tokens."""
        if allowed_special == "all":
            return None
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'all', 'none' or a set of special tokens, "
                f"got {allowed_special!r}"
            )
        ids = []
        for name in allowed_special:
            if name not in self._special_tokens:
                raise ValueError(f"{name!r} is not a special token of this tokenizer")
            ids.append(self._special_tokens[name])
        return ids

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllowedSpecial = "all",
        add_special_tokens: bool = False,
    ) -> list[int]:
        """Text → ids. Special tokens in the text become their ids when allowed
        (default: all); others are encoded as plain text. ``add_special_tokens=True``
        appends ``<|endoftext|>`` (the seed API's meaning: one finished document)."""
        if allowed_special == "none":
            ids = self.encode_ordinary(text)
        else:
            allowed = self._allowed_ids(allowed_special)
            try:
                ids = self._core.encode(text, allowed)
            except UnicodeEncodeError:
                ids = self._core.encode(_replace_surrogates(text), allowed)
        if add_special_tokens:
            ids.append(self.eot_id)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text → ids, special tokens treated as plain text."""
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            return self._core.encode_ordinary(_replace_surrogates(text))

    def encode_to_numpy(self, text: str, *, allowed_special: AllowedSpecial = "all") -> np.ndarray:
        """Text → uint32 array, without building a Python list."""
        ordinary = allowed_special == "none"
        allowed = None if ordinary else self._allowed_ids(allowed_special)
        try:
            return self._core.encode_to_numpy(text, allowed, ordinary)
        except UnicodeEncodeError:
            return self._core.encode_to_numpy(_replace_surrogates(text), allowed, ordinary)

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: AllowedSpecial = "all"
    ) -> list[list[int]]:
        """Many texts at once, in parallel threads with the GIL released."""
        ordinary = allowed_special == "none"
        allowed = None if ordinary else self._allowed_ids(allowed_special)
        texts = list(texts)
        try:
            return self._core.encode_batch(texts, allowed, ordinary)
        except UnicodeEncodeError:
            fixed = [_replace_surrogates(t) for t in texts]
            return self._core.encode_batch(fixed, allowed, ordinary)

    # ---- decoding -------------------------------------------------------------------

    @staticmethod
    def _ids(ids: Iterable[int]) -> list[int]:
        # numpy arrays (and torch tensors) without importing numpy: tokenizer-only use stays
        # light (numpy is imported by the extension only when encode_to_numpy is called)
        if hasattr(ids, "ravel") and hasattr(ids, "tolist"):
            return [int(i) for i in ids.ravel().tolist()]  # type: ignore[union-attr]
        return ids if isinstance(ids, list) else list(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → str; bytes that are not valid UTF-8 become U+FFFD."""
        return self._core.decode(self._ids(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._core.decode_bytes(self._ids(ids))

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return self._core.decode_batch([self._ids(ids) for ids in batch])

    def token_to_id(self, token: bytes | str) -> int | None:
        """Id of the token with exactly these bytes (a str is its UTF-8 bytes; special
        tokens by name), or None."""
        data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        return self._core.token_to_id(data)

    def id_to_token(self, id: int) -> bytes:
        return self._core.id_to_token(id)

    # ---- token files ----------------------------------------------------------------

    def encode_files(
        self,
        corpus_or_paths: Any,
        out_path: PathLike,
        *,
        extensions: Sequence[str] | None = None,
        shard_tokens: int | None = None,
        num_parts: int = 1,
        part_index: int = 0,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Encode a corpus (folder, file, list of paths, or iterable of str: one document
        each) into a token file `out_path` (+ `out_path.json` sidecar), or into a shard
        directory when `shard_tokens` or `num_parts > 1` is given (see DESIGN.md).

        Each document is followed by `eot_id`; special tokens in the text are plain
        text. With `num_parts=N`, call once per `part_index` (any machine, same corpus):
        each writes its own shards. Returns the sidecar/manifest as a dict, plus
        "skipped_files" (files that are not text; not written to disk).
        """
        out = Path(out_path)
        roots = _as_paths(corpus_or_paths)
        if roots is not None:
            files = _collect_files(roots, extensions)
            if not files:
                where = ", ".join(str(r) for r in roots)
                raise TokenizerError(f"{where}: empty: no files to encode; {out} not written")
            sizes = _file_sizes(files)
            with tqdm(
                total=sum(sizes),
                unit="B",
                unit_scale=True,
                desc="encode",
                disable=not show_progress,
            ) as bar:
                written, skipped = self._core.encode_files(
                    [str(f) for f in files],
                    str(out),
                    shard_tokens,
                    num_parts,
                    part_index,
                    _progress_callback(bar),
                )
        else:
            texts = [t if isinstance(t, str) else _type_error(t) for t in corpus_or_paths]
            try:
                written = self._core.encode_texts(
                    texts, str(out), shard_tokens, num_parts, part_index
                )
            except UnicodeEncodeError:
                texts = [_replace_surrogates(t) for t in texts]
                written = self._core.encode_texts(
                    texts, str(out), shard_tokens, num_parts, part_index
                )
            skipped = []
        info: dict[str, Any] = json.loads(written)
        info["skipped_files"] = [str(p) for p in skipped]
        if roots is not None and num_parts == 1:
            _check_sizes(files, sizes, info["skipped_files"], int(info["num_bytes"]))
        return info

    @staticmethod
    def build_manifest(shard_dir: PathLike) -> dict[str, Any]:
        """(Re)write `shard_dir/manifest.json` from the shards present (after all
        parts of a multi-part run are in one folder); returns it."""
        return json.loads(_lmrs.build_manifest(str(shard_dir)))

    # ---- interop --------------------------------------------------------------------

    def tiktoken_ranks(self) -> dict[bytes, int]:
        """Token bytes → rank (== our id) for every ordinary token (tiktoken's
        `mergeable_ranks`). If two merges made the same bytes, the lower id is kept."""
        ranks: dict[bytes, int] = {}
        all_bytes = self._core.all_token_bytes()
        for id in self.ordinary_ids():
            ranks.setdefault(all_bytes[id], id)
        return ranks

    def to_tiktoken(self, name: str = "lmrs") -> tiktoken.Encoding:
        """A `tiktoken.Encoding` with our pattern, ranks and special tokens: it gives
        the same ids as this tokenizer."""
        import tiktoken

        return tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=self.tiktoken_ranks(),
            special_tokens=self.special_tokens,
        )

    def export_tiktoken(self, path: PathLike) -> None:
        """Write tiktoken's rank file ("base64(token) rank" per line; special tokens are
        not part of that format: pass `special_tokens` when building the Encoding)."""
        lines = [
            f"{base64.b64encode(token).decode('ascii')} {rank}\n"
            for token, rank in sorted(self.tiktoken_ranks().items(), key=lambda kv: kv[1])
        ]
        write_atomic(Path(path), "".join(lines).encode("ascii"))

    def export_huggingface(self, path: PathLike) -> None:
        """Write a Hugging Face `tokenizer.json` giving the same ids: BPE over ByteLevel
        characters, pre-tokenized by our regex (Split) then ByteLevel(use_regex=False)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        byte_chars = bytes_to_unicode()
        all_bytes = self._core.all_token_bytes()

        def as_str(token: bytes) -> str:
            return "".join(byte_chars[b] for b in token)

        # special tokens sit in the vocab so that add_special_tokens keeps their ids
        vocab: dict[str, int] = dict(self._special_tokens)
        for id in self.ordinary_ids():
            vocab.setdefault(as_str(all_bytes[id]), id)
        merges = [(as_str(all_bytes[a]), as_str(all_bytes[b])) for a, b in self.merges]
        ignore_merges = self.merge_rule != "hf"
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(self.pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens(list(self._special_tokens))
        write_atomic(Path(path), hf.to_str(pretty=True).encode("utf-8"))


def _type_error(item: object) -> str:
    raise TypeError(f"corpus items must be str or paths, got {type(item).__name__}")


def _rebuild(content: str) -> Tokenizer:
    return Tokenizer(_lmrs.CoreTokenizer.from_json(content.encode("utf-8"), "<pickled tokenizer>"))
