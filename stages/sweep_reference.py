"""Stage sweep_reference: the FP32 model's validation quality, computed once for every sweep recipe to be
compared with (edgeml.ood.protocol.validation_quality). No test image is read."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays, load_ood_validation
from edgeml.io import write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.ood.detectors import ModelContext, check_params
from edgeml.ood.protocol import validation_quality
from edgeml.quantization import WithFeatureMap
from edgeml.stage import run


def main() -> None:
    params = P.load()
    ood = params.ood
    check_params(ood.detectors, {})
    torch.set_num_threads(params.bench.threads)
    arrays, fp32 = load_arrays(paths.CIFAR10), load_checkpoint(paths.FP32)
    ood_images = load_ood_validation(ood.validation_sets)
    quality = validation_quality(WithFeatureMap(fp32).eval(), ModelContext(fp32.fc), arrays, ood_images, ood)
    write_json(paths.metrics("sweep_reference"), {"fp32": quality})


if __name__ == "__main__":
    run(main)
