"""One evaluation path for the ood, sweep, package and bench stages: score a model with detectors on
image sets, each detector's hyperparameters chosen on validation data only (OpenOOD's protocol:
tune on validation, report on test). Test data is scored here, never compared or chosen on.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch

from edgeml.model.inference import to_tensor
from edgeml.ood.detectors import (
    Detector,
    Evidence,
    LogitDetector,
    ModelContext,
    Outputs,
    detector_class,
    make_detector,
)
from edgeml.ood.metrics import auroc_interval, group_means, ood_metrics
from edgeml.params import OODParams, ParamsError
from edgeml.runtime.images import DataError

Validation = tuple[Evidence, dict[str, Evidence]]  # (ID validation, OOD validation by group: near, far)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def fitted(name: str, setting: dict[str, float], context: ModelContext, fit: Outputs, labels: torch.Tensor) -> Detector:
    """Detector ``name`` with ``setting``, fitted on ID training outputs."""
    return make_detector(name, context, **setting).fit(fit, labels)


def validation_aurocs(detector: Detector, validation: Validation) -> dict[str, float]:
    """AUROC of the ID validation images vs each OOD validation set, by group."""
    id_evidence, ood_sets = validation
    id_scores = detector.score(id_evidence).numpy()
    return {group: ood_metrics(id_scores, detector.score(evidence).numpy())["auroc"] for group, evidence in ood_sets.items()}


def validation_auroc(detector: Detector, validation: Validation) -> float:
    """The mean of :func:`validation_aurocs` over the near and far sets: the only number choices are made on."""
    return float(np.mean(list(validation_aurocs(detector, validation).values())))


def choose(
    name: str, grid: dict[str, list[float]], context: ModelContext, fit: Outputs, labels: torch.Tensor, validation: Validation
) -> tuple[Detector, dict[str, Any]]:
    """Grid search on validation only: every setting in ``grid`` (the defaults alone when it is empty)
    is fitted and scored on ``validation``; the highest mean AUROC over the near and far sets wins. Returns
    that detector and the record (chosen setting, its validation AUROC and per-group AUROCs, every setting
    tried with its mean AUROC)."""
    tried = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        detector = fitted(name, setting, context, fit, labels)
        by_group = validation_aurocs(detector, validation)
        tried.append((float(np.mean(list(by_group.values()))), by_group, setting, detector))
    auroc, by_group, setting, detector = max(tried, key=lambda t: t[0])
    return detector, {
        "chosen": setting,
        "hyperparameters": detector.hyperparameters(),
        "validation_auroc": auroc,
        "validation_auroc_by_group": by_group,
        "tried": [[s, a] for a, _, s, _ in tried],
    }


def score_sets(
    detector: Detector, name: str, sets: dict[str, Evidence], perturbation_images: Optional[int], seed: int
) -> dict[str, np.ndarray]:
    """Scores per image set. Detectors that perturb their inputs (a backward pass per image) score a
    seeded sample of at most ``perturbation_images`` per set; a NaN/inf score stops with the set named."""
    count = perturbation_images if detector.perturbs_inputs else None
    scores = {key: detector.score(evidence.sample(count, seed)).numpy() for key, evidence in sets.items()}
    broken = [key for key, s in scores.items() if not np.isfinite(s).all()]
    if broken:
        raise DataError(f"ood: detector {name!r} gave NaN/inf scores on {broken}; check the model file and ood.search")
    return scores


def set_metrics(scores: dict[str, np.ndarray], sets: list[str], groups: dict[str, list[str]], interval: bool = False) -> dict[str, Any]:
    """ODIN's metrics of ID (``scores["id"]``) vs each OOD set, plus each group's mean; with ``interval``
    (detectors scored on a sample), each set's AUROC also gets its 95% bootstrap interval, ``auroc_ci95``."""
    per_set = {name: ood_metrics(scores["id"], scores[name]) for name in sets}
    if interval:
        for name in sets:
            per_set[name]["auroc_ci95"] = auroc_interval(scores["id"], scores[name])
    return per_set | group_means(per_set, groups)


def validation_quality(
    model: torch.nn.Module, context: ModelContext, arrays: Mapping[str, np.ndarray], ood_images: Mapping[str, np.ndarray],
    ood: OODParams,
) -> dict[str, Any]:
    """What a quantization recipe is chosen on, validation data only: top-1 on the held-out training
    split (``arrays["val_x"]``), and each logit detector of ``ood.detectors``' mean AUROC of its first
    ``ood.validation_images`` vs the uint8 HWC OOD validation images ``ood_images`` (by group: near, far;
    MSP among them; the feature detectors, which need a fit on each recipe's training features, are
    compared FP32 vs INT8 by the ood stage)."""
    images, labels = to_tensor(arrays["val_x"]), torch.from_numpy(arrays["val_y"])
    everything = Evidence("validation/all", images, model, ood.batch_size)
    id_evidence = Evidence("validation/id", images[: ood.validation_images], model, ood.batch_size)
    id_evidence.outputs = everything.outputs[: ood.validation_images]
    ood_evidence = {group: Evidence(f"validation/{group}", to_tensor(x), model, ood.batch_size) for group, x in ood_images.items()}
    validation = (id_evidence, ood_evidence)
    return {
        "top1": top1(everything.outputs.logits, labels),
        "auroc": {
            name: validation_auroc(make_detector(name, context), validation)
            for name in ood.detectors
            if issubclass(detector_class(name), LogitDetector)
        },
    }


def choose_packaged(validation_auroc: dict[str, float], added_us: dict[str, float], max_added_us: float) -> tuple[str, dict[str, Any]]:
    """The detector the artifact carries: the best validation AUROC among the candidates that add at most
    ``max_added_us`` per image on the INT8 model. Returns its name and the record of the choice."""
    eligible = {name: auroc for name, auroc in validation_auroc.items() if added_us[name] <= max_added_us}
    if not eligible:
        raise ParamsError(
            f"package.max_added_us: no detector the artifact can carry adds at most {max_added_us} µs per image "
            f"(measured: {', '.join(f'{n} {us:.1f}' for n, us in added_us.items())}); raise the bound"
        )
    best = max(eligible, key=eligible.get)
    return best, {
        "rule": f"best INT8 validation AUROC among detectors adding at most {max_added_us} µs per image",
        "validation_auroc": validation_auroc,
        "added_us": added_us,
    }
