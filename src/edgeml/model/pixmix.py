"""PixMix on training batches, with mixing pictures generated in code (no external image set).

Hendrycks, Zou, Mazeika, Tang, Li, Song and Steinhardt, "PixMix: Dreamlike Pictures Comprehensively
Improve Safety Measures", CVPR 2022. The mixing rule follows the official code
(github.com/andyzoujm/pixmix, commit f867e87: cifar.py ``pixmix`` / ``augment_input``,
pixmix_utils.py ``get_ab``, ``add``, ``multiply``), per image, on [0, 1] pictures:

    mixed = augment(x) or x                                 (p = 1/2 each)
    repeat randint(0, k) times (0..k rounds):
        other = augment(x) or a mixing picture              (p = 1/2 each)
        mixed = clip(op(mixed, other), 0, 1), op = add or multiply (p = 1/2 each)
    add(m, o)      = (a (2m - 1) + b (2o - 1) + 1) / 2
    multiply(m, o) = (2m)^a (2o)^b / 2
    (a, b) = (Beta(beta, 1), Beta(1, beta)) or (1 + Beta(1, beta), -Beta(1, beta))   (p = 1/2 each)

with k = 4 and beta = 3 (the official defaults, and OpenOOD's pixmix_preprocessor.yml). ``augment``
is one of the official base operations at severity 3: autocontrast, equalize, posterize, rotate,
solarize, shear x/y, translate x/y (run here on tensors, bilinear, zero fill as PIL's).

The paper mixes with fractals and feature visualisations; here the mixing pictures and the mixing rule
come from :mod:`edgeml.model.pictures`, which the fine-tune's outliers share.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgeml.model.pictures import SIZE, mix

PICTURES = 1024  # mixing pictures per training run
SEVERITY = 3  # the official --aug-severity


# ---- base augmentations (pixmix_utils.py), on float NCHW batches with values in 0..255 ----

def _levels(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``sample_level(SEVERITY)``: uniform in [0.1, SEVERITY)."""
    return 0.1 + (SEVERITY - 0.1) * torch.rand(n, generator=generator, device=device)


def _signs(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)


def _affine(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Each output pixel (x, y, pixel centres) sampled bilinearly at ``matrix @ (x, y, 1)`` of its
    image (PIL's ``Image.transform(AFFINE)`` convention), zero outside."""
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device) + 0.5, torch.arange(w, device=images.device) + 0.5, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    source = points @ matrix.transpose(1, 2)  # (n, h*w, 2)
    grid = torch.stack([source[..., 0] * 2 / w - 1, source[..., 1] * 2 / h - 1], -1).view(n, h, w, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrix(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def autocontrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(high > low, (x - low) * 255 / (high - low).clamp_min(1e-6), x).round()


def equalize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per channel: lut[i] = (step // 2 + sum(h[:i])) // step."""
    n, c, h, w = x.shape
    values = x.round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, values, torch.ones_like(values, dtype=torch.float))
    last = hist.gather(1, (hist > 0).float().cumsum(1).argmax(1, keepdim=True))  # count of the highest value present
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    before = hist.cumsum(1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp_min(1), rounding_mode="floor").clamp_max(255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device, dtype=torch.float))
    return lut.gather(1, values).view(n, c, h, w)


def posterize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    bits = 4 - (_levels(len(x), g, x.device) * 4 / 10).floor()
    drop = (2 ** (8 - bits)).view(-1, 1, 1, 1)
    return torch.div(x.round(), drop, rounding_mode="floor") * drop


def solarize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    threshold = (256 - (_levels(len(x), g, x.device) * 256 / 10).floor()).view(-1, 1, 1, 1)
    return torch.where(x < threshold, x, 255 - x)


def rotate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    angle = (_levels(len(x), g, x.device) * 30 / 10).floor() * _signs(len(x), g, x.device) * math.pi / 180
    cos, sin, centre = torch.cos(angle), torch.sin(angle), SIZE / 2
    matrix = _matrix(len(x), x.device)
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, sin, -sin, cos
    matrix[:, :, 2] = centre - matrix[:, :, :2].sum(2) * centre  # about the image centre
    return _affine(x, matrix)


def _shear(axis: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    def shear(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        matrix = _matrix(len(x), x.device)
        matrix[:, axis, 1 - axis] = _levels(len(x), g, x.device) * 0.3 / 10 * _signs(len(x), g, x.device)
        return _affine(x, matrix)
    return shear


def _translate(axis: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    def translate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        matrix = _matrix(len(x), x.device)
        matrix[:, axis, 2] = (_levels(len(x), g, x.device) * (SIZE / 3) / 10).floor() * _signs(len(x), g, x.device)
        return _affine(x, matrix)
    return translate


OPERATIONS = (autocontrast, equalize, posterize, rotate, solarize, _shear(0), _shear(1), _translate(0), _translate(1))


def augment_input(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One base operation per image, chosen uniformly (the official ``augment_input``)."""
    choice = torch.randint(len(OPERATIONS), (len(x),), generator=g, device=x.device)
    out = x.clone()
    for i, operation in enumerate(OPERATIONS):
        chosen = (choice == i).nonzero()[:, 0]
        if len(chosen):
            out[chosen] = operation(x[chosen], g)
    return out


class PixMix:
    """``PixMix(pictures, k, beta)(images, generator)``: uint8 NCHW training images (already cropped
    and flipped) -> float32 PixMix images on the 0..255 scale, drawn from ``generator`` only."""

    def __init__(self, pictures: torch.Tensor, k: int = 4, beta: float = 3.0) -> None:
        self.pictures, self.k, self.beta = pictures.float() / 255, k, beta

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = images.float()
        n, device = len(x), x.device
        start = torch.rand(n, generator=g, device=device) < 0.5
        mixed = torch.where(start.view(-1, 1, 1, 1), augment_input(x, g), x) / 255
        rounds = torch.randint(self.k + 1, (n,), generator=g, device=device)
        for r in range(self.k):
            picture = self.pictures[torch.randint(len(self.pictures), (n,), generator=g, device=device)]
            own = (torch.rand(n, generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
            other = torch.where(own, augment_input(x, g) / 255, picture)
            mixed = torch.where((r < rounds).view(-1, 1, 1, 1), mix(mixed, other, self.beta, g), mixed)
        return mixed * 255
