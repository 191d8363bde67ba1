"""Stage ood: every detector on the INT8 model, settings chosen on validation data only, beside the
FP32 model's results from the ood_fp32 stage (edgeml.ood.experiment): metrics/ood.json and
metrics/detectors.json hold both models."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.io import atomic_dir, read_json, write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.ood.detectors import GradientSigns, check_params
from edgeml.ood.experiment import QUANTIZED, REFERENCE, ImageSets, score_quantized
from edgeml.quantization import deployed_paths
from edgeml.stage import run


def main() -> None:
    params = P.load()
    ood, backend = params.ood, params.quantize.backend
    check_params(ood.detectors, ood.search)
    torch.set_num_threads(ood.threads)
    reference_choices, reference = read_json(paths.FP32_OOD_CHOICES), read_json(paths.FP32_OOD_METRICS)
    gradients = GradientSigns.load(paths.ODIN_GRADIENTS, load_checkpoint(paths.FP32))
    int8 = deployed_paths(backend, paths.DEPLOY)[QUANTIZED]
    with atomic_dir(paths.SCORES) as out:
        choices, views = score_quantized(ood, int8, backend, reference_choices, paths.FP32_OOD, gradients,
                                         ImageSets.load(ood), out)
    write_json(paths.metrics("detectors"), {REFERENCE: reference_choices, QUANTIZED: choices})
    write_json(paths.metrics("ood"), reference | views)


if __name__ == "__main__":
    run(main)
