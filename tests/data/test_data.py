"""data.py: in-memory batches, token files (memmap, sidecar checks, shards), splits, sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrs._lmrs import head_tail_sha256
from lmrs.data.tokens import DataError, TokenDataset, micro_batch_size, prepare_training_data

EOT = 99
VOCAB = 100


class FakeTokenizer:
    """Just what TokenDataset reads from a tokenizer: token i stands for (i % 3) + 1 bytes."""

    def __init__(self, hash: str = "h" * 64, vocab_size: int = VOCAB, eot_id: int = EOT):
        self.hash = hash
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.special_tokens = {"<|endoftext|>": eot_id}

    def id_to_token(self, id: int) -> bytes:
        return b"x" * ((id % 3) + 1)

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps({"hash": self.hash, "vocab_size": self.vocab_size}))


def make_docs(count: int, seed: int = 0, low: int = 5, high: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, EOT, size=int(rng.integers(low, high))) for _ in range(count)]


def write_token_file(path: Path, docs: list[np.ndarray], **sidecar_overrides) -> np.ndarray:
    """A token file per DESIGN.md: each document followed by eot, uint16, + sidecar."""
    stream = np.concatenate([np.append(d, EOT) for d in docs]).astype(np.uint16)
    stream.tofile(path)
    sidecar = {
        "format": "lmrs-tokens",
        "version": 1,
        "dtype": "uint16",
        "num_tokens": int(len(stream)),
        "num_documents": len(docs),
        "vocab_size": VOCAB,
        "tokenizer_hash": "h" * 64,
        "eot_id": EOT,
        "num_bytes": int(sum(((d % 3) + 1).sum() for d in docs)),
    }
    sidecar.update(sidecar_overrides)
    Path(str(path) + ".json").write_text(json.dumps(sidecar))
    return stream


# -- prepare_training_data --------------------------------------------------------------


def test_windows_are_shifted_by_one_and_cover_the_stream() -> None:
    docs = [[1, 2, 3, 4, 5], [6, 7, 8]]
    batches = prepare_training_data(docs, batch_size=2, seq_len=3, shuffle=False, eot_id=0)
    stream = [1, 2, 3, 4, 5, 0, 6, 7, 8, 0]  # 10 tokens → 3 windows of 4 at stride 3
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    assert inputs.dtype == torch.long and inputs.shape == (3, 3)
    assert inputs.tolist() == [stream[0:3], stream[3:6], stream[6:9]]
    assert targets.tolist() == [stream[1:4], stream[4:7], stream[7:10]]
    assert [len(b[0]) for b in batches] == [2, 1]
    assert len(prepare_training_data(docs, 2, 3, shuffle=False, eot_id=0, drop_last=True)) == 1


def test_shuffle_is_seeded_and_a_flat_list_works() -> None:
    flat = list(range(1000))
    a = prepare_training_data(flat, batch_size=4, seq_len=8, seed=1)
    b = prepare_training_data(flat, batch_size=4, seq_len=8, seed=1)
    c = prepare_training_data(flat, batch_size=4, seq_len=8, seed=2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    for inputs, targets in a:
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert torch.equal(targets - inputs, torch.ones_like(inputs))


def test_too_short_raises() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        prepare_training_data([[1, 2, 3]], batch_size=1, seq_len=8)


# -- TokenDataset ---------------------------------------------------------------------------


def test_memmap_and_document_boundaries(tmp_path: Path) -> None:
    docs = make_docs(10)
    stream = write_token_file(tmp_path / "t.bin", docs)
    ds = TokenDataset(tmp_path / "t.bin")
    assert isinstance(ds.stream.parts[0], np.memmap)
    assert ds.num_tokens == len(stream) and ds.num_documents == 10
    assert np.array_equal(ds.stream.read(0, len(stream)), stream)
    lengths = [len(d) + 1 for d in docs]
    assert ds.doc_ends.tolist() == np.cumsum(lengths).tolist()


def test_split_by_document(tmp_path: Path) -> None:
    docs = make_docs(40)
    stream = write_token_file(tmp_path / "t.bin", docs)
    ds = TokenDataset(tmp_path / "t.bin")
    train, val = ds.split(0.25, seed=3)
    assert len(train) + len(val) == len(stream)
    assert len(val) >= 0.25 * len(stream) and len(train) > 0
    doc_set = {tuple(np.append(d, EOT)) for d in docs}
    for split in (train, val):
        tokens = split.read(0, len(split))
        # the split is a concatenation of whole documents, each ending in eot
        ends = np.flatnonzero(tokens == EOT) + 1
        pieces = np.split(tokens, ends[:-1])
        assert all(tuple(p) in doc_set for p in pieces)
    # disjoint and deterministic
    train_runs = {tuple(r) for r in train.runs}
    assert not train_runs & {tuple(r) for r in val.runs}
    again = ds.split(0.25, seed=3)[1]
    assert np.array_equal(again.runs, val.runs)
    assert not np.array_equal(ds.split(0.25, seed=4)[1].runs, val.runs)


def test_split_bytes_exact_with_tokenizer_and_proportional_without(tmp_path: Path) -> None:
    docs = make_docs(20)
    write_token_file(tmp_path / "t.bin", docs)
    exact = TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer())
    train, val = exact.split(0.2, seed=0)
    assert train.bytes_exact and val.bytes_exact
    expected_val = sum(int(((t % 3) + 1).sum()) for t in val.read(0, len(val)) if t != EOT)
    assert val.num_bytes == expected_val
    assert train.num_bytes + val.num_bytes == exact.info.num_bytes
    approx = TokenDataset(tmp_path / "t.bin")
    a_train, a_val = approx.split(0.2, seed=0)
    assert not a_val.bytes_exact
    assert a_val.num_bytes == round(approx.info.num_bytes * len(a_val) / approx.num_tokens)


def test_single_document_falls_back_to_token_split(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(1, low=200, high=201))
    train, val = TokenDataset(tmp_path / "t.bin").split(0.1)
    assert len(train) + len(val) == 201 and 15 <= len(val) <= 25


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 2}, "version"),
        ({"num_tokens": 3}, "does not match the sidecar"),
        ({"format": "other"}, "format"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_bad_sidecar_names_the_file(tmp_path: Path, change: dict, message: str) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(3), **change)
    with pytest.raises(DataError, match=message) as info:
        TokenDataset(tmp_path / "t.bin")
    assert "t.bin" in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_tokens": "12"}, "'num_tokens' is '12', not a non-negative integer"),
        ({"num_tokens": 1.5}, "num_tokens"),
        ({"num_tokens": True}, "num_tokens"),
        ({"eot_id": -1}, "eot_id"),
        ({"vocab_size": None}, "vocab_size"),
        ({"num_documents": [3]}, "num_documents"),
        ({"tokenizer_hash": 7}, "tokenizer_hash"),
        ({"dtype": ["uint16"]}, "dtype"),
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"format": {"a": 1}}, "format"),
        ({"size_bytes": 10}, "has no 'head_tail_sha256'"),
        ({"head_tail_sha256": "0" * 64}, "has no 'size_bytes'"),
        ({"size_bytes": "10", "head_tail_sha256": "0" * 64}, "size_bytes"),
        ({"size_bytes": 10, "head_tail_sha256": "xyz"}, "not a sha256"),
        ({"size_bytes": 10, "head_tail_sha256": "0" * 64}, "truncated or replaced"),
    ],
)
def test_sidecar_with_wrong_types_is_one_line_naming_it(
    tmp_path: Path, change: dict, message: str
) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(3), **change)
    with pytest.raises(DataError, match=message) as info:
        TokenDataset(tmp_path / "t.bin")
    assert str(info.value).startswith(str(tmp_path / "t.bin")) and "\n" not in str(info.value)


def test_sidecar_without_checks_still_opens_and_with_them_is_verified(tmp_path: Path) -> None:
    docs = make_docs(3)
    stream = write_token_file(tmp_path / "t.bin", docs)  # as written before the checks
    assert TokenDataset(tmp_path / "t.bin").num_tokens == len(stream)
    size, checksum = head_tail_sha256(str(tmp_path / "t.bin"))
    write_token_file(tmp_path / "t.bin", docs, size_bytes=size, head_tail_sha256=checksum)
    assert TokenDataset(tmp_path / "t.bin").num_tokens == len(stream)
    docs[0][0] = (docs[0][0] + 1) % EOT  # the same size, another token: not this sidecar's file
    write_token_file(tmp_path / "t.bin", docs, size_bytes=size, head_tail_sha256=checksum)
    with pytest.raises(DataError, match="t.bin: checksum mismatch with t.bin.json"):
        TokenDataset(tmp_path / "t.bin")


def test_missing_sidecar_and_tokenizer_mismatch(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(3))
    with pytest.raises(DataError, match="another tokenizer") as info:
        TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer(hash="z" * 64))
    assert "t.bin.json" in str(info.value)
    with pytest.raises(DataError, match="vocab_size"):
        TokenDataset(tmp_path / "t.bin", tokenizer=FakeTokenizer(vocab_size=500))
    (tmp_path / "t.bin.json").unlink()
    with pytest.raises(DataError, match="sidecar not found"):
        TokenDataset(tmp_path / "t.bin")


def test_token_id_outside_vocab(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", [np.array([1, 2, 150])])
    with pytest.raises(DataError, match="outside the vocabulary"):
        TokenDataset(tmp_path / "t.bin")


def test_shard_directory_reads_as_one_stream(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    first = write_token_file(shards / "shard-00000.bin", make_docs(4, seed=1))
    second = write_token_file(shards / "shard-00001.bin", make_docs(5, seed=2))
    manifest = json.loads((shards / "shard-00000.bin.json").read_text())
    manifest.update(
        format="lmrs-shards",
        shards=["shard-00000.bin", "shard-00001.bin"],
        num_tokens=len(first) + len(second),
        num_documents=9,
    )
    (shards / "manifest.json").write_text(json.dumps(manifest))
    ds = TokenDataset(shards)
    assert ds.num_documents == 9
    assert np.array_equal(ds.stream.read(0, ds.num_tokens), np.concatenate([first, second]))
    # a window across the shard boundary
    assert np.array_equal(
        ds.stream.read(len(first) - 2, 4),
        np.concatenate([first, second])[len(first) - 2 : len(first) + 2],
    )
    manifest["num_tokens"] += 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json"):
        TokenDataset(shards)
    # a manifest that still lists unfinished parts is refused, not read as a partial corpus
    manifest["num_tokens"] -= 1
    manifest.update(num_parts=3, missing_parts=[2])
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json: parts \[2\] of 3 are not encoded"):
        TokenDataset(shards)


def write_shards(directory: Path, **manifest_overrides: object) -> dict:
    directory.mkdir(exist_ok=True)
    first = write_token_file(directory / "shard-00000.bin", make_docs(4, seed=1))
    second = write_token_file(directory / "shard-00001.bin", make_docs(5, seed=2))
    manifest = json.loads((directory / "shard-00000.bin.json").read_text())
    manifest.update(
        format="lmrs-shards",
        shards=["shard-00000.bin", "shard-00001.bin"],
        num_tokens=len(first) + len(second),
        num_documents=9,
    )
    manifest.update(manifest_overrides)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize(
    "entry",
    ["../x.bin", "/etc/passwd", "sub/shard.bin", "..", ".", "", "a\\b.bin", "a\nb.bin", 5, None],
)
def test_manifest_entries_must_be_plain_names_in_the_directory(
    tmp_path: Path, entry: object
) -> None:
    write_token_file(tmp_path / "x.bin", make_docs(2))  # a valid token file outside
    shards = tmp_path / "shards"
    write_shards(shards, shards=["shard-00000.bin", entry])
    with pytest.raises(DataError, match="not a plain file name") as info:
        TokenDataset(shards)
    assert str(info.value).startswith(f"{shards / 'manifest.json'}: shard entry {entry!r}")


def test_manifest_shard_checks_are_verified(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    manifest = write_shards(shards)
    size, checksum = head_tail_sha256(str(shards / "shard-00001.bin"))
    good = {"size_bytes": size, "head_tail_sha256": checksum}
    write_shards(shards, shard_checks={"shard-00001.bin": good})
    assert TokenDataset(shards).num_tokens == manifest["num_tokens"]
    bad = dict(good, head_tail_sha256="0" * 64)
    write_shards(shards, shard_checks={"shard-00001.bin": bad})
    with pytest.raises(DataError, match="shard-00001.bin: checksum mismatch with manifest.json"):
        TokenDataset(shards)
    for checks in ([1], {"shard-00001.bin": 3}, {"shard-00001.bin": {"size_bytes": size}}):
        write_shards(shards, shard_checks=checks)
        with pytest.raises(DataError, match="manifest.json"):
            TokenDataset(shards)


# -- sampler ---------------------------------------------------------------------------------


def test_global_batch_is_split_the_same_for_any_world_and_accumulation(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(50))
    split = TokenDataset(tmp_path / "t.bin").full()
    kw = dict(seq_len=8, global_batch_size=8, seed=5)

    def global_batch(world: int, accum: int, step: int) -> torch.Tensor:
        parts = [
            split.micro_batch(step, a, rank=r, world_size=world, accum_steps=accum, **kw)[0]
            for r in range(world)
            for a in range(accum)
        ]
        return torch.cat(parts)

    for step in (0, 7):
        reference = global_batch(1, 1, step)
        assert torch.equal(global_batch(1, 4, step), reference)
        assert torch.equal(global_batch(2, 2, step), reference)
        assert torch.equal(global_batch(4, 1, step), reference)
    assert not torch.equal(global_batch(1, 1, 0), global_batch(1, 1, 1))
    with pytest.raises(ValueError, match="multiple of 3"):
        micro_batch_size(8, 3, 1)


def test_epoch_visits_each_window_once(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(30))
    split = TokenDataset(tmp_path / "t.bin").full()
    per_epoch = split.steps_per_epoch(seq_len=8, global_batch_size=4)
    starts = np.concatenate([split.global_batch_starts(s, 8, 4, seed=0) for s in range(per_epoch)])
    assert len(set(starts.tolist())) == len(starts)
    assert len(set(((starts - starts.min()) % 8).tolist())) == 1  # one offset per epoch
    inputs, targets = split.windows(starts[:2], 8)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_eval_batches_fixed_and_capped(tmp_path: Path) -> None:
    write_token_file(tmp_path / "t.bin", make_docs(30))
    _, val = TokenDataset(tmp_path / "t.bin").split(0.5, seed=0)
    everything = val.eval_batches(seq_len=8, batch_size=3)
    windows = sum(len(b[0]) for b in everything)
    assert windows == (len(val) - 1) // 8
    capped = val.eval_batches(seq_len=8, batch_size=3, max_batches=2)
    assert len(capped) == 2
    again = val.eval_batches(seq_len=8, batch_size=3, max_batches=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(capped, again))
    ranks = [val.eval_batches(8, 3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) + len(ranks[1]) == len(everything)
