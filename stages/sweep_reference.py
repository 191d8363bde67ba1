"""Stage sweep_reference: the FP32 model's validation quality, computed once for every sweep recipe
to be compared with (top-1 on the held-out training split, logit detectors' AUROC vs the OOD
validation set). No test image is read."""

import torch

from edgeml import params as P
from edgeml.data.splits import load_arrays
from edgeml.io import write_json
from edgeml.model.inference import to_tensor
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
    arrays = load_arrays("data/prepared/cifar10.npz")
    fp32 = load_checkpoint("models/fp32.pt")
    quality = validation_quality(
        WithFeatureMap(fp32).eval(), ModelContext(fp32.fc), to_tensor(arrays["val_x"]),
        torch.from_numpy(arrays["val_y"]), to_tensor(load_arrays(f"data/prepared/ood/{ood.validation_set}.npz")["x"]),
        ood.detectors, ood.validation_images, ood.batch_size,
    )
    write_json("metrics/sweep_reference.json", {"fp32": quality})


if __name__ == "__main__":
    run(main)
