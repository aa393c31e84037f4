"""Which precision a device computes fast: the one place training and sampling ask."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not by emulation).

    CUDA: compute capability 8.0 or newer. CPU: AVX512-BF16 or AMX (recent Xeon and EPYC);
    elsewhere bfloat16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False
