"""Stage sweep@<recipe>: one quantization recipe on the committed FP32 model, judged on validation data
only (edgeml.quantization.recipe); speed is measured for all recipes at once by sweep_timing."""

import sys

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays, load_ood_validation
from edgeml.io import atomic_dir, write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.quantization.recipe import sweep_quantizer, sweep_recipe
from edgeml.stage import run


def main() -> None:
    params, name = P.load(), sys.argv[1]
    quantizer = sweep_quantizer(params, name)
    torch.set_num_threads(params.bench.threads)
    arrays, fp32 = load_arrays(paths.CIFAR10), load_checkpoint(paths.FP32)
    ood_images = load_ood_validation(params.ood.validation_sets)
    with atomic_dir(paths.SWEEP / name) as out:
        record = sweep_recipe(quantizer, fp32, arrays, ood_images, params.ood, out)
    write_json(paths.METRICS / "sweep" / f"{name}.json", record)


if __name__ == "__main__":
    run(main)
