"""ONNX Runtime static quantization (QDQ), deployed as an .onnx file that runs with onnxruntime alone.

On AVX2 CPUs U8S8 (uint8 activations, int8 weights) with per-channel weights and
``reduce_range`` is ORT's fast and accurate choice; S8S8 pays off only with VNNI. ORT
calibrates and converts in one call (``quantize_static``), so ``calibrate`` collects the
batches and ``convert`` hands them to it.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from edgeml.io import atomic_path
from edgeml.quantization.base import Quantizer, normalized_batches

INPUT, OUTPUT = "input", "logits"
CALIBRATION = {  # observer param -> (ORT calibration method, extra options)
    "minmax": (CalibrationMethod.MinMax, {}),
    "moving_average_minmax": (CalibrationMethod.MinMax, {"CalibMovingAverage": True}),
    "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.999}),
    "entropy": (CalibrationMethod.Entropy, {}),
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclasses.dataclass
class PreparedOnnx:
    """The float model as ONNX (shape-inferred and optimised for quantization) and the calibration batches."""

    workdir: tempfile.TemporaryDirectory
    model_path: Path
    batches: list[np.ndarray] = dataclasses.field(default_factory=list)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]):
        self._batches = iter(batches)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


class OnnxRuntimeQuantizer(Quantizer):
    name = "onnxruntime"
    suffix = ".onnx"
    observers = tuple(CALIBRATION)
    activations = tuple(ACTIVATION_TYPES)

    def prepare(self, model: nn.Module) -> PreparedOnnx:
        workdir = tempfile.TemporaryDirectory(prefix="edgeml-onnx-")
        float_path, prepared_path = Path(workdir.name) / "fp32.onnx", Path(workdir.name) / "fp32_prepared.onnx"
        export_onnx(model, float_path)
        quant_pre_process(str(float_path), str(prepared_path))
        return PreparedOnnx(workdir, prepared_path)

    def calibrate(self, prepared: PreparedOnnx, images: torch.Tensor) -> None:
        prepared.batches.extend(batch.numpy() for batch in normalized_batches(images, 250, "calibrate"))

    def convert(self, prepared: PreparedOnnx) -> onnx.ModelProto:
        method, options = CALIBRATION[self.params.observer]
        out = prepared.model_path.with_name("int8.onnx")
        quantize_static(
            str(prepared.model_path),
            str(out),
            _Batches(prepared.batches),
            quant_format=QuantFormat.QDQ,
            activation_type=ACTIVATION_TYPES[self.params.activations],
            weight_type=QuantType.QInt8,
            per_channel=self.params.per_channel,
            reduce_range=self.params.reduce_range,
            calibrate_method=method,
            extra_options=options,
        )
        converted = onnx.load(str(out))
        prepared.workdir.cleanup()
        return converted

    def export(self, converted: onnx.ModelProto, path: Path) -> None:
        with atomic_path(path) as tmp:
            onnx.save(converted, str(tmp))

    @classmethod
    def load(cls, path: Path) -> nn.Module:
        return OnnxModule(path)


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call the pipeline uses (tensor in, tensor out).

    Threads default to torch's current setting, so one ``torch.set_num_threads`` governs both."""

    def __init__(self, path: str | Path, threads: Optional[int] = None, providers: Optional[list[str]] = None):
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers etc.
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: images.detach().contiguous().numpy()})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: Optional[torch.Tensor] = None,
    inputs: Sequence[str] = (INPUT,),
    outputs: Sequence[str] = (OUTPUT,),
    opset: int = 17,
) -> None:
    """Export a module to ONNX with a dynamic batch dimension on every input and output."""
    example = torch.zeros(1, 3, 32, 32) if example is None else example
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # TorchScript-based exporter deprecation notice
        torch.onnx.export(
            model.eval(), (example,), str(tmp), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)}, opset_version=opset, dynamo=False,
        )
