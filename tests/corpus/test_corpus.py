"""lmrs.corpus.add_to_corpus and `lmrs corpus add`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmrs import Tokenizer
from lmrs.cli.main import cli
from lmrs.corpus.files import add_to_corpus, record_folder_name


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "pkg" / "a.py").write_text("def f():\n    return 'héllo'\n", encoding="utf-8")
    (root / "pkg" / "sub" / "b.md").write_text("# Title\n\ntext\n", encoding="utf-8")
    (root / "pkg" / "c.txt").write_text("not selected\n", encoding="utf-8")
    (root / "pkg" / "image.py").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "pkg" / "latin1.py").write_bytes("caf\xe9 ".encode("latin-1") * 3)
    (root / "pkg" / "mostly_ok.md").write_bytes(b"x" * 500 + b"\xff" + b"y" * 500)
    (root / ".git" / "config.py").write_text("hidden = True\n")


def test_add_copies_matching_text_files_keeping_paths(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "corpus"
    make_tree(src)
    result = add_to_corpus(src, dst, [".py", "md"], show_progress=False)
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == ["pkg/a.py", "pkg/mostly_ok.md", "pkg/sub/b.md"]
    assert (dst / "pkg" / "a.py").read_text(encoding="utf-8") == "def f():\n    return 'héllo'\n"
    # one bad byte in 1001 is repaired, not dropped
    assert (dst / "pkg" / "mostly_ok.md").read_text(encoding="utf-8") == (
        "x" * 500 + "\ufffd" + "y" * 500
    )
    assert (result.added, result.repaired) == (3, 1)
    assert (result.skipped_binary, result.skipped_invalid) == (1, 1)
    assert result.bytes_added == sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())


def test_add_is_idempotent(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "corpus"
    make_tree(src)
    add_to_corpus(src, dst, [".py", ".md"], show_progress=False)
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}
    again = add_to_corpus(src, dst, [".py", ".md"], show_progress=False)
    assert (again.added, again.unchanged) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()} == before
    # a changed source file is copied again
    (src / "pkg" / "a.py").write_text("changed\n")
    third = add_to_corpus(src, dst, [".py", ".md"], show_progress=False)
    assert (third.added, third.unchanged) == (1, 2)
    assert (dst / "pkg" / "a.py").read_text() == "changed\n"


def test_no_extension_filter_takes_every_text_file_and_leaves_no_temp_files(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src", tmp_path / "corpus"
    make_tree(src)
    add_to_corpus(src, dst, show_progress=False)
    names = {p.name for p in dst.rglob("*") if p.is_file()}
    assert names == {"a.py", "b.md", "c.txt", "mostly_ok.md"}


def test_corpus_inside_source_is_not_copied_into_itself(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dst = src / "corpus"
    add_to_corpus(src, dst, [".py"], show_progress=False)
    add_to_corpus(src, dst, [".py"], show_progress=False)
    assert not (dst / "corpus").exists()


def test_missing_source_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        add_to_corpus(tmp_path / "nowhere", tmp_path / "corpus", show_progress=False)


def test_cli_corpus_add(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "corpus"
    make_tree(src)
    runner = CliRunner()
    res = runner.invoke(cli, ["corpus", "add", str(src), str(dst), "--ext", ".py", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "added 1 files" in res.output and "2 skipped (not text)" in res.output
    bad = runner.invoke(cli, ["corpus", "add", str(tmp_path / "missing"), str(dst)])
    assert bad.exit_code != 0
    assert "missing" in bad.output and len(bad.output.strip().splitlines()) == 1


def documents(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.txt"))]


def test_record_files_of_one_name_from_two_sources_never_replace_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a/data.jsonl and b/data.jsonl each get their own folder (name and a hash of the
    resolved source path); adding the same source again changes nothing."""
    first = [f"first source document {i}" for i in range(30)]
    second = [f"second source document {i}" for i in range(5)]
    for name, docs in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"text": d}) for d in docs]
        (tmp_path / name / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dst = tmp_path / "corpus"
    result = CliRunner().invoke(
        cli, ["corpus", "add", str(tmp_path / "a" / "data.jsonl"), str(dst), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "b")  # relative or absolute: the same source
    assert add_to_corpus("data.jsonl", dst, show_progress=False).added == 5
    again = add_to_corpus(tmp_path / "b" / "data.jsonl", dst, show_progress=False)
    assert (again.added, again.unchanged) == (0, 5)
    folders = sorted(p.name for p in dst.iterdir())
    assert folders == sorted(record_folder_name(tmp_path / n / "data.jsonl") for n in "ab")
    assert all(f.startswith("data-") and len(f) == len("data-") + 8 for f in folders)
    assert documents(dst / record_folder_name(tmp_path / "a" / "data.jsonl")) == first
    assert documents(dst / record_folder_name(tmp_path / "b" / "data.jsonl")) == second


def test_symlinked_folders_are_followed_like_vocab_follows_them(tmp_path: Path) -> None:
    """One rule for `corpus add` and `vocab`: a symlinked folder is read, a link to a
    folder that holds it (a loop) is skipped."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "real").mkdir(parents=True)
    outside.mkdir()
    (src / "real" / "a.txt").write_text("alpha beta\n")
    (outside / "b.txt").write_text("gamma delta\n")
    (src / "linked").symlink_to(outside, target_is_directory=True)
    (src / "real" / "loop").symlink_to(src, target_is_directory=True)
    dst = tmp_path / "corpus"
    result = add_to_corpus(src, dst, show_progress=False)
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == ["linked/b.txt", "real/a.txt"]
    assert result.added == 2
    tokenizer = Tokenizer.train(src, 260, show_progress=False)
    assert tokenizer.train_stats is not None and tokenizer.train_stats.num_files == 2
