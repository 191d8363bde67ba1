"""What the models expect as input: decoded RGB 32x32 uint8, normalised with CIFAR-10 statistics.

Shared by the pipeline and by anything that feeds the models images, so preprocessing is
defined once.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SIZE = 32


class DataError(RuntimeError):
    """An archive or image that cannot be decoded; the message names the file."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode to RGB as at training time (grayscale, palette and RGBA converted); name the file on failure."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot decode image ({exc})") from exc
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the top 8 bits, as 8-bit tools would
        array = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 HWC arrays -> uint8 NCHW tensor (channels-last in memory, as the models run)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised with CIFAR-10 statistics (the models' input)."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
