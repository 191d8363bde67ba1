"""README and the docs pages show exactly what the pipeline produced, README stays short, and CI runs
README's commands."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000
# Every generated report, shown in README or on some docs page.
GENERATED = ("metrics/headline.md", "metrics/predict_demo.md", "metrics/report.md", "metrics/quant_sweep.md",
             "metrics/finetune_search.md", "metrics/gpu_recipe/report.md", "metrics/predict_load.md",
             "metrics/ort_profile.md", "metrics/openvino_profile.md", "metrics/backend_profiles.md", "metrics/install_sizes.md",
             "metrics/backends.md", "metrics/roofline.md")


def sync_readme():
    spec = importlib.util.spec_from_file_location("sync_readme", REPO / "scripts/sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_synced_are_readme_and_every_docs_page():
    assert sync_readme().pages() == PAGES
    assert len(PAGES) > 1, "no docs/*.md pages"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_generated_blocks_are_the_committed_reports(page):
    text = page.read_text()
    assert sync_readme().sync(text) == text, f"{page.name}'s tables differ from metrics/: run `python scripts/sync_readme.py`"


def test_every_generated_report_is_shown():
    shown = "".join(page.read_text() for page in PAGES)
    for report in GENERATED:
        assert f"<!-- BEGIN {report} -->" in shown, f"neither README nor docs/ shows {report}"


def test_readme_keeps_the_headline_and_the_predict_example():
    for report in ("metrics/headline.md", "metrics/predict_demo.md"):
        assert f"<!-- BEGIN {report} -->" in README


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "docs/review.md"], ids=lambda p: p.name)
def test_the_roc_plots_shown_are_msp_and_the_packaged_detector(page):
    """The example plots the paper's baseline beside the detector the artifact carries, whichever the
    package stage chose; `scripts/sync_readme.py` makes the page follow a new choice."""
    packaged = json.loads((REPO / "metrics/package.json").read_text())["detector"]
    shown = re.search(r"dvc plots show (.*)", page.read_text()).group(1).split("#")[0].split()
    assert shown == ["roc_msp_tin_crop", f"roc_{packaged}_tin_crop"], f"{page.name}: run `python scripts/sync_readme.py`"


def test_sync_moves_the_roc_example_to_a_newly_packaged_detector():
    packaged = sync_readme().packaged_detector()
    other = "msp" if packaged != "msp" else "energy"
    stale = f"dvc plots show roc_msp_tin_crop roc_{other}_tin_crop   # comment kept\n"
    assert sync_readme().sync(stale) == f"dvc plots show roc_msp_tin_crop roc_{packaged}_tin_crop   # comment kept\n"


def test_readme_is_short():
    size = len(README.encode())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (> {README_MAX_BYTES}): move detail to docs/"


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (REPO / ".ci/run").read_text()
    for command in ('python -m pip install -e ./runtime -e ".[dev]"', "python -m pytest"):
        assert command in README and command in ci


def test_ci_builds_the_docs_strictly():
    ci = (REPO / ".ci/run").read_text()
    assert "mkdocs build --strict" in ci
    assert ci.index('python -m pip install -e ./runtime -e ".[dev]"') < ci.index("mkdocs build") < ci.index("python -m pytest")


def test_sync_fills_empty_and_stale_blocks(tmp_path):
    sync = sync_readme().sync
    report = (REPO / "metrics/report.md").read_text().strip()
    for inside in ("", "stale table\n"):
        text = f"intro\n<!-- BEGIN metrics/report.md -->\n{inside}<!-- END metrics/report.md -->\nend\n"
        assert sync(text) == f"intro\n<!-- BEGIN metrics/report.md -->\n{report}\n<!-- END metrics/report.md -->\nend\n"


def _floats(value) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return [value] if isinstance(value, float) else []


def _prose(text: str) -> str:
    """A page without what is generated or quoted: generated blocks, fenced code, inline code."""
    text = re.sub(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


def hand_typed_numbers(text: str, measured: set[str]) -> list[str]:
    """Numbers in ``text``'s prose that a metrics file holds (as the reports print them: 1-3 decimals, as is or
    in percent), and counts of detectors, sets or recipes, which change with params."""
    found = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", _prose(text)) if n in measured]
    found += re.findall(r"\b\d+ (?:detectors|OOD sets|test sets|recipes|backends)\b", _prose(text))
    return found


def measured_numbers() -> set[str]:
    from edgeml.reporting.tables import PAPER_TABLE1, PAPER_TABLE2

    paper = {f"{v:g}" for rows in (PAPER_TABLE1, PAPER_TABLE2) for pair in rows.values() for v in pair}
    forms = set()
    for path in (REPO / "metrics").rglob("*.json"):
        for value in _floats(json.loads(path.read_text())):
            forms |= {f"{value * scale:.{digits}f}" for scale in (1, 100) for digits in (1, 2, 3)}
    # three or more significant digits: "0.5" or "1.0" is a goal or a setting far more often than a measurement
    return {f for f in forms if len(f.replace(".", "").lstrip("0")) >= 3 and f not in paper}


def test_readme_and_docs_state_no_measured_number_by_hand():
    measured = measured_numbers()
    assert hand_typed_numbers("top-1 was 91.00% and 13 detectors ran", {"91.00"}) == ["91.00", "13 detectors"]
    assert hand_typed_numbers("<!-- BEGIN m.md -->\n91.00\n<!-- END m.md -->\n`91.00`", {"91.00"}) == []
    for page in PAGES:
        assert hand_typed_numbers(page.read_text(), measured) == [], f"{page.relative_to(REPO)} types measured numbers by hand"


def test_the_layout_tree_names_every_module_and_stage():
    tree = README.split("## Repository layout", 1)[1].split("```")[1]
    files = [*(REPO / "src/edgeml").rglob("*.py"), *(REPO / "runtime/src/edgeml").rglob("*.py"), *(REPO / "stages").glob("*.py")]
    missing = sorted({f.name for f in files if f.name != "__init__.py" and not re.search(rf"(?<![\w.]){re.escape(f.name)}", tree)})
    assert not missing, f"README's layout tree omits {missing}"
