"""The ood stage's experiment: every deployed model x detector x image set, each detector's settings
chosen on validation data only. INT8 is also scored with the FP32 model's choices, separating the
quantization effect from the re-tuning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.io import write_npz
from edgeml.model.inference import to_tensor
from edgeml.model.resnet import load_checkpoint
from edgeml.ood import protocol
from edgeml.ood.detectors import Evidence, GradientSigns, ModelContext, detector_class, fit_set
from edgeml.params import OODParams
from edgeml.quantization import load_deployable, load_head

REFERENCE = "fp32"  # whose choices the pure-quantization view re-uses


def run_experiment(
    ood: OODParams,
    models: Mapping[str, Path],
    backend: str,
    twin: Path,
    arrays: Mapping[str, np.ndarray],
    ood_images: Mapping[str, np.ndarray],
    id_split: tuple[np.ndarray, np.ndarray],
    out: Path,
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Score the ID test images (``arrays["test_x"]`` at the positions ``id_split[0]``) and each of
    ``ood.sets`` with every detector on each deployable file of ``models`` (``REFERENCE`` first),
    writing ``out/<model>_<detector>.npz``. The FP32 checkpoint ``twin`` drives ODIN's nudge for every
    model; ``ood_images`` holds ``ood.sets`` and the sets of ``ood.validation_sets``. Returns (each model's detector
    choices, the metrics of every model and view)."""
    fit_images, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
    id_positions, id_validation = id_split
    test_images = {"id": to_tensor(arrays["test_x"][id_positions])} | {name: to_tensor(ood_images[name]) for name in ood.sets}
    validation_id = to_tensor(id_validation[: ood.validation_images])
    validation_ood = {group: to_tensor(ood_images[name]) for group, name in ood.validation_sets.items()}
    # The FP32 twin's gradients drive ODIN's nudge for both models; computed once per set and temperature.
    gradients = GradientSigns(load_checkpoint(twin))
    metrics: dict[str, dict] = {}
    choices: dict[str, dict] = {}
    kept: dict[str, Any] = {}  # the reference model's context, fit outputs and test evidence, for its twin scores
    for model_name, path in models.items():
        model = load_deployable(path, backend, features=True)
        context = ModelContext(load_head(path, backend), gradients)
        fit = Evidence("fit", fit_images, model, ood.batch_size).outputs
        validation = (Evidence("validation/id", validation_id, model, ood.batch_size),
                      {group: Evidence(f"validation/{group}", x, model, ood.batch_size) for group, x in validation_ood.items()})
        test = {key: Evidence(f"test/{key}", x, model, ood.batch_size) for key, x in test_images.items()}
        if model_name == REFERENCE:
            kept = {"context": context, "fit": fit, "test": test}
        views = [model_name] + ([f"{model_name}_{REFERENCE}_settings"] if model_name != REFERENCE else [])
        for name in ood.detectors:
            detector, record = protocol.choose(name, ood.search.get(name, {}), context, fit, fit_labels, validation)
            choices.setdefault(model_name, {})[name] = record
            scores = protocol.score_sets(detector, name, test, ood.perturbation_images, ood.seed)
            interval = detector.perturbs_inputs and ood.perturbation_images is not None  # scored on a sample
            write_npz(out / f"{model_name}_{name}.npz", **scores)
            metrics.setdefault(model_name, {})[name] = protocol.set_metrics(scores, ood.sets, ood.groups, interval)
            if len(views) > 1:  # the same model with the reference model's validation choice
                reference = choices[REFERENCE][name]["chosen"]
                if reference != record["chosen"]:
                    same = protocol.fitted(name, reference, context, fit, fit_labels)
                    scores = protocol.score_sets(same, name, test, ood.perturbation_images, ood.seed)
                metrics.setdefault(views[1], {})[name] = protocol.set_metrics(scores, ood.sets, ood.groups, interval)
        if model_name != REFERENCE:
            write_twin_scores(ood, model_name, choices, kept, fit_labels, out)
    split = {"name": ood.id_split, "test_images": len(test_images["id"]),
             "validation_images": len(validation_id), "validation_sets": dict(ood.validation_sets.items())}
    return choices, {"id_split": split, "perturbation_images": ood.perturbation_images, **metrics}


def write_twin_scores(ood: OODParams, model_name: str, choices: Mapping[str, dict], reference: Mapping[str, Any],
                      fit_labels: Any, out: Path) -> None:
    """The reference (FP32) model scored with ``model_name``'s validation choices, for each detector an artifact
    can carry: ``out/<REFERENCE>_<model_name>_settings_<detector>.npz``. The package stage compares what the
    artifact accepts with its FP32 twin under the same settings, so a difference there is quantization's,
    not a different setting's (e.g. ViM's dim chosen 128 on FP32 and 96 on INT8)."""
    for name in ood.detectors:
        if not detector_class(name).carriable:
            continue
        detector = protocol.fitted(name, choices[model_name][name]["chosen"], reference["context"], reference["fit"], fit_labels)
        scores = protocol.score_sets(detector, name, reference["test"], ood.perturbation_images, ood.seed)
        write_npz(out / f"{REFERENCE}_{model_name}_settings_{name}.npz", **scores)
