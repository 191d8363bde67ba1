"""The one interface every quantization backend implements: prepare, calibrate, convert, export, load.

A backend module subclasses :class:`Quantizer` and declares what it supports (observers,
activation types, QAT); :meth:`Quantizer.check` turns an unsupported recipe into a
:class:`~edgeml.params.ParamsError` naming the param and the allowed values before any work.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn
from tqdm import tqdm

from edgeml.model.inference import normalize
from edgeml.params import ParamsError, QuantizeParams
from edgeml.runtime.artifact import PACKAGED_SUFFIXES


INT8_DOT_PRODUCT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}  # CPU flags of int8 dot-product instructions


def has_int8_dot_product() -> bool:
    """True where the CPU multiplies int8 pairs into int32 in one instruction (VNNI, AMX, ARM dot product): there
    u8*s8 products cannot overflow a 16-bit intermediate, so reduced-range (7-bit) quantization buys nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
             for flag in line.partition(":")[2].split()}
    return bool(flags & INT8_DOT_PRODUCT)


class Quantizer(ABC):
    """prepare -> (QAT) -> calibrate -> convert -> export; :meth:`run` chains them.

    Everything the rest of the project needs to know about a backend is declared here, once: its
    options, file format, runtime, profiler and whether its speed on this machine is representative.
    The package stage and the runtime read the format (:data:`edgeml.runtime.artifact.PACKAGED_SUFFIXES`),
    the bench its profiler, the sweep its ARM note, and ``edgeml backends`` and the docs all of it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # what it is, in one line
    suffix: ClassVar[str]  # of the deployable file: .pt (TorchScript), .pt2 (torch.export), .onnx, .xml, .pte
    file_format: ClassVar[str]  # the deployable file, in words
    runtime: ClassVar[str]  # the Python package its files run on
    profiler: ClassVar[Optional[str]] = None  # the function of edgeml.bench.profile that profiles its files
    profiler_options: ClassVar[dict[str, Any]] = {}
    arm_note: ClassVar[Optional[str]] = None  # ARM-oriented backends: why their speed on x86 is not ARM's
    observers: ClassVar[tuple[str, ...]]
    activations: ClassVar[tuple[str, ...]] = ("uint8",)  # the first is the backend's best: what "auto" resolves to
    # reduce_range "auto": on (7-bit) where the backend's kernels could overflow without an int8 dot product
    # instruction; off where they cannot (VNNI, AMX, ARM dot product) or where the backend has no reduced range
    reduce_range_without_dot_product: ClassVar[bool] = True
    supports_qat: ClassVar[bool] = False

    @classmethod
    def packageable(cls) -> bool:
        """Whether the package stage can build the artifact from its files (the runtime runs their format)."""
        return cls.suffix in PACKAGED_SUFFIXES

    def __init__(self, params: QuantizeParams):
        params = self.resolve(params)
        self.check(params)
        self.params = params

    @classmethod
    def resolve(cls, params: QuantizeParams) -> QuantizeParams:
        """``params`` with each ``auto`` replaced by this backend's best choice on this CPU (what is recorded)."""
        changes: dict[str, Any] = {}
        if params.activations == "auto":
            changes["activations"] = cls.activations[0]
        if params.reduce_range == "auto":
            changes["reduce_range"] = cls.reduce_range_without_dot_product and not has_int8_dot_product()
        return dataclasses.replace(params, **changes)

    @classmethod
    def check(cls, params: QuantizeParams) -> None:
        """Refuse a recipe this backend cannot run, naming the param and what it allows."""
        if params.observer not in cls.observers:
            raise ParamsError(
                f"quantize.observer: {params.observer!r} is not offered by backend {cls.name!r}; "
                f"allowed: {list(cls.observers)}"
            )
        if params.activations not in cls.activations:
            raise ParamsError(
                f"quantize.activations: {params.activations!r} is not offered by backend {cls.name!r}; "
                f"allowed: {list(cls.activations)}"
            )
        if params.qat_epochs and not cls.supports_qat:
            raise ParamsError(
                f"quantize.qat_epochs: backend {cls.name!r} has no quantization-aware training here; "
                f"set it to 0, or use a backend that has it"
            )

    @abstractmethod
    def prepare(self, model: nn.Module) -> Any:
        """A copy of the float ``model`` ready to observe activations (``model`` is not changed)."""

    def fine_tune(self, prepared: Any, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Quantization-aware training of ``prepared`` (backends with ``supports_qat`` override it)."""
        raise NotImplementedError(f"{self.name} has no quantization-aware training")

    @abstractmethod
    def calibrate(self, prepared: Any, images: torch.Tensor) -> None:
        """Feed uint8 NCHW calibration images (never test images) through the observers."""

    @abstractmethod
    def convert(self, prepared: Any) -> Any:
        """The INT8 model, from a calibrated prepared one."""

    @abstractmethod
    def export(self, converted: Any, path: Path) -> None:
        """Write the deployable file (its size on disk is the reported model size)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> nn.Module:
        """The deployable file as a module: normalised float NCHW in, (logits, features, feature map) out."""

    @classmethod
    @abstractmethod
    def head(cls, path: Path) -> nn.Linear:
        """The file's own classifier layer, float (an INT8 file's quantized weights dequantized, and its bias):
        feature detectors that re-apply the head use it, so each model is scored with its own head."""

    def run(
        self,
        model: nn.Module,
        calibration: torch.Tensor,
        path: Path,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> nn.Module:
        """Quantize ``model`` (fine-tuning on uint8 ``train`` images first when QAT is on), export to ``path``, load it back."""
        prepared = self.prepare(model)
        if self.params.qat_epochs:
            if train is None:
                raise ValueError("quantize.qat_epochs > 0 needs training images")
            self.fine_tune(prepared, *train)
        self.calibrate(prepared, calibration)
        self.export(self.convert(prepared), path)
        return self.load(path)


class LogitsOnly(nn.Module):
    """The logits output of a (logits, features, feature map) model, for everything that needs only logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def linear_head(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A float, frozen ``nn.Linear`` holding a deployable file's classifier weights ([classes, features]) and bias."""
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False).eval()


def normalized_batches(images: torch.Tensor, batch_size: int, desc: str) -> Iterator[torch.Tensor]:
    """uint8 NCHW images as normalised, contiguous float batches, with a progress bar."""
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        yield normalize(images[start : start + batch_size]).contiguous()
