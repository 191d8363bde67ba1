"""The FP32 model the train stage makes: published weights installed as ``models/fp32.pt``, or trained.

``train.weights`` names it as ``fetch.*`` names a dataset: a URL or a local file (a relative path
is relative to the repository root) and its sha256. :func:`edgeml.data.sources.fetch` copies or
downloads it and checks the sha256 before anything is unpickled; only then is it loaded (tensors
only), refused unless it is the architecture ``model.*`` names, and moved into place atomically.
``train.weights: null`` trains the model with :func:`edgeml.model.train.train` instead.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeml.data.sources import fetch
from edgeml.data.splits import load_arrays
from edgeml.model.inference import to_tensor
from edgeml.model import rotpred
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
from edgeml.params import ModelParams, Params, ParamsError, Source, Weights


def load_matching(path: Path, source: str, model: ModelParams, key: str = "train.weights") -> nn.Module:
    """The checkpoint at ``path`` (fetched from ``source``) as a model, if it is the ResNet18 that
    ``model`` describes; a :class:`ParamsError` naming both otherwise."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ParamsError(f"{key}: {source!r} is not a PyTorch checkpoint: {str(exc).splitlines()[0]}") from exc
    if not isinstance(checkpoint, dict) or not {"stem", "num_classes", "state_dict"} <= checkpoint.keys():
        raise ParamsError(
            f"{key}: {source!r} is not in models/fp32.pt's format (a dict with stem, num_classes, state_dict)"
        )
    found, wanted = (checkpoint["stem"], checkpoint["num_classes"]), (model.stem, model.num_classes)
    if found != wanted:
        raise ParamsError(
            f"{key}: {source!r} is a ResNet18 with stem {found[0]!r} and {found[1]} classes, but "
            f"model.stem is {wanted[0]!r} and model.num_classes {wanted[1]}; set model.* to match, or train (train.weights: null)"
        )
    network = build_resnet18(model.stem, model.num_classes)
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ParamsError(
            f"{key}: {source!r}: its tensors do not fit ResNet18 (stem {model.stem!r}): {str(exc).splitlines()[0]}"
        ) from exc
    return network.eval()


def install_weights(weights: Weights, model: ModelParams, dest: Path, key: str = "train.weights") -> tuple[nn.Module, dict[str, Any]]:
    """Fetch and verify ``weights`` (the first of its sources that is there), check them against ``model``
    and move them onto ``dest`` unchanged; return the model and where it came from."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        record = fetch(key, Source(weights.source, sha256=weights.sha256), Path(tmp))
        network = load_matching(Path(record.path), record.source, model, key)
        os.replace(record.path, dest)
    return network, {"source": record.source, "sha256": record.sha256, "bytes": record.bytes}


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
