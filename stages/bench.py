"""Stage bench: parameters, size on disk, CPU (and GPU when present) latency and throughput,
against every FP32 path and this machine's compute floor (edgeml.bench.suite)."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.bench.suite import run_bench
from edgeml.io import write_json
from edgeml.ood.detectors import check_params
from edgeml.quantization import fp32_paths, int8_path
from edgeml.stage import run


def main() -> None:
    params = P.load()
    check_params(params.ood.detectors, {})
    torch.set_num_threads(params.bench.threads)  # before loading: ONNX Runtime sessions take torch's thread count
    fp32_files, int8 = fp32_paths(paths.DEPLOY), int8_path(params.quantize.backend, paths.DEPLOY)
    results = run_bench(params, paths.FP32, fp32_files, int8, paths.CIFAR10, paths.metrics("detectors"), paths.ARTIFACT)
    write_json(paths.metrics("bench"), results)


if __name__ == "__main__":
    run(main)
