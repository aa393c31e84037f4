"""Tokenizers and token files from record files (see :mod:`lmrs.corpus.records`).

The commands call these with any corpus path: a record file or ``datasets`` folder goes
through :class:`~lmrs.corpus.records.RecordReader` (batches into the Rust word counter or
``lmrs._lmrs.TokenStream``), anything else to ``Tokenizer.train`` / ``encode_files`` as
before. Both paths give one document per record or file, each followed by
``<|endoftext|>`` in a token file, so the same documents give the same ids and vocab.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lmrs import _lmrs
from lmrs.corpus.records import RecordOptions, RecordReader, record_format
from lmrs.errors import InputError
from lmrs.progress import tqdm
from lmrs.tokenizer.core import Tokenizer, TokenizerError

__all__ = ["RecordRun", "encode_corpus", "train_tokenizer"]


@dataclass
class RecordRun:
    """What a command read from a record source (None when the corpus was text files)."""

    reader: Optional[RecordReader] = None

    def describe(self) -> str:
        return self.reader.describe() if self.reader is not None else ""


def _reader(corpus: Any, options: RecordOptions) -> Optional[RecordReader]:
    if isinstance(corpus, (str, os.PathLike)) and record_format(corpus) is not None:
        return RecordReader(corpus, options)
    return None


def train_tokenizer(
    corpus: Any,
    vocab_size: int,
    *,
    text_field: str = "text",
    run: Optional[RecordRun] = None,
    **options: Any,
) -> Tokenizer:
    """``Tokenizer.train`` on `corpus`, which may also be a record file or ``datasets``
    folder (one document per record). `run`, when given, receives the reader (its
    counts of bad records)."""
    reader = _reader(corpus, RecordOptions(text_field=text_field))
    if reader is None:
        return Tokenizer.train(corpus, vocab_size, **options)
    if run is not None:
        run.reader = reader
    options.pop("extensions", None)  # a record file has no member files to filter
    try:
        return Tokenizer.train(reader, vocab_size, **options)
    except TokenizerError:
        if reader.num_records == 0:
            raise _no_records(reader) from None
        raise


def _no_records(reader: RecordReader, out: Optional[Path] = None) -> InputError:
    """The error for a record source without one usable document."""
    written = f"; {out} not written" if out is not None else ""
    return InputError(
        f"{reader.path}: no usable records ({reader.bad.summary() or 'empty'}){written}"
    )


def encode_corpus(
    tokenizer: Tokenizer,
    corpus: Any,
    out_path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    extensions: Optional[Sequence[str]] = None,
    shard_tokens: Optional[int] = None,
    num_parts: int = 1,
    part_index: int = 0,
    show_progress: bool = True,
    run: Optional[RecordRun] = None,
) -> dict[str, Any]:
    """``tokenizer.encode_files`` on `corpus`, which may also be a record file or
    ``datasets`` folder: its records are read in batches and streamed into the token file
    (or shard directory with `shard_tokens`; with `num_parts > 1`, part `part_index` of its
    records into the shared shard directory, see :mod:`lmrs.corpus.records`). Returns the
    sidecar/manifest as a dict plus "skipped_files" (and "bad_records", the count, for
    record sources)."""
    parts = RecordOptions(text_field=text_field, num_parts=num_parts, part_index=part_index)
    reader = _reader(corpus, parts)
    if reader is None:
        return tokenizer.encode_files(
            corpus,
            out_path,
            extensions=extensions,
            shard_tokens=shard_tokens,
            num_parts=num_parts,
            part_index=part_index,
            show_progress=show_progress,
        )
    if run is not None:
        run.reader = reader
    # The stream lives in Rust; it takes the tokenizer's Rust core.
    stream = _lmrs.TokenStream(
        tokenizer._core, str(Path(out_path)), shard_tokens, num_parts, part_index
    )
    try:
        with tqdm(unit="B", unit_scale=True, desc="encode", disable=not show_progress) as bar:
            reader.encode_into(stream, bar.update)
        if reader.num_records == 0 and num_parts == 1:
            # an input with no usable text is an error: the old output stays as it was
            # (an empty part of a multi-part run is fine: more parts than records)
            raise _no_records(reader, Path(out_path))
        info: dict[str, Any] = json.loads(stream.finish())
    except BaseException:
        stream.abandon()
        raise
    info["skipped_files"] = []
    info["bad_records"] = reader.bad.total
    return info
