"""`lmrs vocab` and `lmrs encode`: thin commands over `lmrs.Tokenizer`.

Errors are raised as lmrs / OS errors naming the file; ``cli.py`` turns them into one line
(exit status 1). Outputs are written to temporary names and renamed, never half-written.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from lmrs.data.encode import RecordRun, encode_corpus, train_tokenizer
from lmrs.errors import InputError
from lmrs.tokenizer.core import Tokenizer

EXT_HELP = "Only files with this extension (repeatable), e.g. --ext .py"
TEXT_FIELD_HELP = (
    "Field (JSONL/JSON), column (Parquet/CSV/datasets folder) holding each document's text."
)


@click.command("vocab")
@click.argument("corpus", type=click.Path(path_type=Path), required=False)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Convert instead of training: a Hugging Face tokenizer.json (byte-level BPE) or "
    "a .tiktoken ranks file (give --pattern: gpt2, cl100k, o200k or a regex).",
)
@click.option(
    "--size",
    "vocab_size",
    type=click.IntRange(257, 2**32 - 1),  # ids are u32 in the Rust core
    default=5000,
    show_default=True,
    help="Vocabulary size: 256 bytes + merges + special tokens.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tokenizer.json"),
    show_default=True,
    help="Tokenizer JSON to write.",
)
@click.option(
    "--min-frequency",
    type=click.IntRange(1, 2**63 - 1),
    default=2,
    show_default=True,
    help="Do not merge pairs seen fewer times than this.",
)
@click.option(
    "--special",
    "special_tokens",
    multiple=True,
    help="Extra special token (repeatable); <|endoftext|> is always included.",
)
@click.option(
    "--max-token-length",
    type=click.IntRange(2, 2**63 - 1),
    default=None,
    help="Longest token in bytes.",
)
@click.option("--ext", "extensions", multiple=True, help=EXT_HELP)
@click.option(
    "--pattern",
    default=None,
    help="Pre-tokenization regex or name: gpt4 (default), cl100k, o200k, gpt2.",
)
@click.option("--text-field", default="text", show_default=True, help=TEXT_FIELD_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def vocab_command(
    corpus: Path | None,
    source: Path | None,
    vocab_size: int,
    output: Path,
    min_frequency: int,
    special_tokens: tuple[str, ...],
    max_token_length: int | None,
    extensions: tuple[str, ...],
    pattern: str | None,
    text_field: str,
    quiet: bool,
) -> None:
    """Train a BPE vocabulary on the text files under CORPUS (or the records of a .jsonl,
    .json, .parquet, .csv file or datasets folder), or convert one (--from)."""
    if not output.parent.is_dir():
        raise InputError(f"{output.parent}: output directory does not exist")
    if source is not None:
        if corpus is not None:
            raise InputError("give CORPUS (to train) or --from FILE (to convert), not both")
        _convert(source, output, pattern, special_tokens)
        return
    if corpus is None:
        raise InputError("missing CORPUS (or --from FILE to convert a tokenizer)")
    if not corpus.exists():
        raise InputError(f"{corpus}: no such file or directory")
    run = RecordRun()
    tokenizer = train_tokenizer(
        corpus,
        vocab_size,
        text_field=text_field,
        run=run,
        special_tokens=special_tokens,
        min_frequency=min_frequency,
        max_token_length=max_token_length,
        pattern=pattern,
        extensions=extensions or None,
        show_progress=not quiet,
    )
    tokenizer.save(output)
    stats = tokenizer.train_stats
    assert stats is not None
    if run.reader is not None:
        click.echo(run.describe(), err=True)
    click.echo(f"{stats.summary()} -> {output}")


def _convert(
    source: Path, output: Path, pattern: str | None, special_tokens: tuple[str, ...]
) -> None:
    """`lmrs vocab --from`: a tokenizer.json (by its content) or a .tiktoken file."""
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    with source.open("rb") as f:
        is_json = f.read(64).lstrip().startswith(b"{")
    if is_json:
        if pattern is not None or special_tokens:
            raise InputError(f"{source}: --pattern/--special do not apply to a tokenizer.json")
        tokenizer = Tokenizer.from_huggingface(source)
    else:
        if pattern is None:
            raise InputError(
                f"{source}: a .tiktoken file holds no pattern; give --pattern "
                "(gpt2, cl100k, o200k or a regex)"
            )
        tokenizer = Tokenizer.from_tiktoken(
            source, pattern=pattern, special_tokens=list(special_tokens) or None
        )
    tokenizer.save(output)
    click.echo(
        f"vocab {tokenizer.vocab_size} ids ({len(tokenizer.merges)} merges, "
        f"{len(tokenizer.special_tokens)} special, end of text {tokenizer.eot_token} = "
        f"{tokenizer.eot_id}) from {source} -> {output}"
    )


@click.command("encode")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option(
    "-t",
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(path_type=Path),
    default=Path("tokenizer.json"),
    show_default=True,
    help="Tokenizer JSON.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("tokens.bin"),
    show_default=True,
    help="Token file (or shard directory with --shard-tokens).",
)
@click.option("--ext", "extensions", multiple=True, help=EXT_HELP)
@click.option(
    "--shard-tokens",
    type=click.IntRange(1, 2**63 - 1),
    default=None,
    help="Write a shard directory with at most this many tokens per shard.",
)
@click.option(
    "--num-parts",
    type=click.IntRange(1, 2**31 - 1),
    default=1,
    show_default=True,
    help="Split the corpus into this many parts (one per process or machine).",
)
@click.option(
    "--part-index",
    type=click.IntRange(0, 2**31 - 1),
    default=0,
    show_default=True,
    help="Which part this run encodes (0-based).",
)
@click.option(
    "--manifest-only",
    is_flag=True,
    help="Only rebuild OUTPUT/manifest.json from the shards present.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Check the token file (or shard directory) CORPUS instead: scan every token and "
    "compare with its document index (bytes too when the tokenizer is there).",
)
@click.option("--text-field", default="text", show_default=True, help=TEXT_FIELD_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def encode_command(
    corpus: Path,
    tokenizer_path: Path,
    output: Path,
    extensions: tuple[str, ...],
    shard_tokens: int | None,
    num_parts: int,
    part_index: int,
    manifest_only: bool,
    verify: bool,
    text_field: str,
    quiet: bool,
) -> None:
    """Encode the text files under CORPUS into a token file (one document per file, or per
    record of a .jsonl, .json, .parquet, .csv file or datasets folder; each followed by
    <|endoftext|>)."""
    if verify:
        _verify(corpus, tokenizer_path)
        return
    if manifest_only:
        manifest = Tokenizer.build_manifest(output)
        missing = manifest["missing_parts"]
        click.echo(
            f"manifest: {len(manifest['shards'])} shards, {manifest['num_tokens']:,} tokens"
            + (f", missing parts {missing}" if missing else "")
            + f" -> {output / 'manifest.json'}"
        )
        return
    if part_index >= num_parts:
        raise InputError(f"--part-index {part_index} must be below --num-parts {num_parts}")
    if not corpus.exists():
        raise InputError(f"{corpus}: no such file or directory")
    tokenizer = Tokenizer.load(tokenizer_path)
    start = time.perf_counter()
    run = RecordRun()
    info = encode_corpus(
        tokenizer,
        corpus,
        output,
        text_field=text_field,
        run=run,
        extensions=extensions or None,
        shard_tokens=shard_tokens,
        num_parts=num_parts,
        part_index=part_index,
        show_progress=not quiet,
    )
    seconds = time.perf_counter() - start
    tokens = info["num_tokens"]
    mb = info["num_bytes"] / 1e6
    line = (
        f"{tokens:,} tokens from {info['num_documents']:,} documents ({mb:.1f} MB) "
        f"in {seconds:.1f} s, {tokens / max(seconds, 1e-9) / 1e6:.2f} M tokens/s"
    )
    if info["skipped_files"]:
        line += f", {len(info['skipped_files'])} files skipped (not text)"
    if run.reader is not None and run.reader.bad.total:
        click.echo(f"lmrs: {run.reader.bad.summary()}", err=True)
        line += f", {run.reader.bad.total} bad records skipped"
    if num_parts > 1 and info.get("missing_parts"):
        line += f"; parts still missing: {info['missing_parts']}"
    click.echo(f"{line} -> {output}")


def _verify(path: Path, tokenizer_path: Path) -> None:
    """`lmrs encode --verify PATH`: the tokenizer is used when given or when the default
    one is there (without it, bytes per document are not checked)."""
    from lmrs.data.tokens import verify_token_data  # imports torch: only for this option

    source = click.get_current_context().get_parameter_source("tokenizer_path")
    given = source is not click.core.ParameterSource.DEFAULT
    tokenizer = Tokenizer.load(tokenizer_path) if given or tokenizer_path.is_file() else None
    report = verify_token_data(path, tokenizer)
    checked = "document ends" + (" and bytes" if report.bytes_checked else "")
    what = (
        f"the document index matches the tokens ({checked})"
        if report.indexed
        else "no document index (an older token file): scanned only"
    )
    click.echo(
        f"{report.path}: {report.num_tokens:,} tokens, {report.num_documents:,} documents; {what}"
    )


def register_tokenizer_commands(group: click.Group) -> None:
    """Add `vocab` and `encode` to the `lmrs` group (`corpus add` is registered by cli.py)."""
    group.add_command(vocab_command)
    group.add_command(encode_command)
