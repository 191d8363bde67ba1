"""Stage report: Tables 1 and 2 (markdown and JSON), the headline metrics (quality and timing apart),
and the plots."""

import sys
from pathlib import Path

from edgeml import params as P
from edgeml import sweep
from edgeml.data.splits import load_arrays
from edgeml.io import read_json, write_json, write_text
from edgeml.reporting import figures, tables
from edgeml.stage import run

PLOTS = Path("plots")


def main() -> None:
    all_params = P.load()
    params, headline_set = all_params.ood, all_params.report.headline_set
    bench, evaluate, ood, choices, package, recipes = (
        read_json(f"metrics/{name}.json") for name in ("bench", "evaluate", "ood", "detectors", "package", "quant_sweep")
    )
    warning = sweep.disagreement(all_params.quantize, recipes)
    if warning:
        print(warning, file=sys.stderr)
    markdown = tables.render_markdown(bench, evaluate, ood, choices, package, params.sets, params.groups, headline_set)
    write_text("metrics/report.md", (f"> **{warning}**\n\n" if warning else "") + markdown)
    write_text("metrics/predict_load.md", tables.predict_load_markdown(bench))
    quality, timing = tables.headline(bench, evaluate, ood, choices, package, params.groups, headline_set)
    quality["quantize_is_sweep_best"] = int(warning is None)
    write_json("metrics/summary.json", quality)
    write_json("metrics/timing.json", timing)
    write_json(
        "metrics/tables.json",
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
        scores = {model: load_arrays(f"data/scores/{model}_{detector}.npz") for model in tables.MODELS}
        for ood_set in params.sets:
            figures.write_curves(scores, ood_set, detector, PLOTS / "ood")
            if (detector, ood_set) in readme_figures:
                figures.plot_ood(scores, ood_set, detector, PLOTS / "figures" / f"{detector}_{ood_set}.png")
    figures.plot_auroc_change(ood, params.sets, PLOTS / "figures" / "auroc_change.png")
    figures.plot_training(PLOTS / "train" / "plots" / "metrics", PLOTS / "figures" / "training.png")

if __name__ == "__main__":
    run(main)
