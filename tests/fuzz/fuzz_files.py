"""Fuzz the loaders of lmrs's own files: tokenizer JSON, token files (data, sidecar,
shard manifest) and checkpoints (every file, with and without checksums.json).

Each case builds a valid file from random parts, mutates it (JSON: keys deleted, retyped or
replaced by random JSON, nested values changed, the tokenizer's hash recomputed or not so
that mutations reach the checks behind it; bytes: truncated, flipped, spliced), and loads
it. The loader must either succeed, and the result then work (a tokenizer round-trips text,
a token file reads), or raise the documented error: ``TokenizerError`` for a tokenizer,
``DataError`` for a token file, ``CheckpointError`` for a checkpoint. Any other exception,
or a crash of the process, is a failure.

    python tests/fuzz/fuzz_files.py --cases 100000 [--seed 0] [--kind all|tokenizer|...]

``tests/test_file_fuzz.py`` runs the same cases under hypothesis, a few hundred in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np

from lmrs import Tokenizer, TokenizerError, _lmrs
from lmrs.data.tokens import DataError, TokenDataset

T = TypeVar("T")

# Strings chosen to hit the checks: names that leave a directory, odd unicode, specials.
NASTY_STRINGS = [
    "",
    "../x.bin",
    "/etc/passwd",
    "a/b.bin",
    "..",
    ".",
    "a\\b",
    "\x00",
    "shard-00000.bin",
    "uint16",
    "uint32",
    "lmrs-tokens",
    "lmrs-shards",
    "lmrs-tokenizer",
    "<|endoftext|>",
    "x*",
    "(",
    "\\w+",
    "é中🙂",
    "0" * 64,
    "f" * 63,
]
NASTY_INTS = [0, 1, -1, 2, 255, 256, 257, 65535, 65536, 2**31, 2**32, 2**63, 2**64, 10**30]


class Chooser:
    """The random choices a case makes; random.Random for the script, hypothesis for pytest
    (so that hypothesis can shrink a failing case)."""

    def integer(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return self.integer(0, 999) < p * 1000

    def text(self) -> str:
        alphabet = "ab xé\n中🙂<|>'0"
        return "".join(self.choice(alphabet) for _ in range(self.integer(0, 12)))

    def json_value(self, depth: int = 0) -> Any:
        kind = self.integer(0, 9 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return self.chance(0.5)
        if kind == 2:
            return self.choice(NASTY_INTS) * self.choice([1, -1])
        if kind == 3:
            return self.choice([0.5, -1.0, 1e300, 1.0, float("nan"), float("inf")])
        if kind in (4, 5):
            return self.choice(NASTY_STRINGS) if self.chance(0.6) else self.text()
        if kind in (6, 7):
            return [self.json_value(depth + 1) for _ in range(self.integer(0, 3))]
        return {self.text(): self.json_value(depth + 1) for _ in range(self.integer(0, 3))}


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------


def mutate_json(c: Chooser, obj: dict[str, Any], keys: Sequence[str]) -> None:
    """One change to `obj` (in place): a key deleted, retyped, or a nested value changed."""
    key = c.choice(list(keys) + ["unknown"])
    action = c.integer(0, 3)
    if action == 0:
        obj.pop(key, None)
    elif action == 1:
        obj[key] = c.json_value()
    elif action == 2 and isinstance(obj.get(key), list) and obj[key]:
        index = c.integer(0, len(obj[key]) - 1)
        obj[key][index] = c.json_value() if c.chance(0.5) else c.choice(NASTY_STRINGS)
    elif action == 3 and isinstance(obj.get(key), dict):
        inner = obj[key]
        if inner and c.chance(0.5):
            victim = c.choice(sorted(inner))
            inner[victim] = c.json_value()
        else:
            inner[c.choice(NASTY_STRINGS)] = c.json_value()
    else:
        obj[key] = c.choice(NASTY_INTS) if c.chance(0.5) else c.choice(NASTY_STRINGS)


def mutate_bytes(c: Chooser, data: bytes) -> bytes:
    """A truncation, flipped bytes, or junk spliced in."""
    action = c.integer(0, 3)
    if not data or action == 0:
        return data[: c.integer(0, len(data))]
    out = bytearray(data)
    if action == 1:
        for _ in range(c.integer(1, 4)):
            out[c.integer(0, len(out) - 1)] ^= 1 << c.integer(0, 7)
    elif action == 2:
        at = c.integer(0, len(out))
        out[at:at] = bytes(c.integer(0, 255) for _ in range(c.integer(1, 8)))
    else:
        del out[c.integer(0, len(out) - 1)]
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Tokenizer JSON
# ---------------------------------------------------------------------------------------

PATTERNS = [None, "x*", r"\w+|\s", r"\p{L}+| ?\d{1,3}|.", "(?i:ab)|b"]
TOKENIZER_KEYS = ["format", "version", "pattern", "special_tokens", "merges", "hash"]


def tokenizer_hash(obj: dict[str, Any]) -> Optional[str]:
    """The hash lmrs computes over the content (vocab.rs), or None when the fields are of
    types it cannot be computed from."""
    try:
        canonical = {
            "format": obj["format"],
            "version": obj["version"],
            "pattern": obj["pattern"],
            "merges": obj["merges"],
            "special_tokens": dict(sorted(obj["special_tokens"].items())),
        }
        text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (KeyError, TypeError, AttributeError, ValueError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_case(c: Chooser) -> bytes:
    num_merges = c.integer(0, 30)
    merges = [(c.integer(0, 255 + i), c.integer(0, 255 + i)) for i in range(num_merges)]
    specials = [c.choice(["<|pad|>", "<|x|>", "é", "ab"]) for _ in range(c.integer(0, 2))]
    tok = Tokenizer.from_vocab(merges, pattern=c.choice(PATTERNS), special_tokens=specials)
    obj = json.loads(tok.to_json())
    for _ in range(c.integer(0, 3)):
        mutate_json(c, obj, TOKENIZER_KEYS)
    if c.chance(0.6):
        rehashed = tokenizer_hash(obj)
        if rehashed is not None and "hash" in obj:
            obj["hash"] = rehashed
    data = json.dumps(obj, ensure_ascii=c.chance(0.5)).encode("utf-8", "surrogatepass")
    if c.chance(0.2):
        data = mutate_bytes(c, data)
    return data


def check_tokenizer(data: bytes, where: Path, text: str) -> str:
    """'loaded' or 'refused'; raises on anything else."""
    path = where / "tok.json"
    path.write_bytes(data)
    try:
        tok = Tokenizer.load(path)
    except TokenizerError as e:
        message = str(e)
        if not message.startswith(str(path)) or "\n" in message:
            raise AssertionError(f"error does not name the file in one line: {message!r}") from e
        return "refused"
    for sample in (text, "hello world <|endoftext|> xx é中"):
        if (
            tok.decode(tok.encode(sample)) != sample
            or tok.decode(tok.encode_ordinary(sample)) != sample
        ):
            raise AssertionError(f"loaded tokenizer does not round-trip {sample!r}")
    return "loaded"


# ---------------------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------------------

SIDECAR_KEYS = [
    "format",
    "version",
    "dtype",
    "num_tokens",
    "num_documents",
    "num_bytes",
    "vocab_size",
    "tokenizer_hash",
    "eot_id",
    "size_bytes",
    "head_tail_sha256",
]
MANIFEST_KEYS = [*SIDECAR_KEYS[:-2], "shards", "num_parts", "missing_parts", "shard_checks"]
VOCAB, EOT = 300, 299


def write_token_file(c: Chooser, path: Path, dtype: str) -> dict[str, Any]:
    """A valid token file (data + sidecar with its checks); returns the sidecar."""
    docs = [
        [c.integer(0, EOT - 1) for _ in range(c.integer(0, 6))] + [EOT]
        for _ in range(c.integer(0, 3))
    ]
    stream = np.array([t for doc in docs for t in doc], dtype=dtype)
    stream.tofile(path)
    size, checksum = _lmrs.head_tail_sha256(str(path))
    sidecar = {
        "format": "lmrs-tokens",
        "version": 1,
        "dtype": dtype,
        "num_tokens": len(stream),
        "num_documents": len(docs),
        "num_bytes": 3 * len(stream),
        "vocab_size": VOCAB,
        "tokenizer_hash": "a" * 64,
        "eot_id": EOT,
        "size_bytes": size,
        "head_tail_sha256": checksum,
    }
    return sidecar


def tokens_case(c: Chooser, where: Path) -> Path:
    """Writes a (mutated) token file or shard directory under `where`; returns its path."""
    (where / "outside.bin").write_bytes(b"\x01\x00" * 4)  # a target for "../" entries
    dtype = c.choice(["uint16", "uint32"])
    if c.chance(0.6):
        path = where / "t.bin"
        sidecar = write_token_file(c, path, dtype)
        for _ in range(c.integer(0, 2)):
            mutate_json(c, sidecar, SIDECAR_KEYS)
        files = [(path, "data"), (Path(f"{path}.json"), sidecar)]
    else:
        path = where / "shards"
        path.mkdir()
        names = [f"shard-{i:05d}.bin" for i in range(c.integer(1, 3))]
        sidecars = [write_token_file(c, path / n, dtype) for n in names]
        manifest: dict[str, Any] = {
            **{k: sidecars[0][k] for k in SIDECAR_KEYS[:-2]},
            "shards": list(names),
            "num_tokens": sum(s["num_tokens"] for s in sidecars),
            "num_documents": sum(s["num_documents"] for s in sidecars),
            "num_parts": 1,
            "missing_parts": [],
            "shard_checks": {
                n: {"size_bytes": s["size_bytes"], "head_tail_sha256": s["head_tail_sha256"]}
                for n, s in zip(names, sidecars)
            },
        }
        manifest["format"] = "lmrs-shards"
        for _ in range(c.integer(0, 2)):
            mutate_json(c, manifest, MANIFEST_KEYS)
        if c.chance(0.2):
            mutate_json(c, c.choice(sidecars), SIDECAR_KEYS)
        files = [(path / "manifest.json", manifest)]
        files += [(path / n, "data") for n in names]
        files += [(path / f"{n}.json", s) for n, s in zip(names, sidecars)]
    for file, content in files:
        if content != "data":
            file.write_text(json.dumps(content))
    if c.chance(0.3):
        file, _ = c.choice(files)
        if c.chance(0.1):
            file.unlink()
        else:
            file.write_bytes(mutate_bytes(c, file.read_bytes()))
    return path


def check_tokens(path: Path) -> str:
    """'loaded' or 'refused'; raises on anything else."""
    try:
        ds = TokenDataset(path)
    except DataError as e:
        message = str(e)
        if "\n" in message or not message.startswith(str(path.parent)):
            raise AssertionError(f"error does not name the file in one line: {message!r}") from e
        return "refused"
    if path.is_dir():
        manifest = json.loads((path / "manifest.json").read_text())
        for name in manifest["shards"]:
            if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                raise AssertionError(f"opened a manifest naming {name!r}")
    tokens = ds.stream.read(0, ds.num_tokens)
    if len(tokens) != ds.num_tokens or (len(tokens) and int(tokens.max()) >= ds.info.vocab_size):
        raise AssertionError("opened, but the tokens are not what the sidecar says")
    return "loaded"


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

CHECKPOINT_JSON = ["state.json", "model_config.json", "train_config.json", "checksums.json"]
CHECKPOINT_BINARY = ["model.safetensors", "optimizer.pt", "tokenizer.json"]
_TEMPLATES: dict[str, Path] = {}


def checkpoint_template(root: Path, position: str) -> Path:
    """A tiny real checkpoint, made once per process and copied for each case."""
    if position not in _TEMPLATES:
        import torch

        from lmrs.checkpoint.store import save_checkpoint
        from lmrs.model.gpt import create_small_model
        from lmrs.training.trainer import TrainConfig, create_optimizer

        model = create_small_model(
            300, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2, ff_dim=32,
            position=position,
        )  # fmt: skip
        optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
        tokenizer = Tokenizer.from_vocab([(97, 98 + i) for i in range(43)])  # 300 ids
        state = {"step": 3, "tokens": 96, "elapsed_s": 1.5, "rng": {}, "metrics": {}}
        _TEMPLATES[position] = save_checkpoint(
            root / f"template-{position}", model, optimizer, state, model.config,
            TrainConfig(), tokenizer,
        )  # fmt: skip
    return _TEMPLATES[position]


def checkpoint_case(c: Chooser, where: Path, templates: Path) -> Path:
    path = where / "checkpoint"
    shutil.copytree(checkpoint_template(templates, c.choice(["learned", "rope"])), path)
    if c.chance(0.5):
        (path / "checksums.json").unlink()  # an old checkpoint: read unverified
    for _ in range(c.integer(1, 2)):
        if c.chance(0.7):
            name = c.choice(CHECKPOINT_JSON)
            file = path / name
            if not file.exists():
                continue
            try:
                obj = json.loads(file.read_bytes())
            except ValueError:  # an earlier round mangled its bytes
                continue
            if isinstance(obj, dict):
                mutate_json(c, obj, sorted(obj) or ["step"])
                file.write_text(json.dumps(obj))
            if c.chance(0.15):
                file.write_bytes(mutate_bytes(c, file.read_bytes()))
        else:
            file = path / c.choice(CHECKPOINT_BINARY)
            if file.exists():
                file.write_bytes(mutate_bytes(c, file.read_bytes()))
    return path


def check_checkpoint(path: Path) -> str:
    """'loaded' or 'refused'; raises on anything else."""
    import torch

    from lmrs.checkpoint.store import CheckpointError, load_checkpoint, load_model
    from lmrs.training.trainer import TrainConfig, create_optimizer

    try:
        model, saved = load_model(path)
        optimizer = create_optimizer(model, TrainConfig(), torch.device("cpu"))
        load_checkpoint(path, model, optimizer)
    except CheckpointError as e:
        message = str(e)
        if "\n" in message or not message.startswith(str(path)):
            raise AssertionError(f"error does not name the file in one line: {message!r}") from e
        return "refused"
    ids = torch.zeros(1, min(4, model.config.max_seq_len), dtype=torch.long)
    # Without checksums.json (a checkpoint from before it) a flipped bit that leaves a
    # finite but huge weight cannot be told from a trained one: only verified checkpoints
    # must give finite logits.
    verified = (path / "checksums.json").is_file()
    if saved.step < 0 or (verified and not torch.isfinite(model(ids)).all()):
        raise AssertionError("loaded, but the model or its state is not usable")
    return "loaded"


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def run_case(c: Chooser, kind: str, where: Path) -> str:
    """One case in the empty directory `where`: '<kind> loaded|refused', or raises."""
    if kind == "tokenizer":
        return f"tokenizer {check_tokenizer(tokenizer_case(c), where, c.text())}"
    if kind == "checkpoint":
        return f"checkpoint {check_checkpoint(checkpoint_case(c, where, where.parent))}"
    return f"tokens {check_tokens(tokens_case(c, where))}"


def fuzz(cases: int, seed: int, kinds: Sequence[str], report: Callable[[str], None]) -> int:
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    failures = 0
    start = time.perf_counter()
    # Memory-backed when the system has it: a case is a few small files, and creating and
    # removing them on a disk filesystem costs more than loading them.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="lmrs-fuzz-", dir=shm if shm.is_dir() else None) as tmp:
        for i in range(cases):
            where = Path(tmp) / f"case{i % 64}"
            if where.exists():
                shutil.rmtree(where)
            where.mkdir()
            kind = kinds[i % len(kinds)]
            case_seed = rng.getrandbits(64)
            try:
                outcomes[run_case(RandomChooser(random.Random(case_seed)), kind, where)] += 1
            except Exception:  # noqa: BLE001 - every unexpected exception is a finding
                failures += 1
                outcomes[f"{kind} FAILED"] += 1
                if failures <= 10:
                    report(f"case {i} ({kind}, seed {case_seed}):\n{traceback.format_exc()}")
    seconds = time.perf_counter() - start
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    report(f"{cases} cases, {failures} failures, {seconds:.1f} s ({summary})")
    return failures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kind", choices=["all", "tokenizer", "tokens", "checkpoint"], default="all"
    )
    args = parser.parse_args(argv)
    kinds = ["tokenizer", "tokens", "checkpoint"] if args.kind == "all" else [args.kind]
    return 1 if fuzz(args.cases, args.seed, kinds, print) else 0


if __name__ == "__main__":
    sys.exit(main())
