"""Reading other libraries' byte-level BPE vocabularies: tiktoken rank files and Hugging
Face ``tokenizer.json``. Only what lmrs reproduces exactly is accepted; anything else is a
``TokenizerError`` naming the file and the reason.

The readers only parse and check; ``Tokenizer.from_tiktoken`` / ``from_huggingface`` hand
the result to the Rust core (``Vocab::from_ranks`` / ``Vocab::with_ids``).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from lmrs import _lmrs
from lmrs._lmrs import TokenizerError
from lmrs.jsonfile import parse_json

__all__ = [
    "PATTERNS",
    "TIKTOKEN_SPECIAL_TOKENS",
    "HfVocab",
    "bytes_to_unicode",
    "read_huggingface",
    "read_tiktoken_ranks",
    "resolve_pattern",
    "with_eot",
]

PathLike = Union[str, "os.PathLike[str]"]
EOT = "<|endoftext|>"

#: Pre-tokenization patterns by name (tiktoken's spellings, plus lmrs's default "gpt4").
PATTERNS: dict[str, str] = {
    "gpt4": _lmrs.GPT4_PATTERN,
    "cl100k": _lmrs.CL100K_PATTERN,
    "o200k": _lmrs.O200K_PATTERN,
    "gpt2": _lmrs.GPT2_PATTERN,
    "r50k": _lmrs.GPT2_PATTERN,
    "p50k": _lmrs.GPT2_PATTERN,
}

#: The special tokens tiktoken gives each encoding (its `special_tokens`).
TIKTOKEN_SPECIAL_TOKENS: dict[str, dict[str, int]] = {
    "gpt2": {EOT: 50256},
    "r50k": {EOT: 50256},
    "p50k": {EOT: 50256},
    "cl100k": {
        EOT: 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k": {EOT: 199999, "<|endofprompt|>": 200018},
}

# Other names of the end-of-text token, tried in order when <|endoftext|> is absent.
EOT_ALIASES = (EOT, "<|end_of_text|>", "</s>", "<eos>")


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt2", "cl100k", "o200k", "gpt4", optionally with "_base") or a
    regex, as the regex."""
    name = pattern.lower().removesuffix("_base")
    return PATTERNS.get(name, pattern)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map used by Hugging Face ByteLevel."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def with_eot(special_tokens: dict[str, int], next_id: int) -> tuple[dict[str, int], str]:
    """The special tokens and the name of the one that ends a document: <|endoftext|> or a
    usual alias when present, else <|endoftext|> added at `next_id`."""
    for name in EOT_ALIASES:
        if name in special_tokens:
            return special_tokens, name
    taken = set(special_tokens.values())
    while next_id in taken:
        next_id += 1
    return {**special_tokens, EOT: next_id}, EOT


def read_tiktoken_ranks(path: PathLike) -> dict[bytes, int]:
    """A `.tiktoken` file: one "base64(token) rank" per line."""
    try:
        text = Path(path).read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"{path}: not a .tiktoken file (byte {e.start} is not ASCII)"
        ) from None
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}: line {number}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise TokenizerError(f"{where}: expected 'base64-token rank', got {line[:60]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except binascii.Error:
            raise TokenizerError(f"{where}: {fields[0][:60]!r} is not base64") from None
        if token in ranks:
            raise TokenizerError(f"{where}: token {token!r} appears twice")
        ranks[token] = int(fields[1])
    if not ranks:
        raise TokenizerError(f"{path}: no ranks (empty .tiktoken file)")
    return ranks


@dataclass(frozen=True)
class HfVocab:
    """A byte-level BPE read from a Hugging Face tokenizer.json, in the form
    `CoreTokenizer.from_ids` takes."""

    pattern: str
    byte_ids: list[int]
    merges: list[tuple[int, int, int]]
    special_tokens: dict[str, int]
    eot: str
    merge_rule: str


def _kind(component: Any) -> str:
    return str(component.get("type")) if isinstance(component, dict) else repr(component)


def _pattern_of(pre: Any) -> str:
    """The one regex equal to the pre-tokenizer, or the reason there is none."""
    steps = pre.get("pretokenizers") if _kind(pre) == "Sequence" else [pre]
    if not isinstance(steps, list) or not steps or _kind(steps[-1]) != "ByteLevel":
        raise ValueError(f"pre_tokenizer {_describe(pre)} does not end with ByteLevel")
    byte_level = steps[-1]
    if byte_level.get("add_prefix_space"):
        raise ValueError("ByteLevel(add_prefix_space=true) adds text; lmrs cannot reproduce it")
    use_regex = byte_level.get("use_regex", True)
    if len(steps) == 1:
        if not use_regex:
            raise ValueError("ByteLevel(use_regex=false) with no Split: the text is one piece")
        return _lmrs.HF_BYTE_LEVEL_PATTERN
    if len(steps) != 2 or _kind(steps[0]) != "Split":
        raise ValueError(f"pre_tokenizer {_describe(pre)}: lmrs takes one Split + ByteLevel")
    split = steps[0]
    regex = (
        split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
    )
    if regex is None:
        raise ValueError("Split by a plain string, not a Regex")
    if split.get("behavior") != "Isolated" or split.get("invert"):
        raise ValueError(
            f"Split behavior {split.get('behavior')!r} (invert={split.get('invert')}); "
            "lmrs splits like 'Isolated'"
        )
    if use_regex:
        raise ValueError("Split followed by ByteLevel(use_regex=true): two patterns in a row")
    return str(regex)


def _describe(pre: Any) -> str:
    if _kind(pre) == "Sequence":
        return "Sequence[" + ", ".join(_kind(p) for p in pre.get("pretokenizers") or []) + "]"
    return _kind(pre)


def _check_model(model: Any) -> None:
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        raise ValueError(f"model is {_kind(model)}, not BPE; lmrs imports byte-level BPE only")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"BPE dropout {model['dropout']} makes encoding random")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            raise ValueError(f"BPE {field} {model[field]!r} is not byte-level BPE")
    if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        raise ValueError("BPE model without a vocab and merges")


def _check_pipeline(data: dict[str, Any]) -> str:
    """Checks the parts around the model; returns the pattern."""
    normalizer = data.get("normalizer")
    if normalizer is not None and not (
        _kind(normalizer) == "Sequence" and not normalizer.get("normalizers")
    ):
        raise ValueError(
            f"normalizer {_kind(normalizer)} changes the text before splitting; "
            "lmrs cannot reproduce it"
        )
    pre = data.get("pre_tokenizer")
    if pre is None:
        raise ValueError("no pre_tokenizer: not byte-level (lmrs needs ByteLevel)")
    pattern = _pattern_of(pre)
    decoder = data.get("decoder")
    if decoder is not None and _kind(decoder) != "ByteLevel":
        raise ValueError(f"decoder {_kind(decoder)} is not ByteLevel")
    return pattern


def _special_tokens(data: dict[str, Any]) -> dict[str, int]:
    special: dict[str, int] = {}
    for added in data.get("added_tokens") or []:
        if not isinstance(added, dict) or "content" not in added or "id" not in added:
            raise ValueError(f"malformed added token {added!r:.80}")
        for flag in ("single_word", "lstrip", "rstrip"):
            if added.get(flag):
                raise ValueError(
                    f"added token {added['content']!r} has {flag}=true; lmrs cannot reproduce it"
                )
        special[str(added["content"])] = int(added["id"])
    return special


def _merge_pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        parts = merge.split(" ")
    elif isinstance(merge, list):
        parts = merge
    else:
        parts = []
    if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"malformed merge {merge!r:.80}")
    return parts[0], parts[1]


def _read_bpe(model: dict[str, Any], special: dict[str, int]) -> tuple[list[int], list[Any]]:
    vocab: dict[str, int] = model["vocab"]
    byte_chars = bytes_to_unicode()
    byte_ids = []
    for byte in range(256):
        if byte_chars[byte] not in vocab:
            raise ValueError(f"no token for byte 0x{byte:02x}: not a byte-level vocabulary")
        byte_ids.append(vocab[byte_chars[byte]])
    merges = []
    made = set(byte_ids)
    for rank, merge in enumerate(model["merges"]):
        left, right = _merge_pair(merge)
        try:
            merges.append((vocab[left], vocab[right], vocab[left + right]))
        except KeyError as e:
            raise ValueError(
                f"merge {rank} {left!r} + {right!r}: {e} is not in the vocab"
            ) from None
        made.add(merges[-1][2])
    special_ids = set(special.values())
    for token, id in vocab.items():
        if id not in made and id not in special_ids:
            raise ValueError(
                f"token {token!r} (id {id}) is neither a byte nor made by a merge; "
                "lmrs cannot produce it"
            )
    return byte_ids, merges


def read_huggingface(path: PathLike) -> HfVocab:
    """A Hugging Face tokenizer.json holding a byte-level BPE (GPT-2, Llama 3, Qwen style:
    model BPE, ByteLevel pre-tokenizer and decoder, no normalizer)."""
    try:
        data = parse_json(Path(path).read_bytes())
    except ValueError as e:  # not JSON, not UTF-8, nested too deeply
        raise TokenizerError(f"{path}: not a tokenizer.json ({e})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerError(f'{path}: not a Hugging Face tokenizer.json (no "model")')
    try:
        model = data["model"]
        _check_model(model)
        pattern = _check_pipeline(data)
        special = _special_tokens(data)
        byte_ids, merges = _read_bpe(model, special)
    except ValueError as e:
        raise TokenizerError(f"{path}: {e}") from None
    rule = "hf-ignore-merges" if model.get("ignore_merges") else "hf"
    next_id = max([*model["vocab"].values(), *special.values()]) + 1
    special, eot = with_eot(special, next_id)
    return HfVocab(pattern, byte_ids, merges, special, eot, rule)
