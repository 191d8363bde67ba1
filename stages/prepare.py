"""Stage prepare: decode archives to uint8 arrays, split validation off train, locate OpenOOD's
ID split in the test set, build OOD sets."""

from pathlib import Path

import numpy as np

from edgeml import params as P
from edgeml.data import ood_sets, readers, splits
from edgeml.io import atomic_dir, read_json, write_json, write_npz
from edgeml.stage import run

OUT = Path("data/prepared")


def main() -> None:
    all_params = P.load()
    params = all_params.prepare
    sources = read_json("data/sources.json")
    with atomic_dir(OUT) as out:
        cifar = readers.load_cifar10(sources["cifar10"]["path"])
        arrays = splits.split_cifar10(cifar, params.val_size, params.seed)
        write_npz(out / "cifar10.npz", **arrays)
        counts = {split: len(arrays[f"{split}_y"]) for split in ("train", "val", "test")}
        if "openood_cifar10_test_list" in sources and "openood_cifar10_val_list" in sources:
            split = splits.openood_id_split(sources, cifar["test_y"], cifar["test_index"])
            write_npz(out / "openood_cifar10.npz", **split)
            counts |= {"openood_test": len(split["test"]), "openood_val": len(split["val"])}
        tinyimagenet: dict[str, dict[int, np.ndarray]] = {}  # decoded once per split
        names = {}
        for name, spec in params.ood_sets.items():
            x, names[name] = ood_sets.build_ood_set(spec, sources, params.seed, tinyimagenet)
            write_npz(out / "ood" / f"{name}.npz", x=x)
            counts[name] = len(x)
        ood_sets.check_disjoint(names, all_params.ood.validation_set)
    write_json("metrics/prepare.json", {"samples": counts})


if __name__ == "__main__":
    run(main)
