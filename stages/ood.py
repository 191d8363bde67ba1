"""Stage ood: score the ID test set and every OOD set with each detector, on FP32 and INT8."""

from pathlib import Path

import torch

from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.detectors import LogitDetector, make_detector
from edgeml.io import atomic_dir, write_json, write_npz
from edgeml.metrics import group_means, ood_metrics
from edgeml.preprocess import to_tensor
from edgeml.quantization import deployed_models
from edgeml.stage import run
from edgeml.training import predict_logits

SCORES = Path("data/scores")


def main() -> None:
    params = P.load()
    torch.set_num_threads(params.ood.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fit_images, id_images = to_tensor(arrays["val_x"]), to_tensor(arrays["test_x"])
    ood_images = {name: to_tensor(load_arrays(f"data/prepared/ood/{name}.npz")["x"]) for name in params.ood.sets}
    images = {"id": id_images, **ood_images}
    results: dict[str, dict] = {}
    with atomic_dir(SCORES) as out:
        for model_name, model in deployed_models(params.quantize.backend).items():
            logits = {}  # computed once per model, shared by every logit-based detector
            for detector_name in params.ood.detectors:
                detector = make_detector(detector_name, batch_size=params.ood.batch_size)
                detector.fit(model, fit_images)
                if isinstance(detector, LogitDetector):
                    if not logits:
                        logits = {k: predict_logits(model, v, params.ood.batch_size) for k, v in images.items()}
                    scores = {k: detector.score_logits(v).numpy() for k, v in logits.items()}
                else:
                    scores = {k: detector.score(model, v) for k, v in images.items()}
                write_npz(out / f"{model_name}_{detector_name}.npz", **scores)
                per_set = {name: ood_metrics(scores["id"], scores[name]) for name in ood_images}
                results.setdefault(model_name, {})[detector_name] = per_set | group_means(per_set, params.ood.groups)
    write_json("metrics/ood.json", results)


if __name__ == "__main__":
    run(main)
