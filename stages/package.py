"""Stage package: INT8 model + OOD detector + threshold + preprocessing in one deployable file (edgeml.package)."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays
from edgeml.io import atomic_dir, read_json, write_json
from edgeml.ood.detectors import check_params
from edgeml.package import fp32_acceptance, package_int8
from edgeml.quantization import fp32_paths, int8_path
from edgeml.stage import run


def main() -> None:
    params = P.load()
    check_params(params.ood.detectors, {})
    int8 = int8_path(params.quantize.backend, paths.DEPLOY)
    torch.set_num_threads(params.bench.threads)
    choices = read_json(paths.metrics("detectors"))  # the settings the detector runs with, per model
    with atomic_dir(paths.ARTIFACT) as out:
        packaged = package_int8(params, int8, choices["int8"], paths.CIFAR10, out)
    metrics = packaged.metrics(params, load_arrays(paths.scores("int8", packaged.detector)))
    twin_scores = load_arrays(paths.scores("fp32_int8_settings", packaged.detector))  # the FP32 model, the artifact's settings
    metrics["fp32_twin"] = fp32_acceptance(params, fp32_paths(paths.DEPLOY)["fp32_torchscript"], packaged.detector,
                                           choices["int8"][packaged.detector]["chosen"], load_arrays(paths.CIFAR10), twin_scores)
    write_json(paths.metrics("package"), metrics)


if __name__ == "__main__":
    run(main)
