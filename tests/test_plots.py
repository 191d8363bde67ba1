"""`dvc plots show` pages need no internet (checked fast here; drawn in a real browser by
scripts/check_plots_render.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from configobj import ConfigObj

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_SCRIPT = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


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
