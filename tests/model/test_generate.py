"""Tests for lmrs.generate: cache equivalence, greedy, top-k/top-p, stops, batches, errors."""

from __future__ import annotations

import pytest
import torch

from lmrs.model.generation import SamplingOptions, filter_logits, generate, stream_generate
from lmrs.model.gpt import GPT, create_model

VOCAB = 96


def tiny(**overrides) -> GPT:
    options = dict(max_seq_len=48, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, seed=2)
    options.update(overrides)
    # float64: no near-ties between cached and uncached arithmetic
    return create_model(VOCAB, **options).double()


@pytest.mark.parametrize("options", [{}, {"position": "rope", "num_kv_heads": 2}])
def test_cached_equals_uncached(options):
    model = tiny(**options)
    prompt = [3, 14, 15, 92, 65]
    for sampling in [dict(temperature=0), dict(temperature=1.0, top_k=None, seed=5)]:
        cached = generate(model, prompt, max_length=30, **sampling)
        uncached = generate(model, prompt, max_length=30, use_cache=False, **sampling)
        assert cached == uncached
        assert len(cached) == 30


def test_greedy_equals_argmax_loop():
    model = tiny().eval()
    prompt = [1, 2, 3]
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert generate(model, prompt, max_length=20, temperature=0) == sequence[3:]


def test_seeded_sampling_is_reproducible():
    model = tiny()
    a = generate(model, [7, 8], max_length=25, temperature=1.0, top_k=None, seed=11)
    b = generate(model, [7, 8], max_length=25, temperature=1.0, top_k=None, seed=11)
    c = generate(model, [7, 8], max_length=25, temperature=1.0, top_k=None, seed=12)
    assert a == b
    assert a != c


def test_top_k_restricts_support():
    model = tiny().eval()
    prompt = [4, 5, 6]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    seen = {
        generate(model, prompt, max_length=1, temperature=2.0, top_k=3, seed=s)[0]
        for s in range(60)
    }
    assert seen <= top3
    assert len(seen) > 1  # at high temperature more than the argmax shows up
    greedy = generate(model, prompt, max_length=10, temperature=0)
    assert generate(model, prompt, max_length=10, temperature=1.5, top_k=1, seed=3) == greedy


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def kept(top_p: float) -> list[int]:
        options = SamplingOptions(temperature=1.0, top_k=None, top_p=top_p)
        return torch.isfinite(filter_logits(logits, options))[0].nonzero().flatten().tolist()

    assert kept(0.4) == [0]
    assert kept(0.7) == [0, 1]
    assert kept(0.81) == [0, 1, 2]
    assert kept(1.0) == [0, 1, 2, 3]


def test_top_p_sampling_stays_in_nucleus():
    model = tiny().eval()
    prompt = [9, 9]
    with torch.no_grad():
        probs = model(torch.tensor([prompt]))[0, -1].softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    nucleus_size = int((sorted_probs.cumsum(0) < 0.3).sum()) + 1
    nucleus = set(order[:nucleus_size].tolist())
    seen = {
        generate(model, prompt, max_length=1, temperature=1.0, top_k=None, top_p=0.3, seed=s)[0]
        for s in range(40)
    }
    assert seen <= nucleus


def test_stop_token_ends_generation_and_is_not_included():
    model = tiny()
    free = generate(model, [1, 2], max_length=30, temperature=1.0, top_k=None, seed=4)
    stop = free[5]
    first = free.index(stop)
    stopped = generate(
        model, [1, 2], max_length=30, temperature=1.0, top_k=None, seed=4, stop_tokens=[stop]
    )
    assert stopped == free[:first]
    streamed = stream_generate(
        model, [1, 2], max_length=30, temperature=1.0, top_k=None, seed=4, stop_tokens={stop}
    )
    assert list(streamed) == free[:first]


def test_batch_equals_individual_generation():
    model = tiny()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]
    options = dict(max_length=15, temperature=0.9, top_k=20, seed=100)
    batch = generate(model, prompts, **options)
    assert isinstance(batch[0], list)
    singles = [generate(model, p, **{**options, "seed": 100 + i}) for i, p in enumerate(prompts)]
    assert batch == singles
    greedy_batch = generate(model, prompts, max_length=15, temperature=0)
    assert greedy_batch == [generate(model, p, max_length=15, temperature=0) for p in prompts]


def test_batch_with_stop_tokens_stops_rows_independently():
    model = tiny()
    prompts = [[1, 2], [3, 4]]
    free = generate(model, prompts, max_length=20, temperature=1.0, top_k=None, seed=8)
    stop = free[0][3]
    stopped = generate(
        model, prompts, max_length=20, temperature=1.0, top_k=None, seed=8, stop_tokens=[stop]
    )
    for row, out in zip(free, stopped):
        assert out == (row[: row.index(stop)] if stop in row else row)


def test_stream_equals_generate_and_leaves_the_model_alone():
    model = tiny()
    model.train()  # dropout on: sampling must not apply it, nor switch the model to eval
    options = dict(max_length=12, temperature=0.8, top_k=10, seed=1)
    streamed = list(stream_generate(model, [5, 6], **options))
    assert streamed == generate(model, [5, 6], **options)
    assert model.training
    assert streamed == generate(model.eval(), [5, 6], **options)
    stream = stream_generate(model, [5, 6], **options)
    next(stream)
    assert not torch.is_inference_mode_enabled()  # only inside the steps
    stream.close()
    assert all(p.grad is None for p in model.parameters())


def test_generation_up_to_context_limit():
    model = tiny()
    out = generate(model, list(range(40)), max_length=8, temperature=0)
    assert len(out) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_length=-1), "max_length"),
        (dict(max_length=46), "max_seq_len 48"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        generate(model, [1, 2, 3], **kwargs)
    with pytest.raises(ValueError, match=message):
        stream_generate(model, [1, 2, 3], **kwargs)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "empty"),
        ([[1], []], "empty"),
        ([1, VOCAB], "outside the vocabulary"),
        ([-1], "outside"),
    ],
)
def test_bad_prompts_raise(prompt, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny(), prompt, max_length=5)


def test_stream_rejects_batches():
    with pytest.raises(ValueError, match="one prompt"):
        stream_generate(tiny(), [[1], [2]])


@pytest.mark.parametrize(
    "top_k, top_p", [(None, None), (3, None), (None, 0.6), (4, 0.5), (1, None)]
)
def test_vectorised_draw_matches_filtered_softmax(top_k, top_p):
    # evenly spaced uniforms turn the sampler into a histogram of its distribution:
    # each token must get its filter_logits probability, up to the grid's resolution
    from lmrs.model.generation import _pick_next

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, generator=gen) * 2
    options = SamplingOptions(temperature=0.7, top_k=top_k, top_p=top_p)
    expected = filter_logits(logits, options).softmax(-1)
    n = 20_000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for row in range(2):
        rows = logits[row : row + 1].expand(n, -1)
        picks = _pick_next(rows, options, uniforms)
        freq = torch.bincount(picks, minlength=12).double() / n
        assert torch.allclose(freq, expected[row].double(), atol=2e-4), (freq, expected[row])
        assert set(picks.tolist()) <= set(expected[row].nonzero().flatten().tolist())


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
@pytest.mark.parametrize(
    "top_k, top_p", [(None, None), (5, None), (None, 0.8), (20, 0.6), (1, None), (0, 0.3)]
)
def test_rust_sampler_picks_what_the_tensor_version_picks(temperature, top_k, top_p):
    from lmrs.model.generation import _pick_next, _pick_next_torch

    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(64, 300, generator=gen) * 3
    uniforms = torch.rand(64, generator=gen)
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(
        _pick_next(logits, options, uniforms), _pick_next_torch(logits, options, uniforms)
    )


def test_rust_engine_cached_equals_uncached_and_batch_equals_single():
    # the Rust step computes every row and position the same way whichever path reaches
    # it, so even in bfloat16 the tokens are identical, not merely close
    model = tiny(position="rope", num_kv_heads=2).float()
    prompts = [[3, 14, 15, 92], [65, 35, 89, 79]]
    options = dict(max_length=20, temperature=1.0, top_k=20, seed=4, dtype="bfloat16")
    cached = generate(model, prompts, engine="rust", **options)
    assert cached == generate(model, prompts, engine="rust", use_cache=False, **options)
    single = generate(model, prompts[1], engine="rust", **{**options, "seed": 5})
    assert single == cached[1]
    assert len(cached[0]) == 20


def test_bad_engine_raises_at_the_call():
    with pytest.raises(ValueError, match="decoding engine must be one of"):
        stream_generate(tiny(), [1, 2], max_length=5, engine="gpu")
    with pytest.raises(ValueError, match="runs bfloat16 on the CPU"):
        generate(tiny(), [1, 2], max_length=5, engine="rust")  # float64 samples in float64
