"""Arrow string columns handed to Rust as bytes, without a Python ``str`` per document.

Turning a Parquet row group into Python strings (``to_pylist``) and back into UTF-8 for
Rust (the abi3 API copies each string) cost a third of the time Rust then spends
encoding them. An Arrow string or binary array is already UTF-8 bytes back to back with
an offsets buffer, which is what ``TokenStream.write_arrow`` and
``WordCounter.add_arrow`` take (see ``rust/src/arrow_texts.rs``); Rust checks each row's
UTF-8 and names the rows it skipped, which the reader counts as bad records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # numpy is imported when an Arrow column is read: `import lmrs` stays light
    import numpy as np

__all__ = ["ArrowRows", "arrow_rows"]


@dataclass(frozen=True)
class ArrowRows:
    """Rows ``first_row ..`` of an Arrow column as Rust reads them: the rows' ``n + 1``
    offsets (int64 when ``wide``, else int32, little-endian) and the values bytes from
    the first offset on."""

    values: bytes
    offsets: bytes
    wide: bool
    num_rows: int
    first_row: int

    @property
    def num_bytes(self) -> int:
        return len(self.values)


def _offset_dtype(pa: Any, kind: Any) -> Optional[np.dtype]:
    import numpy as np

    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        return np.dtype("<i4")
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return np.dtype("<i8")
    return None  # string_view and anything else: the caller reads values one by one


def arrow_rows(
    pa: Any, array: Any, first_row: int, max_bytes: int
) -> Optional[Iterator[ArrowRows]]:
    """`array` (a string or binary Arrow array) in pieces of about `max_bytes` each
    (at least one row), or None when it cannot go to Rust as bytes: it has nulls (the
    caller counts them one by one) or its type has no offsets buffer."""
    dtype = _offset_dtype(pa, array.type)
    if dtype is None or array.null_count:
        return None
    return _pieces(array, dtype, first_row, max_bytes)


def _pieces(array: Any, dtype: np.dtype, first_row: int, max_bytes: int) -> Iterator[ArrowRows]:
    import numpy as np

    _, offsets_buffer, values_buffer = array.buffers()
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
        last = int(offsets[end])
        span = None if values_buffer is None else values_buffer.slice(first, last - first)
        yield ArrowRows(
            values=b"" if span is None else span.to_pybytes(),
            offsets=offsets[start : end + 1].tobytes(),
            wide=dtype.itemsize == 8,
            num_rows=end - start,
            first_row=first_row + start,
        )
        start = end
