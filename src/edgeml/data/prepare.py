"""The prepare stage's work: CIFAR-10 decoded to uint8 arrays with validation split off train, OpenOOD's
ID split located in the test set, and the OOD sets built; each file where edgeml.paths puts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeml import paths
from edgeml.data import ood_sets, readers, splits
from edgeml.io import write_npz
from edgeml.params import PrepareParams


def prepare(params: PrepareParams, validation_sets: list[str], sources: dict[str, dict], out: Path) -> dict[str, int]:
    """Write the prepared files into ``out`` (the folder that becomes ``paths.PREPARED``) from the fetched
    ``sources``, refusing an OOD validation set (of ``validation_sets``) that shares an image with a test set; returns the
    number of images in each split and set."""
    cifar = readers.load_cifar10(sources["cifar10"]["path"])
    arrays = splits.split_cifar10(cifar, params.val_size, params.seed)
    write_npz(out / paths.CIFAR10.relative_to(paths.PREPARED), **arrays)
    counts = {split: len(arrays[f"{split}_y"]) for split in ("train", "val", "test")}
    if "openood_cifar10_test_list" in sources and "openood_cifar10_val_list" in sources:
        split = splits.openood_id_split(sources, cifar["test_y"], cifar["test_index"])
        write_npz(out / paths.OPENOOD_CIFAR10.relative_to(paths.PREPARED), **split)
        counts |= {"openood_test": len(split["test"]), "openood_val": len(split["val"])}
    tinyimagenet: dict[str, dict[int, np.ndarray]] = {}  # decoded once per split
    names = {}
    for name, spec in params.ood_sets.items():
        x, names[name] = ood_sets.build_ood_set(spec, sources, params.seed, tinyimagenet)
        write_npz(out / paths.ood_set(name).relative_to(paths.PREPARED), x=x)
        counts[name] = len(x)
    ood_sets.check_disjoint(names, validation_sets)
    return counts
