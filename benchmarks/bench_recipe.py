"""Ablation of the training recipe: each element switched off alone, held-out bits per byte.

The recipe is the "modern" architecture of ``lmrs.options.ARCHITECTURES`` trained with Muon.
Every element where it differs from the "gpt2" architecture (rotary → learned positions,
RMSNorm → LayerNorm, QK-norm off, ReLU² → GELU, untied → tied head, soft-cap off,
zero-initialised projections off, ...) is switched back alone, and Muon → AdamW, each run
for the same wall-clock budget on the same data; the table says what each element is worth.
The rows follow ARCHITECTURES, so a change to the recipe changes the ablation with it.

    python benchmarks/bench_recipe.py --corpus /work/shared/corpora/shakespeare
    python benchmarks/bench_recipe.py --budget 5 --eval-batches 2 --only recipe,qk_norm

The corpus is split by whole files, the tokenizer (5,000 tokens by default) is trained on
the training files only (``bench_model.held_out_splits``). Run it on an idle machine: a
busy CPU trains fewer steps in the budget and the numbers mean less.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_model import QualityOptions, cpu_description, held_out_splits, load_average

from lmrs import evaluate, train
from lmrs.model.gpt import create_model
from lmrs.options import ARCHITECTURES, PRESETS, TRAIN_DEFAULTS
from lmrs.precision import native_bf16


@dataclass
class RecipeOptions:
    corpus: Path
    budget_s: float = 600.0  # per run
    vocab_size: int = 5000
    size: str = "full"
    arch: str = "modern"  # the recipe
    baseline: str = "gpt2"  # what each element is switched back to
    optimizer: str = "muon"
    learning_rate: float = 4e-3  # Muon's (docs/recipe.md: measured with rope)
    adamw_learning_rate: float = 2e-3  # for the Muon → AdamW row (the best measured for AdamW)
    batch_size: int = 16
    seq_len: int = 128
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # the recipe's (TrainConfig's) default
    weight_decay: float = 0.1
    eval_batches: int = 100
    held_out: tuple[str, ...] = QualityOptions.held_out
    only: tuple[str, ...] = ()  # variant keys to run ("recipe", field names, "optimizer")
    # extra rows: the recipe with one field set to a value that is neither the recipe's nor
    # the baseline's (e.g. ("mlp", "swiglu")); their key is "FIELD=VALUE"
    tries: tuple[tuple[str, Any], ...] = ()
    seed: int = 0


@dataclass
class Variant:
    key: str  # "recipe", the ModelConfig field switched back, or "optimizer"
    label: str
    model_options: dict[str, Any]
    optimizer: str
    learning_rate: float


def variants(opts: RecipeOptions) -> list[Variant]:
    """The recipe, then one run per element switched back to the baseline's value."""
    recipe, baseline = ARCHITECTURES[opts.arch], ARCHITECTURES[opts.baseline]
    rows = [Variant("recipe", f"recipe ({opts.arch}, {opts.optimizer})", dict(recipe),
                    opts.optimizer, opts.learning_rate)]  # fmt: skip
    for key, value in recipe.items():
        if baseline.get(key, value) == value:
            continue
        options = {**recipe, key: baseline[key]}
        if options["norm"] == "layernorm":
            options["norm_scale"] = True  # LayerNorm has its gain whatever the recipe says
        label = f"{key}: {value} -> {baseline[key]}"
        rows.append(Variant(key, label, options, opts.optimizer, opts.learning_rate))
    for key, value in opts.tries:
        if key not in recipe:
            raise SystemExit(f"--try: {key!r} is not an architecture field; have {list(recipe)}")
        options = {**recipe, key: value}
        label = f"{key}: {recipe[key]} -> {value} (tried)"
        rows.append(Variant(f"{key}={value}", label, options, opts.optimizer, opts.learning_rate))
    if opts.optimizer != "adamw":
        label = f"optimizer: {opts.optimizer} -> adamw (lr {opts.adamw_learning_rate:g})"
        rows.append(Variant("optimizer", label, dict(recipe), "adamw", opts.adamw_learning_rate))
    if opts.only:
        unknown = set(opts.only) - {row.key for row in rows}
        if unknown:
            raise SystemExit(f"--only: no variant {sorted(unknown)}; have {[r.key for r in rows]}")
        rows = [row for row in rows if row.key in opts.only]
    return rows


def run(opts: RecipeOptions) -> None:
    print(cpu_description())
    print(f"load average at the start: {load_average()} (1, 5, 15 min; {os.cpu_count()} cores)")
    tokenizer, train_split, val_split = held_out_splits(opts.corpus, opts.held_out, opts.vocab_size)
    shape = {**PRESETS[opts.size], "max_seq_len": max(512, opts.seq_len)}
    results: list[tuple[Variant, Any, Any]] = []
    for variant in variants(opts):
        model = create_model(
            tokenizer.vocab_size, **shape, seed=opts.seed, **variant.model_options,
        )  # fmt: skip
        print(f"training {variant.label} for {opts.budget_s:g} s")
        start = time.perf_counter()
        outcome = train(
            model,
            train_split,
            optimizer=variant.optimizer,
            learning_rate=variant.learning_rate,
            batch_size=opts.batch_size,
            seq_len=opts.seq_len,
            time_budget_s=opts.budget_s,
            warmup_steps=opts.warmup_steps,
            min_lr_ratio=opts.min_lr_ratio,
            weight_decay=opts.weight_decay,
            eval_every=0,
            eval_batches=1,
            seed=opts.seed,
            device="cpu",
            show_progress=False,
        )
        seconds = time.perf_counter() - start
        scores = evaluate(
            model, val_split, batches=opts.eval_batches, batch_size=32, seq_len=opts.seq_len
        )
        results.append((variant, outcome, scores))
        print(
            f"  {outcome.steps} steps, {outcome.tokens:,} tokens, {outcome.tokens_per_s:,.0f} "
            f"tokens/s, {seconds:.0f} s; held-out {scores.summary()}"
        )

    precision = "bf16 autocast" if native_bf16(torch.device("cpu")) else "float32"
    recipe_bpb = next((s.bits_per_byte for v, _, s in results if v.key == "recipe"), None)
    print()
    print(
        f"{'switched off alone':<46}{'steps':>8}{'tokens/s':>10}{'bits/byte':>11}{'vs recipe':>11}"
    )
    for variant, outcome, scores in results:
        bpb = scores.bits_per_byte if scores.bits_per_byte is not None else float("nan")
        delta = f"{bpb - recipe_bpb:+.3f}" if recipe_bpb is not None else "n/a"
        print(
            f"{variant.label:<46}{outcome.steps:>8}{outcome.tokens_per_s:>10,.0f}"
            f"{bpb:>11.3f}{delta:>11}"
        )
    print(
        f"{opts.size} shape {PRESETS[opts.size]}, vocab {tokenizer.vocab_size}, batch "
        f"{opts.batch_size}x{opts.seq_len}, {opts.warmup_steps} warmup steps, "
        f"{TRAIN_DEFAULTS.decay} decay over the last {TRAIN_DEFAULTS.cooldown_frac:.0%} to "
        f"{opts.min_lr_ratio:.0%}, weight decay {opts.weight_decay:g}, precision {precision}, "
        f"dropout 0, {opts.budget_s:g} s per run, held-out bits per byte over "
        f"{opts.eval_batches} batches of 32x{opts.seq_len}"
    )
    print(f"load average at the end: {load_average()} (1, 5, 15 min; {os.cpu_count()} cores)")


def parse_try(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` → (field, value): JSON values (``true``, ``null``, ``2.5``) or a bare
    word as a string (``swiglu``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--try: expected FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def main() -> None:
    defaults = RecipeOptions(corpus=Path())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/corpora/shakespeare"))
    parser.add_argument("--budget", type=float, default=defaults.budget_s, help="seconds per run")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--size", choices=sorted(PRESETS), default=defaults.size)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch)
    parser.add_argument("--baseline", choices=sorted(ARCHITECTURES), default=defaults.baseline)
    parser.add_argument("--optimizer", choices=("muon", "adamw"), default=defaults.optimizer)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--adamw-lr", type=float, default=defaults.adamw_learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio)
    parser.add_argument("--eval-batches", type=int, default=defaults.eval_batches)
    parser.add_argument(
        "--held-out",
        default=",".join(defaults.held_out),
        help="file-name prefixes held out whole (default: four Shakespeare plays)",
    )
    parser.add_argument("--only", default="", help="comma list of variant keys, e.g. recipe,mlp")
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an extra row: the recipe with FIELD=VALUE (JSON value or a bare word), repeatable",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    run(
        RecipeOptions(
            corpus=args.corpus,
            budget_s=args.budget,
            vocab_size=args.vocab_size,
            size=args.size,
            arch=args.arch,
            baseline=args.baseline,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            adamw_learning_rate=args.adamw_lr,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            warmup_steps=args.warmup_steps,
            min_lr_ratio=args.min_lr_ratio,
            eval_batches=args.eval_batches,
            held_out=tuple(p.lower() for p in args.held_out.split(",") if p),
            only=tuple(k for k in args.only.split(",") if k),
            tries=tuple(parse_try(text) for text in args.tries),
            seed=args.seed,
        )
    )


if __name__ == "__main__":
    main()
