"""Stage sweep_report: every recipe of the sweep side by side (metrics/quant_sweep.md + .json) and the
best one, chosen on validation numbers and the shared timing run only; where each backend's batch-1 time
goes (metrics/backend_profiles.md); what every backend offers (metrics/backends.md, as `edgeml backends` prints it)."""

from edgeml import params as P
from edgeml import paths, sweep
from edgeml.io import read_json, write_json, write_text
from edgeml.quantization import catalog, quantizer_class
from edgeml.stage import run


def main() -> None:
    params = P.load()
    results = {name: read_json(paths.METRICS / "sweep" / f"{name}.json") for name in params.sweep.recipes}
    timing, reference = read_json(paths.metrics("sweep_timing")), read_json(paths.metrics("sweep_reference"))["fp32"]
    backends = {backend: quantizer_class(backend) for backend in sorted({r["recipe"]["backend"] for r in results.values()})}
    packaged = {name for name, result in results.items() if backends[result["recipe"]["backend"]].packageable()}
    arm_notes = {backend: cls.arm_note for backend, cls in backends.items() if cls.arm_note}
    summary = sweep.sweep_summary(results, timing, reference, packaged, arm_notes)
    write_json(paths.metrics("quant_sweep"), summary)
    write_text(paths.METRICS / "quant_sweep.md", sweep.render_sweep(summary))
    write_text(paths.METRICS / "backend_profiles.md", sweep.render_backend_profiles(timing, arm_notes))
    write_text(paths.METRICS / "backends.md", catalog.markdown(catalog.describe_all()))  # the docs' backend matrix


if __name__ == "__main__":
    run(main)
