"""Stage demo: README's `edgeml predict` example, run on a seeded random sample of every test set
(edgeml.reporting.demo), with the share accepted beside the package stage's measured rate."""

import tempfile
from pathlib import Path

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import id_split, load_arrays
from edgeml.io import read_json, write_text
from edgeml.reporting.demo import predict_demo
from edgeml.stage import run


def main() -> None:
    params = P.load()
    arrays = load_arrays(paths.CIFAR10)
    package = read_json(paths.metrics("package"))
    sets = {"id": arrays["test_x"][id_split(arrays, params.ood.id_split, paths.PREPARED)[0]]}
    sets |= {name: load_arrays(paths.ood_set(name))["x"] for name in params.ood.sets}
    accepted = {"id": package["test_tpr"], **package["test_fpr"]}
    with tempfile.TemporaryDirectory() as folder:
        text = predict_demo(paths.ARTIFACT, sets, accepted, params.report.demo_images, params.report.demo_seed, Path(folder) / "demo")
    write_text(paths.METRICS / "predict_demo.md", text)


if __name__ == "__main__":
    run(main)
