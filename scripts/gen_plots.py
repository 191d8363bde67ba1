"""Write dvc.yaml's top-level ``plots:`` section from params.yaml: one ROC plot, FP32 vs INT8, per
detector (``ood.detectors``) and OOD set (``ood.sets``), the curves the report stage writes. DVC's
templating fills ``${...}`` in top-level plots but has no ``foreach`` there, so the list is generated
here; tests/test_plots.py checks that dvc.yaml is this script's output. Run it after changing those params:

    python scripts/gen_plots.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from edgeml.reporting.review import MODELS, ROC_CSV

ROOT = Path(__file__).resolve().parents[1]
# The section: its `plots:` line and every indented line after it, up to the next top-level key.
SECTION = re.compile(r"^plots:.*\n(?:[ \t]+.*\n)*", re.MULTILINE)
HEADER = ("plots:  # FP32 vs INT8 ROC per detector and OOD set (plots/ood/roc/MODEL/DETECTOR_SET.csv, "
          "from edgeml.reporting.figures.write_curves)")
FIGURES = "  - plots/figures  # PNG: the few figures README shows"


def roc_plot(detector: str, ood_set: str) -> str:
    """One plot entry, in flow style: one line per plot keeps the section readable at 80+ plots."""
    models = " vs ".join(model.upper() for model in MODELS)
    curves = ", ".join(f"{ROC_CSV.format(model=m, detector=detector, ood_set=ood_set)}: tpr" for m in MODELS)
    return (f"  - roc_{detector}_{ood_set}: {{template: simple, title: 'ROC, {detector} vs {ood_set}, {models}', "
            f"x: fpr, x_label: FPR (OOD accepted), y_label: TPR (ID accepted), y: {{{curves}}}}}")


def section(params: dict) -> str:
    """The whole ``plots:`` section for these params."""
    ood = params["ood"]
    plots = [roc_plot(detector, ood_set) for detector in ood["detectors"] for ood_set in ood["sets"]]
    return "\n".join([HEADER, *plots, FIGURES]) + "\n"


def sync(dvc_yaml: str, params: dict) -> str:
    """dvc.yaml's text with its plots section generated from params; the rest of the text unchanged."""
    if len(SECTION.findall(dvc_yaml)) != 1:
        raise SystemExit("dvc.yaml: expected one top-level `plots:` section")
    return SECTION.sub(lambda _: section(params), dvc_yaml)


def main() -> int:
    path = ROOT / "dvc.yaml"
    before = path.read_text()
    after = sync(before, yaml.safe_load((ROOT / "params.yaml").read_text()))
    path.write_text(after)
    print(f"dvc.yaml: plots section {'updated' if after != before else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
