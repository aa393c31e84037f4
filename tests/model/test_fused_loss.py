"""lmrs.model.fused_loss: the chunked head + soft-cap + cross-entropy is the plain expression."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from lmrs.model import fused_loss
from lmrs.model.fused_loss import head_cross_entropy
from lmrs.model.gpt import create_model


def plain(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: Optional[float]
) -> torch.Tensor:
    logits = hidden @ weight.T
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return F.cross_entropy(logits, targets, ignore_index=-100)


@pytest.mark.parametrize("cap", [None, 15.0, 2.0])
@pytest.mark.parametrize("rows", [2, 63, 300])
def test_loss_and_gradients_equal_the_plain_expression(
    cap: Optional[float], rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 4 * 97 * 64)  # several chunks of 64 rows
    torch.manual_seed(rows)
    hidden = (torch.randn(rows, 24) * 3).requires_grad_()
    weight = torch.randn(97, 24).requires_grad_()
    targets = torch.randint(0, 97, (rows,))
    targets[::5] = -100  # ignored rows count neither in the sum nor in the mean
    ours = head_cross_entropy(hidden, weight, targets, softcap=cap)
    ours.backward(torch.tensor(1.7))  # a scaled upstream gradient reaches both inputs
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    theirs = plain(hidden, weight, targets, cap)
    theirs.backward(torch.tensor(1.7))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grads[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grads[1], weight.grad, rtol=1e-5, atol=1e-6)


def test_without_gradients_only_the_loss_is_computed() -> None:
    hidden, weight = torch.randn(10, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (10,))
    with torch.no_grad():
        loss = head_cross_entropy(hidden, weight, targets, softcap=5.0)
    torch.testing.assert_close(loss, plain(hidden, weight, targets, 5.0))


@pytest.mark.parametrize(("arch", "cap"), [("gpt2", None), ("modern", None), ("modern", 15.0)])
def test_model_loss_is_cross_entropy_of_its_logits(arch: str, cap: Optional[float]) -> None:
    """compute_loss (fused) and F.cross_entropy(model(ids)) agree, gradients included, for
    a tied head (gpt2) and an untied one (modern), soft-capped or not."""
    model = create_model(50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1,
                         ff_dim=32, dropout_rate=0.0, arch=arch, logit_softcap=cap)  # fmt: skip
    ids = torch.randint(0, 50, (3, 12))
    targets = torch.randint(0, 50, (3, 12))
    loss = model.compute_loss(ids, targets)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain_loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    plain_loss.backward()
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(fused[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_all_targets_ignored_gives_nan_like_cross_entropy() -> None:
    hidden, weight = torch.randn(4, 8), torch.randn(5, 8)
    targets = torch.full((4,), -100)
    assert torch.isnan(head_cross_entropy(hidden, weight, targets))
    assert torch.isnan(plain(hidden, weight, targets, None))


@pytest.mark.parametrize("cap", [None, 15.0])
def test_under_bfloat16_autocast_the_products_are_bfloat16_and_the_loss_float32(
    cap: Optional[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reused float32 buffer is for float32 products only: under autocast each chunk's
    product is bfloat16 (as the plain expression's), upcast for the softmax."""
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 4 * 97 * 64)
    torch.manual_seed(0)
    hidden = torch.randn(150, 24).requires_grad_()
    weight = torch.randn(97, 24).requires_grad_()
    targets = torch.randint(0, 97, (150,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = head_cross_entropy(hidden, weight, targets, softcap=cap)
        ours.backward()
        ours_grads = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        theirs = plain(hidden, weight, targets, cap)
        theirs.float().backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours_grads[0], hidden.grad, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(ours_grads[1], weight.grad, rtol=5e-2, atol=5e-3)
