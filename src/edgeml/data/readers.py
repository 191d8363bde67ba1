"""Readers of each dataset's official (and the mirror's) file formats, to uint8 arrays.

Every failure is a DataError naming the file: a truncated archive, an undecodable image, a bad list line.
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

from edgeml.runtime.images import IMAGE_SIZE, DataError, decode_image

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


def _read_imglist(path: str | Path, pattern: str, expected: str) -> list[re.Match]:
    """One match per line of an OpenOOD image list (``<path> <label>``), naming the bad line."""
    regex = re.compile(pattern)
    matches = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            match = regex.match(line.strip())
            if not match:
                raise DataError(f"{path}:{line_no}: expected {expected!r}, got {line!r}")
            matches.append(match)
    return matches


def read_openood_tin_list(path: str | Path, split: str) -> list[int]:
    """File numbers of the Tiny ImageNet images an OpenOOD image list selects."""
    pattern = rf"^tin/{split}/images/{split}_(\d+)\.JPEG\s+-?\d+$"
    return [int(m.group(1)) for m in _read_imglist(path, pattern, f"tin/{split}/images/{split}_N.JPEG <label>")]


def openood_cifar10_positions(path: str | Path, test_y: np.ndarray, test_index: np.ndarray) -> np.ndarray:
    """Positions in our CIFAR-10 test arrays of the images an OpenOOD list names
    (``cifar10/test/<class>/NNNN.png <label>``): its ID test or validation split. OpenOOD numbers
    each class's images from 1 in the official order (0001-1000); our per-class index counts from 0."""
    matches = _read_imglist(path, r"^cifar10/test/([a-z]+)/(\d+)\.png\s+(\d+)$", "cifar10/test/<class>/NNNN.png <label>")
    position = {(int(y), int(i)): p for p, (y, i) in enumerate(zip(test_y, test_index))}
    out = []
    for m in matches:
        cls, index, label = m.group(1), int(m.group(2)) - 1, int(m.group(3))
        if cls not in CIFAR10_CLASSES or CIFAR10_CLASSES.index(cls) != label:
            raise DataError(f"{path}: {m.group(0)!r}: class {cls!r} does not match label {label}")
        if (label, index) not in position:
            raise DataError(f"{path}: {m.group(0)!r} is not in the CIFAR-10 test set we decoded")
        out.append(position[(label, index)])
    return np.array(out, dtype=np.int64)


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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def load_images(path: str | Path, under: str = "") -> Iterator[np.ndarray]:
    """Every image file in an archive or folder whose path contains ``under`` (e.g. ODIN's
    ``LSUN/test/*.jpg``, DTD's ``dtd/images/<class>/*.jpg``, Places365's ``val_256/*.jpg``), as RGB,
    decoded one at a time so that a large set never sits in memory at full size."""
    found = False
    for name, data in iter_files(path, lambda n: under in n and n.lower().endswith(IMAGE_EXTENSIONS)):
        found = True
        yield np.asarray(decode_image(data, f"{path}:{name}"))
    if not found:
        raise DataError(f"{path}: no .jpg/.jpeg/.png images{f' under {under}' if under else ''} found")


def load_svhn(path: str | Path) -> np.ndarray:
    """SVHN's official ``test_32x32.mat`` (MATLAB; ``X`` is 32x32x3xN uint8) as (N, 32, 32, 3)."""
    from scipy.io import loadmat  # scipy comes with scikit-learn; only SVHN needs it
    from scipy.io.matlab import MatReadError

    try:
        x = loadmat(path, variable_names=["X"])["X"]
    except (OSError, ValueError, KeyError, TypeError, MatReadError) as exc:
        raise DataError(f"{path}: not SVHN's test_32x32.mat ({exc})") from exc
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X of shape 32x32x3xN, got {x.shape}")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8))


def load_cifar100_test(path: str | Path) -> np.ndarray:
    """CIFAR-100's 10,000 test images from the official python tarball (``cifar-100-python/test``)."""
    pattern = re.compile(r"(^|/)cifar-100-python/test$")
    found = [data for _, data in iter_files(path, lambda n: bool(pattern.search(n)))]
    if len(found) != 1:
        raise DataError(f"{path}: expected one cifar-100-python/test, found {len(found)}")
    entry = pickle.loads(found[0], encoding="bytes")
    return np.ascontiguousarray(entry[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
