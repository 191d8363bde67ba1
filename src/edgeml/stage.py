"""Entry point shared by the stage scripts: clean one-line errors instead of tracebacks.

Expected failures are the project's own errors (bad params, data, downloads, artifacts: their
messages name the file or key and the fix) and the few operating-system errors a user fixes
outside the code (a missing input, no permission, a full disk). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Optional

from edgeml.errors import EdgeMLError
from edgeml.io import DISK_FULL


def describe(exc: BaseException) -> Optional[str]:
    """The one-line message for an expected failure; None for anything else."""
    if isinstance(exc, EdgeMLError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: not found; run the stages that produce it first (`dvc repro`)"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied; check the file's owner and mode"
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}; free disk space and re-run (no output was half-written)"
    return None


def run(stage: Callable[[], None]) -> None:
    """Run a stage; an expected failure prints ``error: <what and how to fix it>`` and exits 1."""
    try:
        stage()
    except Exception as exc:
        message = describe(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
