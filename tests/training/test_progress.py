"""Progress output in a log file: plain lines, rate-limited, no carriage-return redraws."""

from __future__ import annotations

import io

import pytest

from lmrs.progress import tqdm


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_few_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMRS_LOG_INTERVAL", raising=False)
    log = io.StringIO()
    with tqdm(total=10_000, desc="train", unit="step", file=log) as bar:
        for _ in range(10_000):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # the first draw and the final state; thousands of updates in well under 30 s add none
    assert 1 <= len(lines) <= 3, lines
    assert "10000/10000" in lines[-1] and lines[-1].startswith("train")


def test_log_interval_zero_prints_every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMRS_LOG_INTERVAL", "0")
    log = io.StringIO()
    with tqdm(total=5, desc="eval", file=log) as bar:
        for _ in range(5):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines][-1].startswith("eval")
    assert sum("/5" in line for line in lines) >= 5
    assert "\r" not in log.getvalue()


def test_terminal_keeps_redrawing() -> None:
    term = _Terminal()
    with tqdm(total=3, file=term, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert "\r" in term.getvalue()
