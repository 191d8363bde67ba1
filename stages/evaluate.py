"""Stage evaluate: top-1 accuracy of the deployable FP32 and INT8 models on the CIFAR-10 test set; and the
INT8 file judged as the sweep judges a recipe, on validation data only (top-1 and AUROC loss against the
sweep_reference stage's FP32 numbers, size ratio), so any quantize.* experiment has the numbers
`edgeml review` gates on, sweep recipe or not."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.bench.cpu import file_size_mb
from edgeml.data.splits import load_arrays, load_ood_validation
from edgeml.io import read_json, write_json
from edgeml.model.inference import predict_logits, to_tensor
from edgeml.ood.detectors import ModelContext
from edgeml.ood.protocol import validation_quality
from edgeml.quantization import deployed_paths, load_deployable, load_head
from edgeml.stage import run
from edgeml.sweep import judged_quality


def main() -> None:
    params = P.load()
    backend = params.quantize.backend
    torch.set_num_threads(params.bench.threads)  # as the sweep judges its recipes
    arrays = load_arrays(paths.CIFAR10)
    images, labels = to_tensor(arrays["test_x"]), torch.from_numpy(arrays["test_y"])
    files = deployed_paths(backend, paths.DEPLOY)
    predictions = {name: predict_logits(load_deployable(path, backend), images).argmax(1) for name, path in files.items()}
    top1 = {f"{name}_top1": (pred == labels).float().mean().item() for name, pred in predictions.items()}
    agreement = (predictions["fp32"] == predictions["int8"]).float().mean().item()
    int8 = validation_quality(load_deployable(files["int8"], backend, features=True), ModelContext(load_head(files["int8"], backend)),
                              arrays, load_ood_validation(params.ood.validation_sets), params.ood)
    judged = judged_quality(int8, read_json(paths.metrics("sweep_reference"))["fp32"],
                            {name: file_size_mb(path) for name, path in files.items()})
    write_json(paths.metrics("evaluate"), {"test_samples": len(labels), **top1, "agreement": agreement, "validation": judged})


if __name__ == "__main__":
    run(main)
