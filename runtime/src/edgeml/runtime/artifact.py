"""The deployable artifact as the edge runtime sees it: read and verify its metadata, load its model, classify or refuse image files.

Torch-free for ONNX and OpenVINO IR artifacts; nothing here builds an artifact (see edgeml.package).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edgeml.errors import EdgeMLError
from edgeml.runtime.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGE_SIZE,
    MAX_FILE_MB,
    MAX_MEGAPIXELS,
    PREPROCESSING,
    DataError,
    read_image,
)
from edgeml.runtime.runners import OnnxRunner, OpenVinoRunner, Runner, TorchRunner

if TYPE_CHECKING:
    import torch


FORMAT = "edgeml-artifact/1"


METADATA = "edgeml.json"


# An OpenVINO IR artifact's graph (.xml) records the sha256 of its weights file (.bin) under this rt_info key,
# so the artifact's one digest, the .xml's, covers both files.
IR_WEIGHTS_SHA256 = "edgeml_weights_sha256"


ARTIFACT_DIR = Path("models/artifact")
# The INT8 file formats an artifact is built from and runs as: ONNX (onnxruntime alone), OpenVINO IR
# (openvino alone; the .xml with its .bin beside it), TorchScript and torch.export (torch). ExecuTorch .pte
# is measured by the sweep but not packaged: its Python runtime comes only in the executorch wheel, which
# requires torch, so no torch-free device could run it.
PACKAGED_SUFFIXES = (".onnx", ".xml", ".pt", ".pt2")


# threads that decode files while the model runs: one core is left to the model's own threads (measured on 2
# cores: 1 decoding thread gave 1913 PNG images/s, 2 gave 1771, as they competed with the model's threads)
DECODE_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))


class ArtifactError(EdgeMLError, RuntimeError):
    """A missing, tampered or unreadable artifact."""


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, as the artifact's ``.sha256`` file records it.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a TorchScript, torch.export or OpenVINO IR artifact, read without loading the model
    (the quantization engine must be set first; an IR's weights are verified first). An ONNX artifact's
    comes with its session (:meth:`EdgeModel.load`).

    Args:
        path: a ``.pt`` or ``.pt2`` artifact (a zip archive holding ``extra/edgeml.json``), or an ``.xml``
            (OpenVINO IR, the metadata in its ``rt_info``).

    Returns:
        The parsed ``edgeml.json``: format, classes, threshold, backend, input spec and the rest.

    Raises:
        ArtifactError: ``path`` cannot be read, is not a zip archive, holds no ``edgeml.json``, or its
            metadata is not a JSON object of format ``edgeml-artifact/1``.
    """
    path = Path(path)
    if path.suffix == ".xml":
        return _parse_metadata(path, _ir_info(path).get(METADATA))
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA}"))
            text = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise ArtifactError(f"{path}: not an EdgeML artifact (no readable {METADATA})") from exc
    return _parse_metadata(path, text)


def _parse_metadata(path: Path, text: Optional[str | bytes]) -> dict[str, Any]:
    try:
        metadata = json.loads(text) if text is not None else None
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{path}: not an EdgeML artifact (no readable {METADATA})")
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unsupported artifact format {metadata.get('format')!r}; expected {FORMAT}")
    return metadata


def _ir_info(path: Path) -> dict[str, Optional[str]]:
    """The top-level ``rt_info`` entries of an OpenVINO IR graph, read as plain XML (no model is built)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise ArtifactError(f"{path}: not an EdgeML artifact (not an OpenVINO IR graph: {exc})") from exc
    return {entry.tag: entry.get("value") for entry in root.findall("rt_info/*")}


def _check_ir_weights(path: Path, expected: Optional[str]) -> None:
    """The IR's weights file, beside ``path``, must have the sha256 its graph records (``expected``)."""
    weights = path.with_suffix(".bin")
    if expected is None:
        raise ArtifactError(f"{path}: its graph records no sha256 of {weights.name}; package it again")
    if not weights.is_file():
        raise ArtifactError(f"{weights}: not found; an OpenVINO IR artifact is {path.name} with {weights.name} beside it")
    actual = sha256_file(weights)
    if actual != expected:
        raise ArtifactError(f"{weights}: sha256 is {actual}, expected {expected} (recorded in {path.name}); the file is corrupt or was modified")


def input_metadata() -> dict[str, Any]:
    """The input spec stored in the artifact: what :func:`edgeml.runtime.images.read_image` does to a file.

    Returns:
        size, color, dtype, normalisation mean and std, and the preprocessing in words.
    """
    return {
        "size": IMAGE_SIZE,
        "color": "RGB",
        "dtype": "uint8 NCHW",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "preprocessing": PREPROCESSING,
    }


# (images of the readable files, stacked; each file's error, None when it was read)
Decoded = tuple[Optional[np.ndarray], list[Optional[str]]]


@dataclasses.dataclass
class EdgeModel:
    """A loaded artifact: ``predict`` turns image files into one record each.

    Build one with :meth:`load`, which verifies the file before loading it.

    Attributes:
        path: the artifact file.
        metadata: its ``edgeml.json`` (classes, OOD threshold, backend, input spec, ...).
        sha256: the file's verified sha256 hex digest.
        runner: runs the model: uint8 NHWC images in, (class probabilities, OOD scores) out.
    """

    path: Path
    metadata: dict[str, Any]
    sha256: str
    runner: Runner

    @classmethod
    def load(cls, path: str | Path, sha256: Optional[str] = None, threads: Optional[int] = None) -> "EdgeModel":
        """Verify against ``sha256`` (or the ``.sha256`` file beside it), then load.

        Args:
            path: the artifact file, or the folder holding exactly one (``models/artifact``).
            sha256: the expected sha256 hex digest (any case); None reads the first word of
                ``<artifact>.sha256`` beside the file.
            threads: CPU threads the model runs on; None: the runtime's default (all physical cores).

        Returns:
            The verified, loaded model.

        Raises:
            ArtifactError: the artifact or its ``.sha256`` file is missing, the checksum does not match (for
                OpenVINO IR: the .xml's, or the .bin's that the .xml records), the metadata is unreadable or
                of another format, the package the format needs (onnxruntime, openvino, torch, torchao) is
                not installed, or the runtime cannot load the model.
            OSError: the artifact or its ``.sha256`` file exists but cannot be read.
        """
        path = find_artifact(path)
        if sha256 is None:
            sidecar = path.with_name(path.name + ".sha256")
            if not sidecar.is_file():
                raise ArtifactError(f"{sidecar}: checksum file not found; pass the expected sha256 explicitly")
            words = sidecar.read_text(errors="replace").split()
            if not words:
                raise ArtifactError(f"{sidecar}: empty; it should hold the artifact's sha256 (the package stage writes it)")
            sha256 = words[0]
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise ArtifactError(f"{path}: sha256 is {actual}, expected {sha256}; the file is corrupt or was modified")
        runner: Runner
        try:
            if path.suffix == ".onnx":  # its metadata comes with the session, read by onnxruntime alone
                session = OnnxRunner(path, threads)
                metadata, runner = _parse_metadata(path, session.metadata(METADATA)), session
            elif path.suffix == ".xml":  # the weights are verified before OpenVINO reads anything
                info = _ir_info(path)
                metadata = _parse_metadata(path, info.get(METADATA))
                _check_ir_weights(path, info.get(IR_WEIGHTS_SHA256))
                runner = OpenVinoRunner(path, threads, IMAGE_SIZE)
            else:
                metadata = read_metadata(path)
                if "backend" not in metadata:
                    raise ArtifactError(f"{path}: its metadata names no quantization backend; package it again")
                runner = TorchRunner(path, metadata["backend"], threads)
        except ImportError as exc:
            raise ArtifactError(
                f"{path}: a {path.suffix} artifact needs {exc.name!r}, which is not installed; install it, "
                f"or package with quantize.backend onnxruntime for an artifact that runs on onnxruntime alone"
            ) from exc
        except ArtifactError:
            raise
        except (RuntimeError, ValueError) as exc:  # ONNX Runtime's and torch's load errors derive from these
            raise ArtifactError(f"{path}: cannot load the model ({exc})") from exc
        return cls(path, metadata, actual, runner)

    @functools.cached_property
    def module(self) -> "torch.nn.Module":
        """The artifact as a torch module (uint8 NCHW tensor in, (probabilities, OOD score) out), for
        checks against the pipeline's models; needs torch.

        Raises:
            ImportError: torch is not installed.
        """
        return self.runner.torch_module()

    def predict_images(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Records for a batch of images: uint8 RGB, shape (N, 32, 32, 3) (HWC, as Pillow and
        :func:`edgeml.runtime.images.read_image` give). Integer arrays whose values all lie in 0-255 are
        converted to uint8; anything else (floats, whose scale is ambiguous; NCHW; other sizes)
        is refused, saying what was expected.

        Args:
            images: a numpy array of shape (N, 32, 32, 3), as :func:`check_images` accepts.

        Returns:
            One record per image, in order: ``class`` (name), ``confidence`` (its probability),
            ``ood_score`` and ``in_distribution`` (the score is at or above the artifact's threshold).
            An empty batch gives an empty list.

        Raises:
            ValueError: ``images`` is not such an array (see :func:`check_images`).
        """
        images = check_images(images)
        return self._records(*self.runner(images)) if len(images) else []

    def _records(self, probabilities: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        # plain Python on tolist(): after an inference each NumPy call on a scalar is slow (cold caches), and
        # this takes 20 µs a batch-1 call where argmax, max and NumPy scalars took 33. The threshold is compared
        # at the scores' precision, as NumPy compares them in the pipeline's metrics.
        threshold, classes = float(scores.dtype.type(self.metadata["threshold"])), self.metadata["classes"]
        records = []
        for row, score in zip(probabilities.tolist(), scores.tolist()):
            label = max(range(len(row)), key=row.__getitem__)  # the first largest, as argmax gives
            records.append({"class": classes[label], "confidence": round(row[label], 6), "ood_score": round(score, 6),
                            "in_distribution": score >= threshold})
        return records

    def predict(
        self,
        files: Iterable[str | Path],
        batch_size: int = 64,
        workers: int = DECODE_WORKERS,
        max_file_mb: float = MAX_FILE_MB,
        max_megapixels: float = MAX_MEGAPIXELS,
    ) -> Iterator[dict[str, Any]]:
        """One record per file, in order: its prediction, or an error naming the file and why it is
        not a usable image (the run goes on). ``workers`` threads decode the next ``workers`` batches
        while the model runs on one (0: decode in this thread), so memory stays bounded for any number
        of files; where the runner overlaps calls (OpenVINO IR), a few batches are in flight at once.
        Files over ``max_file_mb`` or images over ``max_megapixels`` are refused before being read or decoded.

        Args:
            files: image file paths, read lazily (see :func:`list_files` for folders).
            batch_size: images per model call, at least 1.
            workers: decoding threads, at least 0.
            max_file_mb: larger files get an error record without being read.
            max_megapixels: larger images get an error record without being decoded.

        Yields:
            ``{"file": path, **record}`` with a :meth:`predict_images` record, or
            ``{"file": path, "error": message}`` for a file that is not a usable image.

        Raises:
            ValueError: ``batch_size`` < 1 or ``workers`` < 0 (when iteration starts: this is a generator).
        """
        if batch_size < 1 or workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
        read = functools.partial(_read_batch, max_file_mb=max_file_mb, max_megapixels=max_megapixels)
        batches = _batched(map(Path, files), batch_size)
        decoded: collections.deque[tuple[list[Path], Decoded]] = collections.deque()  # read, not yet given a record

        def images() -> Iterator[np.ndarray]:  # the model's input: each batch's readable images, decoded ahead
            for batch, result in _decode_ahead(batches, read, workers):
                decoded.append((batch, result))
                if result[0] is not None:
                    yield check_images(result[0])

        for outputs in self.runner.pipelined(images()):
            records = iter(self._records(*outputs))
            while decoded:
                batch, (found, errors) = decoded.popleft()
                yield from _file_records(batch, errors, records if found is not None else iter(()))
                if found is not None:
                    break
        for batch, (_, errors) in decoded:  # batches after the last image: errors only
            yield from _file_records(batch, errors, iter(()))


def _decode_ahead(batches: Iterable[list[Path]], read: Callable[[list[Path]], Decoded], workers: int) -> Iterator[tuple[list[Path], Decoded]]:
    """Each batch of files with its decoded images, in order: ``workers`` threads decode the next ``workers``
    batches while the caller uses one (0: decode in the calling thread, when asked)."""
    if workers == 0:
        yield from ((batch, read(batch)) for batch in batches)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="edgeml-decode")
    pending: collections.deque[tuple[list[Path], Future[Decoded]]] = collections.deque()
    try:
        for batch in batches:
            pending.append((batch, pool.submit(read, batch)))
            if len(pending) > workers:  # backpressure: no more batches ahead than there are workers
                done, result = pending.popleft()
                yield done, result.result()
        while pending:
            done, result = pending.popleft()
            yield done, result.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _file_records(files: list[Path], errors: list[Optional[str]], records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``{"file": path, **record}`` for each readable file (its record next in ``records``), the error for the rest."""
    for file, error in zip(files, errors):
        yield {"file": str(file), **(next(records) if error is None else {"error": error})}


def check_images(images: Any) -> np.ndarray:
    """``images`` as uint8 (N, 32, 32, 3), or ValueError naming what was expected and what came.

    Args:
        images: a numpy array of shape (N, 32, 32, 3), uint8 or any integer type with values in 0-255.

    Returns:
        ``images`` itself when already uint8, else a uint8 copy.

    Raises:
        ValueError: not a numpy array, another shape (with a hint for one image, NCHW or other sizes),
            integer values outside 0-255, or a non-integer dtype (floats have an ambiguous scale).
    """
    expected = f"uint8 RGB images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) (HWC, values 0-255)"
    if not isinstance(images, np.ndarray):
        raise ValueError(f"expected a numpy array of {expected}, got {type(images).__qualname__}")
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if images.ndim != 4 or images.shape[1:] != shape:
        hint = ""
        if images.shape == shape:
            hint = "; for one image pass images[None]"
        elif images.ndim == 4 and images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE):
            hint = "; this looks like NCHW: pass images.transpose(0, 2, 3, 1)"
        elif images.ndim == 4:
            hint = "; resize with edgeml.runtime.images.resize_image (or read files with edgeml.runtime.images.read_image)"
        raise ValueError(f"expected {expected}, got shape {images.shape}{hint}")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":  # unambiguous when every value is a 0-255 intensity
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f"expected {expected}, got {images.dtype} values from {images.min()} to {images.max()}")
        return images.astype(np.uint8)
    hint = "; if they are in [0, 1], pass (images * 255).round().astype(np.uint8)" if images.dtype.kind == "f" else ""
    raise ValueError(f"expected {expected}, got dtype {images.dtype}{hint}")


def _batched(files: Iterable[Path], size: int) -> Iterator[list[Path]]:
    iterator = iter(files)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _read_batch(files: list[Path], max_file_mb: float, max_megapixels: float) -> Decoded:
    """Read and preprocess one batch of files; an unusable file gets its error instead of an image."""
    images, errors = [], []
    for file in files:
        try:
            images.append(read_image(file, max_file_mb, max_megapixels))
            errors.append(None)
        except DataError as exc:
            errors.append(str(exc))
    return (np.stack(images) if images else None), errors


def find_artifact(path: str | Path) -> Path:
    """``path`` itself, or the one artifact in the folder ``path`` (as the package stage writes it).

    Args:
        path: an artifact file, or a folder holding one ``edgeml_int8.*`` artifact (besides its ``.sha256``
            and, for OpenVINO IR, its ``.bin``).

    Returns:
        The artifact file.

    Raises:
        ArtifactError: the folder holds no or several artifacts, or the file does not exist.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.glob("edgeml_int8.*") if p.suffix in PACKAGED_SUFFIXES)
        if len(found) != 1:
            raise ArtifactError(f"{path}: expected one edgeml_int8.* artifact, found {[p.name for p in found]}")
        path = found[0]
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found; build it with `dvc repro package`")
    return path


def list_files(paths: Iterable[str | Path]) -> list[Path]:
    """The paths named, with every folder among them replaced by all it holds (searched recursively,
    sorted; symbolic links to folders are listed, not followed). Nothing found is left out: a FIFO, a
    dangling link or a folder that cannot be listed is listed too, and gets its error record later.

    Args:
        paths: files and/or folders; a path that does not exist is kept as given.

    Returns:
        The files to pass to :meth:`EdgeModel.predict`, in the order of ``paths``. Never raises for an
        unreadable entry: its error comes as the record :meth:`EdgeModel.predict` yields for it.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found: list[Path] = []
        for root, folders, names in os.walk(path, onerror=lambda exc: found.append(Path(exc.filename))):
            found.extend(Path(root, name) for name in names)
            found.extend(Path(root, name) for name in folders if os.path.islink(os.path.join(root, name)))
        files.extend(sorted(found))
    return files
