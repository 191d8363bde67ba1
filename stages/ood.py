"""Stage ood: score the ID test set and every OOD set with each detector, on FP32 and INT8,
each model with its own logits and features; hyperparameters chosen on validation data only."""

from pathlib import Path

import numpy as np
import torch

from edgeml import params as P
from edgeml.data import id_split, load_arrays
from edgeml.detectors import ODIN, Detector, choose, fit_set, make_detector, predict_outputs
from edgeml.io import atomic_dir, write_json, write_npz
from edgeml.metrics import group_means, ood_metrics
from edgeml.models import load_checkpoint
from edgeml.preprocess import to_tensor
from edgeml.quantization import LogitsOnly, deployed_models
from edgeml.stage import run

SCORES = Path("data/scores")


def main() -> None:
    params = P.load()
    ood = params.ood
    torch.set_num_threads(ood.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fit_images, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
    id_positions, id_validation = id_split(arrays, ood.id_split)
    id_test = arrays["test_x"][id_positions]
    images = {"id": to_tensor(id_test)} | {
        name: to_tensor(load_arrays(f"data/prepared/ood/{name}.npz")["x"]) for name in ood.sets
    }
    # Hyperparameters are chosen on validation only: ID validation images vs an OOD validation set.
    validation = {"id": to_tensor(id_validation[: ood.validation_images])}
    if ood.validation_set:
        validation["ood"] = to_tensor(load_arrays(f"data/prepared/ood/{ood.validation_set}.npz")["x"])
    # The FP32 twin: its head is re-applied by ViM, ReAct and ASH, its gradients drive ODIN's input nudge.
    twin = load_checkpoint("models/fp32.pt")
    results: dict[str, dict] = {
        "id_split": {"name": ood.id_split, "test_images": len(id_test), "validation_images": len(validation["id"])},
        "hyperparameters": {},
    }
    with atomic_dir(SCORES) as out:
        for model_name, model in deployed_models(params.quantize.backend, features=True).items():
            logits_model = LogitsOnly(model)
            fit = predict_outputs(model, fit_images, ood.batch_size)
            outputs = {key: predict_outputs(model, x, ood.batch_size) for key, x in images.items()}  # once per model
            validation_outputs = {key: predict_outputs(model, x, ood.batch_size) for key, x in validation.items()}

            def scores_on(detector: Detector, data: dict[str, torch.Tensor], data_outputs: dict) -> dict[str, torch.Tensor]:
                if isinstance(detector, ODIN):
                    return {key: detector.score_images(logits_model, x, ood.batch_size) for key, x in data.items()}
                return {key: detector.score(data_outputs[key]) for key in data}

            for detector_name in ood.detectors:
                def build(**setting: float) -> Detector:
                    return make_detector(detector_name, twin.fc, twin, **setting).fit(fit, fit_labels)

                search = {}
                if detector_name in ood.search:
                    detector, search = choose(
                        ood.search[detector_name], build,
                        lambda d: tuple(scores_on(d, validation, validation_outputs).values()),
                    )
                else:
                    detector = build()
                scores = {key: s.numpy() for key, s in scores_on(detector, images, outputs).items()}
                broken = [key for key, s in scores.items() if not np.isfinite(s).all()]
                if broken:
                    raise ValueError(f"ood: detector {detector_name!r} gave NaN/inf scores on {model_name} for {broken}")
                write_npz(out / f"{model_name}_{detector_name}.npz", **scores)
                per_set = {name: ood_metrics(scores["id"], scores[name]) for name in ood.sets}
                results.setdefault(model_name, {})[detector_name] = per_set | group_means(per_set, ood.groups)
                results["hyperparameters"].setdefault(model_name, {})[detector_name] = detector.hyperparameters() | (
                    {"validation": search} if search else {}
                )
    write_json("metrics/ood.json", results)


if __name__ == "__main__":
    run(main)
