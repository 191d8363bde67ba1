"""Stage train: the FP32 ResNet18 as models/pretrained.pt (the finetune stage's start), either the published weights that
train.weights names (verified, installed, measured on the validation split) or trained here on
CIFAR-10's train split (`torchrun --nproc_per_node=N stages/train.py` for several GPUs)."""

from edgeml import params as P
from edgeml import paths
from edgeml.io import write_json
from edgeml.model.weights import fp32_model
from edgeml.stage import run


def main() -> None:
    metrics = fp32_model(P.load(), paths.CIFAR10, paths.PRETRAINED, paths.CHECKPOINT, paths.PLOTS / "train")
    if metrics is not None:  # only rank 0 writes
        write_json(paths.metrics("train"), metrics)


if __name__ == "__main__":
    run(main)
