"""Building the deployable artifact: the INT8 model with its OOD detector and threshold in one file, with metadata and sha256.

The runtime side (reading, verifying, running) is edgeml.runtime.artifact.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

from edgeml.bench.cpu import detector_cost_us
from edgeml.data.readers import CIFAR10_CLASSES
from edgeml.data.splits import load_arrays
from edgeml.io import atomic_path, write_text
from edgeml.model.inference import normalize, to_tensor
from edgeml.ood.detectors import (
    Detector,
    ModelContext,
    Scorer,
    detector_class,
    fit_set,
    predict_outputs,
)
from edgeml.ood.protocol import choose_packaged, fitted
from edgeml.params import Params, ParamsError
from edgeml.quantization import load_deployable, load_head, quantizer_class
from edgeml.runtime.artifact import (
    ARTIFACT_DIR,
    FORMAT,
    IR_WEIGHTS_SHA256,
    METADATA,
    PACKAGED_SUFFIXES,
    EdgeModel,
    input_metadata,
    sha256_file,
)
from edgeml.runtime.images import IMAGE_SIZE

if TYPE_CHECKING:
    import openvino


def artifact_path(backend: str, folder: str | Path = ARTIFACT_DIR) -> Path:
    """Where the package stage writes the artifact for ``backend`` (its suffix is the backend's format)."""
    from edgeml.quantization import quantizer_class

    return Path(folder) / f"edgeml_int8{quantizer_class(backend).suffix}"


def threshold_at_tpr(id_scores: np.ndarray, tpr: float) -> float:
    """A threshold that keeps at least ``tpr`` of the ID scores (score >= threshold is ID): midway
    between the lowest score kept and the next one below, so that no image sits on the boundary
    (unless two scores tie there), where the smallest rounding difference (the artifact's own
    normalisation, say) would flip its decision. Keeping them all gives the lowest score."""
    ordered = np.sort(np.asarray(id_scores, dtype=np.float64))[::-1]
    kept = int(np.ceil(tpr * len(ordered)))
    if kept >= len(ordered):
        return float(ordered[-1])
    return float((ordered[kept - 1] + ordered[kept]) / 2)


def build_artifact(
    int8_path: str | Path,
    backend: str,
    scorer: Scorer,
    metadata: dict[str, Any],
    out_path: str | Path,
) -> str:
    """Preprocessing + INT8 model + detector (its ``scorer``) in one file of the backend's format, with
    metadata; write its .sha256; return the digest."""
    out_path = Path(out_path)
    meta = json.dumps({"format": FORMAT, "backend": backend, **metadata})
    write_artifact(Path(int8_path), backend, scorer, meta, out_path)
    digest = sha256_file(out_path)
    write_text(out_path.with_name(out_path.name + ".sha256"), f"{digest}  {out_path.name}\n")
    return digest


def choose_detector(
    params: Params, int8: Path, int8_choices: Mapping[str, dict], arrays: Mapping[str, np.ndarray]
) -> tuple[str, Detector, dict[str, Any]]:
    """The detector the artifact carries: one it computes in its own graph (a function of the logits and the
    pooled features, :attr:`Detector.carriable`), with the ood stage's INT8 settings (``int8_choices``),
    fitted as the ood stage fits it; and the record of its choice: ``package.detector``, or for "auto" the
    best INT8 validation AUROC among the carriable detectors that add at most ``package.max_added_us``."""
    backend, package = params.quantize.backend, params.package
    carriable = [name for name in params.ood.detectors if detector_class(name).carriable]
    if package.detector not in ("auto", *carriable):
        raise ParamsError(
            f"package.detector: {package.detector!r} needs more than the logits and pooled features (the layer4 "
            f"map, input gradients or a large feature bank); the artifact carries {carriable} or auto"
        )
    model = load_deployable(int8, backend, features=True)
    names = carriable if package.detector == "auto" else [package.detector]
    candidates = fitted_on(params, model, load_head(int8, backend), {n: int8_choices[n]["chosen"] for n in names}, arrays)
    if package.detector != "auto":
        return package.detector, candidates[package.detector], {"rule": "set by params package.detector"}
    added_us = detector_cost_us(model, candidates, params.bench.runs)
    name, selection = choose_packaged({n: int8_choices[n]["validation_auroc"] for n in candidates}, added_us, package.max_added_us)
    return name, candidates[name], selection


def fitted_on(
    params: Params, model: nn.Module, head: nn.Linear, settings: Mapping[str, dict], arrays: Mapping[str, np.ndarray]
) -> dict[str, Detector]:
    """Detectors by name with their ``settings``, fitted on ``model``'s outputs for the training sample the
    ood stage fits on (the same seed, so the same images)."""
    fit_images, fit_labels = fit_set(arrays, params.ood.fit_images, params.ood.seed)
    fit = predict_outputs(model, fit_images, params.ood.batch_size, desc="fit")
    return {name: fitted(name, setting, ModelContext(head), fit, fit_labels) for name, setting in settings.items()}


def validation_threshold(params: Params, model: nn.Module, scorer: Scorer, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """``scorer``'s scores of ``model``'s outputs on the ID validation images (the held-out training split),
    and the threshold keeping ``package.id_tpr`` of them."""
    val = predict_outputs(model, to_tensor(arrays["val_x"]), params.ood.batch_size)
    with torch.no_grad():
        scores = scorer(val.logits, val.features).numpy()
    return scores, threshold_at_tpr(scores, params.package.id_tpr)


def acceptance(threshold: float, test_scores: Mapping[str, np.ndarray], sets: list[str]) -> dict[str, Any]:
    """What a threshold lets through on test data: the share of ID test images kept, and of each OOD set accepted."""
    return {
        "threshold": threshold,
        "test_tpr": float((test_scores["id"] >= threshold).mean()),
        "test_fpr": {s: float((test_scores[s] >= threshold).mean()) for s in sets},
    }


def fp32_acceptance(
    params: Params, fp32: Path, detector: str, setting: Mapping[str, float], arrays: Mapping[str, np.ndarray],
    test_scores: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The artifact's rule on the FP32 model: the same detector with the artifact's ``setting``, fitted on the
    FP32 model and thresholded at ``package.id_tpr`` of its validation scores, on the ood stage's FP32 test
    scores with that setting. Beside the artifact's own rates it shows what quantization alone changes in
    what a user gets."""
    model = load_deployable(fp32, features=True)
    fitted_detector = fitted_on(params, model, load_head(fp32), {detector: setting}, arrays)[detector]
    _, threshold = validation_threshold(params, model, fitted_detector.scorer(), arrays)
    return {"setting": dict(setting), **acceptance(threshold, test_scores, params.ood.sets)}


def check_artifact(folder: Path, images: torch.Tensor, scores: np.ndarray, threshold: float) -> int:
    """The artifact in ``folder`` must score ``images`` as the pipeline's INT8 model + detector did
    (``scores``). Not bit for bit: it normalises inside its own graph, and a float rounding difference
    there can move an input across a quantization step (GEN's p**0.1 magnifies that for small
    probabilities). Its decisions at ``threshold`` must agree on all but one image in a thousand.
    Returns how many decisions differ."""
    with torch.no_grad():
        _, artifact_scores = EdgeModel.load(folder).module(images)
    artifact_scores = np.asarray(artifact_scores)
    np.testing.assert_allclose(artifact_scores, scores, rtol=1e-3, atol=1e-3)
    flipped = int(((artifact_scores >= threshold) != (scores >= threshold)).sum())
    if flipped > len(scores) // 1000:
        raise AssertionError(f"package: the artifact decides differently on {flipped} of {len(scores)} validation images")
    return flipped


@dataclasses.dataclass
class Packaged:
    """What the package stage built and records: the artifact's digest, its detector and threshold."""

    sha256: str
    detector: str
    selection: dict[str, Any]
    threshold: float
    val_scores: np.ndarray  # the INT8 model + detector on the ID validation images the threshold is set on
    flipped: int  # validation decisions the artifact takes differently

    def metrics(self, params: Params, test_scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The package metrics, ``test_scores`` being the ood stage's INT8 scores with this detector."""
        return {
            "sha256": self.sha256,
            "detector": self.detector,
            "selection": self.selection,
            "threshold": self.threshold,
            # disjoint image sets: calibration draws from the training split, the threshold from the held-out one
            "calibration_images": {"split": params.quantize.calibration_split, "count": params.quantize.calibration_size},
            "threshold_images": {"split": "val", "count": len(self.val_scores)},
            "val_tpr": float((self.val_scores >= self.threshold).mean()),
            "artifact_decisions_differing": self.flipped,
            **{k: v for k, v in acceptance(self.threshold, test_scores, params.ood.sets).items() if k != "threshold"},
        }


def package_int8(params: Params, int8: Path, int8_choices: Optional[Mapping[str, dict]], prepared: Path, out: Path) -> Packaged:
    """The artifact of the INT8 file ``int8`` in ``out``: its detector (``choose_detector``), a threshold
    keeping ``package.id_tpr`` of the ID validation images (``val_x`` of the arrays file ``prepared``,
    disjoint from the training images calibration used), and the check that the artifact decides as
    the pipeline does."""
    backend, package = params.quantize.backend, params.package
    arrays = load_arrays(prepared)
    name, detector, selection = choose_detector(params, int8, int8_choices, arrays)
    val_x, scorer = to_tensor(arrays["val_x"]), detector.scorer()
    val_scores, threshold = validation_threshold(params, load_deployable(int8, backend, features=True), scorer, arrays)
    metadata = {
        "classes": list(CIFAR10_CLASSES),
        "input": input_metadata(),
        "detector": name,
        "threshold": threshold,
        "threshold_rule": f"keeps {package.id_tpr:.0%} of {len(val_x)} ID validation images",
        "quantize": dataclasses.asdict(quantizer_class(backend).resolve(params.quantize)),  # auto resolved
        "int8_model_sha256": sha256_file(int8),
    }
    digest = build_artifact(int8, backend, scorer, metadata, artifact_path(backend, out))
    return Packaged(digest, name, selection, threshold, val_scores, check_artifact(out, val_x, val_scores, threshold))


class _Pipeline(nn.Module):
    """uint8 NCHW images -> (class probabilities, OOD score): what the artifact computes."""

    def __init__(self, model: nn.Module, scorer: Scorer):
        super().__init__()
        self.model, self.scorer = model, scorer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, _ = self.model(normalize(images))
        return logits.softmax(dim=1), self.scorer(logits, features)


class _Scores(nn.Module):
    """(logits, pooled features) -> (class probabilities, OOD score): the ONNX artifact's tail."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.softmax(dim=1), self.scorer(logits, features)


class _Normalize(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images)


def write_artifact(int8_path: Path, backend: str, scorer: Scorer, meta: str, out: Path) -> None:
    """Write the artifact of the INT8 file ``int8_path`` to ``out``, in its format, with the JSON ``meta``.
    Each file is renamed into place whole (an OpenVINO IR's .bin before the .xml that reads it)."""
    writers = {".pt": _write_torchscript, ".pt2": _write_exported, ".onnx": _write_onnx, ".xml": _write_openvino}
    if int8_path.suffix not in PACKAGED_SUFFIXES:
        raise ParamsError(
            f"quantize.backend: {backend!r} files ({int8_path.suffix}) cannot be packaged; the artifact is built "
            f"from {list(PACKAGED_SUFFIXES)} files: package another backend's recipe"
        )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript/ONNX exporter deprecation and constant-capture notices
        writers[int8_path.suffix](int8_path, backend, scorer, meta, out)


def _example_images(batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)


def _write_torchscript(int8_path: Path, backend: str, scorer: Scorer, meta: str, out: Path) -> None:
    pipeline = _Pipeline(load_deployable(int8_path, backend, features=True), scorer).eval()
    traced = torch.jit.freeze(torch.jit.trace(pipeline, _example_images()))
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={METADATA: meta})


def _write_exported(int8_path: Path, backend: str, scorer: Scorer, meta: str, out: Path) -> None:
    from edgeml.quantization.pt2e import export_program

    pipeline = _Pipeline(torch.export.load(str(int8_path)).module(), scorer)
    with atomic_path(out) as tmp:
        torch.export.save(export_program(pipeline, _example_images()), str(tmp), extra_files={METADATA: meta})


def _write_onnx(int8_path: Path, backend: str, scorer: Scorer, meta: str, out: Path) -> None:
    """The INT8 graph, unchanged, between a normalisation head (uint8 images -> ``normalized``) and a detector
    tail (``logits``, ``features`` -> ``probabilities``, ``ood_score``; a logit detector's tail takes no
    features, so ONNX drops that input), joined by onnx.compose."""
    import onnx
    import onnx.compose

    from edgeml.quantization.onnxrt import export_onnx

    model = onnx.load(str(int8_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    features = load_head(int8_path, backend).in_features
    with tempfile.TemporaryDirectory(prefix="edgeml-package-") as folder:
        head_path, tail_path = Path(folder) / "head.onnx", Path(folder) / "tail.onnx"
        export_onnx(_Normalize(), head_path, _example_images(), ["images"], ["normalized"], opset)
        export_onnx(_Scores(scorer), tail_path, (torch.zeros(2, 10), torch.zeros(2, features)), ["logits", "features"],
                    ["probabilities", "ood_score"], opset)
        head, tail = onnx.load(str(head_path)), onnx.load(str(tail_path))
    head.ir_version = tail.ir_version = model.ir_version
    (model_input,) = model.graph.input
    merged = onnx.compose.merge_models(
        head, model, io_map=[("normalized", model_input.name)], prefix2="model/", outputs=["model/logits", "model/features"]
    )
    used = [i.name for i in tail.graph.input]
    merged = onnx.compose.merge_models(
        merged, tail, io_map=[(f"model/{name}", name) for name in used], prefix2="detector/",
        outputs=["detector/probabilities", "detector/ood_score"],
    )
    for output in merged.graph.output:  # plain output names, as the other formats have
        merged.graph.node.append(onnx.helper.make_node("Identity", [output.name], [output.name.removeprefix("detector/")]))
        output.name = output.name.removeprefix("detector/")
    onnx.helper.set_model_props(merged, {METADATA: meta})
    onnx.checker.check_model(merged)
    with atomic_path(out) as tmp:
        onnx.save(merged, str(tmp))


def _write_openvino(int8_path: Path, backend: str, scorer: Scorer, meta: str, out: Path) -> None:
    """The INT8 IR graph, unchanged, between the normalisation head and the detector tail, each captured by
    ``torch.export`` (dynamic batch) and converted by OpenVINO; the metadata and the weights' sha256 in the
    graph's rt_info. Not converted from the ONNX ends: OpenVINO 2026.4's ONNX frontend reduces opset-17
    ReduceLogSumExp over every axis, ignoring its ``axes`` (Energy, ViM and ReAct scores came out wrong)."""
    import openvino as ov

    from edgeml.quantization.openvino import save_ir

    batch = torch.export.Dim("batch", max=65536)
    features = load_head(int8_path, backend).in_features
    head = ov.convert_model(torch.export.export(_Normalize(), (_example_images(),), dynamic_shapes=({0: batch},)))
    tail = ov.convert_model(torch.export.export(
        _Scores(scorer).eval(), (torch.zeros(2, 10), torch.zeros(2, features)), dynamic_shapes=({0: batch}, {0: batch})
    ))
    model = ov.Core().read_model(str(int8_path))
    outputs = {name: result.input_value(0) for result in model.get_results() for name in result.input_value(0).get_names()}
    _feed(model.get_parameters()[0], head.get_results()[0].input_value(0))
    for parameter, name in zip(tail.get_parameters(), ("logits", "features")):  # _Scores.forward's arguments, in order
        _feed(parameter, outputs[name])
    pipeline = ov.Model(tail.get_results(), head.get_parameters(), "edgeml")
    pipeline.outputs[0].get_tensor().set_names({"probabilities"})
    pipeline.outputs[1].get_tensor().set_names({"ood_score"})
    pipeline.set_rt_info(meta, METADATA)
    with tempfile.TemporaryDirectory(prefix="edgeml-package-") as folder:  # the weights' digest, for the graph to record
        draft = Path(folder) / "draft.xml"
        ov.save_model(pipeline, draft, compress_to_fp16=False)
        weights_sha256 = sha256_file(draft.with_suffix(".bin"))
    pipeline.set_rt_info(weights_sha256, IR_WEIGHTS_SHA256)
    save_ir(pipeline, out)
    if sha256_file(out.with_suffix(".bin")) != weights_sha256:
        raise RuntimeError(f"{out}: OpenVINO wrote other weights for the same graph; the recorded sha256 would not match")


def _feed(parameter: "openvino.op.Parameter", value: "openvino.Output") -> None:
    """Every op that reads the graph input ``parameter`` reads ``value`` instead."""
    for target in parameter.output(0).get_target_inputs():
        target.replace_source_output(value)
