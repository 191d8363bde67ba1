"""Stage evaluate: top-1 accuracy of the deployable FP32 and INT8 models on the CIFAR-10 test set."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import load_arrays
from edgeml.io import write_json
from edgeml.model.inference import predict_logits, to_tensor
from edgeml.quantization import deployed_models
from edgeml.stage import run


def main() -> None:
    params = P.load()
    arrays = load_arrays(paths.CIFAR10)
    images, labels = to_tensor(arrays["test_x"]), torch.from_numpy(arrays["test_y"])
    models = deployed_models(params.quantize.backend, paths.DEPLOY)
    predictions = {name: predict_logits(model, images).argmax(1) for name, model in models.items()}
    top1 = {f"{name}_top1": (pred == labels).float().mean().item() for name, pred in predictions.items()}
    agreement = (predictions["fp32"] == predictions["int8"]).float().mean().item()
    write_json(paths.metrics("evaluate"), {"test_samples": len(labels), **top1, "agreement": agreement})


if __name__ == "__main__":
    run(main)
