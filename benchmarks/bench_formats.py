"""Record files vs plain text files: tokenizer training and encoding throughput.

    python benchmarks/bench_formats.py [--corpus DIR] [--size 5000] [--max-files N]

The same documents (one per text file of the corpus; default: the Shakespeare corpus in
shared/corpora) are read from the folder and from one Parquet file (a row per document,
written here with pyarrow, several row groups), then:
- train MB/s: ``lmrs vocab``'s path (word counting + merges) on each source;
- encode MB/s: ``lmrs encode``'s path (token file written) with the folder's vocab.
Printed side by side with the CPU, best of ``--repeats`` runs. The token files are
checked identical (the benchmark fails otherwise). The issue's target: Parquet within
20% of plain files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import best_of, best_seconds, cpu_description  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CORPUS_CANDIDATES = (
    REPO.parent / "shared" / "corpora" / "shakespeare",
    Path("/work/shared/corpora/shakespeare"),
)


def find_corpus() -> Path:
    for candidate in CORPUS_CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise click.UsageError("Shakespeare corpus not found: pass --corpus DIR")


def write_parquet(files: list[Path], out: Path, row_group_size: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f.read_bytes().decode("utf-8") for f in files]
    pq.write_table(
        pa.table({"path": [f.name for f in files], "text": texts}),
        out,
        row_group_size=row_group_size,
    )
    return pq.ParquetFile(out).num_row_groups


@click.command()
@click.option("--corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--size", "vocab_size", default=5000, show_default=True, help="Vocab size.")
@click.option("--max-files", type=int, default=None, help="Only the first N files (a quick run).")
@click.option("--row-group-size", default=8, show_default=True, help="Documents per row group.")
@click.option("--repeats", default=15, show_default=True)
def main(
    corpus: Path | None, vocab_size: int, max_files: int | None, row_group_size: int, repeats: int
) -> None:

    from lmrs import Tokenizer
    from lmrs.data.encode import encode_corpus, train_tokenizer

    root = corpus or find_corpus()
    files = sorted(p for p in root.rglob("*") if p.is_file())[:max_files]
    num_bytes = sum(f.stat().st_size for f in files)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "texts"
        folder.mkdir()
        for f in files:  # the same documents, in the order the Parquet file has them
            (folder / f.name).write_bytes(f.read_bytes())
        parquet = tmp / "corpus.parquet"
        groups = write_parquet(files, parquet, row_group_size)
        sources = {"text files": folder, "parquet": parquet}

        mb = num_bytes / 1e6
        # MB/s, the sources taking turns within each repeat
        train = best_of(
            repeats,
            {
                name: lambda s=source: (
                    mb
                    / best_seconds(lambda: train_tokenizer(s, vocab_size, show_progress=False), 1)
                )
                for name, source in sources.items()
            },
        )
        tokenizer = Tokenizer.train(folder, vocab_size, show_progress=False)
        outputs = {name: tmp / f"{i}.bin" for i, name in enumerate(sources)}
        encode = best_of(
            repeats,
            {
                name: lambda s=source, o=outputs[name]: (
                    mb
                    / best_seconds(lambda: encode_corpus(tokenizer, s, o, show_progress=False), 1)
                )
                for name, source in sources.items()
            },
        )
        first, *rest = outputs.values()
        if any(first.read_bytes() != other.read_bytes() for other in rest):
            raise SystemExit("token files differ between sources: a bug")

    click.echo(cpu_description())
    click.echo(
        f"{len(files)} documents, {mb:.2f} MB from {root}; Parquet {groups} row groups; "
        f"vocab {vocab_size}; best of {repeats}"
    )
    click.echo(f"{'source':<12} {'train MB/s':>11} {'encode MB/s':>12}")
    for name in sources:
        click.echo(f"{name:<12} {train[name]:>11.2f} {encode[name]:>12.2f}")
    base = "text files"
    for name in sources:
        if name != base:
            click.echo(
                f"{name} / {base}: train {train[name] / train[base]:.2f}x, "
                f"encode {encode[name] / encode[base]:.2f}x (1.00x = same speed)"
            )


if __name__ == "__main__":
    main()
