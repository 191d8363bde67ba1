"""Building the deployable artifact: the INT8 model with its OOD detector and threshold in one file, with metadata and sha256.

The runtime side (reading, verifying, running) is edgeml.runtime.artifact.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml.io import atomic_path, write_text
from edgeml.model.inference import normalize
from edgeml.params import ParamsError
from edgeml.quantization import load_deployable
from edgeml.quantization.base import LogitsOnly
from edgeml.runtime.artifact import ARTIFACT_DIR, FORMAT, METADATA, sha256_file
from edgeml.runtime.images import IMAGE_SIZE


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
    score_logits: Callable[["torch.Tensor"], "torch.Tensor"],
    metadata: dict[str, Any],
    out_path: str | Path,
) -> str:
    """Preprocessing + INT8 model + detector in one file of the backend's format, with metadata; write its .sha256; return the digest."""
    from edgeml.package import write_artifact

    out_path = Path(out_path)
    meta = json.dumps({"format": FORMAT, "backend": backend, **metadata})
    with atomic_path(out_path) as tmp:
        write_artifact(Path(int8_path), backend, score_logits, meta, tmp)
    digest = sha256_file(out_path)
    write_text(out_path.with_name(out_path.name + ".sha256"), f"{digest}  {out_path.name}\n")
    return digest


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class _Pipeline(nn.Module):
    """uint8 NCHW images -> (class probabilities, OOD score): what the artifact computes."""

    def __init__(self, model: nn.Module, score_logits: ScoreFn):
        super().__init__()
        self.model = model
        self.score_logits = score_logits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(normalize(images))
        return logits.softmax(dim=1), self.score_logits(logits)


class _Scores(nn.Module):
    """logits -> (class probabilities, OOD score): the ONNX artifact's tail."""

    def __init__(self, score_logits: ScoreFn):
        super().__init__()
        self.score_logits = score_logits

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.softmax(dim=1), self.score_logits(logits)


class _Normalize(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images)


def write_artifact(int8_path: Path, backend: str, score_logits: ScoreFn, meta: str, out: Path) -> None:
    """Write the artifact of the INT8 file ``int8_path`` to ``out``, in its format, with the JSON ``meta``."""
    writers = {".pt": _write_torchscript, ".pt2": _write_exported, ".onnx": _write_onnx}
    if int8_path.suffix not in writers:
        raise ParamsError(
            f"quantize.backend: {backend!r} files ({int8_path.suffix}) cannot be packaged yet; the artifact is built "
            f"from {sorted(writers)} files: package another backend's recipe"
        )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript/ONNX exporter deprecation and constant-capture notices
        writers[int8_path.suffix](int8_path, backend, score_logits, meta, out)


def _example_images(batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)


def _write_torchscript(int8_path: Path, backend: str, score_logits: ScoreFn, meta: str, out: Path) -> None:
    pipeline = _Pipeline(load_deployable(int8_path, backend), score_logits).eval()
    traced = torch.jit.freeze(torch.jit.trace(pipeline, _example_images()))
    torch.jit.save(traced, str(out), _extra_files={METADATA: meta})


def _write_exported(int8_path: Path, backend: str, score_logits: ScoreFn, meta: str, out: Path) -> None:
    from edgeml.quantization.pt2e import export_program

    pipeline = _Pipeline(LogitsOnly(torch.export.load(str(int8_path)).module()), score_logits)
    torch.export.save(export_program(pipeline, _example_images()), str(out), extra_files={METADATA: meta})


def _write_onnx(int8_path: Path, backend: str, score_logits: ScoreFn, meta: str, out: Path) -> None:
    """The INT8 graph, unchanged, between a normalisation head and a detector tail (onnx.compose)."""
    import onnx
    import onnx.compose

    from edgeml.quantization.onnxrt import export_onnx

    model = onnx.load(str(int8_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    head_path, tail_path = out.with_suffix(".head.onnx"), out.with_suffix(".tail.onnx")
    try:
        export_onnx(_Normalize(), head_path, _example_images(), ["images"], ["normalized"], opset)
        export_onnx(_Scores(score_logits), tail_path, torch.zeros(2, 10), ["logits"], ["probabilities", "ood_score"], opset)
        head, tail = onnx.load(str(head_path)), onnx.load(str(tail_path))
    finally:
        head_path.unlink(missing_ok=True)
        tail_path.unlink(missing_ok=True)
    head.ir_version = tail.ir_version = model.ir_version
    (model_input,) = model.graph.input
    merged = onnx.compose.merge_models(
        head, model, io_map=[("normalized", model_input.name)], prefix2="model/", outputs=["model/logits"]
    )
    merged = onnx.compose.merge_models(merged, tail, io_map=[("model/logits", "logits")], prefix2="detector/")
    for output in merged.graph.output:  # plain output names, as the other formats have
        merged.graph.node.append(onnx.helper.make_node("Identity", [output.name], [output.name.removeprefix("detector/")]))
        output.name = output.name.removeprefix("detector/")
    onnx.helper.set_model_props(merged, {METADATA: meta})
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))
