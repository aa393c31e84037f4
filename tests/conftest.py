"""The test folders mirror the package's layers (tests/model for lmrs/model, ...). Every
folder is importable by module name, so that the shared helpers at the top (tok_corpus,
model_options, tolerances) and one test module's fixtures used by another resolve from any
folder, whichever tests are selected."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in [HERE, *sorted(p for p in HERE.iterdir() if p.is_dir() and p.name[0] not in "._")]:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
