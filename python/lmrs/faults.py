"""Named crash points, for the fault-injection tests.

``LMRS_FAULT_POINT=NAME`` makes the process die the moment it reaches the point ``NAME``:
``LMRS_FAULT_ACTION=kill`` sends itself SIGKILL, anything else exits at once with status
:data:`FAULT_EXIT_CODE` (``os._exit``: no cleanup, no ``finally``, as a power cut would).
The Rust writers use the same variables (``rust/src/fault.rs``). Unset, a point costs one
environment lookup; the points sit around file writes, never in a hot loop.
"""

from __future__ import annotations

import os
import signal

FAULT_EXIT_CODE = 86

# Every Python crash point, in the order a checkpoint save (or an export) reaches them.
PYTHON_FAULT_POINTS = (
    "checkpoint.tmp_created",
    "checkpoint.weights_written",
    "checkpoint.optimizer_written",
    "checkpoint.files_written",
    "checkpoint.old_renamed",
    "checkpoint.new_renamed",
    "checkpoint.cleaned",
    "atomic.tmp_written",
    "atomic.renamed",
    # a Hugging Face export folder: complete beside the target, then swapped in
    "export.tmp_written",
    "export.old_renamed",
    "export.new_renamed",
)


def fault_point(name: str) -> None:
    """Die here if ``LMRS_FAULT_POINT`` names this point."""
    if os.environ.get("LMRS_FAULT_POINT") != name:
        return
    if os.environ.get("LMRS_FAULT_ACTION") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(FAULT_EXIT_CODE)
