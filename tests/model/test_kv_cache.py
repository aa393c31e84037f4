"""GPT.forward with a KVCache: the model's own code run a chunk at a time equals the full
forward pass, for every model option; greedy generation with the cache equals generation
without it, token for token; the training graph is unchanged by the cache argument."""

from __future__ import annotations

import pytest
import torch
from model_options import OPTION_IDS, OPTIONS

from lmrs.model.generation import generate
from lmrs.model.gpt import GPT, KVCache, create_model

VOCAB = 61


def tiny(**overrides) -> GPT:
    options = dict(max_seq_len=24, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, seed=5)
    options.update(overrides)
    return create_model(VOCAB, **options).eval()


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("chunks", [[11], [4, 3, 1, 1, 2], [1] * 11])
def test_cached_chunks_equal_the_full_forward(options: dict, chunks: list[int]) -> None:
    model = tiny(**options).double()
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(7))
    full = model(ids)
    cache = KVCache.empty(model.config, 3, 16, dtype=torch.float64)
    pieces, start = [], 0
    for size in chunks:
        pieces.append(model(ids[:, start : start + size], cache=cache))
        start += size
        assert cache.length == start
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-10)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_greedy_generation_with_and_without_the_cache_agree(options: dict) -> None:
    model = tiny(**options)
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():  # larger weights: greedy paths that move instead of repeating
        for parameter in model.parameters():
            # (plus noise: zero-initialised projections would stay zero)
            parameter.mul_(8.0).add_(torch.randn(parameter.shape, generator=noise) * 0.1)
    prompts = [[3, 14, 15, 9], [2, 6, 5, 3]]
    kwargs = dict(max_length=14, temperature=0.0, dtype="float32", engine="torch")
    cached = generate(model, prompts, use_cache=True, **kwargs)
    uncached = generate(model, prompts, use_cache=False, **kwargs)
    assert cached == uncached
    assert any(len(set(row)) > 2 for row in cached)  # the rows are not a constant token


def test_cache_limits_and_reset() -> None:
    model = tiny()
    cache = KVCache.empty(model.config, 1, 6)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="7 tokens is longer than the cache \\(6\\)"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert cache.length == 4  # a refused call changes nothing
    cache.reset()
    assert cache.length == 0
    with pytest.raises(ValueError, match="max_len must be in \\[1, 24\\]"):
        KVCache.empty(model.config, 1, 25)


def test_training_graph_is_the_same_code_without_a_cache() -> None:
    model = tiny(dropout_rate=0.0).train()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    loss = model.compute_loss(ids, ids.roll(-1, dims=1))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        cache = KVCache.empty(model.config, 2, 12)
        assert torch.allclose(model(ids, cache=cache), model(ids), atol=1e-5)
