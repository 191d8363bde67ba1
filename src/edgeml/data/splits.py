"""The CIFAR-10 splits: training, held-out validation, test; and OpenOOD's ID test/validation lists over the test set."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgeml.data.readers import openood_cifar10_positions
from edgeml import paths
from edgeml.params import ParamsError, ValidationSets
from edgeml.runtime.images import DataError


def openood_id_split(sources: dict[str, dict], test_y: np.ndarray, test_index: np.ndarray) -> dict[str, np.ndarray]:
    """OpenOOD's ID ``test`` and ``val`` splits of the CIFAR-10 test set, as positions in our test
    arrays; refuses lists that overlap, since hyperparameters chosen on ``val`` must not see ``test``."""
    split = {
        name: openood_cifar10_positions(sources[f"openood_cifar10_{name}_list"]["path"], test_y, test_index)
        for name in ("test", "val")
    }
    shared = np.intersect1d(split["test"], split["val"])
    if len(shared):
        raise DataError(f"OpenOOD's CIFAR-10 test and val lists share {len(shared)} images; fetch the original lists")
    return split


def split_validation(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) index split of the training set; the test set is never touched."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = val_size // len(classes)
    if per_class == 0 or per_class * len(classes) != val_size:
        raise ParamsError(f"prepare.val_size: {val_size} must be a positive multiple of {len(classes)} classes")
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, np.sort(val)


def split_cifar10(cifar: dict[str, np.ndarray], val_size: int, seed: int) -> dict[str, np.ndarray]:
    """The arrays of ``data/prepared/cifar10.npz``: the training set less a stratified validation split
    of ``val_size`` images (:func:`split_validation`), and the test set with its per-class file index."""
    train, val = split_validation(cifar["train_y"], val_size, seed)
    return {
        "train_x": cifar["train_x"][train],
        "train_y": cifar["train_y"][train],
        "val_x": cifar["train_x"][val],
        "val_y": cifar["train_y"][val],
        "test_x": cifar["test_x"],
        "test_y": cifar["test_y"],
        "test_index": cifar["test_index"],
    }


def id_split(arrays: dict[str, np.ndarray], name: str, prepared: str | Path = "data/prepared") -> tuple[np.ndarray, np.ndarray]:
    """(positions of the ID test images in the test set, ID validation images) for OOD detection, by
    ``ood.id_split``: "odin" = the whole test set, validation held out of the training set;
    "openood" = OpenOOD's disjoint lists over the test set (located by the prepare stage)."""
    if name == "openood":
        split = load_arrays(Path(prepared) / "openood_cifar10.npz")
        return split["test"], arrays["test_x"][split["val"]]
    return np.arange(len(arrays["test_x"])), arrays["val_x"]


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file a stage wrote; a truncated or corrupt one names itself and the fix."""
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated ({exc}); re-run the stage that writes it") from exc


def load_ood_validation(validation_sets: ValidationSets) -> dict[str, np.ndarray]:
    """The prepared OOD validation images by group (near, far), as choices are made on them."""
    return {group: load_arrays(paths.ood_set(name))["x"] for group, name in validation_sets.items()}
