"""lmrs.prefetch: a background thread one step ahead, in order, errors where they happen."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lmrs.prefetch import prefetched


def test_items_arrive_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def source() -> Iterator[int]:
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetched(source(), depth=3)) == list(range(50))
    assert threads == {"lmrs-prefetch"}


def test_an_error_in_the_source_is_raised_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("record 3 is bad")

    seen = []
    with pytest.raises(ValueError, match="record 3 is bad"):
        for item in prefetched(source()):
            seen.append(item)
    assert seen == [1, 2]


def test_stopping_early_closes_the_source_and_ends_the_thread() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for item in prefetched(source(), depth=1):
        if item == 3:
            break
    assert closed.wait(5)
    assert not any(t.name == "lmrs-prefetch" and t.is_alive() for t in threading.enumerate())


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetched([1], depth=0))
