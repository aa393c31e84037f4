"""Data-parallel training throughput: 1 process vs N processes, same global batch.

    python benchmarks/bench_distributed.py [--steps 20] [--size small] [--tokens FILE]

Each configuration runs ``lmrs.train`` in fresh processes (torchrun for N > 1; gloo on the
CPU, NCCL on CUDA), for ``--warmup`` + ``--steps`` optimizer steps of the same global batch,
and reports training tokens/s over the timed steps (from the run's metrics.jsonl), the
speed-up over one process, and the loss after the last step — which must agree across rows
(same global batches, same schedule), a check that the work was split, not changed.
On CPU the cores are shared out: 1 process uses all of them (and, for reference, 1 thread),
N processes ``cores / N`` threads each. When CUDA is available a single-GPU row is added.
Without ``--tokens`` a synthetic token file (random documents, vocab 5000) is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click
import numpy as np

THIS_FILE = Path(__file__).resolve()


@dataclass
class Row:
    label: str
    processes: int
    threads: Optional[int]
    device: str
    strategy: str
    tokens_per_s: float
    final_loss: float


def write_synthetic_tokens(path: Path, vocab_size: int = 5000, num_tokens: int = 2_000_000) -> Path:
    """Random documents per the token-file contract (uint16 + sidecar)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size - 1, size=num_tokens, dtype=np.int64)
    eot = vocab_size - 1
    tokens[rng.integers(0, num_tokens, size=num_tokens // 500)] = eot
    tokens[-1] = eot
    tokens.astype(np.uint16).tofile(path)
    sidecar = {
        "format": "lmrs-tokens",
        "version": 1,
        "dtype": "uint16",
        "num_tokens": num_tokens,
        "num_documents": int((tokens == eot).sum()),
        "vocab_size": vocab_size,
        "tokenizer_hash": "synthetic",
        "eot_id": eot,
        "num_bytes": num_tokens * 4,
    }
    Path(f"{path}.json").write_text(json.dumps(sidecar))
    return path


def run_config(
    tokens: Path,
    work: Path,
    *,
    label: str,
    processes: int,
    threads: Optional[int],
    device: str,
    strategy: str,
    options: dict[str, Any],
) -> Row:
    out_dir = work / label.replace(" ", "-")
    spec = {**options, "tokens": str(tokens), "out_dir": str(out_dir), "device": device}
    spec["strategy"] = strategy
    spec["grad_accum_steps"] = options["grad_accum_steps"] // processes
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    worker = [str(THIS_FILE), "--worker", json.dumps(spec)]
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            *worker,
        ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"{label}: failed\n{done.stderr[-3000:]}")
    records = [
        json.loads(line)
        for line in (out_dir / "metrics.jsonl").read_text().splitlines()
        if '"train_loss"' in line
    ]
    timed = [r for r in records if r["step"] > options["warmup"]]
    tokens_per_step = options["batch_size"] * options["seq_len"]
    seconds = sum(tokens_per_step / r["tokens_per_s"] for r in timed)
    return Row(
        label=label,
        processes=processes,
        threads=threads,
        device=device,
        strategy=strategy,
        tokens_per_s=len(timed) * tokens_per_step / seconds,
        final_loss=records[-1]["train_loss"],
    )


def worker(spec: dict[str, Any]) -> None:
    from lmrs.data.tokens import TokenDataset
    from lmrs.model.gpt import model_from_preset
    from lmrs.training.trainer import TrainConfig, train

    dataset = TokenDataset(spec["tokens"])
    model = model_from_preset(
        spec["size"], dataset.vocab_size, max_seq_len=spec["seq_len"], dropout_rate=0.0
    )
    config = TrainConfig(
        batch_size=spec["batch_size"],
        seq_len=spec["seq_len"],
        max_steps=spec["warmup"] + spec["steps"],
        learning_rate=1e-3,
        warmup_steps=spec["warmup"],
        grad_accum_steps=spec["grad_accum_steps"],
        eval_every=0,
        eval_batches=1,
        log_every=1,
        device=spec["device"],
        strategy=spec["strategy"],
        out_dir=spec["out_dir"],
        show_progress=False,
    )
    train(model, dataset.full(), config)


@click.command()
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--size", type=click.Choice(["small", "full"]), default="small", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Accumulation steps of the 1-process run (N processes: grad-accum / N).",
)
@click.option("--nproc", type=click.IntRange(min=2), default=2, show_default=True)
@click.option("--fsdp/--no-fsdp", default=True, help="Add an FSDP row for N processes.")
@click.option("--tokens", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--worker", "worker_spec", hidden=True, default=None)
def main(
    steps: int,
    warmup: int,
    size: str,
    batch_size: int,
    seq_len: int,
    grad_accum: int,
    nproc: int,
    fsdp: bool,
    tokens: Optional[Path],
    worker_spec: Optional[str],
) -> None:
    """Training tokens/s for 1 vs N processes (same global batch), plus 1 GPU if present."""
    if worker_spec is not None:
        worker(json.loads(worker_spec))
        return
    import torch

    if grad_accum % nproc:
        raise click.BadParameter(f"--grad-accum {grad_accum} must be a multiple of --nproc {nproc}")
    options = {
        "size": size,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "grad_accum_steps": grad_accum,
        "steps": steps,
        "warmup": warmup,
    }
    cores = os.cpu_count() or 1
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        work = Path(tmp)
        if tokens is None:
            tokens = write_synthetic_tokens(work / "tokens.bin")
        configs = [
            ("cpu 1 proc", 1, cores, "cpu", "ddp"),
            ("cpu 1 proc 1 thread", 1, 1, "cpu", "ddp"),
            (f"cpu {nproc} proc ddp", nproc, max(1, cores // nproc), "cpu", "ddp"),
        ]
        if fsdp:
            configs.append((f"cpu {nproc} proc fsdp", nproc, max(1, cores // nproc), "cpu", "fsdp"))
        if torch.cuda.is_available():
            configs.append(("cuda 1 gpu", 1, None, "cuda", "ddp"))
            if torch.cuda.device_count() >= nproc:
                configs.append((f"cuda {nproc} gpu ddp", nproc, None, "cuda", "ddp"))
        for label, processes, threads, device, strategy in configs:
            click.echo(f"running {label} ...", err=True)
            rows.append(
                run_config(
                    tokens,
                    work,
                    label=label,
                    processes=processes,
                    threads=threads,
                    device=device,
                    strategy=strategy,
                    options=options,
                )
            )

    # against the best single-process CPU figure: on a loaded machine 1 process with all
    # cores can be slower than 1 thread (oversubscribed threads), which would flatter N procs
    base = max(row.tokens_per_s for row in rows if row.processes == 1 and row.device == "cpu")
    click.echo(
        f"\nmodel {size}, global batch {batch_size} x {seq_len} tokens, {steps} timed steps "
        f"after {warmup} warm-up, {cores} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    header = (
        f"{'configuration':<22} {'threads/proc':>12} {'tokens/s':>12} {'vs best 1':>10} "
        f"{'loss':>10}"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        threads = "-" if row.threads is None else str(row.threads)
        click.echo(
            f"{row.label:<22} {threads:>12} {row.tokens_per_s:>12,.0f} "
            f"{row.tokens_per_s / base:>9.2f}x {row.final_loss:>10.5f}"
        )
    cpu_losses = [row.final_loss for row in rows if row.device == "cpu"]
    spread = max(cpu_losses) - min(cpu_losses)
    multi = rows[2]
    click.echo(
        f"{multi.label}: {multi.tokens_per_s:,.0f} tokens/s, "
        f"{multi.tokens_per_s / base:.2f}x the best single process; final-loss spread over the CPU "
        f"rows {spread:.1e} (same global batches, so it should be float noise)"
    )


if __name__ == "__main__":
    main()
