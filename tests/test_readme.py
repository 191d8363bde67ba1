"""README shows exactly what the pipeline produced, and CI runs README's commands."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()
GENERATED = ("metrics/report.md", "metrics/quant_sweep.md", "metrics/gpu_recipe/report.md", "metrics/predict_load.md", "metrics/ort_profile.md",
             "metrics/openvino_profile.md", "metrics/backend_profiles.md")


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


def test_sync_fills_empty_and_stale_blocks(tmp_path):
    spec = importlib.util.spec_from_file_location("sync_readme", REPO / "scripts/sync_readme.py")
    sync_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_readme)
    report = (REPO / "metrics/report.md").read_text().strip()
    for inside in ("", "stale table\n"):
        text = f"intro\n<!-- BEGIN metrics/report.md -->\n{inside}<!-- END metrics/report.md -->\nend\n"
        assert sync_readme.sync(text) == f"intro\n<!-- BEGIN metrics/report.md -->\n{report}\n<!-- END metrics/report.md -->\nend\n"
