"""Stage ood_fp32: every detector on the FP32 model, settings chosen on validation data only
(edgeml.ood.experiment). No quantization param reaches it, so a quantization experiment re-uses it."""

import tempfile

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.io import atomic_dir, write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.ood.detectors import GradientSigns, check_params
from edgeml.ood.experiment import ImageSets, score_reference
from edgeml.quantization import export_fp32
from edgeml.stage import run


def main() -> None:
    ood = P.load().ood
    check_params(ood.detectors, ood.search)
    torch.set_num_threads(ood.threads)
    sets = ImageSets.load(ood)
    model = load_checkpoint(paths.FP32)
    gradients = GradientSigns(model)  # ODIN's nudge directions, kept for the ood stage's INT8 model
    with atomic_dir(paths.FP32_OOD) as out, tempfile.TemporaryDirectory() as deploy:
        reference = export_fp32(model, deploy)["fp32_torchscript"]  # the file the quantize stage deploys, bit for bit
        choices, metrics = score_reference(ood, reference, gradients, sets, out)
        gradients.save(out / paths.ODIN_GRADIENTS.name)
        write_json(out / paths.FP32_OOD_CHOICES.name, choices)
        write_json(out / paths.FP32_OOD_METRICS.name, {"id_split": sets.split_record(ood), "perturbation_images": ood.perturbation_images, "fp32": metrics})


if __name__ == "__main__":
    run(main)
