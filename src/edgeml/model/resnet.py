"""ResNet18 for 32x32 input, with a choice of stem.

- ``torchvision``: torchvision's resnet18 unchanged (7x7/2 conv + max-pool): 16x fewer MACs
  than the CIFAR stem, what the paper's Table 1 timings point to.
- ``cifar``: 3x3/1 conv, no max-pool (OpenOOD and most CIFAR OOD work).
- ``conv3s2``: 3x3/2 conv, no max-pool: 4x fewer MACs than the CIFAR stem.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from edgeml.io import atomic_path
from edgeml.runtime.images import DataError

STEMS = ("torchvision", "cifar", "conv3s2")


def build_resnet18(stem: str, num_classes: int = 10) -> nn.Module:
    if stem not in STEMS:
        raise ValueError(f"model.stem: {stem!r} is not one of {list(STEMS)}")
    model = resnet18(num_classes=num_classes)
    if stem != "torchvision":
        stride = 1 if stem == "cifar" else 2
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def save_checkpoint(
    model: nn.Module, stem: str, num_classes: int, path: str | Path, extra: dict[str, dict[str, torch.Tensor]] | None = None
) -> None:
    """Weights plus what is needed to rebuild the architecture; ``extra``: more state dicts under their
    own keys (e.g. RotPred's rotation head), which :func:`load_checkpoint` ignores."""
    with atomic_path(path) as tmp:
        torch.save({"stem": stem, "num_classes": num_classes, "state_dict": model.state_dict(), **(extra or {})}, tmp)


def load_checkpoint(path: str | Path) -> nn.Module:
    """The model in a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({exc}); re-run the train stage") from exc
    model = build_resnet18(checkpoint["stem"], checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
