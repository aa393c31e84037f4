"""The seed README's names do what the lmrs calls they alias do."""

from __future__ import annotations

from pathlib import Path

import torch
from tok_corpus import make_texts, write_corpus

import lmrs
from lmrs import BytePairEncoding, Tokenizer, Transformer


def test_tokenizer_aliases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_corpus(src, make_texts(20, seed=5))
    write_corpus(src / "skip", ["not this one"], suffix=".md")
    seed_result = BytePairEncoding.add_to_corpus(src, tmp_path / "a", [".txt"], show_progress=False)
    lmrs_result = lmrs.add_to_corpus(src, tmp_path / "b", [".txt"], show_progress=False)
    assert seed_result == lmrs_result and seed_result.added == 20
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))

    vocab = BytePairEncoding.compress(tmp_path / "a", 350)
    assert vocab == lmrs.compress(tmp_path / "a", 350)
    tok = Tokenizer.from_vocab(vocab)
    trained = Tokenizer.train(tmp_path / "a", 350, show_progress=False)
    assert tok.hash == trained.hash and tok.vocab_size == 350

    text = make_texts(1, seed=9)[0]
    ids = Tokenizer.encode(tok, text, add_special_tokens=True)
    assert ids == [*tok.encode(text), tok.eot_id]
    assert tok.encode(text, add_special_tokens=False) == tok.encode(text)


def test_transformer_aliases() -> None:
    torch.manual_seed(0)
    model = Transformer.create_model(300, 32, 32, 2, 2, 64, 0.0)
    torch.manual_seed(0)
    same = lmrs.create_model(300, 32, 32, 2, 2, 64, 0.0)
    assert model.config == same.config
    for (name, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name

    ids = [list(range(i, i + 40)) for i in range(0, 200, 40)]
    batches = lmrs.prepare_training_data(ids, batch_size=2, seq_len=16, eot_id=299)
    options = {"max_steps": 2, "warmup_steps": 1, "eval_every": 0, "show_progress": False}
    seed_run = Transformer.train(model, batches, **options)
    lmrs_run = lmrs.train(same, batches, **options)
    assert seed_run.losses == lmrs_run.losses

    prompt = [1, 2, 3]
    assert Transformer.generate(model, prompt, max_length=5, seed=1) == lmrs.generate(
        same, prompt, max_length=5, seed=1
    )
    assert Transformer.evaluate(model, batches).loss == lmrs.evaluate(same, batches).loss
