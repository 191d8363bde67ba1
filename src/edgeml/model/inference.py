"""Running a torch model over uint8 images: normalisation, tensors, and one batched forward."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from edgeml.runtime.images import CIFAR10_MEAN, CIFAR10_STD


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 HWC arrays -> uint8 NCHW tensor (channels-last in memory, as the models run)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised with CIFAR-10 statistics (the models' input)."""
    import torch

    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1) * 255
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500, device: Optional[torch.device] = None) -> torch.Tensor:
    """Logits for uint8 NCHW images, batched, in eval mode."""
    device = device or torch.device("cpu")
    model.eval()
    out = [model(normalize(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)
