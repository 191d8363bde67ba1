"""Stage package: INT8 model + OOD detector + threshold + preprocessing in one deployable file. The
detector is chosen on validation data (cheap enough for the edge, then best validation AUROC); the
threshold is set on the held-out training split, disjoint from the training images calibration used."""

import dataclasses

import numpy as np
import torch

from edgeml import params as P
from edgeml.bench.cpu import detector_cost_us
from edgeml.data.readers import CIFAR10_CLASSES
from edgeml.data.splits import load_arrays
from edgeml.io import atomic_dir, read_json, write_json
from edgeml.model.inference import predict_logits, to_tensor
from edgeml.ood.detectors import (
    LogitDetector,
    ModelContext,
    check_params,
    detector_class,
    make_detector,
)
from edgeml.ood.protocol import choose_packaged
from edgeml.package import artifact_path, build_artifact, threshold_at_tpr
from edgeml.params import ParamsError
from edgeml.quantization import int8_path, load_deployable, load_head
from edgeml.runtime.artifact import ARTIFACT_DIR, EdgeModel, input_metadata, sha256_file
from edgeml.stage import run


def main() -> None:
    params = P.load()
    package, backend = params.package, params.quantize.backend
    check_params(params.ood.detectors, {})
    path = int8_path(backend)
    torch.set_num_threads(params.bench.threads)
    context = ModelContext(load_head(path, backend))
    candidates = {name: make_detector(name, context) for name in params.ood.detectors if issubclass(detector_class(name), LogitDetector)}
    if package.detector == "auto":
        choices = read_json("metrics/detectors.json")["int8"]
        added_us = detector_cost_us(load_deployable(path, backend, features=True), candidates, params.bench.runs)
        name, selection = choose_packaged({n: choices[n]["validation_auroc"] for n in candidates}, added_us, package.max_added_us)
    elif package.detector in candidates:
        name, selection = package.detector, {"rule": "set by params package.detector"}
    else:
        raise ParamsError(f"package.detector: {package.detector!r} needs more than logits; the artifact carries {sorted(candidates)} or auto")
    detector = candidates[name]
    val_x = to_tensor(load_arrays("data/prepared/cifar10.npz")["val_x"])
    val_scores = detector.score_logits(predict_logits(load_deployable(path, backend), val_x, params.ood.batch_size)).numpy()
    threshold = threshold_at_tpr(val_scores, package.id_tpr)
    metadata = {
        "classes": list(CIFAR10_CLASSES),
        "input": input_metadata(),
        "detector": name,
        "threshold": threshold,
        "threshold_rule": f"keeps {package.id_tpr:.0%} of {len(val_x)} ID validation images",
        "quantize": dataclasses.asdict(params.quantize),
        "int8_model_sha256": sha256_file(path),
    }
    with atomic_dir(ARTIFACT_DIR) as out:
        digest = build_artifact(path, backend, detector.score_logits, metadata, artifact_path(backend, out))
        # The artifact must score as the pipeline's INT8 model + detector did. Not bit for bit: it
        # normalises inside its own graph, and a float rounding difference there can move an input
        # across a quantization step (GEN's p**0.1 magnifies that for small probabilities). Its
        # decisions at the threshold must agree on all but a handful of validation images.
        with torch.no_grad():
            _, artifact_scores = EdgeModel.load(out).module(val_x)
        artifact_scores = np.asarray(artifact_scores)
        np.testing.assert_allclose(artifact_scores, val_scores, rtol=1e-3, atol=1e-3)
        flipped = int(((artifact_scores >= threshold) != (val_scores >= threshold)).sum())
        if flipped > len(val_scores) // 1000:
            raise AssertionError(f"package: the artifact decides differently on {flipped} of {len(val_scores)} validation images")

    scores = load_arrays(f"data/scores/int8_{name}.npz")
    write_json(
        "metrics/package.json",
        {
            "sha256": digest,
            "detector": name,
            "selection": selection,
            "threshold": threshold,
            # disjoint image sets: calibration draws from the training split, the threshold from the held-out one
            "calibration_images": {"split": params.quantize.calibration_split, "count": params.quantize.calibration_size},
            "threshold_images": {"split": "val", "count": len(val_x)},
            "val_tpr": float((val_scores >= threshold).mean()),
            "artifact_decisions_differing": flipped,
            "test_tpr": float((scores["id"] >= threshold).mean()),
            "test_fpr": {s: float((scores[s] >= threshold).mean()) for s in params.ood.sets},
        },
    )


if __name__ == "__main__":
    run(main)
