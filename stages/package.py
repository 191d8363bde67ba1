"""Stage package: INT8 model + OOD detector + threshold + preprocessing in one deployable file."""

import dataclasses

import numpy as np
import torch

from edgeml import params as P
from edgeml.data import CIFAR10_CLASSES, load_arrays
from edgeml.deploy import ARTIFACT_DIR, EdgeModel, artifact_path, build_artifact, input_metadata, sha256_file, threshold_at_tpr
from edgeml.detectors import LogitDetector, make_detector
from edgeml.io import atomic_dir, write_json
from edgeml.params import ParamsError
from edgeml.preprocess import to_tensor
from edgeml.quantization import int8_path, load_deployable
from edgeml.stage import run
from edgeml.training import predict_logits


def main() -> None:
    params = P.load()
    detector = make_detector(params.package.detector)
    if not isinstance(detector, LogitDetector):
        raise ParamsError(f"package.detector: {params.package.detector!r} needs more than logits; the artifact carries logit detectors")
    val_x = to_tensor(load_arrays("data/prepared/cifar10.npz")["val_x"])
    backend = params.quantize.backend
    int8 = load_deployable(int8_path(backend), backend)
    val_scores = detector.score_logits(predict_logits(int8, val_x, params.ood.batch_size)).numpy()
    threshold = threshold_at_tpr(val_scores, params.package.id_tpr)
    metadata = {
        "classes": list(CIFAR10_CLASSES),
        "input": input_metadata(),
        "detector": params.package.detector,
        "threshold": threshold,
        "threshold_rule": f"keeps {params.package.id_tpr:.0%} of {len(val_x)} ID validation images",
        "quantize": dataclasses.asdict(params.quantize),
        "int8_model_sha256": sha256_file(int8_path(backend)),
    }
    with atomic_dir(ARTIFACT_DIR) as out:
        digest = build_artifact(int8_path(backend), backend, detector.score_logits, metadata, artifact_path(backend, out))
        # The artifact must score exactly as the pipeline's INT8 model + detector did.
        with torch.no_grad():
            _, artifact_scores = EdgeModel.load(out).module(val_x)
        np.testing.assert_allclose(artifact_scores.numpy(), val_scores, rtol=1e-5, atol=1e-6)

    scores = load_arrays(f"data/scores/int8_{params.package.detector}.npz")
    write_json(
        "metrics/package.json",
        {
            "sha256": digest,
            "detector": params.package.detector,
            "threshold": threshold,
            "val_tpr": float((val_scores >= threshold).mean()),
            "test_tpr": float((scores["id"] >= threshold).mean()),
            "test_fpr": {name: float((scores[name] >= threshold).mean()) for name in params.ood.sets},
        },
    )


if __name__ == "__main__":
    run(main)
