"""Which precision a device computes fast: the one place training, evaluation and sampling ask."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not by emulation).

    CUDA: compute capability 8.0 or newer (Ampere on), of ``device`` itself. Not
    ``torch.cuda.is_bf16_supported()``: that is also True on 7.x (V100, T4), where bfloat16
    is emulated, slower than float32 and without flash attention. CPU: AVX512-BF16 or AMX
    (recent Xeon and EPYC); elsewhere bfloat16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def uses_bf16(device: torch.device, dtype: str) -> bool:
    """Whether a run with ``--dtype dtype`` autocasts to bfloat16 on ``device``."""
    return dtype == "bfloat16" or (dtype == "auto" and native_bf16(device))


def autocast_context(device: torch.device, dtype: str) -> Callable[[], Any]:
    """A factory of autocast contexts for the configured precision (``TRAIN_DTYPES``).

    "auto" autocasts to bfloat16 where the device multiplies it natively (CUDA from Ampere,
    CPUs with AVX512-BF16 or AMX: about 1.3x the fp32 training speed on two EPYC cores);
    parameters, optimizer state, LayerNorm, softmax and the loss stay float32. Training and
    ``lmrs eval`` both take their context from here, so their losses agree.
    """
    if not uses_bf16(device, dtype):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def fast_float32_matmul(device: torch.device) -> Iterator[None]:
    """On CUDA, let float32 matrix products use TF32 tensor cores for the duration (about 8x
    the float32 throughput from Ampere on: 10 mantissa bits per product, sums in float32),
    and cuDNN too; the previous settings come back afterwards. Elsewhere nothing changes.

    Entered by training and evaluation rather than set at import, so importing lmrs never
    changes the numerics of someone else's float32 code.
    """
    if device.type != "cuda":
        yield
        return
    try:
        previous = torch.get_float32_matmul_precision()
        previous_cudnn = torch.backends.cudnn.allow_tf32
    except RuntimeError:
        # torch >= 2.9 refuses to read the legacy flags once a caller has set the
        # per-backend ones (fp32_precision): that caller has chosen, leave it alone
        yield
        return
    # "high" rather than allow_tf32 = True: the one setting every torch version reads the
    # same way, with no warning about the legacy flag on newer ones
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cudnn.allow_tf32 = previous_cudnn
