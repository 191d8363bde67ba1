"""Decode dataset archives into compact uint8 arrays, and build ODIN's OOD sets.

Readers accept the official layouts and the local mirror's:
- CIFAR-10: the official python tarball (``cifar-10-batches-py/``) or an ImageFolder archive
  or folder (``<root>/{train,test}/<class>/NNNN.{jpg,png}``).
- Tiny ImageNet: the official zip, or any archive or folder with
  ``tiny-imagenet-200/{test,val}/images/*.JPEG``.
Images are stored HWC uint8; the per-class file index is kept so OpenOOD image lists can
name CIFAR-10 test images.
"""

from __future__ import annotations

import gzip
import pickle
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from edgeml.params import NOISE, OODSetSpec
from edgeml.preprocess import IMAGE_SIZE, DataError, decode_image

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def iter_files(path: str | Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) for files in a tar/zip archive or folder whose name passes ``keep``."""
    path = Path(path)
    try:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                name = file.relative_to(path).as_posix()
                if keep(name):
                    yield name, file.read_bytes()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and keep(info.filename):
                        yield info.filename, archive.read(info)
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile() and keep(member.name):
                        yield member.name, archive.extractfile(member).read()
        else:
            raise DataError(f"{path}: not a folder, zip or tar archive (or the archive is damaged)")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: archive is truncated or corrupt ({exc}); fetch it again") from exc


def load_cifar10(path: str | Path) -> dict[str, np.ndarray]:
    """Train and test images (N, 32, 32, 3) uint8, labels, and per-class file index of test images."""
    path = Path(path)
    batch = re.compile(r"(^|/)(data_batch_[1-5]|test_batch)$")
    pickles = dict(iter_files(path, lambda n: bool(batch.search(n))))
    if pickles:
        return _cifar10_from_pickles(path, pickles)
    return _cifar10_from_folders(path)


def _cifar10_from_pickles(path: Path, pickles: dict[str, bytes]) -> dict[str, np.ndarray]:
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for name in sorted(pickles):
        entry = pickle.loads(pickles[name], encoding="bytes")
        splits["test" if name.endswith("test_batch") else "train"].append(entry)
    if len(splits["train"]) != 5 or len(splits["test"]) != 1:
        raise DataError(f"{path}: expected data_batch_1..5 and test_batch, found {sorted(pickles)}")
    out: dict[str, np.ndarray] = {}
    for split, entries in splits.items():
        x = np.concatenate([e[b"data"] for e in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([np.asarray(e[b"labels"]) for e in entries]).astype(np.int64)
        out[f"{split}_x"], out[f"{split}_y"] = np.ascontiguousarray(x), y
    # Per-class running index in official order: the NNNN of ImageFolder / OpenOOD file names.
    out["test_index"] = _per_class_index(out["test_y"])
    return out


def _per_class_index(labels: np.ndarray) -> np.ndarray:
    index = np.zeros_like(labels)
    counts: dict[int, int] = {}
    for i, label in enumerate(labels):
        index[i] = counts.get(int(label), 0)
        counts[int(label)] = index[i] + 1
    return index


def _cifar10_from_folders(path: Path) -> dict[str, np.ndarray]:
    pattern = re.compile(r"(^|/)(train|test)/([a-z_]+)/(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
    items: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    for name, data in iter_files(path, lambda n: bool(pattern.search(n))):
        split, cls, idx = pattern.search(name).group(2, 3, 4)
        if cls not in CIFAR10_CLASSES:
            raise DataError(f"{path}: {name}: unknown class folder {cls!r}; expected one of {CIFAR10_CLASSES}")
        image = decode_image(data, f"{path}:{name}")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{path}:{name}: expected a 32x32 image, got {image.size}")
        items[split].append((CIFAR10_CLASSES.index(cls), int(idx), np.asarray(image)))
    if not items["train"] or not items["test"]:
        raise DataError(
            f"{path}: found no CIFAR-10 images; expected the official cifar-10-python.tar.gz or "
            f"<root>/{{train,test}}/<class>/NNNN.jpg"
        )
    out: dict[str, np.ndarray] = {}
    for split, rows in items.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        out[f"{split}_x"] = np.stack([r[2] for r in rows])
        out[f"{split}_y"] = np.array([r[0] for r in rows], dtype=np.int64)
        if split == "test":
            out["test_index"] = np.array([r[1] for r in rows], dtype=np.int64)
    return out


def load_tinyimagenet(path: str | Path, split: str) -> dict[int, np.ndarray]:
    """Tiny ImageNet ``split`` ("test" or "val") images as RGB uint8 arrays, by file number, in order."""
    pattern = re.compile(rf"(^|/)tiny-imagenet-200/{split}/images/{split}_(\d+)\.jpe?g$", re.IGNORECASE)
    found = {
        int(pattern.search(name).group(2)): np.asarray(decode_image(data, f"{path}:{name}"))
        for name, data in iter_files(path, lambda n: bool(pattern.search(n)))
    }
    if not found:
        raise DataError(f"{path}: no tiny-imagenet-200/{split}/images/*.JPEG found")
    return dict(sorted(found.items()))


def read_openood_tin_list(path: str | Path, split: str) -> list[int]:
    """File numbers of the Tiny ImageNet images an OpenOOD image list selects (``tin/<split>/images/<split>_N.JPEG <label>``)."""
    pattern = re.compile(rf"^tin/{split}/images/{split}_(\d+)\.JPEG\s+-?\d+$")
    numbers = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            match = pattern.match(line.strip())
            if not match:
                raise DataError(f"{path}:{line_no}: expected 'tin/{split}/images/{split}_N.JPEG <label>', got {line!r}")
            numbers.append(int(match.group(1)))
    return numbers


def load_idx_images(path: str | Path) -> np.ndarray:
    """Images of a (gzipped) idx3 file, as MNIST and Fashion-MNIST ship: (N, rows, cols) uint8."""
    try:
        with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from exc
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 2051:
        raise DataError(f"{path}: not an idx3 image file (bad magic number)")
    count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + count * rows * cols:
        raise DataError(f"{path}: truncated idx file: header says {count}x{rows}x{cols}, {len(data) - 16} bytes follow")
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def resize_rgb(images: list[np.ndarray] | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Each image to ``size`` x ``size`` RGB: area average when shrinking (ODIN's resize), bilinear
    when enlarging (OpenOOD's for MNIST); grayscale is copied to the three channels."""
    out = []
    for image in images:
        pil = Image.fromarray(image).convert("RGB")
        method = Image.BOX if min(pil.size) >= size else Image.BILINEAR
        out.append(np.asarray(pil.resize((size, size), method)))
    return np.stack(out)


def noise_images(kind: str, count: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """ODIN's synthetic OOD sets: i.i.d. N(0.5, 1) or U(0, 1) pixels, clipped to [0, 1], as uint8."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size, 3)
    pixels = rng.normal(0.5, 1.0, shape) if kind == "gaussian_noise" else rng.uniform(0.0, 1.0, shape)
    return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def load_image_set(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Every image in an archive or folder (e.g. ODIN's ``Imagenet/test/*.jpg``), sorted by name."""
    found = sorted(iter_files(path, lambda n: n.lower().endswith((".jpg", ".jpeg", ".png"))))
    if not found:
        raise DataError(f"{path}: no .jpg/.jpeg/.png images found")
    images = []
    for name, data in found:
        image = decode_image(data, f"{path}:{name}")
        if image.size != (size, size):
            raise DataError(f"{path}:{name}: expected a {size}x{size} image, got {image.size}")
        images.append(np.asarray(image))
    return np.stack(images)


def odin_crop(images: list[np.ndarray], seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """ODIN's TinyImageNet (crop): one random ``size`` x ``size`` crop per image, fixed seed."""
    rng = np.random.default_rng(seed)
    crops = []
    for image in images:
        top = rng.integers(0, image.shape[0] - size + 1)
        left = rng.integers(0, image.shape[1] - size + 1)
        crops.append(image[top : top + size, left : left + size])
    return np.stack(crops)


def build_ood_set(
    spec: OODSetSpec, sources: dict[str, dict], seed: int, tinyimagenet: dict[str, dict[int, np.ndarray]]
) -> np.ndarray:
    """One OOD set as (N, 32, 32, 3) uint8. ``tinyimagenet`` caches decoded splits across sets."""
    if spec.dataset in NOISE:
        return noise_images(spec.dataset, spec.count, seed)
    path = sources[spec.dataset]["path"]
    if spec.dataset == "tinyimagenet":
        if spec.split not in tinyimagenet:
            tinyimagenet[spec.split] = load_tinyimagenet(path, spec.split)
        by_number = tinyimagenet[spec.split]
        if spec.imglist:
            listed = read_openood_tin_list(sources[spec.imglist]["path"], spec.split)
            missing = sorted(set(listed) - set(by_number))
            if missing:
                raise DataError(f"{path}: {len(missing)} images named by {spec.imglist} are missing, e.g. {spec.split}_{missing[0]}")
            images = [by_number[n] for n in listed]
        else:
            images = list(by_number.values())
    elif spec.dataset in ("mnist", "fashion_mnist"):
        images = load_idx_images(path)
    else:
        images = load_image_set(path)
    if spec.transform == "crop":
        return odin_crop(images, seed)
    if spec.transform == "resize":
        return resize_rgb(images)
    return np.stack(images)


def split_validation(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) index split of the training set; the test set is never touched."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = val_size // len(classes)
    if per_class == 0 or per_class * len(classes) != val_size:
        raise ValueError(f"prepare.val_size: {val_size} must be a positive multiple of {len(classes)} classes")
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, np.sort(val)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
