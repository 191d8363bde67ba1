"""Running a torch model over uint8 images: normalisation, tensors, and one batched forward."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

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
def forward_batches(
    model: nn.Module, images: torch.Tensor, batch_size: int = 500, device: Optional[torch.device] = None,
    desc: Optional[str] = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The model's outputs for uint8 NCHW images, batch by batch in eval mode, as float32 on the CPU: one
    tensor, or a tuple when the model returns several (a deployable file's logits, features and map).
    A progress bar named ``desc`` shows when there is more than one batch (stages score sets for minutes)."""
    device = device or torch.device("cpu")
    model.eval()
    starts = tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, disable=len(images) <= batch_size)
    parts = [model(normalize(images[i : i + batch_size]).to(device)) for i in starts]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat([p[k] for p in parts]).float().cpu() for k in range(len(parts[0])))
    return torch.cat([p.float().cpu() for p in parts])


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500, device: Optional[torch.device] = None) -> torch.Tensor:
    """Logits for uint8 NCHW images, batched, in eval mode."""
    return forward_batches(model, images, batch_size, device)


class WithFeatureMap(nn.Module):
    """A torchvision ResNet that returns (logits, penultimate pooled features, layer4 activation map):
    every deployable file has the three outputs, so feature-based OOD detectors run on each model's
    own features, and ASH prunes the map before global pooling as published (512x4x4 for the CIFAR stem)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        feature_map = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        features = torch.flatten(r.avgpool(feature_map), 1)
        return r.fc(features), features, feature_map
