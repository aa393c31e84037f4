"""Loading hostile tokenizer and token files: success or the documented error, nothing else.

The cases are those of ``tests/fuzz/fuzz_files.py`` (run it directly for 10^5 of them),
drawn here by hypothesis so that a failure shrinks to a small file; CI runs a few hundred.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from fuzz_files import Chooser, check_tokenizer, check_tokens, run_case  # noqa: E402

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["lmrs-tokenizer", "lmrs-tokens", "lmrs-shards", "uint16", "../x"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


class DrawChooser(Chooser):
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


def fresh(tmp_path: Path, name: str) -> Path:
    where = tmp_path / name
    if where.exists():
        shutil.rmtree(where)
    where.mkdir()
    return where


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["tokenizer", "tokens", "checkpoint"]))
def test_mutated_files_load_or_raise_the_documented_error(
    tmp_path: Path, data: st.DataObject, kind: str
) -> None:
    assert run_case(DrawChooser(data), kind, fresh(tmp_path, "case")).startswith(kind)


@SETTINGS
@given(value=json_values)
def test_any_json_as_a_tokenizer_file(tmp_path: Path, value: object) -> None:
    data = json.dumps(value).encode()
    assert check_tokenizer(data, fresh(tmp_path, "tok"), "text") == "refused"


@SETTINGS
@given(sidecar=json_values, manifest=json_values)
def test_any_json_as_a_sidecar_or_manifest(
    tmp_path: Path, sidecar: object, manifest: object
) -> None:
    where = fresh(tmp_path, "tokens")
    (where / "t.bin").write_bytes(b"\x01\x00\x02\x00")
    (where / "t.bin.json").write_text(json.dumps(sidecar))
    (where / "shards").mkdir()
    (where / "shards" / "manifest.json").write_text(json.dumps(manifest))
    assert check_tokens(where / "t.bin") == "refused"
    assert check_tokens(where / "shards") == "refused"
