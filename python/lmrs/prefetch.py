"""Run an iterator one step ahead in a background thread.

Reading records (JSON parsing, Arrow to Python strings) holds the GIL, encoding them in
Rust releases it: reading batch k+1 while Rust encodes batch k makes the record path cost
about what its slower half costs instead of the sum of both.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")

_DONE = object()  # end of the source iterator


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(source: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `source` in order, produced by a daemon thread at most `depth` items
    ahead. An exception raised by `source` is raised here, at the item where it happened;
    when the consumer stops early (break, exception, garbage collection) the thread stops
    at its next item."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    iterator = iter(source)

    def produce() -> None:
        try:
            for item in iterator:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failed(error))
            return
        finally:
            # a generator source closes in the thread that ran it (its files, its readers)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        offer(_DONE)

    thread = threading.Thread(target=produce, name="lmrs-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
