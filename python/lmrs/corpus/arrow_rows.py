"""Arrow string columns handed to Rust in place, without a Python ``str`` per document.

Turning a Parquet row group into Python strings (``to_pylist``) and back into UTF-8 for
Rust (the abi3 API copies each string) cost a third of the time Rust then spends
encoding them. An Arrow string or binary array is already UTF-8 bytes back to back with
an offsets buffer: ``TokenStream.write_arrow`` and ``WordCounter.add_arrow`` take the
array through the Arrow PyCapsule interface (``__arrow_c_array__``) and read those
buffers where pyarrow keeps them, no copy (see ``rust/src/tokens/arrow_texts.rs``); Rust checks
each row's UTF-8 and names the rows it skipped, which the reader counts as bad records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["ArrowBatch", "ArrowRows", "arrow_rows"]


@dataclass(frozen=True)
class ArrowRows:
    """Rows ``first_row ..`` of an Arrow string or binary column without nulls: `array`
    a zero-copy slice of it, `num_bytes` the text bytes of its rows."""

    array: Any
    num_bytes: int
    first_row: int

    @property
    def num_rows(self) -> int:
        return len(self.array)

    def capsules(self) -> tuple[Any, Any]:
        """(schema, array) PyCapsules of the C Data Interface, what Rust reads."""
        return self.array.__arrow_c_array__()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ArrowBatch:
    """Consecutive :class:`ArrowRows` that Rust takes in one call (one parallel pass:
    each call ends with the threads waiting for the last document, so fewer, larger
    calls waste less)."""

    parts: tuple[ArrowRows, ...]

    @property
    def num_rows(self) -> int:
        return sum(part.num_rows for part in self.parts)

    def capsules(self) -> list[tuple[Any, Any]]:
        """What ``TokenStream.write_arrow`` and ``WordCounter.add_arrow`` take."""
        return [part.capsules() for part in self.parts]

    def row_of(self, index: int) -> int:
        """The file row of the batch's row `index` (counted across its parts)."""
        for part in self.parts:
            if index < part.num_rows:
                return part.first_row + index
            index -= part.num_rows
        raise IndexError(f"row {index} past the batch's end")


def _offset_width(pa: Any, kind: Any) -> Optional[int]:
    """Bytes per offset of a string or binary type; None for string_view and anything
    else (the caller reads those values one by one)."""
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        return 4
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return 8
    return None


def arrow_rows(
    pa: Any, array: Any, first_row: int, max_bytes: int
) -> Optional[Iterator[ArrowRows]]:
    """`array` (a string or binary Arrow array) in slices of about `max_bytes` each
    (at least one row), or None when it cannot go to Rust in place: it has nulls (the
    caller counts them one by one) or its type has no offsets buffer."""
    width = _offset_width(pa, array.type)
    if width is None or array.null_count:
        return None
    return _pieces(array, width, first_row, max_bytes)


def _pieces(array: Any, width: int, first_row: int, max_bytes: int) -> Iterator[ArrowRows]:
    import numpy as np

    dtype = np.dtype(f"<i{width}")
    _, offsets_buffer, _ = array.buffers()
    count = len(array)
    offsets = np.frombuffer(
        offsets_buffer, dtype=dtype, count=count + 1, offset=array.offset * dtype.itemsize
    )
    start = 0
    while start < count:
        # the last row whose end stays within max_bytes of this piece's start (>= 1 row)
        first = int(offsets[start])
        end = int(np.searchsorted(offsets, first + max_bytes, side="right")) - 1
        end = min(max(end, start + 1), count)
        yield ArrowRows(
            array=array.slice(start, end - start),
            num_bytes=int(offsets[end]) - first,
            first_row=first_row + start,
        )
        start = end
