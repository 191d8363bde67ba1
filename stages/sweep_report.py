"""Stage sweep_report: every recipe of the sweep side by side (metrics/quant_sweep.md + .json) and the
best one, chosen on validation numbers and the shared timing run only; where each backend's batch-1 time
goes (metrics/backend_profiles.md)."""

from pathlib import Path

from edgeml import params as P
from edgeml import paths, sweep
from edgeml.io import read_json, write_json, write_text
from edgeml.runtime.artifact import PACKAGED_SUFFIXES
from edgeml.stage import run


def main() -> None:
    params = P.load()
    results = {name: read_json(paths.METRICS / "sweep" / f"{name}.json") for name in params.sweep.recipes}
    timing, reference = read_json(paths.metrics("sweep_timing")), read_json(paths.metrics("sweep_reference"))["fp32"]
    packaged = {name for name, result in results.items() if Path(result["file"]).suffix in PACKAGED_SUFFIXES}
    summary = sweep.sweep_summary(results, timing, reference, packaged)
    write_json(paths.metrics("quant_sweep"), summary)
    write_text(paths.METRICS / "quant_sweep.md", sweep.render_sweep(summary))
    write_text(paths.METRICS / "backend_profiles.md", sweep.render_backend_profiles(timing))


if __name__ == "__main__":
    run(main)
