"""The package's layers, read from the sources with ``ast``: no import cycles, each module
imports only from its own layer or lower ones, and no module shares its name with a public
function of ``lmrs`` (which would hide it once imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmrs

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "lmrs"
# lowest first (DESIGN.md); the root's other modules are the shared utilities (layer 0)
LAYERS = ["corpus", "tokenizer", "data", "model", "checkpoint", "training", "interop"]
API_MODULES = {"lmrs", "lmrs.loading", "lmrs.seed_api"}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The lmrs modules ``path`` imports, anywhere in it (a function-level import counts:
    no lazy import may dodge a cycle), except under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {module for module in found if module in known and module != name}


# the Rust extension: a module of its own, lowest of all, importing nothing of lmrs
EXTENSION = "lmrs._lmrs"


def graph() -> dict[str, set[str]]:
    names = module_names()
    known = set(names) | {EXTENSION}
    return {name: imports(path, name, known) - {EXTENSION} for name, path in names.items()}


def layer(name: str) -> int:
    if name == "lmrs.__main__":  # `python -m lmrs`: the program, above everything
        return len(LAYERS) + 3
    if name in API_MODULES:
        return len(LAYERS) + 1
    parts = name.split(".")
    if len(parts) > 1 and parts[1] == "cli":
        return len(LAYERS) + 2
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1]) + 1
    return 0


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_modules_import_only_their_layer_or_lower() -> None:
    upward = [
        f"{name} ({layer(name)}) imports {other} ({layer(other)})"
        for name, others in graph().items()
        for other in others
        if layer(other) > layer(name)
    ]
    assert upward == []


def test_every_module_is_in_a_known_place() -> None:
    for name in module_names():
        parts = name.split(".")
        assert len(parts) <= 3, name
        if len(parts) == 3:
            assert parts[1] in LAYERS or parts[1] == "cli", name


def test_no_module_is_named_like_a_public_function() -> None:
    functions = {name for name in lmrs.__all__ if callable(getattr(lmrs, name))}
    clashes = [n for n in module_names() if n.count(".") == 1 and n.split(".")[1] in functions]
    assert clashes == []


def test_the_checker_finds_a_cycle(tmp_path: Path) -> None:
    """The cycle check can fail: a function-level import back is a cycle."""
    one = tmp_path / "one.py"
    one.write_text("def f():\n    from lmrs.two import g\n")
    found = imports(one, "lmrs.one", {"lmrs.one", "lmrs.two"})
    assert found == {"lmrs.two"}
    typed = tmp_path / "typed.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lmrs.two\n")
    assert imports(typed, "lmrs.typed", {"lmrs.typed", "lmrs.two"}) == set()
