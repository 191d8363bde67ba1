"""Stage train: FP32 ResNet18 on CIFAR-10 (train split), validated on the held-out split."""

import hashlib
from pathlib import Path

import torch

from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.preprocess import to_tensor
from edgeml.io import write_json
from edgeml.models import build_resnet18, save_checkpoint
from edgeml.stage import run
from edgeml.training import config_fingerprint, train

DATA = Path("data/prepared/cifar10.npz")


def main() -> None:
    params = P.load()
    arrays = load_arrays(DATA)
    with DATA.open("rb") as f:
        data_digest = hashlib.file_digest(f, "sha256").hexdigest()
    model = build_resnet18(params.model.stem, params.model.num_classes)
    results = train(
        model,
        to_tensor(arrays["train_x"]),
        torch.from_numpy(arrays["train_y"]),
        to_tensor(arrays["val_x"]),
        torch.from_numpy(arrays["val_y"]),
        params.train,
        checkpoint_path=Path("models/checkpoints/train.pt"),
        live_dir=Path("plots/train"),
        fingerprint=config_fingerprint(params.train, {"model": vars(params.model), "data": data_digest}),
    )
    save_checkpoint(model, params.model.stem, params.model.num_classes, "models/fp32.pt")
    write_json("metrics/train.json", results)


if __name__ == "__main__":
    run(main)
