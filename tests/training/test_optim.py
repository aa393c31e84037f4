"""optim.py: Newton-Schulz orthogonalisation, Muon/AdamW groups, agreement with torch's
reference optimizers, and Muon inside lmrs.train (learning, resume, bad configs)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train import QUIET, pattern_docs, tiny_model

from lmrs.data.tokens import prepare_training_data
from lmrs.training.optim import MuonAdamW, _chunks, muon_parameter_groups, orthogonalize
from lmrs.training.trainer import TrainConfig, train


@pytest.mark.parametrize("shape", [(24, 64), (64, 24), (40, 40)])
@pytest.mark.parametrize("native", [True, False], ids=["bf16", "float32"])
def test_orthogonalize_pushes_singular_values_towards_one(
    shape: tuple[int, int], native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both precisions the iteration runs in: bf16 where the device has it, float32 elsewhere
    monkeypatch.setattr("lmrs.training.optim.native_bf16", lambda device: native)
    torch.manual_seed(0)
    # badly conditioned on purpose: singular values spread over two orders of magnitude
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    s = torch.logspace(-2, 0, k)
    matrix = u[:, :k] @ torch.diag(s) @ v[:k, :] * 7.0
    out = orthogonalize(matrix)
    assert out.shape == matrix.shape
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    singular = torch.linalg.svdvals(out.float())
    # five quintic steps: every singular value lands in roughly [0.7, 1.2], even the 1e-2 one
    assert singular.min() > 0.5 and singular.max() < 1.3, singular
    # and the same singular vectors: close to the polar factor U V^T of the input
    polar = u[:, :k] @ v[:k, :]
    cosine = float((out.float() * polar).sum() / (out.float().norm() * polar.norm()))
    assert cosine > 0.95, cosine


def test_groups_put_hidden_matrices_on_muon_and_the_rest_on_adamw() -> None:
    model = tiny_model()
    groups = muon_parameter_groups(model, 0.1)
    muon = {id(p) for g in groups if g.get("use_muon") for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = sorted(names[i] for i in muon)
    assert on_muon == sorted(
        n
        for n, p in model.named_parameters()
        if p.dim() == 2 and "embedding" not in n  # qkv, out_proj, up, down
    )
    assert on_muon and all(("attn" in n or "ffn" in n) and n.endswith("weight") for n in on_muon)
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each exactly once
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(model.get_parameter(names[i]).dim() == 2 for i in decay)


def test_untied_output_head_stays_on_adamw() -> None:
    from lmrs.model.gpt import create_small_model

    model = create_small_model(60, embed_dim=32, num_heads=2, num_layers=1, ff_dim=64,
                               max_seq_len=16, tie_weights=False)  # fmt: skip
    muon = {id(p) for g in muon_parameter_groups(model, 0.1) if g.get("use_muon")
            for p in g["params"]}  # fmt: skip
    assert id(model.lm_head.weight) not in muon
    assert id(model.blocks[0].ffn.up.weight) in muon


def test_groups_have_roles_and_take_their_own_peak_rates() -> None:
    from lmrs.model.gpt import create_small_model
    from lmrs.training.trainer import create_optimizer, set_learning_rates

    model = create_small_model(60, embed_dim=32, num_heads=2, num_layers=1, ff_dim=64,
                               max_seq_len=16, tie_weights=False)  # fmt: skip
    groups = muon_parameter_groups(model, 0.1)
    role = {id(p): g["role"] for g in groups for p in g["params"]}
    assert role[id(model.token_embedding.weight)] == "embed"
    assert role[id(model.lm_head.weight)] == "head"
    assert role[id(model.blocks[0].ffn.up.weight)] == "muon"
    assert {g["role"] for g in groups if g["weight_decay"] == 0} == {"no_decay"}
    config = TrainConfig(learning_rate=4e-3, embed_lr=2e-2, head_lr=1e-3, muon_lr=8e-3)
    optimizer = create_optimizer(model, config, torch.device("cpu"))
    set_learning_rates(optimizer, 2e-3, config)  # half the peak: every group at half its own
    rates = {g["role"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({"muon": 4e-3, "embed": 1e-2, "head": 5e-4, "no_decay": 2e-3})
    tied = create_small_model(60, embed_dim=32, num_heads=2, num_layers=1, ff_dim=64,
                              max_seq_len=16)  # fmt: skip
    tied_roles = {g["role"] for g in muon_parameter_groups(tied, 0.1)}
    assert "head" not in tied_roles  # a tied head is the embedding, in its group


def test_optimizer_state_of_the_earlier_grouping_is_regrouped_by_name() -> None:
    """An earlier lmrs saved Muon's AdamW matrices as one group; resuming regroups them by
    parameter name, each parameter keeping its own moments."""
    from lmrs.distributed import (
        DistContext,
        load_full_optimizer_state_dict,
        regrouped_optimizer_state,
    )
    from lmrs.model.gpt import create_small_model
    from lmrs.training.trainer import create_optimizer

    model = create_small_model(60, embed_dim=32, num_heads=2, num_layers=1, ff_dim=64,
                               max_seq_len=16, tie_weights=False)  # fmt: skip
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    new = optimizer.state_dict()
    ordered = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named_state = {ordered[i]: v for i, v in new["state"].items()}
    by_role = {g["role"]: g for g in new["param_groups"]}
    old_groups = [  # the earlier layout: muon, one AdamW group with decay, no decay
        {**by_role["muon"], "params": [ordered[i] for i in by_role["muon"]["params"]]},
        {
            **by_role["embed"],
            "params": [ordered[i] for role in ("embed", "head") for i in by_role[role]["params"]],
        },  # fmt: skip
        {**by_role["no_decay"], "params": [ordered[i] for i in by_role["no_decay"]["params"]]},
    ]
    for group in old_groups:
        group.pop("role")
    old = {"state": named_state, "param_groups": old_groups}
    fresh = create_optimizer(model, TrainConfig(), torch.device("cpu"))
    regrouped = regrouped_optimizer_state(model, fresh, old)
    assert [g["role"] for g in regrouped["param_groups"]] == [g["role"] for g in fresh.param_groups]
    load_full_optimizer_state_dict(model, fresh, old, DistContext())
    for p in model.parameters():
        assert fresh.state[p].keys() == optimizer.state[p].keys()
        for key, value in optimizer.state[p].items():
            assert torch.equal(fresh.state[p][key], value), (names[id(p)], key)


def test_muon_groups_reject_vectors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch>=2.9")
def test_matches_torch_muon_plus_adamw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same trajectory as torch.optim.Muon (match_rms_adamw) on the matrices and
    torch.optim.AdamW on everything else, stepped side by side."""
    # torch's Muon iterates in bfloat16 on every device; ours does where it is native
    monkeypatch.setattr("lmrs.training.optim.native_bf16", lambda device: True)
    torch.manual_seed(0)
    ours_model = tiny_model()
    ref_model = copy.deepcopy(ours_model)
    settings = dict(lr=3e-3, weight_decay=0.1)
    ours = MuonAdamW(
        muon_parameter_groups(ours_model, 0.1), betas=(0.9, 0.95), eps=1e-8, **settings
    )
    ref_groups = muon_parameter_groups(ref_model, 0.1)
    ref_muon = torch.optim.Muon(
        ref_groups[0]["params"], momentum=0.95, adjust_lr_fn="match_rms_adamw", **settings
    )
    ref_adamw = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "use_muon"} for g in ref_groups[1:]],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    ids = torch.randint(0, 100, (4, 17))
    for _ in range(5):
        for model, step in ((ours_model, [ours]), (ref_model, [ref_muon, ref_adamw])):
            loss = model.compute_loss(ids[:, :-1], ids[:, 1:])
            loss.backward()
            for optimizer in step:
                optimizer.step()
                optimizer.zero_grad()
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(next(tiny_model().parameters()), next(ours_model.parameters()))


def test_train_with_muon_learns_and_resumes_exactly(tmp_path: Path) -> None:
    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16, eot_id=99)
    settings = dict(
        max_steps=30, learning_rate=2e-2, warmup_steps=3, optimizer="muon", log_every=1, **QUIET
    )
    straight = train(tiny_model(), batches, out_dir=str(tmp_path / "a"), **settings)
    assert sum(straight.losses[-5:]) / 5 < 0.6 * sum(straight.losses[:5]) / 5
    train(tiny_model(), batches, out_dir=str(tmp_path / "b"), stop_at_step=15, **settings)
    resumed = train(
        tiny_model(seed=7),
        batches,
        out_dir=str(tmp_path / "b"),
        resume_from=str(tmp_path / "b"),
        **settings,
    )
    assert resumed.start_step == 15
    assert resumed.losses == pytest.approx(straight.losses[15:], abs=1e-6)


def test_muon_works_with_fsdp_and_checks_its_momentum() -> None:
    TrainConfig(optimizer="muon", strategy="fsdp").validate()  # tests/test_distributed.py
    with pytest.raises(ValueError, match="muon_momentum"):
        TrainConfig(optimizer="muon", muon_momentum=1.0).validate()


def test_muon_momentum_warms_up_linearly_then_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lmrs.training.trainer import create_optimizer, muon_momentum_at, set_muon_momentum

    config = TrainConfig(muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup=4)
    assert [muon_momentum_at(s, config) for s in range(6)] == pytest.approx(
        [0.85, 0.875, 0.9, 0.925, 0.95, 0.95]
    )
    assert muon_momentum_at(0, TrainConfig(muon_momentum=0.9)) == 0.9  # no warmup: constant
    optimizer = create_optimizer(tiny_model(), config, torch.device("cpu"))
    set_muon_momentum(optimizer, 0.5)
    assert {bool(g["use_muon"]): g.get("momentum") for g in optimizer.param_groups}[True] == 0.5
    for fields, name in (({"muon_momentum_start": 1.0}, "muon_momentum_start"),
                         ({"muon_momentum_warmup": -1}, "muon_momentum_warmup")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            TrainConfig(**fields).validate()
    # the training loop sets it before every step
    seen: list[float] = []
    # (sys.modules: the package's `train` attribute is the function, not this module)
    monkeypatch.setattr(
        sys.modules["lmrs.training.trainer"], "set_muon_momentum", lambda _opt, m: seen.append(m)
    )
    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16, eot_id=99)
    train(tiny_model(), batches, max_steps=6, muon_momentum_warmup=4, **QUIET)
    assert seen == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])


def test_work_is_split_in_chunks_of_one_shape_one_matrix_per_rank() -> None:
    shapes = [(96, 32), (32, 32), (64, 32), (96, 32), (32, 32), (64, 32), (96, 32)]
    params = [torch.zeros(shape) for shape in shapes]
    # two ranks: same-shaped matrices paired in order of appearance, the odd one alone
    assert _chunks(params, 2) == [[0, 3], [6], [1, 4], [2, 5]]
    assert _chunks(params, 4) == [[0, 3, 6], [1, 4], [2, 5]]
    assert _chunks(params, 1) == [[i] for i in (0, 3, 6, 1, 4, 2, 5)]


def test_schedule_shapes_warmup_hold_and_decay_to_the_floor() -> None:
    from lmrs.training.trainer import learning_rate_at

    def curve(**fields: object) -> list[float]:
        config = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1, **fields)
        return [learning_rate_at(step, config, 110) for step in range(111)]

    cosine = curve(decay="cosine", cooldown_frac=1.0)
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
    assert cosine[10] == pytest.approx(1.0) and cosine[60] == pytest.approx(0.55)
    assert cosine[110] == pytest.approx(0.1)
    linear = curve(decay="linear", cooldown_frac=1.0)
    assert linear[35] == pytest.approx(1.0 - 0.9 * 0.25) and linear[110] == pytest.approx(0.1)
    # warmup-stable-decay: the peak holds for the first 60 % after warmup, then decays
    wsd = curve()  # the default: linear over the last 40%
    assert wsd[10:71] == pytest.approx([1.0] * 61)
    assert wsd[90] == pytest.approx(1.0 - 0.9 * 0.5) and wsd[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(wsd[10:], wsd[11:]))
    # a time-budgeted run passes the fraction of its budget spent instead of steps
    config = TrainConfig(learning_rate=1.0, warmup_steps=0, cooldown_frac=0.5, min_lr_ratio=0.1)
    assert learning_rate_at(5, config, None, progress=0.4) == 1.0
    assert learning_rate_at(5, config, None, progress=1.0) == pytest.approx(0.1)


def test_schedule_options_are_checked() -> None:
    for fields, name in (({"decay": "step"}, "decay"), ({"cooldown_frac": 0.0}, "cooldown_frac"),
                         ({"muon_lr": -1.0}, "muon_lr"), ({"embed_lr": 0.0}, "embed_lr"),
                         ({"head_lr": float("inf")}, "head_lr")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            TrainConfig(**fields).validate()


def test_muon_matrices_take_their_own_rate_on_the_same_schedule() -> None:
    from lmrs.training.trainer import create_optimizer, set_learning_rates

    config = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=2e-2, embed_lr=None)
    optimizer = create_optimizer(tiny_model(), config, torch.device("cpu"))
    set_learning_rates(optimizer, 5e-4, config)  # the base rate halfway down a decay
    rates = {bool(g.get("use_muon")): g["lr"] for g in optimizer.param_groups}
    assert rates == {True: pytest.approx(1e-2), False: pytest.approx(5e-4)}
    adamw = create_optimizer(tiny_model(), replace(config, optimizer="adamw"), torch.device("cpu"))
    set_learning_rates(adamw, 5e-4, config)
    assert {g["lr"] for g in adamw.param_groups} == {5e-4}


def test_train_follows_the_configured_schedule(tmp_path: Path) -> None:
    import json

    batches = prepare_training_data(pattern_docs(), batch_size=4, seq_len=16, eot_id=99)
    settings = dict(max_steps=8, warmup_steps=2, decay="linear", cooldown_frac=0.5,
                    min_lr_ratio=0.0, learning_rate=1e-2, log_every=1, **QUIET)  # fmt: skip
    train(tiny_model(), batches, out_dir=str(tmp_path), **settings)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rates = [r["lr"] for r in map(json.loads, lines) if "lr" in r]
    # steps 3..8 sit at 0, 1/6, ..., 5/6 of the decay stretch: held to 1/2, then linear
    assert rates == pytest.approx([5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
