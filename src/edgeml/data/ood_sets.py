"""The OOD sets, 32x32 uint8, built from fetched datasets or generated in code, each image named by its source image so validation and test sets can be checked for overlap."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edgeml.data.readers import (
    load_cifar100_test,
    load_idx_images,
    load_images,
    load_svhn,
    load_tinyimagenet,
    read_openood_tin_list,
)
from edgeml.params import GENERATED, OODSetSpec
from edgeml.runtime.images import IMAGE_SIZE, DataError, resize_rgb


def noise_images(kind: str, count: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """ODIN's synthetic OOD sets: i.i.d. N(0.5, 1) or U(0, 1) pixels, clipped to [0, 1], as uint8."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size, 3)
    pixels = rng.normal(0.5, 1.0, shape) if kind == "gaussian_noise" else rng.uniform(0.0, 1.0, shape)
    return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def synthetic_shapes(count: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Far-OOD validation images: one to four flat ellipses, rectangles and half-planes over a two-tone
    linear gradient, in colour (even i) or in gray levels only (odd i). Far from CIFAR-10 (no texture, no
    object, sharp edges between flat regions) and like no OOD test set: not i.i.d. pixel noise (gaussian,
    uniform), not strokes or garments on black (mnist, fashion_mnist), not photographs (Tiny ImageNet).
    The gray half keeps the set from measuring colour alone: a model fine-tuned on coloured outliers
    refuses far fewer of the same shapes in gray. Image i depends on (seed, i) only, so the first k
    images of any count are the same images."""
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        channels = 1 if i % 2 else 3  # a gray level broadcasts to the three channels
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / np.sqrt(0.5) + 0.5  # 0..1 across the image
        start, end = rng.uniform(0, 1, (2, channels))
        image = start + np.clip(ramp, 0, 1)[..., None] * (end - start)
        for _ in range(rng.integers(1, 5)):
            kind = rng.integers(3)
            cy, cx = rng.uniform(0.1, 0.9, 2)
            ry, rx = rng.uniform(0.1, 0.45, 2)
            if kind == 0:
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            elif kind == 1:
                mask = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
            else:
                normal = rng.uniform(0, 2 * np.pi)
                mask = np.cos(normal) * (xs - cx) + np.sin(normal) * (ys - cy) > 0
            image[mask] = rng.uniform(0, 1, channels)
        images[i] = np.round(image * 255)
    return images


# The generated sets, by their params name (prepare.ood_sets.<set>.dataset): count, seed -> uint8 NHWC images.
GENERATORS: dict[str, Callable[[int, int], np.ndarray]] = {
    "gaussian_noise": functools.partial(noise_images, "gaussian_noise"),
    "uniform_noise": functools.partial(noise_images, "uniform_noise"),
    "synthetic_shapes": synthetic_shapes,
}


# Readers of each fetched dataset's official format, by its params name (prepare.ood_sets.<set>.dataset, and
# fetch.<name>); Tiny ImageNet, read by split and image list, and the generated sets are handled apart.
# A new format: a reader in edgeml.data.readers, a fetch.<name> source, and one line here.
READERS: dict[str, Callable[[str | Path], Iterable[np.ndarray]]] = {
    "mnist": load_idx_images,
    "fashion_mnist": load_idx_images,
    "svhn": load_svhn,
    "cifar100": load_cifar100_test,
    "textures": functools.partial(load_images, under="dtd/images/"),
    "places365": functools.partial(load_images, under="val_256/"),
    **{name: load_images for name in ("odin_imagenet_crop", "odin_imagenet_resize", "odin_lsun_crop", "odin_lsun_resize", "odin_isun")},
}
DATASETS = ("tinyimagenet", *READERS, *GENERATED)  # every name prepare.ood_sets.<set>.dataset may take


def _check_crop(image: np.ndarray, size: int) -> None:
    if min(image.shape[:2]) < size:
        raise DataError(f"a {image.shape[1]}x{image.shape[0]} image is smaller than the {size}x{size} crop; use transform resize")


def odin_crop(images: Iterable[np.ndarray], seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """ODIN's TinyImageNet (crop): one random ``size`` x ``size`` crop per image, fixed seed."""
    rng = np.random.default_rng(seed)
    crops = []
    for image in images:
        _check_crop(image, size)
        top = rng.integers(0, image.shape[0] - size + 1)
        left = rng.integers(0, image.shape[1] - size + 1)
        crops.append(image[top : top + size, left : left + size])
    return np.stack(crops)


def center_crop(images: Iterable[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """The central ``size`` x ``size`` window of each image (released crop sets stored larger)."""
    crops = []
    for image in images:
        _check_crop(image, size)
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(image[top : top + size, left : left + size])
    return np.stack(crops)


def _source_images(
    spec: OODSetSpec, sources: dict[str, dict], tinyimagenet: dict[str, dict[int, np.ndarray]]
) -> tuple[Iterable[np.ndarray], list[str] | None]:
    """The images of the fetched dataset ``spec`` names, before any transform, and for Tiny ImageNet the
    name of each source image (other datasets: None, named by position once decoded)."""
    path = sources[spec.dataset]["path"]
    if spec.dataset == "tinyimagenet":
        if spec.split not in tinyimagenet:
            tinyimagenet[spec.split] = load_tinyimagenet(path, spec.split)
        by_number = tinyimagenet[spec.split]
        listed = read_openood_tin_list(sources[spec.imglist]["path"], spec.split) if spec.imglist else list(by_number)
        missing = sorted(set(listed) - set(by_number))
        if missing:
            raise DataError(f"{path}: {len(missing)} images named by {spec.imglist} are missing, e.g. {spec.split}_{missing[0]}")
        return [by_number[n] for n in listed], [f"tinyimagenet/{spec.split}/{n}" for n in listed]
    return READERS[spec.dataset](path), None


def _as_released(images: Iterable[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """Images already ``size`` x ``size`` (sets released at 32x32), grayscale copied to RGB."""
    out = []
    for image in images:
        if image.shape[:2] != (size, size):
            raise DataError(
                f"transform none needs {size}x{size} images, got {image.shape[1]}x{image.shape[0]}; "
                f"use transform center_crop or resize"
            )
        out.append(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    return np.stack(out)


def build_ood_set(
    spec: OODSetSpec, sources: dict[str, dict], seed: int, tinyimagenet: dict[str, dict[int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """One OOD set as (N, 32, 32, 3) uint8: the dataset's images (in file-number order for Tiny
    ImageNet, list order for an OpenOOD list, archive order otherwise) made 32x32 by ``spec.transform``;
    with ``count``, a seeded sample of that many. ``tinyimagenet`` caches decoded splits across sets.
    Also returns each image's source name (``tinyimagenet/val/17``, ``mnist/3``, ``gaussian_noise/seed0/5``),
    the same for the same source image in any set, so :func:`check_disjoint` can compare sets."""
    if spec.dataset in GENERATORS:
        # the generators fill images in order, so the first k images of any count are the same images
        x = GENERATORS[spec.dataset](spec.count, seed)
        return x, np.array([f"{spec.dataset}/seed{seed}/{i}" for i in range(len(x))])
    path = sources[spec.dataset]["path"]
    images, names = _source_images(spec, sources, tinyimagenet)
    try:
        if spec.transform == "crop":
            x = odin_crop(images, seed)
        elif spec.transform == "center_crop":
            x = center_crop(images)
        elif spec.transform == "resize":
            x = resize_rgb(images)
        else:
            x = _as_released(images)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    names = np.array(names if names is not None else [f"{spec.dataset}/{i}" for i in range(len(x))])
    if spec.count is not None:
        if spec.count > len(x):
            raise DataError(f"{path}: count {spec.count} exceeds the {len(x)} images there")
        chosen = np.sort(np.random.default_rng(seed).choice(len(x), spec.count, replace=False))
        x, names = x[chosen], names[chosen]
    return x, names


def check_disjoint(names: dict[str, np.ndarray], validation_sets: list[str]) -> None:
    """Refuse an OOD validation set that shares a source image with any other set, as the ID validation
    and test lists are refused: choices made on validation must never see a test image."""
    for validation_set in validation_sets:
        for name, other in names.items():
            shared = np.intersect1d(names[validation_set], other) if name != validation_set else []
            if len(shared):
                raise DataError(
                    f"OOD validation set {validation_set!r} and set {name!r} share {len(shared)} source images "
                    f"(e.g. {shared[0]}); fix prepare.ood_sets or their image lists so they are disjoint"
                )
