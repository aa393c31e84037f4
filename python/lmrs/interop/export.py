"""``lmrs.export``: a run, a checkpoint or a GPT in memory → a Hugging Face folder or a GGUF file.

The one entry point of ``lmrs export`` and the Python API; the formats live in
:mod:`lmrs.model.hf_export` and :mod:`lmrs.interop.gguf_export`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from lmrs.errors import InputError

if TYPE_CHECKING:
    from lmrs.model.gpt import GPT
    from lmrs.tokenizer.core import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("hf", "gguf")
DTYPES = ("f32", "f16", "bf16", "q8_0")  # q8_0: GGUF only


def load_run(run: PathLike) -> tuple[GPT, Optional[Tokenizer]]:
    """The model (float32, CPU) and tokenizer of a run or checkpoint directory."""
    from lmrs.checkpoint.store import check_tokenizer, load_model
    from lmrs.tokenizer.core import Tokenizer

    model, saved = load_model(run, device="cpu")
    tokenizer = None
    if saved.tokenizer_path is not None:
        tokenizer = Tokenizer.load(saved.tokenizer_path)
        check_tokenizer(saved.path, saved.model_config, tokenizer)
    return model.float(), tokenizer  # type: ignore[return-value]


def export(
    run_or_model: Union[PathLike, GPT],
    path: PathLike,
    format: str = "hf",
    *,
    dtype: str = "f32",
    tokenizer: Optional[Tokenizer] = None,
    overwrite: bool = False,
) -> Path:
    """Write ``run_or_model`` (a run or checkpoint directory, or a GPT) to ``path``:
    ``format="hf"`` a transformers folder, ``"gguf"`` one .gguf file. A run's own
    tokenizer is used unless ``tokenizer`` is given; GGUF needs one. What is at ``path``
    is replaced only when lmrs wrote it (an earlier export) or ``overwrite``. Returns
    ``path``."""
    from torch import nn

    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    # checked before the run is read: a refusal costs nothing
    if format == "hf":
        from lmrs.model.hf_export import check_export_folder

        check_export_folder(path, overwrite=overwrite)
    else:
        from lmrs.interop.gguf_export import check_gguf_target

        check_gguf_target(path, overwrite=overwrite)
    if isinstance(run_or_model, nn.Module):
        model = run_or_model
    else:
        model, run_tokenizer = load_run(run_or_model)
        tokenizer = tokenizer or run_tokenizer
    if format == "hf":
        from lmrs.model.hf_export import export_huggingface

        if dtype == "q8_0":
            raise InputError(
                "dtype q8_0 is for --format gguf; a Hugging Face export takes f32, f16 or bf16"
            )
        return export_huggingface(
            model,  # type: ignore[arg-type]
            path,
            tokenizer,
            dtype=dtype,
            overwrite=overwrite,
        )
    from lmrs.interop.gguf_export import export_gguf

    if tokenizer is None:
        raise InputError(f"{path}: a GGUF file needs the tokenizer (pass tokenizer=...)")
    return export_gguf(model, path, tokenizer, dtype=dtype, overwrite=overwrite)  # type: ignore[arg-type]
