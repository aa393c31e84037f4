"""Crash `lmrs encode` and `lmrs vocab` (the tokenizer save) at every Rust fault point.

For each point (``_lmrs.fault_points()``) and each output layout that reaches it, a
subprocess runs the command over an existing complete output with ``LMRS_FAULT_POINT`` set
and dies there (status 86, or SIGKILL). Then:

* every file under its final name is byte-identical to its previous or its new version
  (nothing half-written is visible);
* the output opens and reads as the previous or the new data, or, only inside the commit
  window of a layout that has one (a token file and its sidecar are two names), opening
  fails with a one-line DataError naming the file: never different data;
* a second run succeeds, gives exactly the new output, and leaves no debris (no
  ``.tmp-``/``.old-`` names, nothing in the working directory).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from click.testing import CliRunner

from lmrs import Tokenizer, _lmrs
from lmrs.cli.main import cli
from lmrs.data.tokens import DataError, TokenDataset

POINTS: list[str] = _lmrs.fault_points()
TOKEN_FILE_POINTS = {p for p in POINTS if p.startswith("token_file.")}

# Output layouts: the command-line arguments after the corpus, and the points each reaches.
LAYOUTS: dict[str, tuple[list[str], set[str]]] = {
    "tokenizer": (
        ["vocab", "--size", "300", "-o", "tok.json"],
        {p for p in POINTS if p.startswith("tokenizer.")},
    ),
    "file": (
        ["encode", "-o", "out.bin"],
        {p for p in TOKEN_FILE_POINTS if ".manifest." not in p and ".dir." not in p},
    ),
    "shards": (["encode", "-o", "out", "--shard-tokens", "40"], TOKEN_FILE_POINTS),
    "parts": (
        ["encode", "-o", "out", "--shard-tokens", "40", "--num-parts", "2", "--part-index", "0"],
        {p for p in TOKEN_FILE_POINTS if ".dir." not in p},
    ),
}
# Where the new data is already in place under its final name and what describes it (the
# sidecar, the manifest) is not yet: readers must refuse it (DataError), never misread it.
COMMIT_WINDOW: dict[str, set[str]] = {
    "tokenizer": set(),
    "file": {
        "token_file.data.after_rename",
        "token_file.index.before_rename",
        "token_file.index.after_rename",
        "token_file.sidecar.before_rename",
    },
    "shards": set(),
    "parts": {
        "token_file.data.after_rename",
        "token_file.index.before_rename",
        "token_file.index.after_rename",
        "token_file.sidecar.before_rename",
        "token_file.sidecar.after_rename",
        "token_file.manifest.before_rename",
    },
}
CASES = [
    (point, layout)
    for layout, (_, reached) in LAYOUTS.items()
    for point in POINTS
    if point in reached
]
DEBRIS = (".tmp-", ".old-", ".tmp")


def test_every_rust_fault_point_is_reached_by_some_layout() -> None:
    assert POINTS and len(set(POINTS)) == len(POINTS)
    assert {point for point, _ in CASES} == set(POINTS)
    assert _lmrs.FAULT_EXIT_CODE == 86


def write_corpus(root: Path, upper: bool) -> None:
    """ASCII documents; the `upper` variant has the same byte sizes (so the same parts)
    and other tokens."""
    rng = random.Random(3)
    words = "the cat sat on a mat while dogs ran far off into old rain".split()
    root.mkdir()
    for i in range(12):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "\n"
        (root / f"doc{i:02d}.txt").write_text(text.upper() if upper else text)


def cli_args(layout: str, corpus: Path, tokenizer: Path, part: Optional[int] = None) -> list[str]:
    args = LAYOUTS[layout][0]
    args = [args[0], str(corpus), *args[1:], "-q"]
    if layout != "tokenizer":
        args += ["-t", str(tokenizer)]
    if part is not None:
        args[args.index("--part-index") + 1] = str(part)
    return args


def run_here(args: list[str], cwd: Path) -> None:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output


def snapshot(work: Path) -> dict[str, bytes]:
    """Every file under a final (not temporary) name, by path relative to `work`."""
    files = {}
    for path in sorted(work.rglob("*")):
        relative = path.relative_to(work)
        if path.is_file() and not any(
            part.startswith(".") or ".old-" in part for part in relative.parts
        ):
            files[str(relative)] = path.read_bytes()
    return files


def debris(*roots: Path) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*") if any(d in p.name for d in DEBRIS)]


def read_output(layout: str, work: Path) -> object:
    if layout == "tokenizer":
        return Tokenizer.load(work / "tok.json").hash
    path = work / ("out.bin" if layout == "file" else "out")
    ds = TokenDataset(path)
    return ds.stream.read(0, ds.num_tokens).tolist()


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corpora, a tokenizer, and for each layout its complete old and new outputs."""
    root = tmp_path_factory.mktemp("faults")
    write_corpus(root / "A", upper=False)
    write_corpus(root / "B", upper=True)
    tokenizer = root / "tok.json"
    Tokenizer.train(root / "A", 300, show_progress=False).save(tokenizer)
    paths = {"root": root, "A": root / "A", "B": root / "B", "tok": tokenizer}
    for layout in LAYOUTS:
        old, new = root / f"{layout}-old", root / f"{layout}-new"
        old.mkdir()
        if layout == "parts":
            for part in (0, 1):
                run_here(cli_args(layout, root / "A", tokenizer, part), old)
            shutil.copytree(old, new, dirs_exist_ok=True)
            new.mkdir(exist_ok=True)
            run_here(cli_args(layout, root / "B", tokenizer, 0), new)
        else:
            run_here(cli_args(layout, root / "A", tokenizer), old)
            new.mkdir()
            run_here(cli_args(layout, root / "B", tokenizer), new)
        paths[f"{layout}-old"], paths[f"{layout}-new"] = old, new
    return paths


@pytest.mark.parametrize(
    "point, layout, action",
    [(p, layout, "kill" if i % 2 else "exit") for i, (p, layout) in enumerate(CASES)],
)
def test_a_crash_at_any_point_leaves_old_or_new_and_a_rerun_cleans_up(
    states: dict[str, Path], tmp_path: Path, point: str, layout: str, action: str
) -> None:
    old, new = states[f"{layout}-old"], states[f"{layout}-new"]
    work = tmp_path / "work"
    shutil.copytree(old, work)
    before, after = snapshot(old), snapshot(new)
    assert before != after
    env = dict(os.environ, LMRS_FAULT_POINT=point, LMRS_FAULT_ACTION=action)
    crashed = subprocess.run(
        [sys.executable, "-m", "lmrs", *cli_args(layout, states["B"], states["tok"])],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == (-9 if action == "kill" else 86), crashed.stderr

    for name, content in snapshot(work).items():
        assert content in (before.get(name), after.get(name)), f"{name} is neither old nor new"
    try:
        seen = read_output(layout, work)
    except DataError as e:
        assert point in COMMIT_WINDOW[layout], f"{point}: {e}"
        message = str(e)
        assert "\n" not in message and message.startswith(str(work)), message
    else:
        assert seen in (read_output(layout, old), read_output(layout, new))

    run_here(cli_args(layout, states["B"], states["tok"]), work)
    assert snapshot(work) == after
    assert read_output(layout, work) == read_output(layout, new)
    assert debris(work) == []


def test_the_layouts_really_differ(states: dict[str, Path]) -> None:
    for layout in ("file", "shards", "parts"):
        old = np.array(read_output(layout, states[f"{layout}-old"]))
        new = np.array(read_output(layout, states[f"{layout}-new"]))
        assert not np.array_equal(old, new), layout
