"""Outliers made in code for OOD fine-tuning: no outlier data set, nothing built to look like a test set.

Outlier Exposure (Hendrycks, Mazeika and Dietterich, "Deep Anomaly Detection with Outlier Exposure",
ICLR 2019) fine-tunes a classifier to be unsure on outliers. Its Sec. 4.3 warns that outliers which
differ from the training images by a shortcut (noise, GAN artefacts) are memorised and do not help,
so every generator here starts from what the model sees in training, and the rules are:

- allowed: outliers made from the training images (pixels of salient regions shuffled, after ASCOOD,
  Regmi et al. 2024; jigsaw permutations; strong PixMix mixes with generated pictures) and
  procedural pictures (the fractals, gratings and 1/f fields of :mod:`edgeml.model.pictures`, and
  FractalDB-style fractal sketches on a plain ground), in colour or with their colour removed;
- forbidden: anything built to look like a test set (digits, letters, strokes or glyphs, clothing
  silhouettes, photographs), i.i.d. per-pixel noise (ODIN's gaussian and uniform test sets are exactly
  that), and the far-validation generator's family (:func:`edgeml.data.ood_sets.synthetic_shapes`),
  which must stay unseen by training for validation to mean anything;
- every outlier is re-encoded as the training images were (:class:`JpegEncoding`), so "no JPEG
  artefacts" cannot become the feature that tells outliers apart.

Adding a generator: one function ``(images, pictures, generator) -> uint8 NCHW`` and one line in
:data:`GENERATORS`. tests/test_outliers.py checks every registered generator against the rules.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from edgeml.model import pictures as pictures_module

PATCH = 8  # jigsaw patch side: a 4x4 grid of 32x32 images
STRONG_BETA = 3.0  # PixMix's official mixing severity
LUMA = torch.tensor(pictures_module.LUMA, dtype=torch.float32)


def _rand(n: int, g: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def jigsaw(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each training image cut into a 4x4 grid of 8x8 patches, the patches permuted (never the
    identity): local statistics of a CIFAR image, no object."""
    n, c, h, w = images.shape
    rows, cols = h // PATCH, w // PATCH
    patches = images.reshape(n, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, c, PATCH, PATCH)
    order = torch.argsort(torch.rand(n, rows * cols, generator=g), dim=1)
    identity = (order == torch.arange(rows * cols)).all(1)
    order[identity] = order[identity].roll(1, dims=1)
    shuffled = patches[torch.arange(n)[:, None], order]
    return shuffled.reshape(n, rows, cols, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def _shuffle_where(images: torch.Tensor, masks: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's pixels under its (n, H, W) boolean mask permuted among themselves (colour kept per pixel)."""
    out = images.clone()
    for i in range(len(images)):
        where = masks[i].flatten().nonzero().squeeze(1)
        pixels = out[i].flatten(1)
        pixels[:, where] = pixels[:, where[torch.randperm(len(where), generator=g)]]
    return out


def box_shuffle(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The pixels inside one random box (30-60% of each side, anywhere) shuffled: part of the object destroyed."""
    n, _, h, w = images.shape
    bh = (_rand(n, g, 0.3, 0.6) * h).long().clamp_min(2)
    bw = (_rand(n, g, 0.3, 0.6) * w).long().clamp_min(2)
    top = (_rand(n, g) * (h - bh + 1)).long()
    left = (_rand(n, g) * (w - bw + 1)).long()
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    masks = ((ys >= top.view(n, 1, 1)) & (ys < (top + bh).view(n, 1, 1))
             & (xs >= left.view(n, 1, 1)) & (xs < (left + bw).view(n, 1, 1)))
    return _shuffle_where(images, masks, g)


def salient_shuffle(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator, fraction: tuple[float, float] = (0.15, 0.2)) -> torch.Tensor:
    """ASCOOD's outliers (Regmi et al., "ASCOOD: Adaptive Outlier Synthesis...", 2024): the most salient
    15-20% of each image's pixels shuffled among themselves. ASCOOD ranks pixels by the classifier's
    input gradient; here by the image's own gradient magnitude (edges, where objects are), which costs no
    backward pass: a cheaper proxy for the same idea, the object's structure destroyed, its colours kept."""
    x = images.float().mean(1, keepdim=True)
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]).view(1, 1, 3, 3)
    gx = torch.nn.functional.conv2d(x, sobel, padding=1)
    gy = torch.nn.functional.conv2d(x, sobel.transpose(2, 3), padding=1)
    saliency = (gx.square() + gy.square()).flatten(1)
    n, _, h, w = images.shape
    keep = (_rand(n, g, *fraction) * h * w).long().clamp_min(2)
    ranks = saliency.argsort(1, descending=True).argsort(1)
    masks = (ranks < keep[:, None]).view(n, h, w)
    return _shuffle_where(images, masks, g)


def strong_pixmix(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two to four PixMix rounds, each with a generated picture (never the image's own augmentation, as
    PixMix's training mixes are): the training image under dominant fractal/grating/1/f structure."""
    n = len(images)
    mixed = images.float() / 255
    rounds = torch.randint(2, 5, (n,), generator=g)
    for r in range(4):
        picture = pictures[torch.randint(len(pictures), (n,), generator=g)].float() / 255
        mixed = torch.where((r < rounds).view(-1, 1, 1, 1), pictures_module.mix(mixed, picture, STRONG_BETA, g), mixed)
    return (mixed * 255).round().clamp(0, 255).to(torch.uint8)


def procedural(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Generated pictures (IFS fractals, gratings, 1/f^alpha fields) alone, one per training image."""
    return pictures[torch.randint(len(pictures), (len(images),), generator=g)].clone()


def fractal_sketch(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A new FractalDB-style render per training image (:func:`edgeml.model.pictures.sketches`): an IFS
    fractal's points in one colour on a plain ground. Every other family fills the whole frame with
    texture; this one teaches that a figure on an empty ground is not, by itself, a CIFAR-10 object."""
    seed = int(torch.randint(2**62, (1,), generator=g))
    return torch.from_numpy(pictures_module.sketches(len(images), np.random.default_rng(seed))).permute(0, 3, 1, 2)


def achromatic(images: torch.Tensor, pictures: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A generated picture or a fractal sketch, half each, with its colour removed (ITU-R 601 luma on all
    three channels). Every other family is in colour, and a model fine-tuned on them alone learns that odd
    colour marks an outlier: it refuses far fewer of the far-validation shapes in gray than in colour.
    Inputs without colour (grayscale and infrared cameras, scans) are a shift a deployed model meets."""
    sketch = torch.rand(len(images), generator=g) < 0.5
    made = procedural(images, pictures, g)
    if sketch.any():
        made[sketch] = fractal_sketch(images[sketch], pictures, g)
    luma = (made.float() * LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return luma.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


Generator = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
GENERATORS: dict[str, Generator] = {
    "jigsaw": jigsaw,
    "box_shuffle": box_shuffle,
    "salient_shuffle": salient_shuffle,
    "strong_pixmix": strong_pixmix,
    "procedural": procedural,
    "fractal_sketch": fractal_sketch,
    "achromatic": achromatic,
}


@dataclasses.dataclass(frozen=True)
class JpegEncoding:
    """How the training images were stored: the quantization tables and chroma subsampling of one of
    them (Pillow's ``subsampling``: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0). Outliers are re-encoded with the
    same tables, so their JPEG artefacts are the training images' artefacts."""

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int

    @classmethod
    def of(cls, jpeg: bytes) -> "JpegEncoding":
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.format != "JPEG":
                raise ValueError(f"not a JPEG image: {image.format}")
            tables = tuple(tuple(image.quantization[k]) for k in sorted(image.quantization))
            return cls(tables, JpegImagePlugin.get_sampling(image))

    def round_trip(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> the same images encoded with these tables and decoded again (Pillow's decoder,
        as the prepare stage decodes the training images)."""
        out = np.empty((len(images), images.shape[2], images.shape[3], 3), np.uint8)
        for i, image in enumerate(images.permute(0, 2, 3, 1).contiguous().numpy()):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", qtables=[list(t) for t in self.qtables], subsampling=self.subsampling)
            with Image.open(buffer) as decoded:
                out[i] = np.asarray(decoded.convert("RGB"))
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def record(self) -> dict[str, Any]:
        return {"subsampling": {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(self.subsampling, str(self.subsampling)),
                "luma_q1": self.qtables[0][0]}


def training_encoding(raw_cifar: str | Path) -> Optional[JpegEncoding]:
    """The JPEG encoding of the CIFAR-10 training images in the fetched source ``raw_cifar`` (the mirror's
    JPEG re-encoding), or None for a source that stores raw pixels (the official pickled batches)."""
    from edgeml.data.readers import iter_files  # the archive walker; imported here to keep this module light

    for name, data in iter_files(raw_cifar, lambda n: "/train/" in f"/{n}" and n.lower().endswith((".jpg", ".jpeg"))):
        return JpegEncoding.of(data)
    return None


class OutlierMaker:
    """``OutlierMaker(mix, pictures, encoding)(images, generator)``: a batch of outliers, one per uint8
    NCHW training image, each drawn from a generator with probability proportional to its weight in
    ``mix``, then re-encoded as the training images were (``encoding``; None for raw-pixel sources)."""

    def __init__(self, mix: Mapping[str, float], pictures: torch.Tensor, encoding: Optional[JpegEncoding]) -> None:
        unknown = sorted(set(mix) - set(GENERATORS))
        if unknown:
            raise ValueError(f"unknown outlier generators {unknown}; known: {sorted(GENERATORS)}")
        self.names = [name for name, weight in mix.items() if weight > 0]
        if not self.names:
            raise ValueError("the outlier mix gives no generator a positive weight")
        self.weights = torch.tensor([float(mix[name]) for name in self.names])
        self.pictures, self.encoding = pictures, encoding

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        which = torch.multinomial(self.weights, len(images), replacement=True, generator=g)
        out = torch.empty_like(images)
        for k, name in enumerate(self.names):
            chosen = (which == k).nonzero().squeeze(1)
            if len(chosen):
                out[chosen] = GENERATORS[name](images[chosen], self.pictures, g)
        return self.encoding.round_trip(out) if self.encoding is not None else out
