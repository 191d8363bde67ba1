"""README shows exactly what the pipeline produced, and CI runs README's commands."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()
GENERATED = ("metrics/report.md", "metrics/quant_sweep.md", "metrics/gpu_recipe/report.md")


def test_readme_tables_are_the_committed_reports():
    spec = importlib.util.spec_from_file_location("sync_readme", REPO / "scripts/sync_readme.py")
    sync_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_readme)
    for report in GENERATED:
        assert f"<!-- BEGIN {report} -->" in README, f"README does not show {report}"
    assert sync_readme.sync(README) == README, "README's tables differ from metrics/: run `python scripts/sync_readme.py`"


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (REPO / ".ci/run").read_text()
    for command in ('python -m pip install -e ".[dev]"', "python -m pytest"):
        assert command in README and command in ci
