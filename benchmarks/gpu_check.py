"""The first-GPU check: every CUDA path of lmrs that has never run on a GPU, in one command.

    python benchmarks/gpu_check.py                 # on the GPU machine, about 5 minutes
    python benchmarks/gpu_check.py --smoke         # every section tiny, on the CPU (CI)
    python benchmarks/gpu_check.py --only float32,resume --out check.json

Each section runs in a process of its own under its own timeout (a hang, a CUDA error or
an NCCL abort costs that section, not the rest), and the JSON summary (``--out``, default
``gpu_check.json``) is rewritten after every section, so a run cut short still leaves what
it found. Exit code 0 when every section passed.

Sections:

- ``environment``: torch, CUDA, NCCL, the device and its compute capability, whether lmrs
  sees native bf16; the forward and backward of every attention variant (multi-head,
  grouped-query, multi-query, rotary, attention dropout) with flash attention forced.
- ``float32``: 20 training steps on the GPU against a CPU reference made first, float32
  with TF32 off (within 1e-4), TF32 (lmrs' default on CUDA) and bf16 autocast (2e-2).
- ``throughput``: the full preset at a 32k vocab, eager vs ``--compile``: steady tokens/s,
  compile seconds, peak memory, host syncs per step, MFU against the chip's bf16 peak.
- ``resume``: stop and resume in float32 with deterministic algorithms, dropout on: the
  resumed losses equal the uninterrupted run's exactly.
- ``distributed``: one-rank NCCL process groups: DDP, FSDP (accumulation, rotary
  positions, compile) and FSDP in bf16 against single-process losses; an FSDP save and
  resume that continues the uninterrupted FSDP run.
- ``eval_memory``: peak memory of the in-training evaluation at a 32k vocab (per-rank
  batch = the training micro-batch) next to a training step's.
- ``sampling``: generated tokens/s at batch 1 and 16 in bf16 and float32, and the
  decoder's logits (key/value cache) against the model's own forward.

``--smoke`` runs the same code at tiny sizes on the CPU (gloo for NCCL, the math attention
kernel for flash, torch.compile with the eager backend) in well under a minute, so the
script cannot fail for a trivial reason on its first GPU run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

THIS_FILE = Path(__file__).resolve()

# seconds each section may take: on the GPU, and in the smoke run
TIMEOUTS = {
    "environment": (90, 60),
    "float32": (150, 60),
    "throughput": (300, 90),
    "resume": (120, 60),
    "distributed": (300, 90),
    "eval_memory": (120, 60),
    "sampling": (150, 60),
}
SECTION_NAMES = tuple(TIMEOUTS)
# sections that fail on purpose (--only), to check that a crash or a hang costs only itself
SELF_TESTS = {"_crash": (5, 5), "_hang": (3, 3)}

# dense bf16 tensor-core peaks (FLOP/s), for MFU; matched against the device name
BF16_PEAKS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)

FLOAT32_TOLERANCE = 1e-4
BF16_TOLERANCE = 2e-2


@dataclass
class Settings:
    """What a section needs to know about the run."""

    smoke: bool
    workdir: Path

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu" if self.smoke else "cuda")


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def token_file(settings: Settings, vocab: int, num_tokens: int) -> Path:
    """A learnable synthetic token file (documents repeating short motifs), made once."""
    import numpy as np

    path = settings.workdir / f"tokens-{vocab}-{num_tokens}.bin"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    eot = vocab - 1
    parts, total = [], 0
    while total < num_tokens:
        motif = rng.integers(0, vocab - 1, size=int(rng.integers(3, 9)))
        doc = np.resize(motif, int(rng.integers(40, 400)))
        parts += [doc, np.array([eot])]
        total += len(doc) + 1
    tokens = np.concatenate(parts)[:num_tokens]
    tokens[-1] = eot
    tokens.astype(np.uint16 if vocab <= 65536 else np.uint32).tofile(path)
    sidecar = {
        "format": "lmrs-tokens",
        "version": 1,
        "dtype": "uint16" if vocab <= 65536 else "uint32",
        "num_tokens": int(tokens.size),
        "num_documents": int((tokens == eot).sum()),
        "vocab_size": vocab,
        "tokenizer_hash": "gpu-check-" + "0" * 54,
        "eot_id": eot,
        "num_bytes": int(tokens.size) * 3,
    }
    Path(f"{path}.json").write_text(json.dumps(sidecar))
    return path


def small_model(vocab: int, settings: Settings, **overrides: Any) -> Any:
    """The "small" preset on the GPU, a tinier one in the smoke run; no dropout."""
    from lmrs.model.gpt import create_model

    shape = (
        dict(embed_dim=32, num_heads=2, num_layers=2, ff_dim=64, max_seq_len=32)
        if settings.smoke
        else dict(embed_dim=128, num_heads=4, num_layers=2, ff_dim=512, max_seq_len=256)
    )
    return create_model(vocab, **{"dropout_rate": 0.0, **shape, **overrides})


def full_model(vocab: int, settings: Settings, **overrides: Any) -> Any:
    """The "full" preset (256 dim, 8 heads, 6 layers) at 512 positions; tiny when smoking."""
    if settings.smoke:
        return small_model(vocab, settings, **overrides)
    from lmrs.model.gpt import model_from_preset

    return model_from_preset(
        "full", vocab, **{"max_seq_len": 512, "dropout_rate": 0.0, **overrides}
    )


def ladder_model(vocab: int, name: str, **overrides: Any) -> Any:
    """A shape of the sizing ladder (lmrs.training.sizing.LADDER) at 512 positions, no dropout."""
    from lmrs.model.gpt import create_model
    from lmrs.training.sizing import LADDER

    shape = next(s for s in LADDER if s.name == name)
    fields = {**shape.model_fields(), "max_seq_len": 512, "dropout_rate": 0.0, **overrides}
    return create_model(vocab, **fields)


def train_run(model: Any, tokens: Path, settings: Settings, **config: Any) -> Any:
    """``lmrs.train`` on a token file, quiet, on the check's device unless told."""
    from lmrs.data.tokens import TokenDataset
    from lmrs.training.trainer import train

    options = dict(device=settings.device.type, show_progress=False, eval_every=0, seed=1)
    options.update(config)
    val = options.pop("val_data", None)
    return train(model, TokenDataset(tokens), val_data=val, **options)


@contextlib.contextmanager
def tf32_off() -> Any:
    """Training without lmrs' TF32 context: float32 products as the CPU computes them."""
    train_module = importlib.import_module("lmrs.training.trainer")
    saved = train_module.fast_float32_matmul
    train_module.fast_float32_matmul = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        train_module.fast_float32_matmul = saved


def max_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> Optional[float]:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


# ---------------------------------------------------------------------------------------
# Sections: each returns {"ok": bool, ...figures}
# ---------------------------------------------------------------------------------------


def section_environment(settings: Settings) -> dict[str, Any]:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmrs.precision import native_bf16

    device = settings.device
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        info["device_count"] = torch.cuda.device_count()
        with contextlib.suppress(Exception):
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    info["native_bf16"] = native_bf16(device)
    # the attention kernel training uses: flash on the GPU, forced so that a silent fallback
    # to the math kernel shows up as a failure; the smoke run checks the same calls on CPU
    backend = SDPBackend.FLASH_ATTENTION if device.type == "cuda" else SDPBackend.MATH
    info["attention_backend"] = backend.name
    variants = {
        "multi_head": {},
        "grouped_query": {"num_kv_heads": 2},
        "multi_query": {"num_kv_heads": 1},
        "rotary": {"position": "rope"},
        "rotary_grouped_query": {"position": "rope", "num_kv_heads": 2},
        "attention_dropout": {"attention_dropout": True, "dropout_rate": 0.1},
    }
    results: dict[str, Any] = {}
    for name, overrides in variants.items():
        model = full_model(1024, settings, **overrides).to(device)
        ids = torch.randint(0, 1024, (2, model.config.max_seq_len), device=device)
        try:
            with sdpa_kernel(backend), torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.compute_loss(ids, ids)
            loss.backward()
            synchronize()
            value = float(loss.detach())
            results[name] = {"ok": math.isfinite(value), "loss": round(value, 4)}
        except RuntimeError as error:
            results[name] = {"ok": False, "error": str(error).strip().splitlines()[0]}
    info["attention"] = results
    info["ok"] = all(r["ok"] for r in results.values()) and (
        device.type != "cuda" or info["native_bf16"] or info["capability"][0] < 8
    )
    return info


def section_float32(settings: Settings) -> dict[str, Any]:
    """20 steps on the GPU against the same 20 on the CPU."""
    steps = 4 if settings.smoke else 20
    vocab = 97 if settings.smoke else 2048
    tokens = token_file(settings, vocab, 20_000 if settings.smoke else 400_000)
    config = dict(
        max_steps=steps,
        batch_size=4 if settings.smoke else 16,
        seq_len=16 if settings.smoke else 128,
        learning_rate=1e-3,
        warmup_steps=2,
    )
    reference = train_run(small_model(vocab, settings), tokens, settings, device="cpu",
                          dtype="float32", **config).losses  # fmt: skip
    with tf32_off():
        exact = train_run(small_model(vocab, settings), tokens, settings, dtype="float32", **config)
    tf32 = train_run(small_model(vocab, settings), tokens, settings, dtype="float32", **config)
    bf16 = train_run(small_model(vocab, settings), tokens, settings, dtype="bfloat16", **config)
    result = {
        "steps": steps,
        "cpu_losses": reference,
        "float32_max_diff": max_diff(exact.losses, reference),
        "tf32_max_diff": max_diff(tf32.losses, reference),
        "bf16_max_diff": max_diff(bf16.losses, reference),
        "trains": reference[-1] < reference[0],
    }
    result["ok"] = (
        result["float32_max_diff"] <= FLOAT32_TOLERANCE
        and result["tf32_max_diff"] <= BF16_TOLERANCE
        and result["bf16_max_diff"] <= BF16_TOLERANCE
        and result["trains"]
    )
    return result


def _count_syncs(run: Callable[[], Any]) -> tuple[Any, Optional[int]]:
    """``run()`` with CUDA's sync debug mode on: its result and the number of host syncs."""
    import torch

    if not torch.cuda.is_available():
        return run(), None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return result, syncs


def section_throughput(settings: Settings) -> dict[str, Any]:
    import torch

    from lmrs.options import DEFAULT_ARCH

    vocab = 97 if settings.smoke else 32_000
    steps = 4 if settings.smoke else 40
    tokens = token_file(settings, vocab, 50_000 if settings.smoke else 4_000_000)
    config = dict(
        max_steps=steps,
        batch_size=4 if settings.smoke else 64,
        seq_len=16 if settings.smoke else 512,
        warmup_steps=5,
        log_every=1,
        dtype="auto",
        val_data=[],
        out_dir=str(settings.workdir / "throughput"),
    )
    rows: dict[str, Any] = {}
    # the defaults of `lmrs train` (modern architecture, Muon): the full preset eager and
    # compiled, and the sizing ladder's "large" shape compiled
    cases = (
        ("eager", "full", False),
        ("compiled", "full", True),
        ("large_compiled", "large", True),
    )
    if settings.smoke:  # the smoke run's model is tiny whatever the size: one compile is enough
        cases = cases[:2]
    for label, size, compile_ in cases:
        model = (
            full_model(vocab, settings, arch=DEFAULT_ARCH)
            if size == "full"
            else ladder_model(vocab, size, arch=DEFAULT_ARCH)
        )
        flops = model.estimate_flops_per_token(config["seq_len"])
        peak_memory_reset()
        outcome, syncs = _count_syncs(
            lambda m=model, c=compile_: train_run(m, tokens, settings, compile=c, **config)
        )
        records = [
            json.loads(line)
            for line in (settings.workdir / "throughput" / "metrics.jsonl").read_text().splitlines()
        ]
        per_step = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        steady = sorted(per_step[3:] or per_step)[len(per_step[3:] or per_step) // 2]
        row = {
            "tokens_per_s": round(outcome.tokens_per_s),
            "median_step_tokens_per_s": round(steady),
            "compile_s": round(outcome.warmup_s, 1),
            "peak_memory_gib": peak_memory_gib(),
            "host_syncs_per_step": None if syncs is None else round(syncs / steps, 2),
            "final_loss": round(outcome.losses[-1], 4),
        }
        peak = _bf16_peak()
        if peak:
            row["mfu"] = round(steady * flops / peak, 4)
        row["shape"] = f"{size}, {DEFAULT_ARCH}, {model.config.embed_dim} dim x "
        row["shape"] += f"{model.config.num_layers} layers, {model.num_parameters():,} params"
        rows[label] = row
    eager, compiled = rows["eager"], rows["compiled"]
    rows["compile_speedup"] = round(
        compiled["median_step_tokens_per_s"] / max(eager["median_step_tokens_per_s"], 1), 3
    )
    rows["ok"] = all(math.isfinite(rows[label]["final_loss"]) for label, _, _ in cases)
    if torch.cuda.is_available():
        rows["device_name"] = torch.cuda.get_device_name()
    return rows


def _bf16_peak() -> Optional[float]:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def section_resume(settings: Settings) -> dict[str, Any]:
    # deterministic cuBLAS needs this before its first use (this section's process is new)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    # warn_only: an op without a deterministic kernel is named in the result, not a crash
    torch.use_deterministic_algorithms(True, warn_only=True)
    vocab = 97 if settings.smoke else 2048
    steps = 6 if settings.smoke else 20
    tokens = token_file(settings, vocab, 20_000 if settings.smoke else 400_000)
    config = dict(
        max_steps=steps,
        batch_size=4 if settings.smoke else 16,
        seq_len=16 if settings.smoke else 128,
        warmup_steps=2,
        dtype="float32",
        grad_accum_steps=2,
    )

    def model(seed: int = 0) -> Any:
        return small_model(vocab, settings, dropout_rate=0.1, seed=seed)  # dropout: RNG too

    run_dir = str(settings.workdir / "stopped")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        straight = train_run(model(), tokens, settings, **config)
        first = train_run(model(), tokens, settings, out_dir=run_dir, stop_at_step=steps // 2,
                          **config)  # fmt: skip
        # other initial weights: everything must come from the checkpoint
        resumed = train_run(model(seed=7), tokens, settings, resume_from=run_dir, **config)
    together = first.losses + resumed.losses
    nondeterministic = sorted(
        {str(w.message).splitlines()[0][:200] for w in seen if "determinis" in str(w.message)}
    )
    return {
        "steps": steps,
        "max_diff": max_diff(together, straight.losses),
        "nondeterministic_ops": nondeterministic,
        "ok": together == straight.losses,
    }


def _one_rank_group(settings: Settings) -> None:
    """A process group of one: NCCL on the GPU, gloo in the smoke run."""
    import torch
    import torch.distributed as dist

    store = settings.workdir / f"store-{os.getpid()}"
    kwargs: dict[str, Any] = {}
    backend = "gloo"
    if settings.device.type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(0)
        kwargs["device_id"] = torch.device("cuda", 0)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, **kwargs)


def section_distributed(settings: Settings) -> dict[str, Any]:
    import torch.distributed as dist

    vocab = 97 if settings.smoke else 2048
    steps = 4 if settings.smoke else 12
    tokens = token_file(settings, vocab, 20_000 if settings.smoke else 400_000)
    config = dict(
        max_steps=steps,
        batch_size=8 if settings.smoke else 32,
        seq_len=16 if settings.smoke else 128,
        warmup_steps=2,
        grad_accum_steps=2,
        eval_batches=3,
        eval_batch_size=3,
    )

    def model() -> Any:
        return small_model(vocab, settings, position="rope")

    with tf32_off():
        single = train_run(model(), tokens, settings, dtype="float32", **config)
        single_bf16 = train_run(model(), tokens, settings, dtype="bfloat16", **config)
        _one_rank_group(settings)
        try:
            backend = str(dist.get_backend())
            ddp = train_run(model(), tokens, settings, strategy="ddp", dtype="float32", **config)
            fsdp = train_run(model(), tokens, settings, strategy="fsdp", dtype="float32",
                             compile=True, **config)  # fmt: skip
            fsdp_bf16 = train_run(model(), tokens, settings, strategy="fsdp", dtype="bfloat16",
                                  **config)  # fmt: skip
            run_dir = str(settings.workdir / "fsdp-resume")
            first = train_run(model(), tokens, settings, strategy="fsdp", dtype="float32",
                              out_dir=run_dir, stop_at_step=steps // 2, **config)  # fmt: skip
            resumed = train_run(model(), tokens, settings, strategy="fsdp", dtype="float32",
                                resume_from=run_dir, **config)  # fmt: skip
        finally:
            dist.destroy_process_group()
    result = {
        "backend": backend,
        "ddp_max_diff": max_diff(ddp.losses, single.losses),
        "fsdp_compiled_max_diff": max_diff(fsdp.losses, single.losses),
        "fsdp_bf16_max_diff": max_diff(fsdp_bf16.losses, single_bf16.losses),
        "fsdp_resume_max_diff": max_diff(first.losses + resumed.losses, single.losses),
        "val_loss_diff": abs(
            (ddp.final_eval.loss if ddp.final_eval else math.inf)
            - (single.final_eval.loss if single.final_eval else 0.0)
        ),  # fmt: skip
    }
    result["ok"] = (
        result["ddp_max_diff"] <= FLOAT32_TOLERANCE
        and result["fsdp_compiled_max_diff"] <= FLOAT32_TOLERANCE
        and result["fsdp_bf16_max_diff"] <= BF16_TOLERANCE
        and result["fsdp_resume_max_diff"] <= FLOAT32_TOLERANCE
        and result["val_loss_diff"] <= FLOAT32_TOLERANCE
    )
    return result


def section_eval_memory(settings: Settings) -> dict[str, Any]:
    import torch

    from lmrs.data.tokens import TokenDataset

    vocab = 97 if settings.smoke else 32_000
    tokens = token_file(settings, vocab, 50_000 if settings.smoke else 4_000_000)
    batch, accum, seq = (8, 2, 16) if settings.smoke else (256, 4, 512)
    config = dict(batch_size=batch, grad_accum_steps=accum, seq_len=seq, dtype="auto")
    dataset = TokenDataset(tokens)
    train_part, val_part = dataset.split(0.1, 0)
    peak_memory_reset()
    train_run(full_model(vocab, settings), tokens, settings, max_steps=1, val_data=[], **config)
    training_peak = peak_memory_gib()
    model = full_model(vocab, settings)
    peak_memory_reset()
    outcome = train_run(model, tokens, settings, max_steps=1, eval_batches=4,
                        val_data=val_part, **config)  # fmt: skip
    evaluation_peak = peak_memory_gib()
    final = outcome.final_eval
    result = {
        "vocab": vocab,
        "micro_batch": batch // accum,
        "train_step_peak_gib": training_peak,
        "train_and_eval_peak_gib": evaluation_peak,
        "val_loss": None if final is None else round(final.loss, 4),
    }
    # a bound that only catches gross errors (the per-rank eval batch was world x micro)
    result["ok"] = (
        final is not None
        and math.isfinite(final.loss)
        and (training_peak is None or (evaluation_peak or 0.0) <= 2.0 * training_peak)
    )
    del train_part
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def section_sampling(settings: Settings) -> dict[str, Any]:
    from lmrs.model.generation import generate

    vocab = 97 if settings.smoke else 32_000
    device = settings.device
    model = full_model(vocab, settings).to(device).eval()
    new_tokens = 8 if settings.smoke else 128
    prompt_len = 4 if settings.smoke else 16
    result: dict[str, Any] = {}
    for dtype in ("bfloat16", "float32"):
        for batch in (1, 16):
            prompts = [
                [(7 * row + i) % (vocab - 1) for i in range(prompt_len)] for row in range(batch)
            ]
            sample = functools.partial(generate, model, prompts, max_length=new_tokens,
                                       temperature=1.0, top_k=50, seed=0, dtype=dtype)  # fmt: skip
            sample(max_length=2)  # warm-up: kernels, allocator
            synchronize()
            started = time.perf_counter()
            out = sample()
            synchronize()
            seconds = time.perf_counter() - started
            made = sum(len(row) for row in out)
            result[f"{dtype}_batch{batch}_tokens_per_s"] = round(made / seconds, 1)
    result["logits"] = _decoder_logits_check(model, vocab, prompt_len, settings)
    result["ok"] = result["logits"].get("ok", False)
    return result


def _decoder_logits_check(
    model: Any, vocab: int, prompt_len: int, settings: Settings
) -> dict[str, Any]:
    """The decoder's next-token logits (cache, one token at a time) against the model's full
    forward over the same tokens, in float32 and bf16."""
    import torch

    from lmrs.model.decode import Decoder

    device = settings.device
    steps = 4 if settings.smoke else 16
    ids = torch.randint(
        0, vocab - 1, (2, prompt_len + steps), generator=torch.Generator().manual_seed(0)
    )
    ids = ids.to(device)
    with torch.no_grad():
        reference = model(ids).float()
    scale = float(reference.abs().max())
    out: dict[str, Any] = {"logit_scale": round(scale, 4)}
    for dtype, tolerance in (("float32", 1e-3), ("bfloat16", 5e-2)):
        decoder = Decoder(model, 2, prompt_len + steps, dtype=dtype)
        worst = 0.0
        logits = decoder(ids[:, :prompt_len])
        worst = max(worst, float((logits.float() - reference[:, prompt_len - 1]).abs().max()))
        for position in range(prompt_len, prompt_len + steps - 1):
            logits = decoder(ids[:, position : position + 1])
            worst = max(worst, float((logits.float() - reference[:, position]).abs().max()))
        out[f"{dtype}_max_diff"] = worst
        out[f"{dtype}_engine"] = decoder.engine
        out[f"{dtype}_ok"] = worst <= tolerance * max(1.0, scale)
    out["ok"] = out["float32_ok"] and out["bfloat16_ok"]
    return out


def _self_test_crash(settings: Settings) -> dict[str, Any]:
    os.abort()  # as NCCL's watchdog ends a process whose collective timed out


def _self_test_hang(settings: Settings) -> dict[str, Any]:
    time.sleep(3600)
    return {"ok": True}


SECTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "_crash": _self_test_crash,
    "_hang": _self_test_hang,
    "environment": section_environment,
    "float32": section_float32,
    "throughput": section_throughput,
    "resume": section_resume,
    "distributed": section_distributed,
    "eval_memory": section_eval_memory,
    "sampling": section_sampling,
}


# ---------------------------------------------------------------------------------------
# Running: one child process per section, the summary rewritten after each
# ---------------------------------------------------------------------------------------


def run_section_child(name: str, settings: Settings, result_path: Path, log_path: Path) -> None:
    """The child's side: run one section, write {"ok", ...} or {"ok": false, "error"}."""
    os.setsid()  # a process group of its own: a timeout kills compile workers with it
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import torch

    if settings.smoke:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        # dynamo still traces, graph breaks and all; only the C++ code generation is skipped
        torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]
    try:
        result = SECTIONS[name](settings)
    except Exception as error:  # noqa: BLE001 - a section's failure is its result
        text = str(error).strip()
        result = {
            "ok": False,
            "error": f"{type(error).__name__}: {text.splitlines()[0] if text else ''}",
            "traceback": traceback.format_exc(limit=8),
        }
    result_path.write_text(json.dumps(result, default=str))
    sys.stdout.flush()
    sys.stderr.flush()


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# imported once by the fork server, so each section's process starts with them loaded
# (importing torch alone takes seconds); none of them initialises CUDA, so every section
# still gets a fresh CUDA context of its own
PRELOAD = [
    "torch",
    "torch.distributed.fsdp",
    "lmrs.training.trainer",
    "lmrs.model.generation",
    "lmrs.model.decode",
]


def run_all(names: list[str], smoke: bool, out: Path, scale: float) -> int:
    import multiprocessing

    workdir = Path(tempfile.mkdtemp(prefix="lmrs-gpu-check-"))
    settings = Settings(smoke=smoke, workdir=workdir)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    summary: dict[str, Any] = {
        "smoke": smoke,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "sections": {},
    }
    _write_summary(out, summary)
    failed = 0
    for name in names:
        gpu_limit, smoke_limit = {**TIMEOUTS, **SELF_TESTS}[name]
        limit = (smoke_limit if smoke else gpu_limit) * scale
        result_path, log_path = workdir / f"{name}.json", workdir / f"{name}.log"
        started = time.perf_counter()
        child = context.Process(
            target=run_section_child, args=(name, settings, result_path, log_path), name=name
        )
        child.start()
        child.join(limit)
        if child.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join()
            entry: dict[str, Any] = {"ok": False, "error": f"timed out after {limit:.0f} s"}
        elif result_path.exists():
            entry = json.loads(result_path.read_text())
        else:
            code = child.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            entry = {"ok": False, "error": f"the section's process ended ({how}) without a result"}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if not entry.get("ok"):
            output = log_path.read_text(errors="replace") if log_path.exists() else ""
            entry["output_tail"] = output[-3000:]
            failed += 1
        summary["sections"][name] = entry
        summary["seconds"] = round(sum(s["seconds"] for s in summary["sections"].values()), 1)
        _write_summary(out, summary)
        status = "ok" if entry.get("ok") else f"FAILED: {entry.get('error', 'checks not met')}"
        print(f"{name:12s} {entry['seconds']:6.1f} s  {status}", flush=True)
    print(f"summary in {out}")
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTION_NAMES)}")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="scale every timeout")
    args = parser.parse_args(argv)
    names = list(SECTION_NAMES) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}"
        )
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on the GPU machine, or --smoke for the CPU run")
    return run_all(names, args.smoke, args.out, args.timeout_scale)


if __name__ == "__main__":
    sys.exit(main())
