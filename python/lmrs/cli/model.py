"""`lmrs train`, `lmrs sample`, `lmrs eval`, `lmrs plot`, `lmrs quickstart`.

Each command is a thin layer over the Python API (lmrs.train, lmrs.generate, lmrs.evaluate,
lmrs.training.plot). Options take their choices and defaults from :mod:`lmrs.options`. Expected
failures are raised as lmrs errors and become one line in ``cli.py``; every check that can
be made before writing anything (the run directory, the checkpoint to resume, the tokenizer
it was trained with) is made first.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import re
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import click

from lmrs.cli.run_config import load_config_defaults, write_run_config
from lmrs.errors import InputError, LmrsError
from lmrs.options import (
    ARCHITECTURES,
    CHECKPOINT_FORMATS,
    DECAYS,
    DEFAULT_ARCH,
    ENGINES,
    MLPS,
    NORMS,
    OPTIMIZERS,
    POSITIONS,
    PRESETS,
    SAMPLING_DTYPES,
    STRATEGIES,
    TOKENS_PER_PARAM,
    TRAIN_DEFAULTS,
    TRAIN_DTYPES,
)
from lmrs.runlock import run_lock
from lmrs.training.metrics_sinks import check_sinks, parse_log_option

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")

QUICKSTART_CORPUS_BYTES = 12_000_000
QUICKSTART_MAX_FILE_BYTES = 200_000  # larger stdlib files are mostly generated data
QUICKSTART_VOCAB = 2000
QUICKSTART_PROMPTS = ("def ", "import os\n", "class ")

# Bounds of the integer options that reach torch, numpy and Rust: what those accept, so that
# a huge number is refused naming its option instead of overflowing inside them.
# Seeds: torch.manual_seed takes 64 bits and a run adds its rank and step; numpy no sign.
SEED = click.IntRange(0, 2**63 - 1)
# Batch sizes and counts that size tensors: beyond this, memory runs out long before.
BATCH = click.IntRange(1, 2**31 - 1)
# lmrs.model.config.MAX_CONTEXT (not imported: the model package loads torch)
SEQ_LEN = click.IntRange(1, 1 << 20)
# top-k reaches the Rust sampler as a usize (and torch.topk below the vocabulary size)
TOP_K = click.IntRange(0, 2**63 - 1)
# the Rust trainer takes a vocabulary of up to u32::MAX ids
VOCAB_SIZE = click.IntRange(257, 2**32 - 1)


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' → seconds."""
    match = DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 10m or 1h")
    value = float(match.group(1))
    unit = (match.group(2) or "s")[0]
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def _dist_timeout(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> float:
    """``--dist-timeout``: seconds or a duration, positive."""
    if value is None:
        return TRAIN_DEFAULTS.dist_timeout_s
    seconds = parse_duration(value)
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} must be longer than 0 s")
    return seconds


def _load_tokenizer(path: str | os.PathLike[str]) -> Any:
    from lmrs.tokenizer.core import Tokenizer

    return Tokenizer.load(str(path))


def _encode_corpus(
    tokenizer: Any, corpus: Any, out_path: Path, show_progress: bool, text_field: str = "text"
) -> None:
    """Encode a corpus (text files, or a record file / datasets folder: one document per
    record) into a token file; errors → one line, and nothing left behind."""
    from lmrs.data.encode import RecordRun, encode_corpus
    from lmrs.data.tokens import index_path

    started = time.perf_counter()
    created = not out_path.parent.exists()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run = RecordRun()
        info = encode_corpus(
            tokenizer, corpus, out_path, text_field=text_field, show_progress=show_progress, run=run
        )
        if run.reader is not None and run.reader.bad.total:
            click.echo(f"lmrs: {run.reader.bad.summary()}", err=True)
        tokens = int(info.get("num_tokens", 0)) if isinstance(info, dict) else 0
        if tokens == 0:
            for written in (out_path, Path(f"{out_path}.json"), index_path(out_path)):
                written.unlink(missing_ok=True)
            name = corpus if isinstance(corpus, (str, os.PathLike)) else "corpus"
            raise InputError(f"{name}: empty (no text to train on)")
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_path.parent.rmdir()  # only if empty
        raise
    if show_progress:
        click.echo(
            f"encoded {tokens:,} tokens into {out_path} in {time.perf_counter() - started:.1f} s",
            err=True,
        )


def _open_dataset(path: Path, tokenizer: Any) -> Any:
    from lmrs.data.tokens import TokenDataset

    return TokenDataset(path, tokenizer)


def _check_out_dir(out_dir: Path) -> None:
    """``out_dir`` must be a directory or creatable as one: checked before any work, and
    without creating it (a run refused later leaves nothing behind)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory (--out takes a run directory)")
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{out_dir}: cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: not writable ({existing} does not allow it)")


# ---------------------------------------------------------------------------------------
# lmrs train
# ---------------------------------------------------------------------------------------


@click.command("train")
@click.option(
    "--corpus",
    type=click.Path(exists=True),
    help="Corpus folder (or file, or .jsonl/.json/.parquet/.csv/datasets folder) to train on.",
)
@click.option("--text-field", default="text", show_default=True, help="Text field of record files.")
@click.option(
    "--log",
    "log_to",
    multiple=True,
    help="Also log metrics to: tensorboard, wandb (repeatable or comma list; "
    "metrics.jsonl and loss.png are always written).",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(),
    help="tokenizer.json from `lmrs vocab` (with --init-from: the folder's, by default).",
)
@click.option("--out", required=True, type=click.Path(), help="Run directory (e.g. runs/NAME).")
@click.option(
    "--size",
    type=click.Choice(sorted(PRESETS)),
    default="small",
    show_default=True,
    help="Model shape. With --time-budget and no --size, candidate shapes are measured on "
    "this device and one is chosen for the budget (lmrs.training.sizing).",
)
@click.option(
    "--tokens-per-param",
    type=click.FloatRange(min=0, min_open=True),
    default=TOKENS_PER_PARAM,
    show_default=True,
    help="Sizing to a budget: the tokens per non-embedding parameter aimed at (measured best "
    "on CPU budgets; Chinchilla's is 20).",
)
@click.option("--tokens", type=click.Path(), help="Token file or shard folder (skips encoding).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Passes over data.")
@click.option("--time-budget", help="Wall-clock budget, e.g. 10m, 90s, 1h.")
@click.option("--batch-size", type=BATCH, default=TRAIN_DEFAULTS.batch_size, show_default=True)
@click.option("--seq-len", type=SEQ_LEN, default=TRAIN_DEFAULTS.seq_len, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=TRAIN_DEFAULTS.learning_rate,
    show_default=True,
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=TRAIN_DEFAULTS.warmup_steps, show_default=True
)
@click.option(
    "--decay",
    type=click.Choice(DECAYS),
    default=TRAIN_DEFAULTS.decay,
    show_default=True,
    help="Shape of the learning-rate decay after warmup.",
)
@click.option(
    "--cooldown-frac",
    type=click.FloatRange(0, 1, min_open=True),
    default=TRAIN_DEFAULTS.cooldown_frac,
    show_default=True,
    help="Decay over this last fraction of the run; the peak rate holds before it.",
)
@click.option(
    "--min-lr-ratio",
    type=click.FloatRange(0, 1),
    default=TRAIN_DEFAULTS.min_lr_ratio,
    show_default=True,
    help="The decay ends at --lr times this.",
)
@click.option(
    "--muon-lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak rate of Muon's hidden matrices [default: --lr]; the rest takes --lr.",
)
@click.option(
    "--embed-lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak rate of the token embeddings under --optimizer muon [default: --lr].",
)
@click.option(
    "--head-lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak rate of an untied output head under --optimizer muon [default: --lr].",
)
@click.option(
    "--muon-momentum-warmup",
    type=click.IntRange(min=0),
    default=TRAIN_DEFAULTS.muon_momentum_warmup,
    show_default=True,
    help=(
        f"Steps over which Muon's momentum rises from {TRAIN_DEFAULTS.muon_momentum_start} "
        f"to {TRAIN_DEFAULTS.muon_momentum} (0: constant)."
    ),
)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default=TRAIN_DEFAULTS.optimizer,
    show_default=True,
    help="muon: Muon on the hidden matrices, AdamW on embeddings, biases and norms.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=TRAIN_DEFAULTS.weight_decay,
    show_default=True,
)
@click.option(
    "--eval-every", type=click.IntRange(min=0), default=TRAIN_DEFAULTS.eval_every, show_default=True
)
@click.option(
    "--eval-batches",
    type=BATCH,
    default=TRAIN_DEFAULTS.eval_batches,
    show_default=True,
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=TRAIN_DEFAULTS.checkpoint_every,
    show_default=True,
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=TRAIN_DEFAULTS.log_every,
    show_default=True,
    help="Steps between lines in OUT/metrics.jsonl.",
)
@click.option(
    "--keep-checkpoints",
    type=click.IntRange(min=1),
    default=TRAIN_DEFAULTS.keep_checkpoints,
    show_default=True,
    help="Checkpoints to keep in --out, the newest included (older ones as checkpoint-STEP).",
)
@click.option(
    "--checkpoint-format",
    type=click.Choice(CHECKPOINT_FORMATS),
    default=TRAIN_DEFAULTS.checkpoint_format,
    show_default=True,
    help="sharded: every process writes its part (torch.distributed.checkpoint; resumes on "
    "any number of processes); model.safetensors is written on the last save.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Share of the corpus held out (whole documents) for validation. Default: the "
    "tokens --eval-batches windows read, at most 10%.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps")
@click.option("--dtype", type=click.Choice(TRAIN_DTYPES), default=TRAIN_DEFAULTS.dtype)
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model.")
@click.option(
    "--fixed-threads",
    is_flag=True,
    help="Keep torch's CPU thread count (by default one CPU process measures as it trains "
    "and uses the count that is fastest with the cores actually free).",
)
@click.option("--resume", type=click.Path(), help="Continue from a run or checkpoint directory.")
@click.option(
    "--init-from",
    type=click.Path(),
    help="Start from the weights of a local Hugging Face model folder (GPT-2 architecture; "
    "config.json + model.safetensors or pytorch_model.bin) and its tokenizer.json.",
)
@click.option(
    "--strategy", type=click.Choice(STRATEGIES), default=TRAIN_DEFAULTS.strategy, show_default=True
)
@click.option("--nproc", type=click.IntRange(min=1), default=1, help="Processes on this machine.")
@click.option(
    "--dist-timeout",
    "dist_timeout_s",
    callback=_dist_timeout,
    metavar="DURATION",
    help="How long a process waits for the others in a collective, e.g. 600, 30m "
    f"[default: {TRAIN_DEFAULTS.dist_timeout_s:g}s]. Raise it when rank 0 encodes a large "
    "corpus while the others wait.",
)
@click.option(
    "--grad-accum",
    type=BATCH,
    default=TRAIN_DEFAULTS.grad_accum_steps,
    show_default=True,
)
@click.option(
    "--arch",
    type=click.Choice(sorted(ARCHITECTURES)),
    default=DEFAULT_ARCH,
    show_default=True,
    help="Architecture options (lmrs.options.ARCHITECTURES); the flags below override them.",
)
@click.option("--position", type=click.Choice(POSITIONS), help="[default: the --arch's]")
@click.option("--norm", type=click.Choice(NORMS), help="[default: the --arch's]")
@click.option("--qk-norm/--no-qk-norm", default=None, help="[default: the --arch's]")
@click.option("--mlp", type=click.Choice(MLPS), help="[default: the --arch's]")
@click.option(
    "--softcap",
    type=click.FloatRange(min=0),
    help="Logit soft-cap: cap * tanh(logits / cap); 0 turns it off [default: the --arch's].",
)
@click.option(
    "--embed-dim", type=click.IntRange(1, 1 << 20), help="Model width [default: the --size's]."
)
@click.option("--layers", type=click.IntRange(1, 4096), help="Blocks [default: the --size's].")
@click.option(
    "--heads", type=click.IntRange(1, 4096), help="Attention heads [default: the --size's]."
)
@click.option(
    "--kv-heads",
    type=click.IntRange(1, 4096),
    help="Key/value heads: fewer than --heads is grouped-query attention [default: --heads].",
)
@click.option(
    "--ff-dim", type=click.IntRange(1, 1 << 24), help="Feed-forward width [default: the --size's]."
)
@click.option(
    "--tie-weights/--no-tie-weights",
    default=None,
    help="The head shares the token embedding matrix [default: the --arch's].",
)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option("--seed", type=SEED, default=TRAIN_DEFAULTS.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    callback=load_config_defaults,
    is_eager=True,
    expose_value=False,
    help="A TOML file of these options (names as the flags', with _ for -, e.g. "
    "embed_dim = 192); flags given win. Every run writes its own as OUT/config.toml.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(
    corpus: Optional[str],
    text_field: str,
    log_to: tuple[str, ...],
    tokenizer_path: str,
    out: str,
    size: str,
    tokens_per_param: float,
    tokens: Optional[str],
    max_steps: Optional[int],
    epochs: Optional[float],
    time_budget: Optional[str],
    batch_size: int,
    seq_len: int,
    lr: float,
    warmup: int,
    decay: str,
    cooldown_frac: float,
    min_lr_ratio: float,
    muon_lr: Optional[float],
    embed_lr: Optional[float],
    head_lr: Optional[float],
    muon_momentum_warmup: int,
    optimizer: str,
    weight_decay: float,
    eval_every: int,
    eval_batches: int,
    checkpoint_every: int,
    log_every: int,
    keep_checkpoints: int,
    checkpoint_format: str,
    val_fraction: Optional[float],
    device: str,
    dtype: str,
    use_compile: bool,
    fixed_threads: bool,
    resume: Optional[str],
    init_from: Optional[str],
    strategy: str,
    nproc: int,
    dist_timeout_s: float,
    grad_accum: int,
    arch: str,
    position: Optional[str],
    norm: Optional[str],
    qk_norm: Optional[bool],
    mlp: Optional[str],
    softcap: Optional[float],
    embed_dim: Optional[int],
    layers: Optional[int],
    heads: Optional[int],
    kv_heads: Optional[int],
    ff_dim: Optional[int],
    tie_weights: Optional[bool],
    dropout: Optional[float],
    seed: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train a GPT on a corpus (encoded into OUT/tokens.bin) or on a token file."""
    budget_s = parse_duration(time_budget) if time_budget else None
    if corpus is None and tokens is None:
        raise click.UsageError("give --corpus DIR or --tokens FILE")
    out_dir = Path(out)
    _check_out_dir(out_dir)
    # one owner: held until the command ends (a refusal below removes a directory it made)
    click.get_current_context().with_resource(run_lock(out_dir, "lmrs train"))
    from lmrs.checkpoint.store import holds_checkpoints, recover_checkpoint

    # torchrun --max-restarts: a restarted worker continues the run its job checkpointed
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    holds_run = holds_checkpoints(out_dir) and not resume and not overwrite
    if holds_run and not restarted:
        raise InputError(
            f"{out_dir}: already holds a trained run; pass --resume {out_dir} to continue it "
            "or --overwrite to replace it"
        )
    # a save interrupted between its renames: put its checkpoint back, in one process only
    # (--nproc recovers here before it launches; the ranks of a torchrun job may already be
    # reading the copy where it is, which they resolve by themselves)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        recover_checkpoint(out_dir / "checkpoint")
    from lmrs.options import TrainConfig

    show_progress = not quiet
    config = TrainConfig(
        batch_size=batch_size,
        seq_len=seq_len,
        max_steps=max_steps,
        epochs=epochs,
        time_budget_s=budget_s,
        learning_rate=lr,
        warmup_steps=warmup,
        decay=decay,
        cooldown_frac=cooldown_frac,
        min_lr_ratio=min_lr_ratio,
        muon_lr=muon_lr,
        embed_lr=embed_lr,
        head_lr=head_lr,
        muon_momentum_warmup=muon_momentum_warmup,
        optimizer=optimizer,
        weight_decay=weight_decay,
        eval_every=eval_every,
        eval_batches=eval_batches,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        keep_checkpoints=keep_checkpoints,
        checkpoint_format=checkpoint_format,
        val_fraction=val_fraction,
        device=device,
        dtype=dtype,
        compile=use_compile,
        adapt_threads=not fixed_threads,
        strategy=strategy,
        dist_timeout_s=dist_timeout_s,
        grad_accum_steps=grad_accum,
        seed=seed,
        out_dir=str(out_dir),
        show_progress=show_progress,
        log_to=parse_log_option(log_to),
    )
    config.validate()
    if restarted:  # the run's own newest checkpoint, over any --resume/--init-from start
        from lmrs.checkpoint.store import checkpoint_of_run

        previous = checkpoint_of_run(out_dir, config)
        if previous is None and holds_run:
            raise InputError(
                f"{out_dir}: a restarted worker found a run of another configuration there; "
                "pass --overwrite to replace it"
            )
        if previous is not None:
            if init_from and not tokenizer_path:  # the checkpoint holds init_from's tokenizer
                tokenizer_path = str(previous / "tokenizer.json")
            resume, init_from = str(previous), None
            if int(os.environ.get("RANK", "0") or 0) == 0:
                click.echo(f"lmrs: restarted job: resuming from {previous}", err=True)
    check_sinks(config.log_to)
    tokenizer = _init_tokenizer(tokenizer_path, init_from, resume)
    # everything that can refuse the run is checked before the first file is written
    explicit = _explicit_options(click.get_current_context())
    architecture = _architecture(
        arch,
        position=position,
        norm=norm,
        qk_norm=qk_norm,
        mlp=mlp,
        softcap=softcap,
        embed_dim=embed_dim,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        ff_dim=ff_dim,
        tie_weights=tie_weights,
    )
    # a budget and no --size: the shape is measured and chosen once the processes are up
    asked_shape = explicit & {"size", *SHAPE_FLAGS}  # a shape asked for is not measured for
    sizing = budget_s is not None and not asked_shape and not resume and not init_from
    if init_from:
        shape_options = {"size", "arch", *ARCH_FLAGS}
        clash = sorted(explicit & shape_options)
        if clash:
            raise click.UsageError(
                f"--init-from takes the model's shape from {init_from}: drop "
                + ", ".join(f"--{name.replace('_', '-')}" for name in clash)
            )
        model, resume_path = _pretrained_for_training(init_from, tokenizer, seq_len, dropout)
    else:
        model, resume_path = _model_for_training(
            resume,
            size,
            tokenizer,
            seq_len=seq_len,
            architecture=architecture,
            dropout=dropout,
            explicit=explicit,
        )
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1

    token_path = Path(tokens) if tokens else out_dir / "tokens.bin"
    if nproc > 1 and not under_torchrun:
        # Encode once here, then re-run this command as nproc processes reading the file.
        if tokens is None:
            _encode_corpus(tokenizer, corpus, token_path, show_progress, text_field)
        _open_dataset(token_path, tokenizer)  # check before launching
        from lmrs.distributed import launch_local

        argv = sys.argv[1:]
        if tokens is None:
            argv = [*argv, "--tokens", str(token_path)]
        sys.exit(launch_local(nproc, argv))

    from lmrs import distributed

    ctx = distributed.init_distributed(device, dist_timeout_s)
    try:
        if tokens is None:
            if ctx.is_main:
                _encode_corpus(tokenizer, corpus, token_path, show_progress, text_field)
            distributed.barrier(ctx)
        dataset = _open_dataset(token_path, tokenizer)
        if sizing:
            from lmrs.training.sizing import model_builder, sized_run

            options = {**architecture, **({} if dropout is None else {"dropout_rate": dropout})}
            model, config, _ = sized_run(
                model_builder(tokenizer.vocab_size, options),
                config,
                ctx,
                vocab_size=tokenizer.vocab_size,
                batch_size=batch_size if "batch_size" in explicit else None,
                seq_len=seq_len if "seq_len" in explicit else None,
                tokens_per_param=tokens_per_param,
                log=click.echo,
            )
        from lmrs.training.trainer import train

        result = train(model, dataset, config, tokenizer=tokenizer, resume_from=resume_path)
    finally:
        distributed.cleanup(ctx)
    if ctx.is_main:
        # written once the run has trained: a refused or failed command leaves OUT as it was
        write_run_config(click.get_current_context(), out_dir)
        if quiet:
            click.echo(result.summary())
        click.echo(f"checkpoint in {out_dir / 'checkpoint'}; try: lmrs sample --checkpoint {out}")


def _explicit_options(ctx: click.Context) -> set[str]:
    """The options the user typed (not defaults): only those can contradict a checkpoint."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name)
        in (
            click.core.ParameterSource.COMMANDLINE,
            click.core.ParameterSource.ENVIRONMENT,
            click.core.ParameterSource.DEFAULT_MAP,  # from --config: asked for all the same
        )
    }


# `lmrs train` flags that set one ModelConfig field each, over the --size's and --arch's
ARCH_FLAGS = {
    "position": "position",
    "norm": "norm",
    "qk_norm": "qk_norm",
    "mlp": "mlp",
    "softcap": "logit_softcap",
    "embed_dim": "embed_dim",
    "layers": "num_layers",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "ff_dim": "ff_dim",
    "tie_weights": "tie_weights",
}
SHAPE_FLAGS = {"embed_dim", "layers", "heads", "kv_heads", "ff_dim"}


def _architecture(arch: str, **flags: Any) -> dict[str, Any]:
    """The ModelConfig options of ``--arch``, each flag given (not None) winning."""
    options = dict(ARCHITECTURES[arch])
    for flag, value in flags.items():
        if value is not None:
            options[ARCH_FLAGS[flag]] = value
    if options.get("logit_softcap") == 0:
        options["logit_softcap"] = None
    if options.get("norm") == "layernorm":
        options["norm_scale"] = True  # LayerNorm always has its gain
    return options


def _init_tokenizer(
    tokenizer_path: Optional[str], init_from: Optional[str], resume: Optional[str]
) -> Any:
    """The tokenizer to train with: --tokenizer, else the --init-from folder's."""
    if init_from and resume:
        raise click.UsageError("--init-from starts a new run; --resume continues one: give one")
    if tokenizer_path:
        return _load_tokenizer(tokenizer_path)
    if not init_from:
        raise click.UsageError("give --tokenizer FILE (or --init-from a model folder)")
    from lmrs.model.hf_import import load_pretrained_tokenizer

    return load_pretrained_tokenizer(init_from)


def _pretrained_for_training(
    init_from: str, tokenizer: Any, seq_len: int, dropout: Optional[float]
) -> tuple[Any, None]:
    """The --init-from model, checked against the tokenizer and --seq-len."""
    from lmrs.model.gpt import GPT

    model = GPT.from_pretrained(init_from)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise InputError(
            f"{init_from}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
            f"{model.config.vocab_size}"
        )
    if seq_len > model.config.max_seq_len:
        raise InputError(
            f"{init_from}: --seq-len {seq_len} is longer than the model's context "
            f"({model.config.max_seq_len})"
        )
    if dropout is not None:
        from torch import nn

        model.config.dropout_rate = dropout
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
    return model.train(), None


def _model_for_training(
    resume: Optional[str],
    size: str,
    tokenizer: Any,
    *,
    seq_len: int,
    architecture: dict[str, Any],
    dropout: Optional[float],
    explicit: Optional[set[str]] = None,
) -> tuple[Any, Optional[Path]]:
    """The model to train and the checkpoint directory it resumes from: the checkpoint's
    (its tokenizer and shape checked, any option that contradicts it refused) or a preset."""
    from lmrs.checkpoint.store import check_tokenizer, load_checkpoint, resolve_checkpoint_dir
    from lmrs.model.gpt import GPT, ModelConfig, model_from_preset

    explicit = explicit or set()
    if not resume:
        overrides: dict[str, Any] = dict(architecture)
        if dropout is not None:
            overrides["dropout_rate"] = dropout
        context = PRESETS[size].get("max_seq_len", 512)
        if seq_len > context:
            overrides["max_seq_len"] = seq_len
        return model_from_preset(size, tokenizer.vocab_size, **overrides), None
    path = resolve_checkpoint_dir(resume)
    saved = load_checkpoint(path)
    check_tokenizer(saved.path, saved.model_config, tokenizer)
    try:
        config = ModelConfig.from_dict(saved.model_config)
    except (TypeError, ValueError) as e:
        raise InputError(f"{saved.path / 'model_config.json'}: invalid model config: {e}") from e
    contradictions = []
    if "size" in explicit:
        shape = {key: getattr(config, key) for key in PRESETS[size]}
        if shape != PRESETS[size]:
            contradictions.append(f"--size {size} (the checkpoint's model has {shape})")
    # an explicit --arch asks for all its fields, a flag for its own; name what was typed
    asked = {field: f"--arch: {field}" for field in architecture} if "arch" in explicit else {}
    for flag in explicit & ARCH_FLAGS.keys():
        asked[ARCH_FLAGS[flag]] = "--" + flag.replace("_", "-")
    for field, typed in sorted(asked.items()):
        if architecture[field] != getattr(config, field):
            value = architecture[field]
            shown = value if isinstance(value, str) else repr(value)
            contradictions.append(
                f"{typed} {shown} (the checkpoint's is {getattr(config, field)!r})"
            )
    if contradictions:
        raise InputError(
            f"{saved.path}: cannot resume with "
            + "; ".join(contradictions)
            + ": drop the option or start a new run"
        )
    if seq_len > config.max_seq_len:
        raise InputError(
            f"{saved.path}: --seq-len {seq_len} is longer than the checkpoint's context "
            f"({config.max_seq_len})"
        )
    if dropout is not None:
        config.dropout_rate = dropout  # not part of the weights: a resume may change it
    return GPT(config), path


# ---------------------------------------------------------------------------------------
# lmrs sample
# ---------------------------------------------------------------------------------------


def _load_run(checkpoint: str, device: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, Checkpoint) from a run or checkpoint directory (lmrs.load)."""
    from lmrs.loading import load

    loaded = load(checkpoint, device=device)
    return loaded.model, loaded.tokenizer, loaded.checkpoint


def _counted(ids: Iterator[int], counter: list[int]) -> Iterator[int]:
    for token in ids:
        counter[0] += 1
        yield token


def stream_text(tokenizer: Any, ids: Iterator[int]) -> Iterator[str]:
    """Decoded text pieces as ids arrive; a character split across tokens waits for its end."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in ids:
        piece = decoder.decode(tokenizer.decode_bytes([token]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


@click.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(), help="Run or checkpoint dir.")
@click.option("--prompt", default="", help="Text to continue (empty: start of a document).")
@click.option("--max-length", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--top-k", type=TOP_K, default=50, show_default=True, help="0 disables top-k.")
@click.option("--top-p", type=float, default=None)
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=SEED, default=None)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(SAMPLING_DTYPES),
    default="auto",
    show_default=True,
    help="Precision of the matrix products; auto: bfloat16 where it is fast (native bf16, "
    "or the Rust engine's AVX2/AVX512-BF16 kernels).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="auto",
    show_default=True,
    help="Decoding implementation; auto: rust on x86-64 CPUs (AVX2 or AVX512-BF16).",
)
def sample_command(
    checkpoint: str,
    prompt: str,
    max_length: int,
    temperature: float,
    top_k: int,
    top_p: Optional[float],
    num_samples: int,
    seed: Optional[int],
    device: str,
    dtype: str,
    engine: str,
) -> None:
    """Continue a prompt with a trained model, streaming the text as it is generated."""
    from lmrs.model.generation import stream_generate

    if not 0 <= temperature < math.inf:
        raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {top_p}")
    model, tokenizer, _ = _load_run(checkpoint, device)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    context = model.config.max_seq_len
    if len(prompt_ids) + max_length > context:
        raise InputError(
            f"prompt ({len(prompt_ids)} tokens) + --max-length {max_length} exceeds the "
            f"model's context of {context} tokens"
        )
    counter, start = [0], time.perf_counter()
    for index in range(num_samples):
        if num_samples > 1:
            click.echo(f"--- sample {index + 1} ---")
        ids = stream_generate(
            model,
            prompt_ids,
            max_length=max_length,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p,
            stop_tokens=[tokenizer.eot_id],
            seed=None if seed is None else seed + index,
            dtype=dtype,
            engine=engine,
        )
        click.echo(prompt, nl=False)
        for piece in stream_text(tokenizer, _counted(ids, counter)):
            click.echo(piece, nl=False)
        click.echo()
    seconds = time.perf_counter() - start
    click.echo(
        f"{counter[0]} tokens in {seconds:.2f}s ({counter[0] / max(seconds, 1e-9):,.0f} tokens/s)",
        err=True,
    )


# ---------------------------------------------------------------------------------------
# lmrs eval
# ---------------------------------------------------------------------------------------


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(), help="Run or checkpoint dir.")
@click.option("--corpus", type=click.Path(exists=True), help="Corpus folder to evaluate on.")
@click.option("--tokens", type=click.Path(), help="Token file or shard folder instead.")
@click.option("--batch-size", type=BATCH, default=16, show_default=True)
@click.option("--seq-len", type=SEQ_LEN, default=None, help="Default: as trained.")
@click.option("--max-batches", type=BATCH, default=None, help="Default: all.")
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(TRAIN_DTYPES),
    default=None,
    help="Precision (autocast) to evaluate in. Default: the one the model was trained "
    "with, so the loss matches the validation loss training reported.",
)
def eval_command(
    checkpoint: str,
    corpus: Optional[str],
    tokens: Optional[str],
    batch_size: int,
    seq_len: Optional[int],
    max_batches: Optional[int],
    device: str,
    dtype: Optional[str],
) -> None:
    """Loss, perplexity and bits per byte of a trained model on a corpus."""
    from lmrs.training.evaluation import evaluate

    if (corpus is None) == (tokens is None):
        raise click.UsageError("give exactly one of --corpus DIR or --tokens FILE")
    model, tokenizer, saved = _load_run(checkpoint, device)
    seq_len = seq_len or int(saved.train_config.get("seq_len", model.config.max_seq_len))
    if seq_len > model.config.max_seq_len:
        raise InputError(
            f"--seq-len {seq_len} exceeds the model's context of {model.config.max_seq_len}"
        )
    with tempfile.TemporaryDirectory(prefix="lmrs-eval-") as scratch:
        token_path = Path(scratch) / "tokens.bin" if tokens is None else Path(tokens)
        with _naming_the_corpus(token_path if tokens is None else None, corpus):
            if tokens is None:
                _encode_corpus(tokenizer, corpus, token_path, show_progress=False)
            dataset = _open_dataset(token_path, tokenizer)
            result = evaluate(
                model,
                dataset.full(),
                batches=max_batches,
                batch_size=batch_size,
                seq_len=seq_len,
                show_progress=True,
                dtype=dtype or _trained_dtype(saved.train_config),
            )
    click.echo(
        f"loss {result.loss:.4f}  perplexity {result.perplexity:.2f}  bits per byte "
        + (f"{result.bits_per_byte:.4f}" if result.bits_per_byte is not None else "n/a")
        + f"  ({result.tokens:,} tokens)"
    )


@contextlib.contextmanager
def _naming_the_corpus(scratch_tokens: Optional[Path], corpus: Optional[str]) -> Iterator[None]:
    """Errors about the tokens ``lmrs eval`` encoded into a temporary file name the corpus
    they came from instead (the user never asked for that file)."""
    try:
        yield
    except (LmrsError, ValueError) as e:  # the Rust TokenizerError is a ValueError
        scratch = str(scratch_tokens) if scratch_tokens is not None else None
        text = str(e)
        if scratch is None or scratch not in text:
            raise
        text = text.replace(f"; {scratch} not written", "").replace(scratch, str(corpus))
        raise InputError(text) from e


def _trained_dtype(train_config: dict[str, Any]) -> str:
    """The ``--dtype`` a checkpoint was trained with ("auto" when it does not say)."""
    dtype = train_config.get("dtype", "auto")
    return dtype if dtype in TRAIN_DTYPES else "auto"


# ---------------------------------------------------------------------------------------
# lmrs plot
# ---------------------------------------------------------------------------------------


@click.command("plot")
@click.argument("run_dir", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None, help="Default: RUN_DIR/loss.png")
def plot_command(run_dir: str, output: Optional[str]) -> None:
    """Draw a run's train and validation loss curves into a PNG."""
    from lmrs.training.plot import plot_metrics

    path = plot_metrics(run_dir, output)
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------------------------
# lmrs quickstart
# ---------------------------------------------------------------------------------------


def stdlib_python_files(max_bytes: int = QUICKSTART_CORPUS_BYTES) -> list[str]:
    """The standard library's own .py files (no site-packages, no tests), up to max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    # tests, third-party code, and generated tables (codecs' hex maps, pydoc's topic dump)
    skip = {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "encodings",
        "pydoc_data",
    }
    files: list[str] = []
    total = 0
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = Path(directory) / name
            size = path.stat().st_size
            if size == 0 or size > QUICKSTART_MAX_FILE_BYTES:
                continue
            if total + size > max_bytes:
                return files
            files.append(str(path))
            total += size
    return files


@click.command("quickstart")
@click.option("--out", default="runs/quickstart", show_default=True, type=click.Path())
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Training time budget.",
)
@click.option(
    "--corpus",
    type=click.Path(exists=True),
    help="A folder of text files or a record file (.jsonl, .parquet, ...). "
    "Default: Python's stdlib sources.",
)
@click.option("--text-field", default="text", show_default=True, help="Text field of record files.")
@click.option("--vocab-size", type=VOCAB_SIZE, default=QUICKSTART_VOCAB, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def quickstart_command(
    out: str,
    minutes: float,
    corpus: Optional[str],
    text_field: str,
    vocab_size: int,
    device: str,
    quiet: bool,
) -> None:
    """Corpus → vocab → a few minutes of training → samples, with nothing to download."""
    from lmrs.data.encode import train_tokenizer
    from lmrs.model.gpt import create_small_model
    from lmrs.training.trainer import TrainConfig, train

    out_dir = Path(out)
    source: Any = corpus if corpus else [Path(f) for f in stdlib_python_files()]
    if not source:
        raise InputError("no corpus: the standard library's .py files were not found")
    label = corpus or f"{len(source)} .py files of the Python standard library"
    click.echo(f"1/4 vocab: {vocab_size} tokens from {label}")
    _check_out_dir(out_dir)
    click.get_current_context().with_resource(run_lock(out_dir, "lmrs quickstart"))
    tokenizer = train_tokenizer(source, vocab_size, text_field=text_field, show_progress=not quiet)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    click.echo(f"2/4 encoding into {out_dir / 'tokens.bin'}")
    _encode_corpus(
        tokenizer, source, out_dir / "tokens.bin", show_progress=not quiet, text_field=text_field
    )
    dataset = _open_dataset(out_dir / "tokens.bin", tokenizer)
    click.echo(f"3/4 training the small model for {minutes:g} min on {dataset.num_tokens:,} tokens")
    # the `lmrs train` recipe (modern architecture, Muon) at the small size
    model = create_small_model(tokenizer.vocab_size, max_seq_len=256, arch=DEFAULT_ARCH)
    config = TrainConfig(
        # small batches: on a CPU budget, more updates beat bigger ones
        batch_size=16,
        seq_len=128,
        time_budget_s=minutes * 60,
        warmup_steps=20,
        eval_every=100,
        eval_batches=8,
        out_dir=str(out_dir),
        device=device,
        show_progress=not quiet,
    )
    result = train(model, dataset, config, tokenizer=tokenizer)
    if quiet:
        click.echo(result.summary())
    click.echo("4/4 samples:")
    from lmrs.model.generation import stream_generate

    model.eval()
    for index, prompt in enumerate(QUICKSTART_PROMPTS):
        click.echo(f"--- {prompt!r} ---")
        click.echo(prompt, nl=False)
        ids = stream_generate(
            model,
            tokenizer.encode(prompt),
            max_length=80,
            temperature=0.8,
            top_k=50,
            stop_tokens=[tokenizer.eot_id],
            seed=index,
        )
        for piece in stream_text(tokenizer, ids):
            click.echo(piece, nl=False)
        click.echo()
    click.echo(
        f"run in {out_dir}: lmrs sample --checkpoint {out} --prompt 'def ' ; lmrs plot {out}"
    )


def register_model_commands(group: click.Group) -> None:
    """Add this module's commands to the `lmrs` group."""
    for command in (train_command, sample_command, eval_command, plot_command, quickstart_command):
        group.add_command(command)
