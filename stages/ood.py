"""Stage ood: score the ID test set and every OOD set with each detector, on FP32 and INT8,
each model with its own logits and features."""

from pathlib import Path

import torch

from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.detectors import fit_set, make_detector, predict_outputs
from edgeml.io import atomic_dir, write_json, write_npz
from edgeml.metrics import group_means, ood_metrics
from edgeml.models import load_checkpoint
from edgeml.preprocess import to_tensor
from edgeml.quantization import deployed_models
from edgeml.stage import run

SCORES = Path("data/scores")


def main() -> None:
    params = P.load()
    ood = params.ood
    torch.set_num_threads(ood.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fit_images, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
    images = {"id": to_tensor(arrays["test_x"])} | {
        name: to_tensor(load_arrays(f"data/prepared/ood/{name}.npz")["x"]) for name in ood.sets
    }
    # ViM, ReAct and ASH re-apply the classifier to (modified) features: the FP32 head for both models.
    head = load_checkpoint("models/fp32.pt").fc
    results: dict[str, dict] = {"hyperparameters": {}}
    with atomic_dir(SCORES) as out:
        for model_name, model in deployed_models(params.quantize.backend, features=True).items():
            fit = predict_outputs(model, fit_images, ood.batch_size)
            outputs = {key: predict_outputs(model, x, ood.batch_size) for key, x in images.items()}  # once per model
            for detector_name in ood.detectors:
                detector = make_detector(detector_name, head).fit(fit, fit_labels)
                scores = {key: detector.score(o).numpy() for key, o in outputs.items()}
                write_npz(out / f"{model_name}_{detector_name}.npz", **scores)
                per_set = {name: ood_metrics(scores["id"], scores[name]) for name in ood.sets}
                results.setdefault(model_name, {})[detector_name] = per_set | group_means(per_set, ood.groups)
                results["hyperparameters"].setdefault(model_name, {})[detector_name] = detector.hyperparameters()
    write_json("metrics/ood.json", results)


if __name__ == "__main__":
    run(main)
