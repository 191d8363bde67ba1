"""Stage ood: every detector on FP32 and INT8, settings chosen on validation data only (edgeml.ood.experiment)."""

import torch

from edgeml import params as P
from edgeml import paths
from edgeml.data.splits import id_split, load_arrays
from edgeml.io import atomic_dir, write_json
from edgeml.ood.detectors import check_params
from edgeml.ood.experiment import run_experiment
from edgeml.quantization import deployed_paths
from edgeml.stage import run


def main() -> None:
    params = P.load()
    ood, backend = params.ood, params.quantize.backend
    check_params(ood.detectors, ood.search)
    torch.set_num_threads(ood.threads)
    arrays = load_arrays(paths.CIFAR10)
    sets = {name: load_arrays(paths.ood_set(name))["x"] for name in [*ood.sets, ood.validation_sets.near, ood.validation_sets.far]}
    split, models = id_split(arrays, ood.id_split, paths.PREPARED), deployed_paths(backend, paths.DEPLOY)
    with atomic_dir(paths.SCORES) as out:
        choices, metrics = run_experiment(ood, models, backend, paths.FP32, arrays, sets, split, out)
    write_json(paths.metrics("detectors"), choices)
    write_json(paths.metrics("ood"), metrics)


if __name__ == "__main__":
    run(main)
