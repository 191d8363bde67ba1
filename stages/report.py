"""Stage report: Tables 1 and 2 (markdown and metrics) and the plots."""

from pathlib import Path

from edgeml import params as P
from edgeml import report
from edgeml.data import load_arrays
from edgeml.io import read_json, write_json, write_text
from edgeml.stage import run

PLOTS = Path("plots")


def main() -> None:
    params = P.load().ood
    bench, evaluate, ood = (read_json(f"metrics/{name}.json") for name in ("bench", "evaluate", "ood"))
    write_text("metrics/report.md", report.render_markdown(bench, evaluate, ood, "msp", params.sets, params.groups))
    write_json(
        "metrics/tables.json",
        {
            "table1": {row: dict(zip(report.MODELS, v)) for row, v in report.table1(bench, evaluate).items()},
            "table2": {
                f"{detector}/{ood_set}": {
                    row: dict(zip(report.MODELS, v)) for row, v in report.table2(ood, detector, ood_set).items()
                }
                for detector in params.detectors
                for ood_set in params.sets
            },
        },
    )
    for detector in params.detectors:
        scores = {model: load_arrays(f"data/scores/{model}_{detector}.npz") for model in report.MODELS}
        for ood_set in params.sets:
            report.plot_ood(scores, ood_set, detector, PLOTS / "ood", PLOTS / "figures")
    report.plot_auroc_change(ood, params.sets, PLOTS / "figures" / "auroc_change.png")
    report.plot_training(PLOTS / "train" / "plots" / "metrics", PLOTS / "figures" / "training.png")


if __name__ == "__main__":
    run(main)
