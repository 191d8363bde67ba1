"""Stage ood: score the ID test set and every OOD set with each detector, on FP32 and INT8, each
model with its own outputs and head; hyperparameters chosen on validation data only. INT8 is also
scored with the FP32 model's choices, separating the quantization effect from the re-tuning."""

from pathlib import Path

import torch

from edgeml import params as P
from edgeml.data.splits import id_split, load_arrays
from edgeml.io import atomic_dir, write_json, write_npz
from edgeml.model.inference import to_tensor
from edgeml.model.resnet import load_checkpoint
from edgeml.ood import protocol
from edgeml.ood.detectors import (
    Evidence,
    GradientSigns,
    ModelContext,
    check_params,
    fit_set,
)
from edgeml.quantization import deployed_paths, load_deployable, load_head
from edgeml.stage import run

SCORES = Path("data/scores")
REFERENCE = "fp32"  # whose choices the pure-quantization view re-uses


def main() -> None:
    params = P.load()
    ood, backend = params.ood, params.quantize.backend
    check_params(ood.detectors, ood.search)
    torch.set_num_threads(ood.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fit_images, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
    id_positions, id_validation = id_split(arrays, ood.id_split)
    test_images = {"id": to_tensor(arrays["test_x"][id_positions])} | {
        name: to_tensor(load_arrays(f"data/prepared/ood/{name}.npz")["x"]) for name in ood.sets
    }
    validation_images = {
        "id": to_tensor(id_validation[: ood.validation_images]),
        "ood": to_tensor(load_arrays(f"data/prepared/ood/{ood.validation_set}.npz")["x"]),
    }
    # The FP32 twin's gradients drive ODIN's nudge for both models; computed once per set and temperature.
    gradients = GradientSigns(load_checkpoint("models/fp32.pt"))
    metrics: dict[str, dict] = {}
    choices: dict[str, dict] = {}
    with atomic_dir(SCORES) as out:
        for model_name, path in deployed_paths(backend).items():
            model = load_deployable(path, backend, features=True)
            context = ModelContext(load_head(path, backend), gradients)
            fit = Evidence("fit", fit_images, model, ood.batch_size).outputs
            validation = tuple(Evidence(f"validation/{k}", x, model, ood.batch_size) for k, x in validation_images.items())
            test = {key: Evidence(f"test/{key}", x, model, ood.batch_size) for key, x in test_images.items()}
            views = [model_name] + ([f"{model_name}_{REFERENCE}_settings"] if model_name != REFERENCE else [])
            for name in ood.detectors:
                detector, record = protocol.choose(
                    name, ood.search.get(name, {}), context, fit, fit_labels, validation
                )
                choices.setdefault(model_name, {})[name] = record
                scores = protocol.score_sets(detector, name, test, ood.perturbation_images, ood.seed)
                write_npz(out / f"{model_name}_{name}.npz", **scores)
                metrics.setdefault(model_name, {})[name] = protocol.set_metrics(scores, ood.sets, ood.groups)
                if len(views) > 1:  # the same model with the reference model's validation choice
                    reference = choices[REFERENCE][name]["chosen"]
                    if reference != record["chosen"]:
                        same = protocol.fitted(name, reference, context, fit, fit_labels)
                        scores = protocol.score_sets(same, name, test, ood.perturbation_images, ood.seed)
                    metrics.setdefault(views[1], {})[name] = protocol.set_metrics(scores, ood.sets, ood.groups)
    write_json("metrics/detectors.json", choices)
    write_json(
        "metrics/ood.json",
        {
            "id_split": {"name": ood.id_split, "test_images": len(test_images["id"]),
                         "validation_images": len(validation_images["id"]), "validation_set": ood.validation_set},
            "perturbation_images": ood.perturbation_images,
            **metrics,
        },
    )


if __name__ == "__main__":
    run(main)
