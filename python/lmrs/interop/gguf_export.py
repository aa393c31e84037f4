"""Export a GPT as one GGUF file (llama.cpp, Ollama) with the ``gguf`` package.

The layout is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same transformers
architecture (:func:`lmrs.model.hf_export.choose_target` picks it, refusing what has none):
its tensor names (``token_embd``, ``position_embd``, ``blk.N.attn_qkv``, ...), its
``{arch}.*`` metadata, Llama's query/key rows permuted to llama.cpp's rotary layout, and
the tokenizer as ``tokenizer.ggml.model = gpt2`` (byte-level tokens, merges, token types,
bos/eos = end-of-text). Tensor types follow the converter too: norms, biases and learned
positions stay float32; matrices take ``dtype`` (``q8_0`` falls back to f16 for rows
that are not a multiple of 32 long).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from lmrs.atomic import default_mode, fsync_dir, fsync_file, remove_dead_temporaries
from lmrs.errors import InputError
from lmrs.model.hf_export import Target, check_tokenizer_fits, choose_target, hf_state_dict

if TYPE_CHECKING:
    import gguf

    from lmrs.model.gpt import GPT
    from lmrs.tokenizer.core import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's names for the pre-tokenizer regexes (tokenizer.ggml.pre), by lmrs pattern name
PRE_TOKENIZERS = (
    # GPT-2's regex as HF ByteLevel spells it, and as tiktoken's gpt2 does
    ("HF_BYTE_LEVEL_PATTERN", "gpt-2"),
    ("GPT2_PATTERN", "gpt-2"),
    # llama.cpp's Llama 3 regex is cl100k's (GPT-4's differs from it only in how
    # whitespace at the very end of a text splits)
    ("CL100K_PATTERN", "llama-bpe"),
    ("GPT4_PATTERN", "llama-bpe"),
    ("O200K_PATTERN", "gpt-4o"),
)


def _pre_tokenizer(pattern: str) -> str:
    from lmrs import _lmrs

    for name, pre in PRE_TOKENIZERS:
        if pattern == getattr(_lmrs, name, None):
            return pre
    return "default"


def _quantize(
    name: str, data: np.ndarray, dtype: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    import gguf

    types = gguf.GGMLQuantizationType
    # as the converter: 1-D tensors, norms and learned positions stay float32
    if data.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd"):
        return data.astype(np.float32), types.F32
    if dtype == "f32":
        return data.astype(np.float32), types.F32
    if dtype == "f16":
        return data.astype(np.float16), types.F16
    if dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        return gguf.quants.quantize(data.astype(np.float32), types.Q8_0), types.Q8_0
    if dtype == "q8_0":  # the converter's fallback for rows q8_0 blocks cannot cover
        return data.astype(np.float16), types.F16
    return gguf.quants.quantize(data.astype(np.float32), types.BF16), types.BF16


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Query/key rows from transformers' rotate-half order to llama.cpp's interleaved
    pairs (the converter's ``LlamaModel.permute``)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _file_type(dtype: str) -> int:
    import gguf

    kinds = gguf.LlamaFileType
    return {
        "f32": kinds.ALL_F32,
        "f16": kinds.MOSTLY_F16,
        "bf16": kinds.MOSTLY_BF16,
        "q8_0": kinds.MOSTLY_Q8_0,
    }[dtype]


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    import gguf

    from lmrs.tokenizer.core import _bytes_to_unicode

    chars = _bytes_to_unicode()
    specials = {id: name for name, id in tokenizer.special_tokens.items()}
    tokens: list[str] = []
    types: list[int] = []
    for id in range(vocab_size):
        if id in specials:
            tokens.append(specials[id])
            types.append(gguf.TokenType.CONTROL)
        elif id < tokenizer.vocab_size:
            tokens.append("".join(chars[b] for b in tokenizer.id_to_token(id)))
            types.append(gguf.TokenType.NORMAL)
        else:  # rows of a model vocabulary larger than the tokenizer's: never produced
            tokens.append(f"[PAD{id}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [
        " ".join("".join(chars[b] for b in tokenizer.id_to_token(part)) for part in pair)
        for pair in tokenizer.merges
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer.pattern))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)


def _add_metadata(writer: gguf.GGUFWriter, model: GPT, target: Target, dtype: str) -> None:
    from lmrs.model.gpt import LAYER_NORM_EPS, RMS_NORM_EPS

    cfg = model.config
    writer.add_name("lmrs")
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.embed_dim)
    writer.add_feed_forward_length(cfg.ff_dim)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    if target.name == "gpt2":
        writer.add_layer_norm_eps(LAYER_NORM_EPS)
    else:
        writer.add_head_count_kv(cfg.kv_heads)
        writer.add_layer_norm_rms_eps(RMS_NORM_EPS)
        writer.add_rope_freq_base(float(cfg.rope_base))
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(_file_type(dtype))


def gguf_tensors(model: GPT, target: Target) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names and layouts (float32)."""
    import gguf

    cfg = model.config
    arch = {"gpt2": gguf.MODEL_ARCH.GPT2, "llama": gguf.MODEL_ARCH.LLAMA}.get(
        target.name, gguf.MODEL_ARCH.QWEN3
    )
    names = gguf.get_tensor_name_map(arch, cfg.num_layers)
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in hf_state_dict(model, target).items():
        if target.name == "gpt2" and hf_name.endswith(
            (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
        ):
            tensor = tensor.t()  # back from Conv1D's (in, out), as the converter does
        if target.name == "llama" and hf_name.endswith("q_proj.weight"):
            tensor = _permute(tensor, cfg.num_heads)
        if target.name == "llama" and hf_name.endswith("k_proj.weight"):
            tensor = _permute(tensor, cfg.kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise AssertionError(f"gguf has no name for {hf_name}")
        out[name] = tensor.contiguous()
    return out


def check_gguf_target(path: PathLike, *, overwrite: bool = False) -> Path:
    """``path`` as a file a GGUF export may replace: missing, or a GGUF file; anything else
    is refused unless ``overwrite`` (a mistyped ``-o`` must not replace someone's file)."""
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{out}: is a directory (give the .gguf file to write)")
    if out.exists() and not overwrite:
        try:
            with open(out, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise InputError(f"{out}: exists and cannot be read: {e.strerror or e}") from e
        if magic != b"GGUF":
            raise InputError(
                f"{out}: exists and is not a GGUF file; pass --overwrite to replace it"
            )
    return out


def export_gguf(
    model: GPT,
    path: PathLike,
    tokenizer: Tokenizer,
    *,
    dtype: str = "f32",
    overwrite: bool = False,
) -> Path:
    """Write ``path`` (one .gguf file) atomically: a temporary file beside it, renamed. An
    existing file there that is not a GGUF file is refused unless ``overwrite``."""
    try:
        import gguf
    except ImportError:
        raise InputError("GGUF export needs the gguf package: pip install 'lmrs[gguf]'") from None

    if dtype not in GGUF_DTYPES:
        raise InputError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(GGUF_DTYPES)}")
    target = choose_target(model.config, "GGUF")
    if target.name == "llama" and model.config.bias:
        # transformers' GGUF reader permutes Llama's query/key weights back, not their biases
        raise InputError(
            "cannot export to GGUF: bias true with rotary positions (llama.cpp and "
            "transformers disagree on the layout of Llama's query/key biases)"
        )
    out = check_gguf_target(path, overwrite=overwrite)
    check_tokenizer_fits(model.config, tokenizer, str(out))
    tensors = gguf_tensors(model, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, target.name)
        _add_metadata(writer, model, target, dtype)
        _add_tokenizer(writer, tokenizer, model.config.vocab_size)
        for name, tensor in tensors.items():
            data, qtype = _quantize(name, tensor.numpy(), dtype)
            quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(name, data, raw_dtype=qtype if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        fsync_file(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    remove_dead_temporaries(out)
    return out
