"""The FP32 model the train stage makes: published weights installed as ``models/fp32.pt``, or trained.

``train.weights`` names it as ``fetch.*`` names a dataset: a URL or a local file (a relative path
is relative to the repository root) and its sha256. :func:`edgeml.data.sources.fetch` copies or
downloads it and checks the sha256 before anything is unpickled; only then is it loaded (tensors
only), refused unless it is the architecture ``model.*`` names, and moved into place atomically.
``train.weights: null`` trains the model with :func:`edgeml.model.train.train` instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from edgeml.data.splits import load_arrays
from edgeml.model.inference import to_tensor
from edgeml.model import rotpred
from edgeml.model.published import install_weights
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
from edgeml.params import Params


def fp32_model(params: Params, data: Path, dest: Path, checkpoint_path: Path, live_dir: Path) -> dict[str, Any] | None:
    """Make ``dest`` from the prepared arrays at ``data``: install ``train.weights`` and measure them on
    the validation split, or train on the train split (in the process group ``torchrun`` describes,
    resuming from ``checkpoint_path``). Curves go to ``live_dir``; returns the metrics of
    metrics/train.json, or None on a rank other than 0 (which writes nothing)."""
    arrays = load_arrays(data)
    val_x, val_y = to_tensor(arrays["val_x"]), torch.from_numpy(arrays["val_y"])
    if params.train.weights is not None:
        return _install(params, val_x, val_y, dest, live_dir)
    with distributed(params.train.device):
        with data.open("rb") as f:
            data_digest = hashlib.file_digest(f, "sha256").hexdigest()
        model = build_resnet18(params.model.stem, params.model.num_classes)
        head = rotpred.rotation_head(params.train.seed) if params.train.rotpred else None
        results = train(
            model, to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"]), val_x, val_y, params.train,
            checkpoint_path=checkpoint_path,
            live_dir=live_dir,
            fingerprint=config_fingerprint(params.train, {"model": vars(params.model), "data": data_digest}),
            rotation_head=head,
        )
        if not is_main_process():
            return None
        extra = {rotpred.CHECKPOINT_KEY: head.state_dict()} if head is not None else None
        save_checkpoint(model, params.model.stem, params.model.num_classes, dest, extra)
        return {"origin": "trained", **results}


def _install(params: Params, val_x: torch.Tensor, val_y: torch.Tensor, dest: Path, live_dir: Path) -> dict[str, Any]:
    """The published weights onto ``dest``, measured as a trained model's last epoch is (curves of one step)."""
    model, provenance = install_weights(params.train.weights, params.model, dest)
    device = resolve_device(params.train.device)
    torch.set_num_threads(params.train.threads)
    measured = validation_metrics(model.to(device, memory_format=torch.channels_last), val_x, val_y, params.train, device)
    write_curves([measured], live_dir)
    return {"origin": "installed", **provenance, **measured, "val_images": len(val_y), "device": device.type}
