"""Tokenizer benchmark: lmrs vs rustbpe, Hugging Face tokenizers and tiktoken.

    python benchmarks/bench_tokenizer.py CORPUS_DIR --size 5000 [--ext .py] [--heldout-fraction 0.1]
        [--ranks DIR [--no-train] [--repeat 3]]

Same files, one run each, printed as a table:
- train s: end to end in a fresh subprocess, from files on disk to a saved vocab;
- peak MB: that subprocess's max RSS (interpreter and imports included);
- encode MB/s: all files, single-threaded and batched (2 threads), each tool with its own
  vocab; tiktoken uses lmrs's ranks and pattern (ids checked identical to lmrs);
- bytes/token: on held-out files (every k-th file, not trained on).

`--ranks DIR` adds the Python-facing comparison on tiktoken's own vocabularies: every
`cl100k_base.tiktoken` / `o200k_base.tiktoken` in DIR (`cargo run --release --example
encode_speed -- --write-ranks DIR` writes them from the tiktoken crate) is loaded by lmrs
(`Tokenizer.from_tiktoken`) and by Python tiktoken (`tiktoken.Encoding` on the same ranks,
pattern and special tokens); ids are checked identical on every file, then MB/s one
thread and batched (best of `--repeat`), and the time of one call on a 13-byte and a
900-byte text. `--no-train` skips the training table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import best_seconds, cpu_description  # noqa: E402

EOT = "<|endoftext|>"


# ---- training workers (each runs in its own process) -----------------------------------


def _read_texts(files: list[str]) -> list[str]:
    return [Path(f).read_bytes().decode("utf-8", errors="replace") for f in files]


def _is_text(path: Path) -> bool:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def train_lmrs(files: list[str], size: int, out: str) -> None:
    from lmrs import Tokenizer

    Tokenizer.train(files, size, min_frequency=1, show_progress=False).save(out)


def train_rustbpe(files: list[str], size: int, out: str) -> None:
    import base64

    import rustbpe

    tok = rustbpe.Tokenizer()
    # rustbpe's vocab has no special tokens: one fewer, so both hold `size` ids.
    tok.train_from_iterator(iter(_read_texts(files)), size - 1)
    lines = [f"{base64.b64encode(t).decode()} {r}\n" for t, r in tok.get_mergeable_ranks()]
    Path(out).write_text("".join(lines))


def train_hf(files: list[str], size: int, out: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from lmrs._lmrs import GPT4_PATTERN

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    tok.save(out)


TRAINERS: dict[str, Callable[[list[str], int, str], None]] = {
    "lmrs": train_lmrs,
    "rustbpe": train_rustbpe,
    "hf tokenizers": train_hf,
}


def run_worker(name: str, files_json: str, size: int, out: str) -> None:
    files = json.loads(Path(files_json).read_text())
    start = time.perf_counter()
    TRAINERS[name](files, size, out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


# ---- the parent: train in subprocesses, then encode here ---------------------------


@dataclass
class Row:
    name: str
    train_s: Optional[float] = None
    peak_mb: Optional[float] = None
    single_mbs: Optional[float] = None
    batch_mbs: Optional[float] = None
    bytes_per_token: Optional[float] = None
    notes: list[str] = field(default_factory=list)


def train_in_subprocess(name: str, files_json: Path, size: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, str(files_json), str(size), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{name} training failed: {last[0][:200]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def throughput(fn: Callable[[], Any], num_bytes: int) -> float:
    start = time.perf_counter()
    fn()
    return num_bytes / (time.perf_counter() - start) / 1e6


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


#: Rank files `--ranks DIR` looks for, and the pattern name each is encoded with.
RANK_FILES = {"cl100k_base.tiktoken": "cl100k", "o200k_base.tiktoken": "o200k"}


def short_text(texts: list[str], n_bytes: int) -> str:
    """The first `n_bytes` of the corpus (cut at a character boundary)."""
    data = "".join(texts).encode()[:n_bytes]
    return data.decode("utf-8", errors="ignore")


def per_call_us(fn: Callable[[str], Any], text: str, repeat: int) -> float:
    calls = max(20_000 // max(len(text) // 13, 1), 200)
    seconds = best_seconds(partial(_encode_each, fn, [text] * calls), repeat)
    return seconds / calls * 1e6


def ranks_section(ranks_dir: Path, texts: list[str], repeat: int) -> None:
    """lmrs vs Python tiktoken on tiktoken's own ranks (see the module docstring)."""
    from lmrs import Tokenizer
    from lmrs.tokenizer.importing import PATTERNS, TIKTOKEN_SPECIAL_TOKENS, read_tiktoken_ranks

    try:
        import tiktoken
    except ImportError:
        print(f"\n--ranks {ranks_dir}: Python tiktoken is not installed (pip install tiktoken)")
        return
    found = [(ranks_dir / f, name) for f, name in RANK_FILES.items() if (ranks_dir / f).exists()]
    if not found:
        print(f"\n--ranks {ranks_dir}: no {' or '.join(RANK_FILES)} there")
        return
    num_bytes = sum(len(t.encode()) for t in texts)
    threads = os.cpu_count() or 1
    short, medium = "Hello, world!", short_text(texts, 900)
    print(f"\n# lmrs vs Python tiktoken {tiktoken.__version__} on the same ranks")
    print(cpu_description())
    print(
        f"{len(texts)} texts, {num_bytes / 1e6:.1f} MB; best of {repeat}; batched: "
        f"lmrs encode_batch vs tiktoken encode_ordinary_batch(num_threads={threads}); "
        f"call: microseconds per encode_ordinary of {len(short.encode())} / "
        f"{len(medium.encode())} bytes"
    )
    print()
    print("| vocab | encoder | ids | MB/s 1T | MB/s batched | us/call 13 B | us/call 900 B |")
    print("|---|---|---|---|---|---|---|")
    for path, name in found:
        ranks = read_tiktoken_ranks(path)
        tok = Tokenizer.from_tiktoken(path, pattern=name)
        enc = tiktoken.Encoding(
            name,
            pat_str=PATTERNS[name],
            mergeable_ranks=ranks,
            special_tokens=TIKTOKEN_SPECIAL_TOKENS[name],
        )
        ours = [tok.encode_ordinary(t) for t in texts]
        theirs = [enc.encode_ordinary(t) for t in texts]
        differ = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        same = "identical" if differ is None else f"DIFFER (text {differ})"
        encoders: list[tuple[str, Callable[[str], Any], Callable[[], Any]]] = [
            ("lmrs", tok.encode_ordinary, partial(tok.encode_batch, texts, allowed_special="none")),
            (
                "tiktoken",
                enc.encode_ordinary,
                partial(enc.encode_ordinary_batch, texts, num_threads=threads),
            ),
        ]
        for label, one, batch in encoders:
            single = best_seconds(partial(_encode_each, one, texts), repeat)
            batched = best_seconds(batch, repeat)
            print(
                f"| {name} | {label} | {same} | {num_bytes / 1e6 / single:.1f} | "
                f"{num_bytes / 1e6 / batched:.1f} | {per_call_us(one, short, repeat):.2f} | "
                f"{per_call_us(one, medium, repeat):.2f} |"
            )


def _encode_each(encode: Callable[[str], Any], texts: list[str]) -> None:
    for text in texts:
        encode(text)


@click.command()
@click.argument("corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--size", type=int, default=5000, show_default=True)
@click.option("--ext", "extensions", multiple=True, help="Only these extensions, e.g. .py")
@click.option("--heldout-fraction", type=float, default=0.1, show_default=True)
@click.option(
    "--ranks",
    "ranks_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also time lmrs vs Python tiktoken on the .tiktoken rank files in this folder.",
)
@click.option("--no-train", is_flag=True, help="Skip the training table (use with --ranks).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Runs per --ranks timing.")
def main(
    corpus: Path,
    size: int,
    extensions: tuple[str, ...],
    heldout_fraction: float,
    ranks_dir: Optional[Path],
    no_train: bool,
    repeat: int,
) -> None:
    """Train and encode CORPUS with lmrs and its peers; print one table."""
    from lmrs import Tokenizer, _lmrs

    # Only text files (UTF-8, no NUL), as lmrs trains on: HF's trainer stops at others.
    files = [
        str(p) for p in _lmrs.collect_files(str(corpus), list(extensions)) if _is_text(Path(p))
    ]
    step = max(int(round(1 / heldout_fraction)), 2) if heldout_fraction > 0 else 0
    held = [f for i, f in enumerate(files) if step and i % step == step - 1]
    train_files = [f for f in files if f not in set(held)]
    texts = _read_texts(files)
    if no_train:
        if ranks_dir is not None:
            ranks_section(ranks_dir, texts, max(repeat, 1))
        return
    held_texts = _read_texts(held)
    num_bytes = sum(len(t.encode()) for t in texts)
    held_bytes = sum(len(t.encode()) for t in held_texts)
    train_mb = sum(os.path.getsize(f) for f in train_files) / 1e6
    print(
        f"corpus {corpus}: {len(files)} files, {num_bytes / 1e6:.1f} MB; training on "
        f"{len(train_files)} files ({train_mb:.1f} MB), {len(held)} held out; vocab {size}; "
        f"{os.cpu_count()} CPUs"
    )

    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files_json = Path(tmp) / "files.json"
        files_json.write_text(json.dumps(train_files))
        outs = {"lmrs": "lmrs.json", "rustbpe": "rustbpe.tiktoken", "hf tokenizers": "hf.json"}
        for name, out in outs.items():
            row = rows.setdefault(name, Row(name))
            try:
                stats = train_in_subprocess(name, files_json, size, Path(tmp) / out)
                row.train_s, row.peak_mb = stats["seconds"], stats["peak_mb"]
            except (RuntimeError, ImportError) as e:
                row.notes.append(str(e)[:120])
        tok = Tokenizer.load(Path(tmp) / outs["lmrs"])

        # lmrs
        row = rows["lmrs"]
        ours = [tok.encode_ordinary(t) for t in texts]
        row.single_mbs = throughput(lambda: [tok.encode_ordinary(t) for t in texts], num_bytes)
        row.batch_mbs = throughput(
            lambda: tok.encode_batch(texts, allowed_special="none"), num_bytes
        )
        row.bytes_per_token = held_bytes / max(
            sum(len(tok.encode_ordinary(t)) for t in held_texts), 1
        )

        # tiktoken with our ranks
        try:
            enc = tok.to_tiktoken()
            row = rows.setdefault("tiktoken (lmrs ranks)", Row("tiktoken (lmrs ranks)"))
            same = [enc.encode_ordinary(t) for t in texts] == ours
            row.notes.append("ids identical to lmrs" if same else "IDS DIFFER from lmrs")
            row.single_mbs = throughput(lambda: [enc.encode_ordinary(t) for t in texts], num_bytes)
            row.batch_mbs = throughput(
                lambda: enc.encode_ordinary_batch(texts, num_threads=2), num_bytes
            )
            row.bytes_per_token = rows["lmrs"].bytes_per_token
        except ImportError as e:
            rows["tiktoken (lmrs ranks)"] = Row("tiktoken (lmrs ranks)", notes=[str(e)])

        # rustbpe with its own vocab (encode through a tiktoken-free path: its own encode)
        if rows["rustbpe"].train_s is not None:
            import rustbpe

            row = rows["rustbpe"]
            theirs = rustbpe.Tokenizer()
            theirs.train_from_iterator(iter(_read_texts(train_files)), size - 1)
            row.single_mbs = throughput(lambda: [theirs.encode(t) for t in texts], num_bytes)
            row.batch_mbs = throughput(lambda: theirs.batch_encode(texts), num_bytes)
            row.bytes_per_token = held_bytes / max(
                sum(len(theirs.encode(t)) for t in held_texts), 1
            )

        # Hugging Face tokenizers
        if rows["hf tokenizers"].train_s is not None:
            from tokenizers import Tokenizer as HFTokenizer

            row = rows["hf tokenizers"]
            hf = HFTokenizer.from_file(str(Path(tmp) / outs["hf tokenizers"]))
            row.single_mbs = throughput(
                lambda: [hf.encode(t, add_special_tokens=False) for t in texts], num_bytes
            )
            row.batch_mbs = throughput(
                lambda: hf.encode_batch(texts, add_special_tokens=False), num_bytes
            )
            held_tokens = sum(len(hf.encode(t, add_special_tokens=False).ids) for t in held_texts)
            row.bytes_per_token = held_bytes / max(held_tokens, 1)

    header = ["tokenizer", "train s", "peak MB", "enc MB/s 1T", "enc MB/s batch", "bytes/tok"]
    print()
    print(" | ".join(f"{h:>22}" if i == 0 else f"{h:>14}" for i, h in enumerate(header)))
    for row in rows.values():
        cells = [
            fmt(row.train_s, ".2f"),
            fmt(row.peak_mb, ".0f"),
            fmt(row.single_mbs, ".1f"),
            fmt(row.batch_mbs, ".1f"),
            fmt(row.bytes_per_token, ".3f"),
        ]
        line = f"{row.name:>22} | " + " | ".join(f"{c:>14}" for c in cells)
        print(line + (f"   ({'; '.join(row.notes)})" if row.notes else ""))
    lm, rb, tk = rows["lmrs"], rows["rustbpe"], rows.get("tiktoken (lmrs ranks)")
    if lm.train_s and rb.train_s:
        print(f"\nlmrs trains {rb.train_s / lm.train_s:.2f}x faster than rustbpe", end="")
    if tk and tk.single_mbs and lm.single_mbs and lm.batch_mbs and tk.batch_mbs:
        print(
            f"; encodes {lm.single_mbs / tk.single_mbs:.2f}x (1 thread) and "
            f"{lm.batch_mbs / tk.batch_mbs:.2f}x (batch) tiktoken's speed",
            end="",
        )
    if lm.bytes_per_token and rb.bytes_per_token:
        print(
            f"; bytes/token {100 * (lm.bytes_per_token / rb.bytes_per_token - 1):+.2f}% vs rustbpe"
        )
    print()
    if ranks_dir is not None:
        ranks_section(ranks_dir, texts, max(repeat, 1))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
