"""The deployable edge artifact: one file that classifies and says "out of distribution".

The file holds preprocessing (uint8 RGB 32x32 -> normalised), the INT8 model, the OOD
detector's score and, as metadata (``edgeml.json``), the class names, input spec, detector
name and decision threshold. Its format is the quantization backend's: TorchScript (``.pt``,
loads with ``torch.jit.load``), torch.export (``.pt2``) or ONNX (``.onnx``, runs with
onnxruntime alone). A ``.sha256`` file beside it guards against a truncated or tampered copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from edgeml.io import atomic_path, write_text
from edgeml.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE, DataError, decode_image, normalize, to_tensor
from edgeml.quantization import load_deployable, load_file, quantizer_class
from edgeml.quantization.base import LogitsOnly

FORMAT = "edgeml-artifact/1"
METADATA = "edgeml.json"
ARTIFACT_DIR = Path("models/artifact")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class ArtifactError(RuntimeError):
    """A missing, tampered or unreadable artifact."""


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


def artifact_path(backend: str, folder: str | Path = ARTIFACT_DIR) -> Path:
    """Where the package stage writes the artifact for ``backend`` (its suffix is the backend's format)."""
    return Path(folder) / f"edgeml_int8{quantizer_class(backend).suffix}"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def threshold_at_tpr(id_scores: np.ndarray, tpr: float) -> float:
    """The highest threshold that keeps at least ``tpr`` of the ID scores (score >= threshold is ID)."""
    ordered = np.sort(np.asarray(id_scores))[::-1]
    return float(ordered[int(np.ceil(tpr * len(ordered))) - 1])


def build_artifact(
    int8_path: str | Path, backend: str, score_logits: ScoreFn, metadata: dict[str, Any], out_path: str | Path
) -> str:
    """Preprocessing + INT8 model + detector in one file of the backend's format, with metadata; write its .sha256; return the digest."""
    int8_path, out_path = Path(int8_path), Path(out_path)
    meta = json.dumps({"format": FORMAT, "backend": backend, **metadata})
    writers = {".pt": _write_torchscript, ".pt2": _write_exported, ".onnx": _write_onnx}
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(out_path) as tmp:
        warnings.simplefilter("ignore")  # TorchScript/ONNX exporter deprecation and constant-capture notices
        writers[int8_path.suffix](int8_path, backend, score_logits, meta, tmp)
    digest = sha256_file(out_path)
    write_text(out_path.with_name(out_path.name + ".sha256"), f"{digest}  {out_path.name}\n")
    return digest


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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The artifact's metadata, read without loading the model (the quantization engine must be set first)."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            metadata = json.loads(props[METADATA])
        else:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA}"))
                metadata = json.loads(archive.read(name))
    except (zipfile.BadZipFile, StopIteration, KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not an EdgeML artifact (no readable {METADATA})") from exc
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unsupported artifact format {metadata.get('format')!r}; expected {FORMAT}")
    return metadata


def input_metadata() -> dict[str, Any]:
    return {
        "size": IMAGE_SIZE,
        "color": "RGB",
        "dtype": "uint8 NCHW",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "resize": f"bilinear to {IMAGE_SIZE}x{IMAGE_SIZE} when the image is another size",
    }


@dataclasses.dataclass
class EdgeModel:
    """A loaded artifact: ``predict`` turns image files into one record each."""

    module: torch.jit.ScriptModule
    metadata: dict[str, Any]
    sha256: str

    @classmethod
    def load(cls, path: str | Path, sha256: Optional[str] = None) -> "EdgeModel":
        """Verify against ``sha256`` (or the ``.sha256`` file beside it), then load."""
        path = find_artifact(path)
        if sha256 is None:
            sidecar = path.with_name(path.name + ".sha256")
            if not sidecar.is_file():
                raise ArtifactError(f"{sidecar}: checksum file not found; pass the expected sha256 explicitly")
            sha256 = sidecar.read_text().split()[0]
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise ArtifactError(f"{path}: sha256 is {actual}, expected {sha256}; the file is corrupt or was modified")
        metadata = read_metadata(path)
        try:
            module = load_file(path, metadata["backend"])  # images in, (probabilities, score) out
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot load the model ({exc})") from exc
        return cls(module, metadata, actual)

    @torch.no_grad()
    def predict_images(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Records for uint8 HWC RGB 32x32 images."""
        probs, scores = self.module(to_tensor(images))
        confidence, label = probs.max(dim=1)
        threshold = self.metadata["threshold"]
        return [
            {
                "class": self.metadata["classes"][int(k)],
                "confidence": round(float(c), 6),
                "ood_score": round(float(s), 6),
                "in_distribution": bool(s >= threshold),
            }
            for k, c, s in zip(label, confidence, scores)
        ]

    def predict(self, files: Iterable[Path], batch_size: int = 64) -> Iterator[dict[str, Any]]:
        """One record per file, in order; an unreadable file gives an error record and the rest go on."""
        batch: list[tuple[Path, Optional[np.ndarray], Optional[str]]] = []
        for file in files:
            batch.append((file, *load_image(file)))
            if len(batch) == batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[tuple[Path, Optional[np.ndarray], Optional[str]]]) -> Iterator[dict[str, Any]]:
        good = [image for _, image, _ in batch if image is not None]
        results = iter(self.predict_images(np.stack(good)) if good else [])
        for file, image, error in batch:
            yield {"file": str(file), **(next(results) if image is not None else {"error": error})}


def find_artifact(path: str | Path) -> Path:
    """``path`` itself, or the one artifact in the folder ``path`` (as the package stage writes it)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.glob("edgeml_int8.*") if p.suffix != ".sha256")
        if len(found) != 1:
            raise ArtifactError(f"{path}: expected one edgeml_int8.* artifact, found {[p.name for p in found]}")
        path = found[0]
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found; build it with `dvc repro package`")
    return path


def load_image(path: Path) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(uint8 32x32 RGB array, None), or (None, reason) for a file that is not a usable image."""
    try:
        image = decode_image(path.read_bytes(), str(path))
    except DataError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):  # PIL's message names an in-memory buffer
            return None, f"{path}: not an image file (no known image format)"
        return None, str(exc)
    except OSError as exc:  # missing or unreadable file
        return None, f"{path}: {exc.strerror or exc}"
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(image), None


def list_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and every file under folders named, sorted; a missing path is an error record later."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files

