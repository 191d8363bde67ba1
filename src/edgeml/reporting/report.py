"""The report stage's outputs from the pipeline's metrics: Tables 1 and 2 (markdown and JSON), the
headline metrics (quality and timing apart) and the plots."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeml import sweep
from edgeml.data.splits import load_arrays
from edgeml.io import write_json, write_text
from edgeml.params import Params
from edgeml.reporting import figures, tables

INPUTS = ("bench", "evaluate", "ood", "detectors", "package", "quant_sweep", "finetune", "quantize")  # the metrics files a report reads


def write_report(
    all_params: Params, metrics: Mapping[str, dict[str, Any]], metrics_dir: Path, scores: Callable[[str, str], Path], plots: Path
) -> None:
    """Write the report of ``metrics`` (the ``INPUTS`` files, by name) into ``metrics_dir`` and ``plots``;
    ``scores(model, detector)`` is where the ood stage wrote that model's scores with that detector. A
    quantize recipe that is not the sweep's best is flagged on stderr and at the top of the report."""
    params, headline_set = all_params.ood, all_params.report.headline_set
    bench, evaluate, ood, choices, package, recipes, finetune, quantized = (metrics[name] for name in INPUTS)
    warning = sweep.disagreement(quantized["recipe"], recipes)
    if warning:
        print(warning, file=sys.stderr)
    markdown = tables.render_markdown(bench, evaluate, ood, choices, package, params.sets, params.groups, headline_set)
    write_text(metrics_dir / "report.md", (f"> **{warning}**\n\n" if warning else "") + markdown)
    write_text(metrics_dir / "headline.md", tables.render_headline(bench, evaluate, ood, choices, package, finetune, params.sets,
                                                                    params.groups, headline_set))
    write_text(metrics_dir / "predict_load.md", tables.predict_load_markdown(bench))
    write_text(metrics_dir / "ort_profile.md", tables.ort_profile_markdown(bench))
    write_text(metrics_dir / "openvino_profile.md", tables.openvino_profile_markdown(bench))
    write_text(metrics_dir / "roofline.md", tables.roofline_markdown(bench))
    quality, timing = tables.headline(bench, evaluate, ood, choices, package, params.groups, headline_set)
    quality["quantize_is_sweep_best"] = int(warning is None)
    write_json(metrics_dir / "summary.json", quality)
    write_json(metrics_dir / "timing.json", timing)
    write_json(
        metrics_dir / "tables.json",
        {
            "table1": {row: dict(zip(tables.MODELS, v)) for row, v in tables.table1(bench, evaluate).items()},
            "table2": {
                f"{detector}/{ood_set}": {
                    row: dict(zip(tables.MODELS, v)) for row, v in tables.table2(ood, detector, ood_set).items()
                }
                for detector in sorted({"msp", package["detector"]})
                for ood_set in params.sets
            },
        },
    )
    readme_figures = {("msp", headline_set), (package["detector"], headline_set)}
    for detector in params.detectors:
        model_scores = {model: load_arrays(scores(model, detector)) for model in tables.MODELS}
        for ood_set in params.sets:
            figures.write_curves(model_scores, ood_set, detector, plots / "ood")
            if (detector, ood_set) in readme_figures:
                figures.plot_ood(model_scores, ood_set, detector, plots / "figures" / f"{detector}_{ood_set}.png")
    figures.plot_auroc_change(ood, params.sets, plots / "figures" / "auroc_change.png")
    figures.plot_acceptance(package, params.sets, plots / "figures" / "acceptance.png")
    figures.plot_training(plots / "train" / "plots" / "metrics", plots / "figures" / "training.png")
