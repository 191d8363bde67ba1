"""Published FP32 checkpoints: fetched like a dataset (a URL or a local file, or a list of these tried in
order), checked against their sha256 before anything is unpickled, loaded as tensors only, and refused
unless they are the ResNet18 that ``model.*`` names. No training code: the finetune stage installs its
published weights through this module too."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeml.data.sources import fetch
from edgeml.model.resnet import build_resnet18
from edgeml.params import ModelParams, ParamsError, Source, Weights


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
