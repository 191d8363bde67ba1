"""Stage train: the FP32 ResNet18 as models/fp32.pt, either the published weights that
train.weights names (verified, installed, measured on the validation split) or trained here on
CIFAR-10's train split (`torchrun --nproc_per_node=N stages/train.py` for several GPUs)."""

import hashlib
from pathlib import Path

import torch

from edgeml import params as P
from edgeml.data.splits import load_arrays
from edgeml.io import write_json
from edgeml.model.inference import to_tensor
from edgeml.model.resnet import build_resnet18, save_checkpoint
from edgeml.model.train import (
    config_fingerprint,
    distributed,
    is_main_process,
    resolve_device,
    train,
    validation_metrics,
    write_curves,
)
from edgeml.model.weights import install_weights
from edgeml.stage import run

DATA = Path("data/prepared/cifar10.npz")
FP32 = Path("models/fp32.pt")
METRICS = Path("metrics/train.json")
LIVE = Path("plots/train")


def install(params: P.Params, val_x: torch.Tensor, val_y: torch.Tensor) -> None:
    model, provenance = install_weights(params.train.weights, params.model, FP32)
    device = resolve_device(params.train.device)
    torch.set_num_threads(params.train.threads)
    measured = validation_metrics(model.to(device, memory_format=torch.channels_last), val_x, val_y, params.train, device)
    write_curves([measured], LIVE)
    write_json(METRICS, {"origin": "installed", **provenance, **measured, "val_images": len(val_y), "device": device.type})


def train_here(params: P.Params, arrays: dict, val_x: torch.Tensor, val_y: torch.Tensor) -> None:
    with DATA.open("rb") as f:
        data_digest = hashlib.file_digest(f, "sha256").hexdigest()
    model = build_resnet18(params.model.stem, params.model.num_classes)
    results = train(
        model,
        to_tensor(arrays["train_x"]),
        torch.from_numpy(arrays["train_y"]),
        val_x,
        val_y,
        params.train,
        checkpoint_path=Path("models/checkpoints/train.pt"),
        live_dir=LIVE,
        fingerprint=config_fingerprint(params.train, {"model": vars(params.model), "data": data_digest}),
    )
    if is_main_process():
        save_checkpoint(model, params.model.stem, params.model.num_classes, FP32)
        write_json(METRICS, {"origin": "trained", **results})


def main() -> None:
    params = P.load()
    arrays = load_arrays(DATA)
    val_x, val_y = to_tensor(arrays["val_x"]), torch.from_numpy(arrays["val_y"])
    if params.train.weights is not None:
        install(params, val_x, val_y)
    else:
        with distributed(params.train.device):
            train_here(params, arrays, val_x, val_y)


if __name__ == "__main__":
    run(main)
