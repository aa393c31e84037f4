"""Import a local Hugging Face checkpoint directory as a :class:`lmrs.GPT`.

Reads ``config.json`` and the weights (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` through
``torch.load(weights_only=True)`` only: importing never unpickles arbitrary objects).
GPT-2 (``GPT2LMHeadModel``) is the supported source; Llama and Qwen3 directories of the
shapes :mod:`lmrs.model.hf_export` writes load too, so an export imports back exactly. Anything
lmrs would compute differently (another activation, norm epsilon or rope scaling, a
learned QK-norm gain) is refused with a one-line :class:`InputError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from lmrs.errors import InputError, one_line
from lmrs.jsonfile import is_plain_name
from lmrs.model.config import LAYER_NORM_EPS, RMS_NORM_EPS, ModelConfig

if TYPE_CHECKING:
    from lmrs.model.gpt import GPT
    from lmrs.tokenizer.core import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

# GPT-2's activations that are lmrs's tanh-approximated GELU
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory (expected a Hugging Face model folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing (not a Hugging Face model folder)") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise InputError(f"{path}: not valid JSON: {one_line(e)}") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


def _field(data: dict[str, Any], where: Path, name: str, kind: type, default: Any = None) -> Any:
    value = data.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise InputError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    return value


def _refuse(where: Path, what: str) -> InputError:
    return InputError(f"{where}: cannot import: {what}")


def model_type(data: dict[str, Any]) -> str:
    kind = data.get("model_type")
    return kind if isinstance(kind, str) else ""


def config_from_hf(data: dict[str, Any], where: Path) -> ModelConfig:
    """The lmrs ModelConfig computing what ``data`` (a config.json) describes."""
    kind = model_type(data)
    tied = _field(data, where, "tie_word_embeddings", bool, kind == "gpt2")
    if kind == "gpt2":
        dim = _field(data, where, "n_embd", int)
        act = data.get("activation_function", "gelu_new")
        if act not in TANH_GELUS:
            raise _refuse(where, f"activation_function {act!r} (lmrs computes gelu_new)")
        eps = _field(data, where, "layer_norm_epsilon", float, 1e-5)
        if eps != LAYER_NORM_EPS:
            raise _refuse(where, f"layer_norm_epsilon {eps} (lmrs uses {LAYER_NORM_EPS})")
        for name, wanted in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
            ("add_cross_attention", False),
        ):
            if data.get(name, wanted) != wanted:
                raise _refuse(where, f"{name} {data.get(name)!r}")
        inner = data.get("n_inner")
        options: dict[str, Any] = {
            "embed_dim": dim,
            "num_heads": _field(data, where, "n_head", int),
            "num_layers": _field(data, where, "n_layer", int),
            "ff_dim": 4 * dim if inner is None else _field(data, where, "n_inner", int),
            "max_seq_len": _field(data, where, "n_positions", int, 1024),
            "position": "learned",
            "bias": True,
            "dropout_rate": _field(data, where, "resid_pdrop", float, 0.1),
        }
    elif kind in ("llama", "qwen3"):
        dim = _field(data, where, "hidden_size", int)
        heads = _field(data, where, "num_attention_heads", int)
        act = data.get("hidden_act", "silu")
        if act != "silu":
            raise _refuse(where, f"hidden_act {act!r} (lmrs's SwiGLU uses silu)")
        eps = _field(data, where, "rms_norm_eps", float, 1e-6)
        if eps != RMS_NORM_EPS:
            raise _refuse(where, f"rms_norm_eps {eps} (lmrs uses {RMS_NORM_EPS})")
        head_dim = data.get("head_dim") or dim // heads
        if head_dim * heads != dim:
            raise _refuse(where, f"head_dim {head_dim} (lmrs needs hidden_size / heads)")
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise _refuse(where, f"rope_type {rope_type!r} (lmrs has plain rotary positions)")
        theta = rope.get("rope_theta", data.get("rope_theta", 10000.0))
        bias = _field(data, where, "attention_bias", bool, False)
        mlp_bias = bias if kind == "qwen3" else _field(data, where, "mlp_bias", bool, False)
        if bias != mlp_bias or (kind == "qwen3" and bias):
            raise _refuse(where, "attention_bias and mlp_bias differ (lmrs has one bias option)")
        if kind == "qwen3" and data.get("use_sliding_window"):
            raise _refuse(where, "use_sliding_window true (lmrs attends to every position)")
        kv_heads = _field(data, where, "num_key_value_heads", int, heads)
        options = {
            "embed_dim": dim,
            "num_heads": heads,
            "num_kv_heads": None if kv_heads == heads else kv_heads,
            "num_layers": _field(data, where, "num_hidden_layers", int),
            "ff_dim": _field(data, where, "intermediate_size", int),
            "max_seq_len": _field(data, where, "max_position_embeddings", int),
            "position": "rope",
            "rope_base": float(theta),
            "norm": "rmsnorm",
            "mlp": "swiglu",
            "qk_norm": kind == "qwen3",
            "bias": bias,
            "dropout_rate": 0.0,
        }
    else:
        raise _refuse(
            where,
            f"model_type {kind!r} (lmrs reads gpt2, and llama/qwen3 as lmrs exports them)",
        )
    options["vocab_size"] = _field(data, where, "vocab_size", int)
    options["tie_weights"] = tied
    try:
        return ModelConfig(**options)
    except (TypeError, ValueError) as e:
        raise _refuse(where, one_line(e)) from e


# ---- weights ------------------------------------------------------------------------------


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's tensors by name, and the file they came from (for messages)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickle = directory / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(str(single)), single
        if index.is_file():
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            state: dict[str, torch.Tensor] = {}
            for name in sorted(set(shards.values())):
                if Path(name).name != name:
                    raise InputError(f"{index}: shard name {name!r} is not a plain file name")
                state.update(load_file(str(directory / name)))
            return state, index
        if pickle.is_file():
            # weights_only: tensors and plain containers only, never arbitrary objects
            loaded = torch.load(str(pickle), map_location="cpu", weights_only=True)
            if not isinstance(loaded, dict):
                raise InputError(f"{pickle}: not a state dict")
            for name, value in loaded.items():
                if not isinstance(value, torch.Tensor):
                    raise InputError(f"{pickle}: not a state dict ({name!r} is not a tensor)")
            return loaded, pickle
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        if isinstance(e, InputError):
            raise
        bad = single if single.is_file() else index if index.is_file() else pickle
        raise InputError(f"{bad}: cannot read weights: {one_line(e)}") from e
    except Exception as e:  # torch.load's UnpicklingError for anything but plain tensors
        if type(e).__name__ != "UnpicklingError":
            raise
        raise InputError(f"{pickle}: refused (not plain tensors): {one_line(e)}") from e
    raise InputError(
        f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _gpt2_to_lmrs(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    state = {
        "token_embedding.weight": hf["wte.weight"],
        "position_embedding.weight": hf["wpe.weight"],
        "ln_final.weight": hf["ln_f.weight"],
        "ln_final.bias": hf["ln_f.bias"],
    }
    pairs = (
        ("ln_attn", "ln_1"),
        ("ln_ffn", "ln_2"),
        ("attn.qkv", "attn.c_attn"),
        ("attn.out_proj", "attn.c_proj"),
        ("ffn.up", "mlp.c_fc"),
        ("ffn.down", "mlp.c_proj"),
    )
    for i in range(config.num_layers):
        for ours, theirs in pairs:
            weight = hf[f"h.{i}.{theirs}.weight"]
            # Conv1D weights are (in, out): the transpose of a Linear's
            state[f"blocks.{i}.{ours}.weight"] = weight if ours.startswith("ln") else weight.t()
            state[f"blocks.{i}.{ours}.bias"] = hf[f"h.{i}.{theirs}.bias"]
    return state


def _llama_to_lmrs(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    state = {
        "token_embedding.weight": hf["embed_tokens.weight"],
        "ln_final.weight": hf["norm.weight"],
    }
    for i in range(config.num_layers):
        theirs = f"layers.{i}."
        ours = f"blocks.{i}."
        state[ours + "ln_attn.weight"] = hf[theirs + "input_layernorm.weight"]
        state[ours + "ln_ffn.weight"] = hf[theirs + "post_attention_layernorm.weight"]
        kinds = ("weight", "bias") if config.bias else ("weight",)
        for kind in kinds:
            state[f"{ours}attn.qkv.{kind}"] = torch.cat(
                [hf[f"{theirs}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            state[f"{ours}attn.out_proj.{kind}"] = hf[f"{theirs}self_attn.o_proj.{kind}"]
            for lmrs_name, name in (("gate", "gate"), ("up", "up"), ("down", "down")):
                state[f"{ours}ffn.{lmrs_name}.{kind}"] = hf[f"{theirs}mlp.{name}_proj.{kind}"]
    return state


def _check_qk_norm_gains(hf: dict[str, torch.Tensor], config: ModelConfig, where: Path) -> None:
    """lmrs's QK-norm has no gain: a Qwen3 model imports only when its gains are all ones."""
    for i in range(config.num_layers):
        for name in ("q_norm", "k_norm"):
            key = f"layers.{i}.self_attn.{name}.weight"
            gain = hf.get(key)
            if gain is None:
                raise InputError(f"{where}: tensor model.{key} is missing")
            if not torch.equal(gain, torch.ones_like(gain)):
                raise _refuse(where, f"model.{key} is not all ones (lmrs's QK-norm has no gain)")


def lmrs_state_dict(
    hf: dict[str, torch.Tensor], config: ModelConfig, kind: str, where: Path
) -> dict[str, torch.Tensor]:
    """``hf`` (a transformers state dict of ``kind``) under lmrs's names and layout."""
    prefix = "transformer." if kind == "gpt2" else "model."
    # GPT-2's own hub checkpoints have no "transformer." prefix; save_pretrained adds it
    body = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in hf.items()}
    # causal-mask buffers old GPT-2 checkpoints carry: not weights
    body = {k: v for k, v in body.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    head = body.pop("lm_head.weight", None)
    try:
        convert = _gpt2_to_lmrs if kind == "gpt2" else _llama_to_lmrs
        state = convert(body, config)
    except KeyError as e:
        raise InputError(f"{where}: tensor {prefix}{e.args[0]} is missing") from None
    except RuntimeError as e:  # tensors whose shapes do not fit together (cat, transpose)
        raise InputError(f"{where}: tensors do not fit together: {one_line(e)}") from e
    if config.qk_norm:
        _check_qk_norm_gains(body, config, where)
    extra = sorted(set(body) - _used_names(config, kind))
    if extra:
        raise InputError(f"{where}: unexpected tensor {extra[0]} (not part of a {kind} model)")
    if config.tie_weights:
        state["lm_head.weight"] = state["token_embedding.weight"]
    elif head is None:
        raise InputError(f"{where}: tensor lm_head.weight is missing (tie_word_embeddings false)")
    else:
        state["lm_head.weight"] = head
    return {name: t.float() for name, t in state.items()}


def _used_names(config: ModelConfig, kind: str) -> set[str]:
    if kind == "gpt2":
        names = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
        parts = ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        for i in range(config.num_layers):
            names |= {f"h.{i}.{p}.{k}" for p in parts for k in ("weight", "bias")}
        return names
    names = {"embed_tokens.weight", "norm.weight"}
    kinds = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.num_layers):
        p = f"layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {f"{p}self_attn.{x}_proj.{k}" for x in "qkvo" for k in kinds}
        names |= {f"{p}mlp.{x}_proj.{k}" for x in ("gate", "up", "down") for k in kinds}
        if config.qk_norm:
            names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    return names


def stored_shapes(directory: Path) -> Optional[tuple[dict[str, tuple[int, ...]], Path]]:
    """The tensor shapes of the folder's safetensors weights, read from the file headers
    (nothing is loaded), and the file they came from; None for ``pytorch_model.bin``."""
    from safetensors import SafetensorError, safe_open

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        files, where = [single], single
    elif index.is_file():
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(shards.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise InputError(f"{index}: cannot read the shard index: {one_line(e)}") from e
        for name in names:
            if not is_plain_name(name):
                raise InputError(f"{index}: shard name {name!r} is not a plain file name")
        files, where = [directory / name for name in names], index
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except (OSError, SafetensorError, ValueError) as e:
            raise InputError(f"{file}: cannot read weights: {one_line(e)}") from e
    return shapes, where


def check_embedding_shape(
    shapes: dict[str, tuple[int, ...]], config: ModelConfig, kind: str, where: Path
) -> None:
    """The token embedding stored is the one config.json describes: checked on the file's
    header before anything is loaded or built, so that a config edited to absurd sizes
    is refused, never an attempt to allocate them."""
    prefix = "transformer." if kind == "gpt2" else "model."
    name = "wte.weight" if kind == "gpt2" else "embed_tokens.weight"
    stored = shapes.get(prefix + name, shapes.get(name))
    wanted = (config.vocab_size, config.embed_dim)
    if stored is not None and tuple(stored) != wanted:
        raise InputError(
            f"{where.parent / 'config.json'}: does not describe the weights in {where.name}: "
            f"{prefix}{name} is {tuple(stored)} there, the config gives {wanted}"
        )


def check_finite(hf: dict[str, torch.Tensor], where: Path) -> None:
    """Every floating-point weight is a number: NaN or infinity would surface later as a
    diverged loss, blamed on the learning rate."""
    for name, tensor in hf.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{where}: tensor {name} is not finite (it holds NaN or infinity): these "
                "weights cannot be used"
            )


def expected_shapes(
    config: ModelConfig, where: Path, model_class: type[GPT]
) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a ``model_class`` of ``config``, without allocating it."""
    try:
        with torch.device("meta"):
            model = model_class(config)
            return {name: tuple(t.shape) for name, t in model.state_dict().items()}
    except (RuntimeError, ValueError, OverflowError, TypeError) as e:
        raise _refuse(where, f"cannot build this model: {one_line(e)}") from e


def load_pretrained(path: PathLike, model_class: type[GPT]) -> GPT:
    """A ``model_class`` (:class:`lmrs.GPT`: use ``GPT.from_pretrained(path)``) with the
    weights of the Hugging Face model folder ``path``, in eval mode.

    Shapes are checked before the model is built (the token embedding against the
    safetensors header before any weight is read), and every weight must be finite."""
    directory = Path(path)
    data = _read_config(directory)
    config_file = directory / "config.json"
    config = config_from_hf(data, config_file)
    kind = model_type(data)
    header = stored_shapes(directory)
    if header is not None:
        check_embedding_shape(header[0], config, kind, header[1])
    hf, weights_file = read_weights(directory)
    if header is None:  # pytorch_model.bin: the same check, on the loaded tensors
        shapes = {name: tuple(t.shape) for name, t in hf.items() if isinstance(t, torch.Tensor)}
        check_embedding_shape(shapes, config, kind, weights_file)
    check_finite(hf, weights_file)
    state = lmrs_state_dict(hf, config, kind, weights_file)
    expected = expected_shapes(config, config_file, model_class)
    for name in sorted(set(expected) | set(state)):
        have = tuple(state[name].shape) if name in state else None
        if have != expected.get(name):
            raise InputError(
                f"{config_file}: does not describe the weights in {weights_file.name}: "
                f"{name} is {have} there, the config gives {expected.get(name)}"
            )
    model = model_class(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_pretrained_tokenizer(path: PathLike) -> Tokenizer:
    """The folder's ``tokenizer.json`` as an lmrs Tokenizer (byte-level BPE only)."""
    from lmrs.tokenizer.core import Tokenizer

    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise InputError(f"{file}: missing (the model folder has no Hugging Face tokenizer)")
    from_hf = getattr(Tokenizer, "from_huggingface", None)
    if from_hf is None:
        raise InputError(f"{file}: this lmrs cannot import Hugging Face tokenizers yet")
    return from_hf(file)
