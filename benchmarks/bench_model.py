"""lmrs GPT vs Hugging Face GPT-2 of the same shape, on this machine.

Speed (default): training tokens/s with AdamW in fp32 (and % of the measured fp32 matmul
peak), and sampling tokens/s at batch 1 and 16 (``--sampling-only``: sampling alone).
Quality (``--quality``): both models trained for the same wall-clock budget on a corpus
directory, held-out bits per byte; ``--seeds 0,1,2`` runs each model once per seed and
prints the mean and range (one seed's run moves by a few hundredths on a small corpus). The
seed orders the training windows and sets dropout (lmrs: ``lmrs train --seed``, which also
picks its validation documents; its initial weights stay at ModelConfig.seed 0, GPT-2's are
drawn unseeded).

    python benchmarks/bench_model.py
    python benchmarks/bench_model.py --sampling-only
    python benchmarks/bench_model.py --quality --corpus /work/shared/corpora/shakespeare
    python benchmarks/bench_model.py --skip-speed --quality --corpus stdlib --seeds 0,1

The CPU's model and the SIMD features the Rust decoding engine uses are printed first;
every sampling row names its engine (and the Rust kernel). The Rust engine's lower kernels
are measured too, each in a subprocess with ``LMRS_CPU`` set (it is read once per process):
every kernel this CPU runs, e.g. avx2 and portable on an AVX2-only CPU, avx512bf16, avx2
and portable on one with AVX512-BF16.

Timings take the best of ``--repeats`` interleaved runs, so load from other processes on a
shared machine hurts both sides alike and shows up as noise rather than bias.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import best_of, cpu_description  # noqa: E402

from lmrs import _lmrs  # noqa: E402
from lmrs.model.decode import resolve_dtype, resolve_engine
from lmrs.model.generation import generate
from lmrs.model.gpt import create_model
from lmrs.precision import native_bf16
from lmrs.training.trainer import autocast_context

# the shape both sides use: GPT-2 vocabulary replaced by a 5,000-token one
SHAPE = dict(embed_dim=256, num_heads=8, num_layers=6, ff_dim=1024, max_seq_len=512)
VOCAB = 5000


@dataclass
class SpeedOptions:
    batch_size: int = 32
    seq_len: int = 128
    steps: int = 5
    warmup: int = 2
    repeats: int = 3
    prompt_len: int = 16
    new_tokens: int = 100
    device: str = "cpu"
    train: bool = True  # False: the sampling part alone


KERNELS = ("avx512bf16", "avx2", "portable")  # the Rust decoding kernels, best first


def engine_label(device: str, dtype: str, engine: str = "auto") -> str:
    """What a sampling run with these arguments runs on: "rust avx2", "torch", ..."""
    resolved_dtype = resolve_dtype(dtype, torch.device(device))
    resolved = resolve_engine(engine, torch.device(device), resolved_dtype)
    return f"rust {_lmrs.decode_kernel()}" if resolved == "rust" else "torch"


def hf_gpt2(vocab_size: int, dropout: float | None = None) -> nn.Module:
    """Stock GPT2LMHeadModel of our shape (dropout 0.1 everywhere unless given)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    options: dict[str, Any] = {}
    if dropout is not None:
        options = dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=SHAPE["max_seq_len"],
        n_embd=SHAPE["embed_dim"],
        n_head=SHAPE["num_heads"],
        n_layer=SHAPE["num_layers"],
        n_inner=SHAPE["ff_dim"],
        bos_token_id=0,
        eos_token_id=0,
        **options,
    )
    return GPT2LMHeadModel(config)


class HFAdapter(nn.Module):
    """GPT-2 behind lmrs's ``compute_loss(ids, targets)`` so lmrs.train/evaluate can run it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits

    def compute_loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(ids).flatten(0, 1), targets.flatten())


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best measured fp32 FLOP/s of one large square matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def train_tokens_per_s(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    opts: SpeedOptions,
    precision: str = "float32",
) -> float:
    """Tokens/s over ``opts.steps`` AdamW steps after ``opts.warmup`` untimed ones.

    ``precision`` as lmrs.train's ``dtype``: "auto" is what lmrs.train does by default
    (bfloat16 autocast where the device has native bfloat16), "bfloat16" always autocasts.
    """
    autocast = autocast_context(torch.device(opts.device), precision)
    vocab = VOCAB
    ids = torch.randint(0, vocab, (opts.batch_size, opts.seq_len), device=opts.device)
    targets = torch.randint(0, vocab, (opts.batch_size, opts.seq_len), device=opts.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    start = 0.0
    for step in range(opts.warmup + opts.steps):
        if step == opts.warmup:
            _sync(opts.device)
            start = time.perf_counter()
        with autocast():
            loss = loss_fn(model, ids, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(opts.device)
    return opts.batch_size * opts.seq_len * opts.steps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours_loss(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return model.compute_loss(ids, targets)


def hf_loss(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # the idiomatic HF training call: labels = inputs, shifted inside the model
    return model(input_ids=ids, labels=ids).loss


def generation_tokens_per_s(sample: Callable[[], Any], new_tokens: int, batch: int) -> float:
    start = time.perf_counter()
    sample()
    return batch * new_tokens / (time.perf_counter() - start)


LABEL = 58  # width of a row's label


def row(label: str, ours: float, theirs: float, unit: str) -> str:
    return f"{label:<{LABEL}} {ours:>12,.0f} {theirs:>12,.0f} {ours / theirs:>7.2f}x  {unit}"


def load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def forced_kernels(device: str) -> list[str]:
    """The Rust kernels at or below this process's one (LMRS_CPU can only go lower)."""
    if device != "cpu":
        return []
    return list(KERNELS[KERNELS.index(_lmrs.decode_kernel()) :])


def sample_in_subprocess(kernel: str, workdir: Path, opts: SpeedOptions) -> dict[int, float]:
    """One timed bfloat16 Rust-engine sampling run per batch size in a fresh process with
    ``LMRS_CPU=kernel`` (the variable is read once per process), on the weights and
    prompts saved in ``workdir``."""
    command = [
        sys.executable,
        __file__,
        "--sample-worker",
        kernel,
        "--worker-dir",
        str(workdir),
        "--new-tokens",
        str(opts.new_tokens),
    ]
    done = subprocess.run(
        command, env=dict(os.environ, LMRS_CPU=kernel), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"LMRS_CPU={kernel} sampling worker failed:\n{done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(b): tokens_per_s for b, tokens_per_s in answer.items()}


def sample_worker(kernel: str, workdir: Path, new_tokens: int) -> None:
    """``--sample-worker``: prints {batch: tokens/s} for the Rust engine with ``kernel``."""
    got = _lmrs.decode_kernel()
    if got != kernel:
        raise SystemExit(f"LMRS_CPU={kernel} gave the {got} kernel")
    model = create_model(VOCAB, **SHAPE)
    model.load_state_dict(torch.load(workdir / "weights.pt", weights_only=True))
    prompts = json.loads((workdir / "prompts.json").read_text())

    def run(batch: int, max_length: int) -> Any:
        return generate(
            model,
            prompts[str(batch)],
            max_length=max_length,
            temperature=0.8,
            top_k=50,
            seed=0,
            dtype="bfloat16",
            engine="rust",
        )

    run(1, 2)  # builds the Rust model (once per process; the main process reuses its own)
    result = {
        b: generation_tokens_per_s(lambda b=b: run(b, new_tokens), new_tokens, b) for b in (1, 16)
    }
    print(json.dumps(result))


def speed_section(opts: SpeedOptions) -> None:
    device = opts.device
    print(cpu_description())
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"lmrs decode kernel here {_lmrs.decode_kernel()}; load average {load_average()}"
    )
    measure_peak = matmul_peak_flops if device == "cpu" else _cuda_peak

    ours_default = create_model(VOCAB, **SHAPE).to(device)
    theirs_default = hf_gpt2(VOCAB).to(device)
    flops_per_token = ours_default.estimate_flops_per_token(opts.seq_len)
    theirs_params = sum(p.numel() for p in theirs_default.parameters())
    print(
        f"shape: {SHAPE}, vocab {VOCAB}; parameters ours {ours_default.num_parameters():,}, "
        f"GPT-2 {theirs_params:,}; {flops_per_token / 1e6:.1f} MFLOP/token (6N + attention)"
    )
    train: dict[str, float] = {}
    if opts.train:
        ours_nodrop = create_model(VOCAB, **SHAPE, dropout_rate=0.0).to(device)
        theirs_nodrop = hf_gpt2(VOCAB, dropout=0.0).to(device)
        train = best_of(
            opts.repeats,
            {
                "ours": lambda: train_tokens_per_s(ours_default, ours_loss, opts, "auto"),
                "gpt2": lambda: train_tokens_per_s(theirs_default, hf_loss, opts),
                "ours32": lambda: train_tokens_per_s(ours_default, ours_loss, opts),
                "ours0": lambda: train_tokens_per_s(ours_nodrop, ours_loss, opts),
                "gpt20": lambda: train_tokens_per_s(theirs_nodrop, hf_loss, opts),
                "oursbf": lambda: train_tokens_per_s(ours_default, ours_loss, opts, "bfloat16"),
                "gpt2bf": lambda: train_tokens_per_s(theirs_default, hf_loss, opts, "bfloat16"),
                # timed between the runs too: on a shared machine the best one is the real peak
                "peak": measure_peak,
            },
        )
        peak = train["peak"]
        print(f"measured fp32 matmul peak: {peak / 1e9:,.0f} GFLOP/s (best of {opts.repeats})")

    batch_prompts = {b: torch.randint(0, VOCAB, (b, opts.prompt_len)).tolist() for b in (1, 16)}

    theirs_bf16 = hf_gpt2(VOCAB).to(device=device, dtype=torch.bfloat16)
    theirs_bf16.load_state_dict(theirs_default.state_dict())

    def ours_sample(batch: int, dtype: str, engine: str = "auto") -> float:
        prompts = batch_prompts[batch]
        return generation_tokens_per_s(
            lambda: generate(
                ours_default,
                prompts,
                max_length=opts.new_tokens,
                temperature=0.8,
                top_k=50,
                seed=0,
                dtype=dtype,
                engine=engine,
            ),
            opts.new_tokens,
            batch,
        )

    def theirs_sample(batch: int, model: nn.Module) -> float:
        ids = torch.tensor(batch_prompts[batch], device=device)
        model.eval()

        def run() -> Any:
            with torch.inference_mode():
                return model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    top_k=50,
                    temperature=0.8,
                    max_new_tokens=opts.new_tokens,
                    min_new_tokens=opts.new_tokens,
                    pad_token_id=0,
                )

        return generation_tokens_per_s(run, opts.new_tokens, batch)

    auto = resolve_dtype("auto", torch.device(device))
    runs: dict[str, Callable[[], float]] = {}
    for b in (1, 16):
        runs[f"ours{b}"] = lambda b=b: ours_sample(b, "auto")
        runs[f"ours{b}-fp32"] = lambda b=b: ours_sample(b, "float32")
        runs[f"ours{b}-bf16"] = lambda b=b: ours_sample(b, "bfloat16")
        runs[f"ours{b}-bf16-torch"] = lambda b=b: ours_sample(b, "bfloat16", "torch")
        runs[f"gpt2{b}"] = lambda b=b: theirs_sample(b, theirs_default)
        runs[f"gpt2{b}-bf16"] = lambda b=b: theirs_sample(b, theirs_bf16)
    # the Rust engine with each kernel, in subprocesses on the same weights and prompts,
    # interleaved with the runs above
    kernels = forced_kernels(device)
    workdir = Path(tempfile.mkdtemp(prefix="lmrs-bench-sample-"))
    torch.save(ours_default.state_dict(), workdir / "weights.pt")
    (workdir / "prompts.json").write_text(json.dumps(batch_prompts))
    sample = {name: 0.0 for name in runs}
    for _ in range(opts.repeats):
        for name, run in runs.items():
            sample[name] = max(sample[name], run())
        for kernel in kernels:
            for b, tokens_per_s in sample_in_subprocess(kernel, workdir, opts).items():
                name = f"ours{b}-{kernel}"
                sample[name] = max(sample.get(name, 0.0), tokens_per_s)

    b, t = opts.batch_size, opts.seq_len
    print()
    print(f"{'':<{LABEL}} {'lmrs':>12} {'HF GPT-2':>12} {'ratio':>8}")
    if opts.train:

        def mfu(tokens_per_s: float) -> str:
            return f"{100 * tokens_per_s * flops_per_token / peak:.0f}%"

        print(row(f"train tok/s {b}x{t}, defaults", train["ours"], train["gpt2"], "tokens/s"))
        print(row("train tok/s, both float32", train["ours32"], train["gpt2"], ""))
        print(
            f"{'  % of fp32 matmul peak':<{LABEL}} {mfu(train['ours32']):>12} "
            f"{mfu(train['gpt2']):>12}"
        )
        print(row("train tok/s, both float32, dropout 0", train["ours0"], train["gpt20"], ""))
        print(row("train tok/s, both bfloat16 autocast", train["oursbf"], train["gpt2bf"], ""))
    for b in (1, 16):
        label = f"sample tok/s, batch {b}"
        gpt2, gpt2_bf16 = sample[f"gpt2{b}"], sample[f"gpt2{b}-bf16"]
        rows = [
            (f"defaults [{engine_label(device, 'auto')}]", sample[f"ours{b}"], gpt2, "tokens/s"),
            (f"both float32 [{engine_label(device, 'float32')}]", sample[f"ours{b}-fp32"], gpt2),
            (
                f"both bfloat16 [{engine_label(device, 'bfloat16')}]",
                sample[f"ours{b}-bf16"],
                gpt2_bf16,
            ),
            ("both bfloat16 [torch]", sample[f"ours{b}-bf16-torch"], gpt2_bf16),
        ]
        for kernel in kernels:
            # against GPT-2 in float32, its default and its faster dtype on CPUs without
            # native bfloat16
            rows.append((f"bfloat16 [rust, LMRS_CPU={kernel}]", sample[f"ours{b}-{kernel}"], gpt2))
        for name, ours, theirs, *unit in rows:
            print(row(f"{label}, {name}", ours, theirs, unit[0] if unit else ""))
    if opts.train:
        train_auto = "bfloat16 autocast" if native_bf16(torch.device(device)) else "float32"
        print(
            f"defaults: lmrs trains in {train_auto} here, dropout 0.1 on embeddings/residuals, "
            "none on attention weights; GPT-2 float32, dropout 0.1 on all three."
        )
    print(
        f"sampling: {opts.new_tokens} new tokens after a {opts.prompt_len}-token prompt, top-k 50, "
        f"temperature 0.8; lmrs default dtype here: {str(auto).replace('torch.', '')}, "
        f"engine {engine_label(device, 'auto')}; GPT-2 default: float32. [engine kernel] per "
        f"row; LMRS_CPU rows: a subprocess each, compared with GPT-2 float32."
    )
    print(f"load average at the end: {load_average()} (1, 5, 15 min; {os.cpu_count()} cores)")


def _cuda_peak(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda")
    a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    torch.cuda.synchronize()
    return 5 * 2 * size**3 / (time.perf_counter() - start)


@dataclass
class QualityOptions:
    corpus: str  # a folder of text files, or "stdlib" (the files `lmrs quickstart` reads)
    budget_minutes: float = 10.0
    vocab_size: int = 5000
    # GPT-2's settings: the best of the previous sessions' sweep for it (AdamW, lr 2e-3,
    # batch 16 x 128, 50 warmup steps, cosine to 10%)
    batch_size: int = 16
    seq_len: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    # lmrs runs `lmrs train` with the tokens, tokenizer, output folder and budget and
    # nothing else (its defaults); these extra flags are for tuning runs only
    lmrs_args: tuple[str, ...] = ()
    # titles held out whole: every file whose name starts with one of these (the corpus has
    # most plays twice, a modern and a First Folio spelling, so a split by file would leak)
    held_out: tuple[str, ...] = ("macbeth", "othello", "twel", "julius_caesar")
    eval_batches: int = 100
    # one run per model and seed; the spread between seeds on stdlib is ~0.035 bits per byte
    seeds: tuple[int, ...] = (0,)
    models: tuple[str, ...] = ("lmrs", "gpt2")  # "lmrs" alone: tuning runs


@dataclass
class HeldOut:
    """A corpus split by whole files, encoded with a tokenizer trained on the train files."""

    workdir: Path
    tokenizer: Any
    tokenizer_path: Path
    train_path: Path
    train_split: Any
    val_split: Any


def _corpus_files(corpus: str, held_out: tuple[str, ...]) -> dict[str, list[tuple[str, Path]]]:
    """(link name, file) per part. ``stdlib``: every tenth module of the standard library
    (in path order) is held out; a folder: the files whose names start with `held_out`."""
    parts: dict[str, list[tuple[str, Path]]] = {"train": [], "heldout": []}
    if corpus == "stdlib":
        from lmrs.cli.model import stdlib_python_files

        files = sorted(Path(f) for f in stdlib_python_files())
        root = Path(os.path.commonpath([str(f) for f in files]))
        for index, path in enumerate(files):
            name = "__".join(path.relative_to(root).parts)
            parts["heldout" if index % 10 == 0 else "train"].append((name, path))
        return parts
    for path in sorted(Path(corpus).iterdir()):
        part = "heldout" if path.name.lower().startswith(held_out) else "train"
        parts[part].append((path.name, path))
    if not parts["heldout"]:
        raise SystemExit(f"no file in {corpus} starts with any of {held_out}")
    return parts


def held_out_files(corpus: str, held_out: tuple[str, ...], vocab_size: int) -> HeldOut:
    """The corpus split by whole files; the tokenizer never sees held-out text."""
    from lmrs import TokenDataset, Tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="lmrs-bench-"))
    splits = {}
    files = _corpus_files(corpus, held_out)
    for part, members in files.items():
        (workdir / part).mkdir()
        for name, path in members:
            (workdir / part / name).symlink_to(path.resolve())
    tokenizer = Tokenizer.train(workdir / "train", vocab_size)
    tokenizer_path = workdir / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    for part in files:
        tokenizer.encode_files(workdir / part, workdir / f"{part}.bin")
        splits[part] = TokenDataset(workdir / f"{part}.bin", tokenizer).full()
    held_names = [name for name, _ in files["heldout"]]
    shown = ", ".join(held_names[:8]) + (
        f" and {len(held_names) - 8} more" if len(held_names) > 8 else ""
    )
    print(
        f"corpus {corpus}: vocab {tokenizer.vocab_size} trained on the training files; "
        f"train {splits['train']}; held out {splits['heldout']}: {shown}"
    )
    return HeldOut(
        workdir, tokenizer, tokenizer_path, workdir / "train.bin", splits["train"],
        splits["heldout"],
    )  # fmt: skip


def held_out_splits(corpus: Path, held_out: tuple[str, ...], vocab_size: int) -> tuple[Any, ...]:
    """(tokenizer, train split, held-out split) of :func:`held_out_files`."""
    data = held_out_files(str(corpus), held_out, vocab_size)
    return data.tokenizer, data.train_split, data.val_split


def train_lmrs_defaults(
    opts: QualityOptions, data: HeldOut, budget_s: float, seed: int = 0
) -> tuple[Any, str]:
    """`lmrs train` as a user types it (plus `opts.lmrs_args`, and `--seed` past the first
    seed); (model, description)."""
    from lmrs.checkpoint.store import load_model

    out = data.workdir / f"run-{len(list(data.workdir.glob('run-*')))}"
    seed_args = ["--seed", str(seed)] if seed else []
    command = [
        sys.executable, "-m", "lmrs", "train", "--tokens", str(data.train_path),
        "--tokenizer", str(data.tokenizer_path), "--out", str(out),
        "--time-budget", f"{budget_s:g}s", "--quiet", *seed_args, *opts.lmrs_args,
    ]  # fmt: skip
    print("  $ lmrs " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True)
    model, checkpoint = load_model(out)
    config, shape = checkpoint.train_config, checkpoint.model_config
    description = (
        f"{config.get('optimizer')} lr {config.get('learning_rate'):g}, batch "
        f"{config.get('batch_size')}x{config.get('seq_len')}, {checkpoint.step} steps; "
        f"model {shape.get('embed_dim')} dim x {shape.get('num_layers')} layers, "
        f"ffn {shape.get('ff_dim')}, {shape.get('position')}, {shape.get('norm')}, "
        f"mlp {shape.get('mlp')}"
    )
    return model, description


def train_gpt2(opts: QualityOptions, data: HeldOut, budget_s: float, seed: int) -> tuple[Any, str]:
    """HF GPT-2 of the full shape in lmrs's loop with its best settings; (model, description)."""
    from lmrs import train

    gpt2 = HFAdapter(hf_gpt2(data.tokenizer.vocab_size))  # stock dropout 0.1
    outcome = train(
        gpt2, data.train_split, optimizer="adamw", batch_size=opts.batch_size,
        seq_len=opts.seq_len, time_budget_s=budget_s, learning_rate=opts.learning_rate,
        warmup_steps=opts.warmup_steps, weight_decay=opts.weight_decay,
        min_lr_ratio=opts.min_lr_ratio, decay="cosine", cooldown_frac=1.0, eval_every=0,
        seed=seed, device="cpu", show_progress=False,
    )  # fmt: skip
    description = (
        f"adamw lr {opts.learning_rate:g}, batch {opts.batch_size}x{opts.seq_len}, "
        f"{outcome.steps} steps, {outcome.tokens_per_s:,.0f} tokens/s; full shape"
    )
    return gpt2, description


def quality_section(opts: QualityOptions) -> None:
    from lmrs import evaluate

    data = held_out_files(opts.corpus, opts.held_out, opts.vocab_size)
    budget_s = opts.budget_minutes * 60
    # --models name -> (label, trainer), in the order they train
    trainers = {"lmrs": ("lmrs", train_lmrs_defaults), "gpt2": ("HF GPT-2", train_gpt2)}
    chosen = [trainers[model] for model in trainers if model in opts.models]
    # label -> one (bits per byte, loss, description) per seed; seeds interleave the models
    # so that a drift of the host's speed falls on both
    results: dict[str, list[tuple[float, float, str]]] = {name: [] for name, _ in chosen}
    for seed in opts.seeds:
        for name, trainer in chosen:
            print(f"training {name} for {opts.budget_minutes:g} min, seed {seed}", flush=True)
            model, description = trainer(opts, data, budget_s, seed)
            scores = evaluate(
                model, data.val_split, batches=opts.eval_batches, batch_size=32,
                seq_len=opts.seq_len,
            )  # fmt: skip
            bpb = scores.bits_per_byte or float("nan")
            results[name].append((bpb, scores.loss, description))
            print(f"  {name}: {description}; held-out {scores.summary()}", flush=True)

    print()
    print(f"{'':<10}{'seed':>5}{'bits/byte':>10}{'loss':>8}  run")
    for name, runs in results.items():
        for seed, (bpb, loss, description) in zip(opts.seeds, runs):
            print(f"{name:<10}{seed:>5}{bpb:>10.3f}{loss:>8.3f}  {description}")
        if len(runs) > 1:
            bpbs = [r[0] for r in runs]
            print(
                f"{name:<10}{'mean':>5}{statistics.fmean(bpbs):>10.3f}{'':>8}  "
                f"range {min(bpbs):.3f}-{max(bpbs):.3f} over {len(bpbs)} seeds"
            )
    if len(results) == 2:
        ours, theirs = ([r[0] for r in runs] for runs in results.values())
        per_seed = ", ".join(f"{a / b:.3f}" for a, b in zip(ours, theirs))
        print(
            f"lmrs / GPT-2 bits per byte: {statistics.fmean(ours) / statistics.fmean(theirs):.3f}"
            + (f" (per seed {per_seed})" if len(ours) > 1 else "")
            + " (target <= 0.85)"
        )
    print(
        f"{opts.budget_minutes:g} min each on {opts.corpus}, held-out bits per byte over "
        f"{opts.eval_batches} batches of 32x{opts.seq_len}; lmrs: `lmrs train` defaults"
        + (f" plus {' '.join(opts.lmrs_args)}" if opts.lmrs_args else "")
        + "; GPT-2: stock dropout 0.1, warmup "
        f"{opts.warmup_steps} steps, cosine to {opts.min_lr_ratio:.0%}, weight decay "
        f"{opts.weight_decay:g}"
    )
    print(cpu_description())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing runs")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--sampling-only", action="store_true", help="speed part: sampling rows only, no training"
    )
    parser.add_argument("--new-tokens", type=int, default=100, help="sampling: new tokens")
    parser.add_argument("--sample-worker", choices=KERNELS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cuda", action="store_true", help="run the speed part on CUDA")
    parser.add_argument("--quality", action="store_true", help="also train both, compare bpb")
    parser.add_argument(
        "--corpus",
        default="/work/shared/corpora/shakespeare",
        help="quality: a folder of text files, or stdlib (what lmrs quickstart reads)",
    )
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=2e-3, help="quality: GPT-2's learning rate")
    parser.add_argument("--batch-size", type=int, default=16, help="quality: GPT-2's batch")
    parser.add_argument("--warmup-steps", type=int, default=50, help="quality: GPT-2's warmup")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="quality: cosine floor")
    parser.add_argument(
        "--lmrs-args", default="", help="quality, tuning runs only: extra `lmrs train` flags"
    )
    parser.add_argument(
        "--models", default="lmrs,gpt2", help="quality mode: lmrs,gpt2 or one of them"
    )
    parser.add_argument(
        "--seeds", default="0", help="quality: comma-separated seeds, one run per model each"
    )
    args = parser.parse_args()

    if args.sample_worker:
        sample_worker(args.sample_worker, args.worker_dir, args.new_tokens)
        return
    if not args.skip_speed:
        device = "cpu"
        if args.cuda:
            if not torch.cuda.is_available():
                raise SystemExit("--cuda: no CUDA device available")
            device = "cuda"
        speed_section(
            SpeedOptions(
                repeats=args.repeats,
                steps=args.steps,
                device=device,
                new_tokens=args.new_tokens,
                train=not args.sampling_only,
            )
        )
    models = tuple(m for m in args.models.split(",") if m)
    if not models or set(models) - {"lmrs", "gpt2"}:
        raise SystemExit(f"--models: give lmrs, gpt2 or both, got {args.models!r}")
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(",") if seed.strip())
    except ValueError:
        raise SystemExit(f"--seeds: give comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    if args.quality:
        quality_section(
            QualityOptions(
                corpus=args.corpus,
                budget_minutes=args.budget_minutes,
                learning_rate=args.lr,
                batch_size=args.batch_size,
                warmup_steps=args.warmup_steps,
                min_lr_ratio=args.min_lr_ratio,
                lmrs_args=tuple(shlex.split(args.lmrs_args)),
                models=models,
                seeds=seeds,
            )
        )


if __name__ == "__main__":
    main()
