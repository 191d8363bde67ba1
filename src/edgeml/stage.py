"""Entry point shared by the stage scripts: clean one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable

from edgeml.deploy import ArtifactError
from edgeml.fetch import FetchError
from edgeml.params import ParamsError
from edgeml.preprocess import DataError

EXPECTED_ERRORS = (ParamsError, FetchError, DataError, ArtifactError, FileNotFoundError)


def run(stage: Callable[[], None]) -> None:
    """Run a stage; an expected failure prints what went wrong and exits 1."""
    try:
        stage()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
