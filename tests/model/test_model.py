"""Tests for lmrs.model: shapes, parameter count, init, causality, options, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmrs.model.gpt import (
    GPT,
    PRESETS,
    ModelConfig,
    create_model,
    create_small_model,
    model_from_preset,
)

VOCAB = 64


def tiny(**overrides) -> GPT:
    options = dict(
        max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, dropout_rate=0.0
    )
    options.update(overrides)
    return create_model(VOCAB, **options)


def test_logits_shape_and_loss_is_cross_entropy():
    model = tiny()
    ids = torch.randint(0, VOCAB, (3, 10))
    targets = torch.randint(0, VOCAB, (3, 10))
    logits = model(ids)
    assert logits.shape == (3, 10, VOCAB)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    assert torch.allclose(model.compute_loss(ids, targets), expected)
    # an untrained model is close to uniform
    assert abs(expected.item() - math.log(VOCAB)) < 0.5


def test_parameter_count_matches_hand_count():
    d, ff, layers, seq = 32, 64, 2, 16
    block = (
        (2 * d)  # ln before attention (weight, bias)
        + (d * 3 * d + 3 * d)  # fused qkv
        + (d * d + d)  # attention output projection
        + (2 * d)  # ln before ffn
        + (d * ff + ff)  # ffn up
        + (ff * d + d)  # ffn down
    )
    embeddings = VOCAB * d + seq * d
    expected = embeddings + layers * block + 2 * d  # + final ln; lm head is tied
    model = tiny()
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - embeddings
    untied = tiny(tie_weights=False)
    assert untied.num_parameters() == expected + VOCAB * d
    no_bias = tiny(bias=False)
    biases = layers * (2 * d + 3 * d + d + ff + d) + d
    assert no_bias.num_parameters() == expected - biases


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("tie_weights", [True, False])
def test_lm_head_is_tied_to_token_embedding_only_when_asked(tie_weights: bool):
    # each check looks at one model's own head and embedding: two models never share
    model = tiny(tie_weights=tie_weights)
    head, embedding = model.lm_head.weight, model.token_embedding.weight
    assert (head is embedding) == tie_weights
    assert _shares_storage(head, embedding) == tie_weights
    names = {name for name, _ in model.named_parameters()}
    assert ("lm_head.weight" not in names) == tie_weights  # one parameter, trained once
    # a write through the embedding shows in the head exactly when they are one tensor
    with torch.no_grad():
        embedding[3].fill_(7.0)
    assert bool((head[3] == 7.0).all()) == tie_weights
    # loading a state dict keeps the tie (or its absence): loading copies into the tensors
    again = tiny(tie_weights=tie_weights, seed=1)
    again.load_state_dict(model.state_dict())
    assert _shares_storage(again.lm_head.weight, again.token_embedding.weight) == tie_weights
    assert torch.equal(again.lm_head.weight, head)


def test_init_is_deterministic_by_seed_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    first, again, other = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), b, c in zip(
        first.state_dict().items(), again.state_dict().values(), other.state_dict().values()
    ):
        assert torch.equal(a, b), name
        if name.endswith("weight") and "ln" not in name:
            assert not torch.equal(a, c), name


def test_gpt2_init_statistics():
    model = create_model(VOCAB, embed_dim=128, num_heads=4, num_layers=8, ff_dim=512)
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].ffn.down.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


@pytest.mark.parametrize(
    "options",
    [{}, {"position": "rope"}, {"num_kv_heads": 2}, {"num_kv_heads": 1, "position": "rope"}],
)
def test_attention_is_causal(options):
    model = tiny(**options)
    ids = torch.randint(0, VOCAB, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-4)


def test_grouped_and_multi_query_attention_shrink_kv_projection():
    full, gqa, mqa = tiny(), tiny(num_kv_heads=2), tiny(num_kv_heads=1)
    d, head = 32, 8
    assert full.blocks[0].attn.qkv.out_features == 3 * d
    assert gqa.blocks[0].attn.qkv.out_features == d + 2 * 2 * head
    assert mqa.blocks[0].attn.qkv.out_features == d + 2 * head


def test_rope_has_no_position_embedding_and_is_position_sensitive():
    model = tiny(position="rope")
    assert model.position_embedding is None
    assert all("rope" not in name for name in model.state_dict())  # tables are not saved
    ids = torch.tensor([[5, 9, 5, 9]])
    logits = model(ids)
    # same token pair at different positions: different contexts, different logits
    assert not torch.allclose(logits[0, 1], logits[0, 3], atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients_with_dropout():
    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model = tiny(dropout_rate=0.2, gradient_checkpointing=checkpointing, seed=1)
        model.train()
        torch.manual_seed(0)
        ids = torch.randint(0, VOCAB, (2, 12))
        model.compute_loss(ids, ids.roll(-1, dims=1)).backward()
        return [p.grad for p in model.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True)):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_dropout_only_in_training_mode():
    model = tiny(dropout_rate=0.5)
    ids = torch.randint(0, VOCAB, (2, 8))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_tiny_model_overfits_a_tiny_sequence(position):
    torch.manual_seed(0)
    model = tiny(position=position)
    sequence = torch.randint(0, VOCAB, (4, 16))
    ids, targets = sequence[:, :-1], sequence[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.compute_loss(ids, targets).item()
    for _ in range(100):
        loss = model.compute_loss(ids, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_sequence_longer_than_context_raises():
    with pytest.raises(ValueError, match="max_seq_len 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"num_kv_heads": 3}, "divisible by num_kv_heads"),
        ({"num_kv_heads": 0}, "num_kv_heads"),
        ({"position": "alibi"}, "position"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"num_layers": 0}, "num_layers"),
        ({"embed_dim": 36, "num_heads": 4, "position": "rope"}, "even head_dim"),
    ],
)
def test_bad_config_raises(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_config_round_trips_through_json():
    config = ModelConfig(vocab_size=300, position="rope", num_kv_heads=2, seed=7)
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**config.to_dict(), "heads": 3})


def test_presets():
    small = create_small_model(300)
    assert (small.config.embed_dim, small.config.num_heads) == (128, 4)
    assert (small.config.num_layers, small.config.ff_dim) == (2, 512)
    full = model_from_preset("full", 300, position="rope")
    assert full.config.embed_dim == PRESETS["full"]["embed_dim"] == 256
    assert full.config.position == "rope"
    with pytest.raises(ValueError, match="unknown model size"):
        model_from_preset("huge", 300)


def test_flops_estimate_counts_matmul_weights_and_attention():
    model = tiny()
    matmul = 2 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32) + VOCAB * 32
    assert model.estimate_flops_per_token(seq_len=10) == 6 * matmul + 12 * 2 * 10 * 32
