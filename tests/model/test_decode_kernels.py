"""The Rust decoding engine with each CPU kernel (``LMRS_CPU``) against the model's float32
forward pass, and the kernels against each other.

``LMRS_CPU`` is read once per process, so every kernel runs in a subprocess of its own
(``python -c CHILD``) that writes its logits and greedy tokens to a file; the reference is
computed here. Kernels this CPU lacks are skipped (the AVX2 one on ARM, AVX512-BF16 on most
machines): ``LMRS_CPU`` naming one of them is an error, checked below.

Tolerances, stated plainly: the engine rounds weights, matrix-product inputs and the key/
value cache to bfloat16 (8 significant bits, a relative step of 2^-8), the float32
reference does not. On these models that moves the logits by about 1% of their spread
(measured 0.8-1.0% on an AVX2 EPYC, every kernel); the tests allow 5%. The kernels differ
only in how their float32 sums round (``vdpbf16ps``, FMA, a multiply then an add), far
below the bfloat16 rounding they share; but a sum that differs in its last bit can round
an activation to the neighbouring bfloat16 value, so kernel against kernel is held to
2e-3 of the logits' spread, not to the bit (measured: avx2 vs portable 4e-7). Greedy
tokens can differ between kernels only where the two best logits are about that close, so
they are compared step by step up to the first such near tie of either kernel, never
after it (one different token changes every later step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmrs.model.gpt import GPT, create_model
from lmrs.options import ARCHITECTURES

KERNELS = ("portable", "avx2", "avx512bf16")  # lowest first
VOCAB = 67  # logits not a multiple of the kernels' 64-column tasks
SHAPE = dict(max_seq_len=40, embed_dim=48, num_heads=4, num_layers=2, ff_dim=100, seed=7)
# head_dim 12: attention loops with a tail after 8 dimensions
OPTIONS = {
    "learned": {},
    "rope_gqa": {"position": "rope", "num_kv_heads": 2},
    "mqa_no_bias_untied": {"num_kv_heads": 1, "bias": False, "tie_weights": False},
    # RMSNorm, QK-norm, ReLU², soft-cap (initialised like gpt2: zero projections would
    # leave the blocks out of the comparison)
    "modern": {**ARCHITECTURES["modern"], "zero_init_proj": False},
    "swiglu_rmsnorm_scale": {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope"},
}
PROMPTS = [[5, 9, 11, 3, 60, 2], [1, 1, 2, 3, 5, 8], [66, 0, 33, 12, 40, 7]]
CHUNKS = [(0, 6), (6, 9), (9, 10), (10, 11)]  # prompt, a chunk after it, single steps
IDS_LEN = 11
GREEDY_STEPS = 24

LOGIT_TOLERANCE = 0.05  # of the reference logits' standard deviation, engine vs float32
KERNEL_TOLERANCE = 2e-3  # of the same, kernel vs kernel

CHILD = r"""
import json, sys
import torch
from lmrs import _lmrs
from lmrs.model.decode import Decoder
from lmrs.model.gpt import create_model

spec = json.loads(sys.argv[1])
try:
    kernel = _lmrs.decode_kernel()
except ValueError as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
out = {"kernel": kernel, "models": {}}
ids = torch.tensor(spec["ids"])
for name, options in spec["options"].items():
    model = create_model(spec["vocab"], **spec["shape"], **options).eval()
    batch = len(spec["prompts"])
    decoder = Decoder(model, batch_size=batch, max_len=ids.shape[1], dtype="bfloat16",
                      engine="rust")
    assert decoder.engine == "rust"
    chunks = [decoder(ids[:, a:b]).tolist() for a, b in spec["chunks"]]
    # greedy decoding by hand, keeping every step's logits (their top-2 gaps decide
    # which steps two kernels must agree on)
    prompts = torch.tensor(spec["prompts"])
    greedy = Decoder(model, batch_size=batch, max_len=prompts.shape[1] + spec["steps"],
                     dtype="bfloat16", engine="rust")
    logits = greedy(prompts)
    tokens, steps = [], []
    for _ in range(spec["steps"]):
        steps.append(logits.tolist())
        token = logits.argmax(dim=-1)
        tokens.append(token.tolist())
        logits = greedy(token[:, None])
    out["models"][name] = {"chunks": chunks, "tokens": tokens, "steps": steps}
print(json.dumps(out))
"""


def ids_for_chunks() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, IDS_LEN), generator=torch.Generator().manual_seed(11))


def run_kernel(kernel: str) -> dict:
    spec = {
        "vocab": VOCAB,
        "shape": SHAPE,
        "options": OPTIONS,
        "ids": ids_for_chunks().tolist(),
        "chunks": CHUNKS,
        "prompts": PROMPTS,
        "steps": GREEDY_STEPS,
    }
    env = dict(os.environ, LMRS_CPU=kernel)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_ANSWERS: dict[str, dict] = {}


def answer(kernel: str) -> dict:
    """The child's answer for ``kernel``, run once per test session."""
    if kernel not in _ANSWERS:
        _ANSWERS[kernel] = run_kernel(kernel)
    return _ANSWERS[kernel]


def results(kernel: str) -> dict:
    """:func:`answer`, skipping the test where the CPU lacks ``kernel``."""
    got = answer(kernel)
    if "error" in got:
        assert "lacks" in got["error"], got["error"]
        pytest.skip(f"this CPU has no {kernel} kernel: {got['error']}")
    assert got["kernel"] == kernel  # LMRS_CPU was obeyed
    return got


def model(name: str) -> GPT:
    return create_model(VOCAB, **SHAPE, **OPTIONS[name]).eval()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_logits_match_the_float32_forward(kernel, name):
    got = torch.tensor(results(kernel)["models"][name]["chunks"])  # (chunks, B, V)
    ids = ids_for_chunks()
    with torch.no_grad():
        full = model(name)(ids)
    reference = torch.stack([full[:, b - 1] for _, b in CHUNKS])
    error = (got - reference).abs().max() / reference.std()
    # bfloat16 rounding moves the logits (so not ~0), but by a small part of their spread
    assert 1e-5 < error < LOGIT_TOLERANCE, f"{kernel} {name}: {error:.4f}"


@pytest.mark.parametrize("kernel", KERNELS[1:])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernels_agree_with_the_portable_one(kernel, name):
    portable = results("portable")["models"][name]
    other = results(kernel)["models"][name]
    reference = torch.tensor(portable["chunks"])
    spread = reference.std()
    difference = (torch.tensor(other["chunks"]) - reference).abs().max() / spread
    assert difference < KERNEL_TOLERANCE, f"{kernel} {name}: {difference:.2e}"
    # greedy tokens: equal at every step before the first near tie of either kernel
    compared = 0
    for row in range(len(PROMPTS)):
        for step in range(GREEDY_STEPS):
            gaps = []
            for steps in (portable["steps"], other["steps"]):
                top2 = torch.tensor(steps[step][row]).topk(2).values
                gaps.append(float(top2[0] - top2[1]) / float(spread))
            if min(gaps) < 2 * KERNEL_TOLERANCE:
                break  # a near tie: the kernels may pick differently from here on
            assert portable["tokens"][step][row] == other["tokens"][step][row], (
                f"{kernel} {name} row {row} step {step}"
            )
            compared += 1
    assert compared >= GREEDY_STEPS  # most steps are no near tie: the check has teeth


def test_lmrs_cpu_cannot_raise_the_kernel_or_name_an_unknown_one():
    above = None
    for kernel in KERNELS:
        got = answer(kernel)
        if "error" in got:
            above = (kernel, got["error"])
            break
    if above is not None:
        kernel, error = above
        assert f"LMRS_CPU={kernel} asks for a kernel this CPU lacks" in error
    env = dict(os.environ, LMRS_CPU="avx9000")
    done = subprocess.run(
        [sys.executable, "-c", "from lmrs import _lmrs; _lmrs.decode_kernel()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert 'ValueError: LMRS_CPU="avx9000" is not a CPU kernel' in done.stderr
