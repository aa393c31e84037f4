"""Opening a token file: from its document index vs by scanning every token.

    python benchmarks/bench_open.py [--size-mb 5000] [--shard-tokens N] [--work DIR] [--keep]

Writes a synthetic token file of about ``--size-mb`` MB (default 5000, the issue's 5 GB)
with the project's own writer (generated documents streamed through
``lmrs._lmrs.TokenStream``, as ``lmrs encode`` does for record files; a shard directory with
``--shard-tokens``), then opens it in a fresh process per mode and reports:

- open s: ``TokenDataset(path, tokenizer)`` (with the index, or ``use_index=False``: the
  full scan every open needed before the index existed);
- first batch s: open + ``split`` + the first training micro-batch;
- peak RSS MB: the process's peak resident memory after the open and first batch, minus
  its peak before (``resource.getrusage``; memory-mapped token pages the scan touches count).

Each mode runs ``--repeats`` times (fresh processes) and the best is printed. The page cache
is not dropped: a scan after the file was just written reads from memory, so on a cold
cache it is slower than shown; the indexed open reads no token either way. The target:
open time independent of the corpus size (under a second) and memory proportional to the
number of documents. Writing 5 GB takes minutes; use a small ``--size-mb`` to try it.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or had not but it have they one all their there been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these "
    "two may then do first any my now such like our over man me even most made after also"
).split()


def documents(rng: np.random.Generator, count: int, mean_bytes: int) -> list[str]:
    """Random prose-like documents (words from a fixed list, lengths exponential)."""
    docs = []
    for length in rng.exponential(mean_bytes / 5, size=count).astype(np.int64) + 1:
        words = rng.integers(0, len(WORDS), size=int(length))
        docs.append(" ".join(WORDS[w] for w in words) + ".\n")
    return docs


def write_tokens(
    out: Path, tokenizer_path: Path, size_mb: int, shard_tokens: int | None, mean_bytes: int
) -> dict[str, object]:
    from lmrs import Tokenizer, _lmrs

    rng = np.random.default_rng(0)
    Tokenizer.train(documents(rng, 300, mean_bytes), 512, show_progress=False).save(tokenizer_path)
    tokenizer = Tokenizer.load(tokenizer_path)
    pool = documents(rng, 4000, mean_bytes)
    pool_bytes = sum(len(d) for d in pool)
    pool_tokens = sum(len(tokenizer.encode_ordinary(d)) + 1 for d in pool)
    target_tokens = size_mb * 1_000_000 // 2  # uint16 ids
    rounds = max(1, round(target_tokens / pool_tokens))
    stream = _lmrs.TokenStream(tokenizer._core, str(out), shard_tokens)
    try:
        with click.progressbar(range(rounds), label=f"writing {out.name}") as bar:
            for _ in bar:
                stream.write(pool)
        info: dict[str, object] = json.loads(stream.finish())
    except BaseException:
        stream.abandon()
        raise
    info["text_mb"] = rounds * pool_bytes / 1e6
    return info


def measure(path: Path, tokenizer_path: Path, mode: str) -> dict[str, float]:
    """One open in this (fresh) process."""
    from lmrs import Tokenizer
    from lmrs.data.tokens import TokenDataset

    tokenizer = Tokenizer.load(tokenizer_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    dataset = TokenDataset(path, tokenizer, use_index=mode == "index")
    opened = time.perf_counter() - start
    train, _ = dataset.split(0.01, seed=0)
    train.micro_batch(0, 0, seq_len=1024, global_batch_size=8, seed=0)
    first = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes vs KiB
    return {
        "open_s": opened,
        "first_batch_s": first,
        "peak_rss_mb": (after - before) * scale / 1e6,
        "documents": dataset.num_documents,
        "indexed": dataset.indexed,
    }


@click.command()
@click.option("--size-mb", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--shard-tokens", type=click.IntRange(min=1), default=None)
@click.option("--mean-doc-bytes", type=click.IntRange(min=10), default=3000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Default: a temp dir.")
@click.option("--keep", is_flag=True, help="Keep the token file (reused by the next run).")
@click.option("--measure", "measure_mode", type=click.Choice(["index", "scan"]), hidden=True)
def main(
    size_mb: int,
    shard_tokens: int | None,
    mean_doc_bytes: int,
    repeats: int,
    work: Path | None,
    keep: bool,
    measure_mode: str | None,
) -> None:
    root = work or Path(tempfile.mkdtemp(prefix="bench-open-"))
    out = root / ("tokens" if shard_tokens else "tokens.bin")
    tokenizer_path = root / "tokenizer.json"
    if measure_mode:  # the child process
        print(json.dumps(measure(out, tokenizer_path, measure_mode)))
        return
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not (keep and out.exists() and tokenizer_path.exists()):
            start = time.perf_counter()
            info = write_tokens(out, tokenizer_path, size_mb, shard_tokens, mean_doc_bytes)
            print(
                f"wrote {info['num_tokens']:,} tokens, {info['num_documents']:,} documents "
                f"({info['text_mb']:.0f} MB of text) in {time.perf_counter() - start:.0f} s"
            )
        size = sum(p.stat().st_size for p in ([out] if out.is_file() else out.glob("*.bin")))
        index = sum(p.stat().st_size for p in root.rglob("*.idx"))
        print(f"{out}: {size / 1e6:,.0f} MB of tokens, {index / 1e6:,.1f} MB of index")
        print(f"{'mode':<6} {'open s':>9} {'first batch s':>14} {'peak RSS MB':>12}")
        for mode in ("index", "scan"):
            runs = []
            for _ in range(repeats):
                child = subprocess.run(
                    [sys.executable, __file__, "--work", str(root), "--measure", mode]
                    + (["--shard-tokens", str(shard_tokens)] if shard_tokens else []),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["open_s"])
            assert best["indexed"] == (mode == "index"), best
            print(
                f"{mode:<6} {best['open_s']:>9.3f} {best['first_batch_s']:>14.3f} "
                f"{max(r['peak_rss_mb'] for r in runs):>12.1f}"
            )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
