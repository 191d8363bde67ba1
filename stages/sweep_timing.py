"""Stage sweep_timing: every sweep recipe's INT8 file and both FP32 paths timed in this one process
(edgeml.bench.suite.time_sweep), so the sweep's choice does not depend on drift between stages."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.bench.suite import time_sweep
from edgeml.io import write_json
from edgeml.quantization import int8_path
from edgeml.stage import run


def main() -> None:
    params = P.load()
    torch.set_num_threads(params.bench.threads)  # before loading: ONNX Runtime sessions take torch's thread count
    int8 = {name: int8_path(recipe.backend, paths.SWEEP / name) for name, recipe in params.sweep.recipes.items()}
    write_json(paths.metrics("sweep_timing"), time_sweep(params, paths.FP32, int8))


if __name__ == "__main__":
    run(main)
