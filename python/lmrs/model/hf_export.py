"""Export a GPT as a Hugging Face ``transformers`` directory (config, safetensors, tokenizer).

Only exact mappings are written: a model becomes ``GPT2LMHeadModel`` (learned positions,
LayerNorm, tanh GELU), ``LlamaForCausalLM`` (rotary, RMSNorm, SwiGLU) or
``Qwen3ForCausalLM`` (Llama plus RMSNorm of queries and keys); an option none of them
computes the same way is refused with a one-line :class:`InputError` naming it. Where an
lmrs option is a special case of the target's (no bias = zero bias, a parameter-free
RMSNorm = a gain of ones, grouped-query heads = repeated key/value heads) the special
case is written out, so the outputs are the same numbers, not an approximation.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from lmrs.atomic import default_mode, fsync_dir, remove_dead_temporaries, write_atomic
from lmrs.errors import InputError
from lmrs.faults import fault_point
from lmrs.jsonfile import is_plain_name
from lmrs.model.config import LAYER_NORM_EPS, RMS_NORM_EPS, ModelConfig

if TYPE_CHECKING:
    from lmrs.model.gpt import GPT
    from lmrs.tokenizer.core import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EOT = "<|endoftext|>"
# written into every export folder: what lmrs wrote there (size and SHA-256 of each file),
# so that a later export replaces only a folder of its own
EXPORT_MANIFEST = "lmrs_export.json"


@dataclass(frozen=True)
class Target:
    """A transformers architecture and the lmrs options it computes exactly."""

    name: str  # "gpt2", "llama", "qwen3" (transformers model_type, llama.cpp arch)
    class_name: str
    needs: tuple[tuple[str, Any], ...]  # (ModelConfig field, required value)


TARGETS = (
    Target(
        "gpt2",
        "GPT2LMHeadModel",
        (
            ("position", "learned"),
            ("norm", "layernorm"),
            ("mlp", "gelu"),
            ("qk_norm", False),
            ("logit_softcap", None),
        ),
    ),
    Target(
        "llama",
        "LlamaForCausalLM",
        (
            ("position", "rope"),
            ("norm", "rmsnorm"),
            ("mlp", "swiglu"),
            ("qk_norm", False),
            ("logit_softcap", None),
        ),
    ),
    # Qwen3's MLP has no biases: biased lmrs models with QK-norm have no exact target
    Target(
        "qwen3",
        "Qwen3ForCausalLM",
        (
            ("position", "rope"),
            ("norm", "rmsnorm"),
            ("mlp", "swiglu"),
            ("qk_norm", True),
            ("bias", False),
            ("logit_softcap", None),
        ),
    ),
)


def option(config: ModelConfig, name: str) -> Any:
    """A ModelConfig field, with the GPT-2 default for configs written before it existed."""
    defaults = {"norm": "layernorm", "qk_norm": False, "mlp": "gelu", "logit_softcap": None}
    return getattr(config, name, defaults.get(name))


def choose_target(config: ModelConfig, what: str = "Hugging Face") -> Target:
    """The exact transformers architecture for ``config``, or InputError naming the option."""
    misses: list[tuple[Target, list[tuple[str, Any]]]] = []
    for target in TARGETS:
        wrong = [(name, value) for name, value in target.needs if option(config, name) != value]
        if not wrong:
            return target
        misses.append((target, wrong))
    fewest = min(len(wrong) for _, wrong in misses)
    nearest = [(target, wrong) for target, wrong in misses if len(wrong) == fewest]
    ours = dict.fromkeys(f"{name} {option(config, name)!r}" for _, w in nearest for name, _ in w)
    needs = "; ".join(
        f"{target.class_name} needs " + ", ".join(f"{name} {value!r}" for name, value in wrong)
        for target, wrong in nearest
    )
    raise InputError(
        f"cannot export to {what}: no transformers architecture computes "
        f"{', '.join(ours)} exactly (nearest: {needs})"
    )


# ---- weights ------------------------------------------------------------------------------


def _split_qkv(model: GPT, index: int) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
    """The fused qkv projection of block ``index`` as [q, k, v] weights and biases."""
    cfg = model.config
    attn = model.blocks[index].attn
    sizes = [cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
    weights = list(attn.qkv.weight.detach().split(sizes, dim=0))
    bias = attn.qkv.bias
    biases: list[Optional[torch.Tensor]] = (
        list(bias.detach().split(sizes, dim=0)) if bias is not None else [None, None, None]
    )
    return weights, biases


def _repeat_kv(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Key/value rows of ``kv_heads`` heads repeated for each query head of their group."""
    group = config.num_heads // config.kv_heads
    if group == 1:
        return tensor
    heads = tensor.reshape(config.kv_heads, config.head_dim, *tensor.shape[1:])
    return heads.repeat_interleave(group, dim=0).reshape(-1, *tensor.shape[1:])


def _or_zeros(bias: Optional[torch.Tensor], size: int) -> torch.Tensor:
    return bias.detach() if bias is not None else torch.zeros(size)


def _norm_weight(norm: torch.nn.Module, size: int) -> torch.Tensor:
    weight = getattr(norm, "weight", None)
    return weight.detach() if weight is not None else torch.ones(size)


def _gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    cfg = model.config
    dim = cfg.embed_dim
    assert model.position_embedding is not None
    state = {
        "transformer.wte.weight": model.token_embedding.weight.detach(),
        "transformer.wpe.weight": model.position_embedding.weight.detach(),
        "transformer.ln_f.weight": _norm_weight(model.ln_final, dim),
        "transformer.ln_f.bias": _or_zeros(model.ln_final.bias, dim),
    }
    for i, block in enumerate(model.blocks):
        (q, k, v), (qb, kb, vb) = _split_qkv(model, i)
        qkv = torch.cat([q, _repeat_kv(k, cfg), _repeat_kv(v, cfg)])
        qkv_bias = torch.cat(
            [
                _or_zeros(qb, dim),
                _repeat_kv(_or_zeros(kb, k.shape[0]), cfg),
                _repeat_kv(_or_zeros(vb, v.shape[0]), cfg),
            ]
        )
        # GPT-2's Conv1D stores (in, out): the transpose of a Linear's weight
        layer = {
            "ln_1.weight": _norm_weight(block.ln_attn, dim),
            "ln_1.bias": _or_zeros(block.ln_attn.bias, dim),
            "attn.c_attn.weight": qkv.t(),
            "attn.c_attn.bias": qkv_bias,
            "attn.c_proj.weight": block.attn.out_proj.weight.detach().t(),
            "attn.c_proj.bias": _or_zeros(block.attn.out_proj.bias, dim),
            "ln_2.weight": _norm_weight(block.ln_ffn, dim),
            "ln_2.bias": _or_zeros(block.ln_ffn.bias, dim),
            "mlp.c_fc.weight": block.ffn.up.weight.detach().t(),
            "mlp.c_fc.bias": _or_zeros(block.ffn.up.bias, cfg.ff_dim),
            "mlp.c_proj.weight": block.ffn.down.weight.detach().t(),
            "mlp.c_proj.bias": _or_zeros(block.ffn.down.bias, dim),
        }
        state.update({f"transformer.h.{i}.{name}": t for name, t in layer.items()})
    if not cfg.tie_weights:
        state["lm_head.weight"] = model.lm_head.weight.detach()
    return state


def _llama_state(model: GPT, qk_norm: bool) -> dict[str, torch.Tensor]:
    cfg = model.config
    dim = cfg.embed_dim
    state = {
        "model.embed_tokens.weight": model.token_embedding.weight.detach(),
        "model.norm.weight": _norm_weight(model.ln_final, dim),
    }
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}."
        (q, k, v), biases = _split_qkv(model, i)
        layer = {
            "input_layernorm.weight": _norm_weight(block.ln_attn, dim),
            "post_attention_layernorm.weight": _norm_weight(block.ln_ffn, dim),
            "self_attn.q_proj.weight": q,
            "self_attn.k_proj.weight": k,
            "self_attn.v_proj.weight": v,
            "self_attn.o_proj.weight": block.attn.out_proj.weight.detach(),
            "mlp.gate_proj.weight": block.ffn.gate.weight.detach(),
            "mlp.up_proj.weight": block.ffn.up.weight.detach(),
            "mlp.down_proj.weight": block.ffn.down.weight.detach(),
        }
        if cfg.bias:
            for name, bias in zip(("q_proj", "k_proj", "v_proj"), biases):
                assert bias is not None
                layer[f"self_attn.{name}.bias"] = bias
            layer["self_attn.o_proj.bias"] = block.attn.out_proj.bias.detach()
            for name, linear in (("gate", block.ffn.gate), ("up", block.ffn.up)):
                layer[f"mlp.{name}_proj.bias"] = linear.bias.detach()
            layer["mlp.down_proj.bias"] = block.ffn.down.bias.detach()
        if qk_norm:  # lmrs's QK-norm has no gain: Qwen3's with a gain of ones
            layer["self_attn.q_norm.weight"] = torch.ones(cfg.head_dim)
            layer["self_attn.k_norm.weight"] = torch.ones(cfg.head_dim)
        state.update({prefix + name: t for name, t in layer.items()})
    if not cfg.tie_weights:
        state["lm_head.weight"] = model.lm_head.weight.detach()
    return state


def hf_state_dict(model: GPT, target: Optional[Target] = None) -> dict[str, torch.Tensor]:
    """The model's weights under ``target``'s names and layout (float32, contiguous, CPU)."""
    target = target or choose_target(model.config)
    state = (
        _gpt2_state(model)
        if target.name == "gpt2"
        else _llama_state(model, qk_norm=target.name == "qwen3")
    )
    return {name: t.float().cpu().contiguous().clone() for name, t in state.items()}


# ---- config and tokenizer files -----------------------------------------------------------


def hf_config(
    config: ModelConfig, target: Target, eot_id: Optional[int], dtype: str = "f32"
) -> dict[str, Any]:
    """config.json for ``target`` (plain JSON: exporting needs no transformers import)."""

    dropout = config.dropout_rate
    common: dict[str, Any] = {
        "architectures": [target.class_name],
        "model_type": target.name,
        "vocab_size": config.vocab_size,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "tie_word_embeddings": config.tie_weights,
        "dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
        "use_cache": True,
    }
    if target.name == "gpt2":
        return {
            **common,
            "n_embd": config.embed_dim,
            "n_head": config.num_heads,
            "n_layer": config.num_layers,
            "n_inner": config.ff_dim,
            "n_positions": config.max_seq_len,
            "n_ctx": config.max_seq_len,
            # lmrs's GELU is the tanh approximation: GPT-2's "gelu_new"
            "activation_function": "gelu_new",
            "layer_norm_epsilon": LAYER_NORM_EPS,
            "resid_pdrop": dropout,
            "embd_pdrop": dropout,
            "attn_pdrop": dropout if config.attention_dropout else 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "initializer_range": 0.02,
        }
    llama = {
        **common,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": float(config.rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "attention_bias": config.bias,
        "attention_dropout": dropout if config.attention_dropout else 0.0,
        "initializer_range": 0.02,
    }
    if target.name == "llama":
        llama["mlp_bias"] = config.bias
    else:
        llama.update({"use_sliding_window": False, "sliding_window": None})
    return llama


def tokenizer_config(tokenizer: Tokenizer, max_len: int) -> dict[str, Any]:
    """tokenizer_config.json: tokenizer.json as a fast tokenizer, end-of-text as bos/eos."""
    specials = tokenizer.special_tokens
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "added_tokens_decoder": {
            str(id): {
                "content": name,
                "special": True,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
            }
            for name, id in sorted(specials.items(), key=lambda kv: kv[1])
        },
    }


def check_tokenizer_fits(config: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise InputError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
            f"{config.vocab_size}"
        )


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def read_export_manifest(directory: Path) -> Optional[dict[str, Any]]:
    """The manifest of an lmrs export folder (``lmrs_export.json``), or None when the
    folder has none or it is not one lmrs wrote."""
    try:
        data = json.loads((directory / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "lmrs export":
        return None
    files = data.get("files")
    if not isinstance(files, dict) or not all(is_plain_name(name) for name in files):
        return None
    return data


def check_export_folder(path: PathLike, *, overwrite: bool = False) -> Path:
    """``path`` as the folder a Hugging Face export may replace: missing, empty, or an
    earlier lmrs export holding nothing but what it wrote; anything else (a folder lmrs did
    not write, or one with files added to it) is refused unless ``overwrite``. Returns the
    folder (a symlink's target: the export replaces what the link points to)."""
    out = Path(path)
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    if not out.exists():
        return out
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory (an hf export is a folder)")
    if overwrite:
        return out
    names = sorted(entry.name for entry in out.iterdir())
    if not names:
        return out
    manifest = read_export_manifest(out)
    if manifest is None:
        raise InputError(
            f"{out}: not empty and not an lmrs export (it holds {names[0]}"
            + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            + "); pass --overwrite to replace the folder and everything in it"
        )
    foreign = [name for name in names if name != EXPORT_MANIFEST and name not in manifest["files"]]
    if foreign:
        raise InputError(
            f"{out}: holds {foreign[0]}"
            + (f" and {len(foreign) - 1} more files" if len(foreign) > 1 else "")
            + " that lmrs export did not write; pass --overwrite to replace the folder and "
            "everything in it"
        )
    return out


def _write_files(folder: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """Write ``files`` into ``folder`` (each fsynced); their sizes and SHA-256 by name."""
    digests: dict[str, Any] = {}
    for name, data in files.items():
        write_atomic(folder / name, data)
        digests[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return digests


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the complete folder ``tmp`` in ``out``'s place. An earlier ``out`` is renamed
    aside (a name :func:`lmrs.atomic.remove_dead_temporaries` removes once this process is
    gone) until the new folder is in, then removed: a crash at any point leaves the old
    folder or the new one at ``out`` (or, between the renames, neither, with both whole
    beside it), never a mix of the two."""
    try:
        os.rename(tmp, out)  # no folder there, or an empty one: one atomic step
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        aside = out.with_name(f".{out.name}.tmp-{os.getpid()}-old-{secrets.token_hex(4)}")
        os.rename(out, aside)
        fault_point("export.old_renamed")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(aside, out)  # the old folder back where it was
            raise
        fault_point("export.new_renamed")
        fsync_dir(out.parent)
        shutil.rmtree(aside, ignore_errors=True)
        return
    fault_point("export.new_renamed")
    fsync_dir(out.parent)


def export_huggingface(
    model: GPT,
    path: PathLike,
    tokenizer: Optional[Tokenizer] = None,
    *,
    dtype: str = "f32",
    overwrite: bool = False,
) -> Path:
    """Write ``path/`` for ``AutoModelForCausalLM.from_pretrained`` (and, with a tokenizer,
    ``AutoTokenizer.from_pretrained``), with ``lmrs_export.json`` listing the size and SHA-256
    of every file. The folder is written whole beside ``path`` and swapped in (see
    :func:`_swap_in`), so a reader or a crash never sees one export's tokenizer beside
    another's weights. An existing ``path`` that lmrs did not write is refused unless
    ``overwrite`` (:func:`check_export_folder`)."""
    from safetensors.torch import save

    if dtype not in HF_DTYPES:
        raise InputError(
            f"unknown dtype {dtype!r} for a Hugging Face export; choose one of {sorted(HF_DTYPES)}"
        )
    target = choose_target(model.config)
    out = check_export_folder(path, overwrite=overwrite)
    eot_id = None
    if tokenizer is not None:
        check_tokenizer_fits(model.config, tokenizer, str(out))
        eot_id = tokenizer.eot_id
    state = hf_state_dict(model, target)
    state = {name: t.to(HF_DTYPES[dtype]) for name, t in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~(0o666 ^ default_mode()))  # as mkdir under the umask, not 0700
        files: dict[str, bytes] = {}
        if tokenizer is not None:
            tokenizer.export_huggingface(tmp / "tokenizer.json")
            files["tokenizer_config.json"] = _json_bytes(
                tokenizer_config(tokenizer, model.config.max_seq_len)
            )
        files["model.safetensors"] = save(state, metadata={"format": "pt"})
        files["generation_config.json"] = _json_bytes(
            {"bos_token_id": eot_id, "eos_token_id": eot_id}
        )
        files["config.json"] = _json_bytes(hf_config(model.config, target, eot_id, dtype))
        digests = _write_files(tmp, files)
        if tokenizer is not None:
            data = (tmp / "tokenizer.json").read_bytes()
            digests["tokenizer.json"] = {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        manifest = {"written_by": "lmrs export", "format": "hf", "dtype": dtype}
        write_atomic(tmp / EXPORT_MANIFEST, _json_bytes({**manifest, "files": digests}))
        fsync_dir(tmp)
        fault_point("export.tmp_written")
        _swap_in(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # the folder the user named, not the temporary one that failed
        raise OSError(e.errno, e.strerror or str(e), str(out)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_dead_temporaries(out)
    return out
