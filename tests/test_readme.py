"""README shows exactly what the pipeline produced, and CI runs README's commands."""

from pathlib import Path

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()


def test_readme_tables_are_the_committed_report():
    for report in ("metrics/report.md", "metrics/gpu_recipe/report.md"):
        tables = (REPO / report).read_text().strip()
        assert tables in README, f"README's tables differ from {report}: paste it again after `dvc repro`"


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (REPO / ".ci/run").read_text()
    for command in ('python -m pip install -e ".[dev]"', "python -m pytest"):
        assert command in README and command in ci
