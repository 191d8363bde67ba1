"""The ood stages' experiment: every detector on one deployed model and every image set, each detector's
settings chosen on validation data only.

The FP32 model is scored in a stage of its own (``ood_fp32``, :func:`score_reference`), which no
quantization param touches. The INT8 model's stage (``ood``, :func:`score_quantized`) re-uses its
choices and ODIN's gradients, and adds two views that separate quantization's effect from re-tuning:
the INT8 model with the FP32 model's choices, and the FP32 model with the INT8 model's choices (what the
artifact carries)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from edgeml import paths
from edgeml.data.splits import id_split, load_arrays
from edgeml.io import write_npz
from edgeml.model.inference import to_tensor
from edgeml.ood import protocol
from edgeml.ood.detectors import Detector, Evidence, GradientSigns, ModelContext, Outputs, detector_class, fit_set
from edgeml.params import OODParams
from edgeml.quantization import load_deployable, load_head

REFERENCE = "fp32"  # whose choices the pure-quantization view re-uses
QUANTIZED = "int8"


@dataclasses.dataclass
class ImageSets:
    """The uint8 NCHW images every model is scored on."""

    fit: torch.Tensor
    fit_labels: torch.Tensor
    validation_id: torch.Tensor
    validation_ood: dict[str, torch.Tensor]  # group (near, far) -> images
    test: dict[str, torch.Tensor]  # "id", then each of ood.sets

    @classmethod
    def build(cls, ood: OODParams, arrays: Mapping[str, np.ndarray], ood_images: Mapping[str, np.ndarray],
              id_split: tuple[np.ndarray, np.ndarray]) -> "ImageSets":
        """The ID test images (``arrays["test_x"]`` at the positions ``id_split[0]``), ID validation images
        (``id_split[1]``), the fit sample, and ``ood_images`` (``ood.sets`` and the validation sets)."""
        fit, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
        id_positions, id_validation = id_split
        return cls(
            fit, fit_labels, to_tensor(id_validation[: ood.validation_images]),
            {group: to_tensor(ood_images[name]) for group, name in ood.validation_sets.items()},
            {"id": to_tensor(arrays["test_x"][id_positions])} | {name: to_tensor(ood_images[name]) for name in ood.sets},
        )

    @classmethod
    def load(cls, ood: OODParams) -> "ImageSets":
        """The prepare stage's images (``data/prepared``), as both ood stages score them."""
        arrays = load_arrays(paths.CIFAR10)
        names = [*ood.sets, ood.validation_sets.near, ood.validation_sets.far]
        images = {name: load_arrays(paths.ood_set(name))["x"] for name in names}
        return cls.build(ood, arrays, images, id_split(arrays, ood.id_split, paths.PREPARED))

    def split_record(self, ood: OODParams) -> dict[str, Any]:
        return {"name": ood.id_split, "test_images": len(self.test["id"]), "validation_images": len(self.validation_id),
                "validation_sets": dict(ood.validation_sets.items())}


@dataclasses.dataclass
class ModelEvidence:
    """One deployed model's view of every image set (outputs computed once, on first use)."""

    context: ModelContext
    fit: Outputs
    validation: protocol.Validation
    test: dict[str, Evidence]

    @classmethod
    def of(cls, ood: OODParams, path: Path, gradients: GradientSigns, sets: ImageSets, backend: str = "fbgemm") -> "ModelEvidence":
        """``backend``: the one whose format ``path`` is (INT8 TorchScript needs its engine; any reads FP32 TorchScript)."""
        model = load_deployable(path, backend, features=True)
        validation = (Evidence("validation/id", sets.validation_id, model, ood.batch_size),
                      {group: Evidence(f"validation/{group}", x, model, ood.batch_size) for group, x in sets.validation_ood.items()})
        return cls(ModelContext(load_head(path, backend), gradients), Evidence("fit", sets.fit, model, ood.batch_size).outputs,
                   validation, {key: Evidence(f"test/{key}", x, model, ood.batch_size) for key, x in sets.test.items()})


def _scored(ood: OODParams, name: str, setting: dict[str, float], evidence: ModelEvidence, sets: ImageSets,
            detector: Optional[Detector] = None) -> dict[str, np.ndarray]:
    if detector is None:
        detector = protocol.fitted(name, setting, evidence.context, evidence.fit, sets.fit_labels)
    return protocol.score_sets(detector, name, evidence.test, ood.perturbation_images, ood.seed)


def _metrics(ood: OODParams, name: str, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    interval = detector_class(name).perturbs_inputs and ood.perturbation_images is not None  # scored on a sample
    return protocol.set_metrics(scores, ood.sets, ood.groups, interval)


def _score(ood: OODParams, model_name: str, evidence: ModelEvidence, sets: ImageSets, out: Path,
           reference_choices: Optional[Mapping[str, dict]] = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each detector chosen on validation and scored on every test set (``out/<model>_<detector>.npz``).
    Returns (choices, {view: metrics}); with ``reference_choices``, also the view with those choices."""
    choices: dict[str, dict] = {}
    views: dict[str, dict] = {model_name: {}} | ({f"{model_name}_{REFERENCE}_settings": {}} if reference_choices else {})
    for name in ood.detectors:
        detector, record = protocol.choose(name, ood.search.get(name, {}), evidence.context, evidence.fit, sets.fit_labels, evidence.validation)
        choices[name] = record
        scores = _scored(ood, name, record["chosen"], evidence, sets, detector)
        write_npz(out / f"{model_name}_{name}.npz", **scores)
        views[model_name][name] = _metrics(ood, name, scores)
        if reference_choices:  # the same model with the reference model's validation choice
            reference = reference_choices[name]["chosen"]
            if reference != record["chosen"]:
                scores = _scored(ood, name, reference, evidence, sets)
            views[f"{model_name}_{REFERENCE}_settings"][name] = _metrics(ood, name, scores)
    return choices, views


def by_setting(folder: Path, detector: str, index: int) -> Path:
    """The reference model's scores with the ``index``-th setting its choice tried for ``detector``."""
    return folder / "by_setting" / f"{REFERENCE}_{detector}_{index}.npz"


def score_reference(ood: OODParams, path: Path, gradients: GradientSigns, sets: ImageSets,
                    out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """The FP32 deployable file ``path``: (its detector choices, its metrics per detector); scores in ``out``.
    ``gradients`` (the FP32 twin's) keeps every ODIN direction computed, for :meth:`GradientSigns.save`.
    For each carriable detector, also its scores with every setting tried (:func:`by_setting`): whichever
    the INT8 model chooses, its FP32 twin is then already scored, and a quantization experiment runs no
    FP32 forward pass."""
    evidence = ModelEvidence.of(ood, path, gradients, sets)
    choices, views = _score(ood, REFERENCE, evidence, sets, out)
    for name in ood.detectors:
        if detector_class(name).carriable:
            for index, (setting, _) in enumerate(choices[name]["tried"]):
                write_npz(by_setting(out, name, index), **_scored(ood, name, setting, evidence, sets))
    return choices, views[REFERENCE]


def score_quantized(ood: OODParams, path: Path, backend: str, reference_choices: Mapping[str, dict], reference_out: Path,
                    gradients: GradientSigns, sets: ImageSets, out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """The INT8 deployable file ``path``: (its detector choices, {view: metrics}) for its own choices and
    the reference model's (``reference_choices``, whose scores :func:`score_reference` wrote in
    ``reference_out``). Also writes the reference (FP32) model scored with the INT8 model's choice of each
    carriable detector, ``out/<REFERENCE>_<QUANTIZED>_settings_<detector>.npz``: the package stage compares
    what the artifact accepts with this twin, so a difference there is quantization's, not a different
    setting's (e.g. ViM's dim chosen 128 on FP32 and 96 on INT8)."""
    choices, views = _score(ood, QUANTIZED, ModelEvidence.of(ood, path, gradients, sets, backend), sets, out, reference_choices)
    for name in ood.detectors:
        if detector_class(name).carriable:
            tried = [setting for setting, _ in reference_choices[name]["tried"]]
            shutil.copyfile(by_setting(reference_out, name, tried.index(choices[name]["chosen"])),
                            out / f"{REFERENCE}_{QUANTIZED}_settings_{name}.npz")
    return choices, views
