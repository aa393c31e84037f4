"""``lmrs train --config run.toml``, and the ``OUT/config.toml`` every run writes.

A run that trained writes OUT/config.toml at its end (a refused or failed command leaves
OUT as it was). A run's configuration is its command's options: the file names them as the
flags do (``-`` written ``_``: ``embed_dim = 192``, ``time_budget = "10m"``,
``tokenizer = "tok.json"``),
click takes them as defaults (``Context.default_map``, so every value is checked by the
option's own type and range), and a flag on the command line wins. The file a run writes
holds every option it ran with (defaults included) except where it ran and what it replaced
(``out``, ``resume``, ``overwrite``), so ``lmrs train --config RUN/config.toml --out NEW``
trains the same run again.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import click

from lmrs.atomic import write_atomic
from lmrs.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10
    import tomli as tomllib

CONFIG_FILE = "config.toml"
# not part of what a run computes: where it ran, what it continued or replaced, the file read
NOT_WRITTEN = {"out", "resume", "overwrite", "config"}


def flag_names(command: click.Command) -> dict[str, str]:
    """``{flag name with _: parameter name}`` of ``command``'s options (``tokenizer`` ->
    ``tokenizer_path``, ``compile`` -> ``use_compile``)."""
    names = {}
    for param in command.params:
        if isinstance(param, click.Option):
            long = [opt for opt in param.opts if opt.startswith("--")]
            flag = (long[0] if long else param.opts[0]).lstrip("-").replace("-", "_")
            if param.name is not None:
                names[flag] = param.name
    return names


def load_config_defaults(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    """The ``--config`` callback (eager: before the other options are read)."""
    if value is None:
        return
    path = Path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from e
    tables = sorted(key for key, item in data.items() if isinstance(item, dict))
    if tables:
        raise InputError(f"{path}: {', '.join(tables)}: a table; give options as key = value")
    names = flag_names(ctx.command)
    unknown = sorted(set(data) - set(names) - {"config"})
    if unknown:
        raise InputError(
            f"{path}: unknown option(s) {', '.join(unknown)} "
            f"(`lmrs {ctx.command.name} --help` lists them)"
        )
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in data.items()}}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # JSON's string escapes are a subset of TOML's basic-string escapes
    return json.dumps(str(value), ensure_ascii=False)


def run_config_text(ctx: click.Context) -> str:
    """The TOML of ``ctx``'s resolved options (None: not given and no default, left out)."""
    names = {param: flag for flag, param in flag_names(ctx.command).items()}
    lines = [
        f"# lmrs {ctx.command.name}: the options this run used (defaults included);",
        f"# `lmrs {ctx.command.name} --config THIS_FILE --out NEW_RUN` trains it again",
    ]
    for option in ctx.command.params:  # in the order --help lists them
        param = option.name or ""
        value = ctx.params.get(param)
        flag = names.get(param, param)
        if flag in NOT_WRITTEN or value is None or value == ():
            continue
        lines.append(f"{flag} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def write_run_config(ctx: click.Context, out_dir: Path) -> Path:
    """Write ``OUT/config.toml`` (atomically)."""
    path = out_dir / CONFIG_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, run_config_text(ctx).encode("utf-8"))
    return path


__all__ = ["CONFIG_FILE", "flag_names", "load_config_defaults", "write_run_config"]
