"""precision.py: bf16 by compute capability, TF32 on CUDA only while training or evaluating.

No GPU here: the CUDA answers are monkeypatched, and the TF32 settings are plain flags that
can be read and written without a device.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmrs import precision

CUDA1 = torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("capability", "native"),
    [
        ((6, 1), False),
        ((7, 0), False),
        ((7, 5), False),
        ((8, 0), True),
        ((8, 9), True),
        ((9, 0), True),
    ],
)
def test_cuda_bf16_is_native_from_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], native: bool
) -> None:
    asked: list[Any] = []

    def get_capability(device: Any = None) -> tuple[int, int]:
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
    # what torch answers on a V100 or T4 too: bf16 "supported", by emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.native_bf16(CUDA1) is native
    assert asked == [CUDA1]  # the device the run is on, not the current one
    assert precision.uses_bf16(CUDA1, "auto") is native
    assert precision.uses_bf16(CUDA1, "bfloat16") and not precision.uses_bf16(CUDA1, "float32")
    with precision.autocast_context(CUDA1, "float32")():
        assert not torch.is_autocast_enabled("cuda")


def test_mps_and_unknown_devices_are_not_native_bf16() -> None:
    assert not precision.native_bf16(torch.device("mps"))
    assert not precision.native_bf16(torch.device("meta"))


def test_tf32_only_on_cuda_and_only_for_the_duration() -> None:
    before = torch.get_float32_matmul_precision()
    assert before == "highest"  # torch's default: nothing in lmrs changed it at import
    with precision.fast_float32_matmul(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "highest"
    with precision.fast_float32_matmul(CUDA1):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == before
    assert not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(KeyError):
        with precision.fast_float32_matmul(CUDA1):
            raise KeyError("restored on errors too")
    assert torch.get_float32_matmul_precision() == before


def test_training_and_evaluation_run_under_tf32_on_their_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    from lmrs.data.tokens import prepare_training_data
    from lmrs.model.gpt import create_small_model
    from lmrs.training.evaluation import evaluate
    from lmrs.training.trainer import train

    entered: list[torch.device] = []
    real = precision.fast_float32_matmul

    def recording(device: torch.device) -> Any:
        entered.append(device)
        return real(device)

    train_module = importlib.import_module("lmrs.training.trainer")
    evaluate_module = importlib.import_module("lmrs.training.evaluation")
    monkeypatch.setattr(train_module, "fast_float32_matmul", recording)
    monkeypatch.setattr(evaluate_module, "fast_float32_matmul", recording)
    docs = [[(k + i) % 50 for i in range(60)] for k in range(4)]
    batches = prepare_training_data(docs, batch_size=4, seq_len=8)
    model = create_small_model(60, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1)
    train(model, batches, max_steps=1, device="cpu", dtype="float32", show_progress=False)
    evaluate(model, batches[:1], device="cpu")
    assert entered == [torch.device("cpu"), torch.device("cpu")]
