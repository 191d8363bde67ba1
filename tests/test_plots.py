"""`dvc plots show` pages need no internet (checked fast here; drawn in a real browser by
scripts/check_plots_render.py), and dvc.yaml's plots are the ones params asks for (scripts/gen_plots.py)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

import yaml
from configobj import ConfigObj

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_SCRIPT = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def gen_plots() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_plots", ROOT / "scripts/gen_plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_dvc_yaml_plots_are_generated_from_params() -> None:
    dvc_yaml = (ROOT / "dvc.yaml").read_text()
    assert gen_plots().sync(dvc_yaml, params()) == dvc_yaml, "dvc.yaml's plots differ from params: run `python scripts/gen_plots.py`"


def test_a_new_detector_or_ood_set_needs_no_hand_edit() -> None:
    """One plot per detector x OOD set, whatever params lists; the stages and the rest stay as they are."""
    ood = {**params()["ood"], "detectors": ["msp", "new_detector"], "sets": ["tin_crop", "new_set"]}
    before = (ROOT / "dvc.yaml").read_text()
    after = gen_plots().sync(before, {**params(), "ood": ood})
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    assert {key: new[key] for key in new if key != "plots"} == {key: old[key] for key in old if key != "plots"}
    plots = {name: spec for entry in new["plots"] if isinstance(entry, dict) for name, spec in entry.items()}
    assert sorted(plots) == ["roc_msp_new_set", "roc_msp_tin_crop", "roc_new_detector_new_set", "roc_new_detector_tin_crop"]
    assert plots["roc_new_detector_new_set"]["y"] == {"plots/ood/roc/fp32/new_detector_new_set.csv": "tpr",
                                                      "plots/ood/roc/int8/new_detector_new_set.csv": "tpr"}
    assert "plots/figures" in new["plots"]
    assert gen_plots().sync(after, {**params(), "ood": ood}) == after


def test_readme_plot_ids_are_in_dvc_yaml() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\broc_\w+", " ".join(re.findall(r"dvc plots show[^\n]*", readme))))
    declared = {name for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] if isinstance(entry, dict)
                for name in entry}
    assert named and named <= declared


def template() -> Path:
    """The HTML template `.dvc/config` names (a relative path resolves from .dvc/, as DVC does)."""
    return ROOT / ".dvc" / ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]


def test_plots_template_inlines_vega_and_loads_nothing() -> None:
    html = template().read_text()
    assert "{plot_divs}" in html  # where DVC puts the charts
    assert "{scripts}" not in html  # where DVC would put its CDN <script src=...> tags
    assert not EXTERNAL_SCRIPT.search(html)
    for library in ("vega", "vegaLite", "vegaEmbed"):
        assert f".{library}=" in html or f".{library} =" in html, f"{library} is not inlined"
    assert template().stat().st_size < 3_000_000


def test_dvc_plots_show_writes_a_page_with_no_external_script(tmp_path: Path) -> None:
    """DVC's own renderer, with the project's template, on a tiny CSV plot: the page references no URL."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    (repo / "roc.csv").write_text("fpr,tpr\n0,0\n0.2,0.7\n1,1\n")
    (repo / "dvc.yaml").write_text("plots:\n  - roc.csv:\n      x: fpr\n      y: tpr\n      title: ROC\n")
    subprocess.run(["dvc", "plots", "show", "--html-template", str(template()), "-o", "out"], cwd=repo, check=True,
                   capture_output=True)
    page = (repo / "out/index.html").read_text()
    assert "vegaEmbed(" in page and '"fpr"' in page
    assert not EXTERNAL_SCRIPT.search(page)
