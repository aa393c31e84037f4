"""Sample from an lmrs model exported to GGUF with llama.cpp (``llama-cpp-python``).

Exports a run (or, with ``--smoke``, a tiny random model of ``--arch``) to a .gguf file,
checks that llama.cpp's own tokenizer gives lmrs's ids and that its logits for the prompt
are lmrs's, then generates greedily from the same prompt with llama.cpp and with lmrs
(float32, torch engine), and prints both tokens/s and how many of the tokens agree. Not
part of CI: llama-cpp-python compiles llama.cpp when installed (``pip install
llama-cpp-python``); without it the script says so and exits 0 after the export.

    python benchmarks/bench_gguf.py --run runs/quickstart --dtype q8_0
    python benchmarks/bench_gguf.py --smoke --arch modern
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 20, "def f(x):\n    return x\n" * 20]


def identical_prefix(ours: list[int], theirs: list[int]) -> int:
    """How many ids the two sequences share from the start."""
    return next(
        (i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs))
    )


def smoke_model(arch: str) -> tuple[Any, Any]:
    import torch

    from lmrs import Tokenizer
    from lmrs.model.gpt import create_model

    tokenizer = Tokenizer.train(TEXTS, 300, show_progress=False)
    model = create_model(300, max_seq_len=256, embed_dim=64, num_heads=4, num_layers=2, arch=arch)
    with torch.no_grad():  # zero-initialised projections would make every layer a no-op
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval(), tokenizer


def llama_checks(path: Path, model: Any, tokenizer: Any, prompt: list[int], context: int) -> None:
    """llama.cpp's tokenizer against lmrs's ids; its prompt logits against lmrs's."""
    import llama_cpp
    import numpy as np
    import torch

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, verbose=False, logits_all=True)
    text = "".join(TEXTS)[:600] + " naïve café 12345  \n\n  end"
    theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    ours = tokenizer.encode(text)
    same = identical_prefix(ours, theirs)
    print(f"llama.cpp tokenizer: {len(theirs)} ids, lmrs {len(ours)}, identical prefix {same}")
    llm.eval(prompt)
    theirs_logits = np.asarray(llm.scores[: len(prompt)], dtype=np.float32)
    with torch.no_grad():
        ours_logits = model(torch.tensor([prompt]))[0].float().numpy()
    print(
        f"prompt logits: max |llama.cpp - lmrs| = {np.abs(theirs_logits - ours_logits).max():.2e}"
    )


def lmrs_greedy(
    model: Any, prompt: list[int], n: int, engine: str = "torch", dtype: str = "float32"
) -> tuple[list[int], float]:
    from lmrs.model.generation import generate

    generate(model, prompt, max_length=2, temperature=0, dtype=dtype, engine=engine)  # warm
    start = time.perf_counter()
    ids = generate(model, prompt, max_length=n, temperature=0, dtype=dtype, engine=engine)
    return list(ids), time.perf_counter() - start  # type: ignore[arg-type]


def llama_greedy(path: Path, prompt: list[int], n: int, context: int) -> tuple[list[int], float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, verbose=False, logits_all=False)
    out: list[int] = []
    start = time.perf_counter()
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="Run or checkpoint directory to export.")
    parser.add_argument("--smoke", action="store_true", help="A tiny random model instead.")
    parser.add_argument("--arch", default="modern", choices=("gpt2", "modern"), help="--smoke")
    parser.add_argument("--dtype", default="f32", choices=("f32", "f16", "bf16", "q8_0"))
    parser.add_argument("--prompt", default="The quick")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    if not args.run and not args.smoke:
        parser.error("give --run DIR or --smoke")

    from lmrs.interop.export import load_run
    from lmrs.interop.gguf_export import export_gguf

    if args.smoke:
        model, tokenizer = smoke_model(args.arch)
    else:
        model, tokenizer = load_run(args.run)
        if tokenizer is None:
            raise SystemExit(f"{args.run}: no tokenizer.json in the checkpoint")
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eot_id]
    n = min(args.tokens, model.config.max_seq_len - len(prompt))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_gguf(model, Path(tmp) / "model.gguf", tokenizer, dtype=args.dtype)
        print(f"exported {path.stat().st_size / 1e6:.2f} MB ({args.dtype})")
        ours, ours_s = lmrs_greedy(model, prompt, n)
        print(f"lmrs (torch, float32): {len(ours) / ours_s:8.1f} tokens/s")
        fast, fast_s = lmrs_greedy(model, prompt, n, engine="auto", dtype="auto")
        print(f"lmrs (engine auto):    {len(fast) / fast_s:8.1f} tokens/s")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed (pip install llama-cpp-python): skipped")
            return
        llama_checks(path, model, tokenizer, prompt, model.config.max_seq_len)
        theirs, theirs_s = llama_greedy(path, prompt, n, model.config.max_seq_len)
        print(f"llama.cpp ({args.dtype}):     {len(theirs) / theirs_s:8.1f} tokens/s")
        same = identical_prefix(ours, theirs)
        print(f"greedy tokens identical for the first {same} of {len(ours)}")
        print("llama.cpp:", repr(tokenizer.decode(theirs))[:200])


if __name__ == "__main__":
    main()
