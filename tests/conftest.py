"""Tiny datasets written in the official and mirror layouts, made fresh by each test."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

from edgeml.data.readers import CIFAR10_CLASSES
from edgeml.model.inference import normalize
from edgeml.model.resnet import build_resnet18

# Property tests draw the same examples on every run (CI included), so a run's result never depends on its seed;
# `pytest --hypothesis-profile=explore` (Hypothesis's own option) draws new examples, to hunt for what these miss.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def class_images(rng: np.random.Generator, label: int, count: int, size: int = 32) -> np.ndarray:
    """Images whose mean colour depends on the class, so a tiny model can learn something."""
    base = (np.array([label * 25, 255 - label * 25, (label * 70) % 255]) * 0.8).astype(np.float64)
    noise = rng.normal(0, 20, (count, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_sha256sums(folder: Path) -> None:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def idx_images_gz(images: np.ndarray) -> bytes:
    """An idx3 image file, gzipped, as MNIST ships it."""
    count, rows, cols = images.shape
    header = b"".join(v.to_bytes(4, "big") for v in (2051, count, rows, cols))
    return gzip.compress(header + images.astype(np.uint8).tobytes())


def openood_tin_list(numbers: list[int], split: str = "val") -> str:
    return "".join(f"tin/{split}/images/{split}_{n}.JPEG -1\n" for n in numbers)


def openood_cifar10_list(indices: list[int]) -> str:
    """An OpenOOD CIFAR-10 list naming the test images with per-class index ``indices`` of every
    class; OpenOOD's file names count from 1 (0001.png is index 0)."""
    return "".join(
        f"cifar10/test/{cls}/{i + 1:04d}.png {label}\n" for label, cls in enumerate(CIFAR10_CLASSES) for i in indices
    )


def cifar_imagefolder_files(train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, cls in enumerate(CIFAR10_CLASSES):
            for i, image in enumerate(class_images(rng, label, count)):
                files[f"cifar10-jpeg/{split}/{cls}/{i:04d}.png"] = encode(image)
    return files


def cifar_python_files(train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, bytes]:
    """cifar-10-batches-py as torchvision downloads it: pickled dicts with CHW-flattened rows."""
    rng = np.random.default_rng(seed)

    def batch(count: int) -> dict:
        labels = np.repeat(np.arange(10), count)
        images = np.concatenate([class_images(rng, label, count) for label in range(10)])
        order = rng.permutation(len(labels))  # official batches interleave classes
        data = images[order].transpose(0, 3, 1, 2).reshape(len(labels), -1)
        return {b"data": data, b"labels": labels[order].tolist()}

    files = {f"cifar-10-batches-py/data_batch_{i}": pickle.dumps(batch(train_per_class)) for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = pickle.dumps(batch(test_per_class))
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return files


def tinyimagenet_files(count: int, seed: int = 1) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for split in ("test", "val"):
        for i in range(count):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            if i == 0:  # Tiny ImageNet has a few grayscale JPEGs
                files[f"tiny-imagenet-200/{split}/images/{split}_{i}.JPEG"] = encode(image[..., 0], "JPEG")
            else:
                files[f"tiny-imagenet-200/{split}/images/{split}_{i}.JPEG"] = encode(image, "JPEG")
    return files


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A local mirror like ../shared/datasets: ImageFolder CIFAR-10 and Tiny ImageNet tarballs, MNIST and
    Fashion-MNIST idx files, OpenOOD's TIN and CIFAR-10 test and validation image lists, and SHA256SUMS."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    write_tar(folder / "cifar10-jpeg.tar.gz", cifar_imagefolder_files(train_per_class=12, test_per_class=4))
    write_tar(folder / "tiny-imagenet-200-valtest.tar.gz", tinyimagenet_files(count=30))
    rng = np.random.default_rng(2)
    for name in ("mnist", "fashion-mnist"):
        (folder / name).mkdir()
        (folder / name / "t10k-images-idx3-ubyte.gz").write_bytes(
            idx_images_gz(rng.integers(0, 256, (25, 28, 28), dtype=np.uint8))
        )
    (folder / "openood-imglist").mkdir()
    (folder / "openood-imglist" / "test_tin.txt").write_text(openood_tin_list([2, 3, 5, 7, 11, 13]))
    (folder / "openood-imglist" / "val_tin.txt").write_text(openood_tin_list([1, 4, 6, 8, 9, 10, 12, 14]))
    (folder / "openood-imglist" / "test_cifar10.txt").write_text(openood_cifar10_list([0, 2, 3]))
    (folder / "openood-imglist" / "val_cifar10.txt").write_text(openood_cifar10_list([1]))
    write_sha256sums(folder)
    return folder


@pytest.fixture(scope="session")
def float_model_and_images():
    """A ResNet18 whose batch-norm statistics match its input, as after training."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    model = build_resnet18("torchvision")
    model.train()
    with torch.no_grad():
        for momentum in (1.0, None):  # one pass to set, one cumulative pass to average
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = momentum
            model(normalize(images))
    return model.eval(), images
