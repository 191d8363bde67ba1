"""Training-time augmentation on uint8 NCHW batches: random crop with padding and horizontal flip, on the batch's device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop from the zero-padded image and random horizontal flip, per image.
    Runs on the images' device; ``generator`` must live there too."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator, device=device)
    flip = torch.rand(n, 1, generator=generator, device=device) < 0.5
    cols = torch.where(flip, torch.arange(w - 1, -1, -1, device=device), torch.arange(w, device=device)) + dx
    rows = torch.arange(h, device=device) + dy
    return padded[
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(c, device=device).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]
