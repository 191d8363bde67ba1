"""ONNX Runtime static quantization (QDQ), deployed as an .onnx file that runs with onnxruntime alone.

On AVX2 CPUs U8S8 (uint8 activations, int8 weights) with per-channel weights and
``reduce_range`` is ORT's fast and accurate choice; S8S8 pays off only with VNNI.
``calibrate`` runs ORT's calibrator and ``convert`` quantizes with the ranges it found
(``quantize_static`` reads them from a calibration cache). Calling ORT's calibrator directly
is what makes entropy calibration real: through ``quantize_static`` alone it gets 128
histogram bins for 128 quantized bins, a single candidate threshold, i.e. min-max.
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
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import (
    CalibraterBase,
    create_calibrator,
    save_tensors_data,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from edgeml.io import atomic_path
from edgeml.model.inference import WithFeatureMap
from edgeml.quantization.base import Quantizer, linear_head, normalized_batches
from edgeml.runtime.runners import ort_session
from edgeml.runtime.torch_files import OnnxModule

INPUT, OUTPUTS = "input", ("logits", "features", "feature_map")
CALIBRATION = {  # observer param -> (ORT calibration method, calibrator options)
    "minmax": (CalibrationMethod.MinMax, {}),
    "moving_average_minmax": (CalibrationMethod.MinMax, {"moving_average": True}),
    "percentile": (CalibrationMethod.Percentile, {"percentile": 99.999, "num_bins": 2048}),
    "entropy": (CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128}),  # TensorRT's KL setting
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclasses.dataclass
class PreparedOnnx:
    """The float model as ONNX (shape-inferred and optimised for quantization) and ORT's calibrator for it."""

    workdir: tempfile.TemporaryDirectory
    model_path: Path
    calibrator: CalibraterBase


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]):
        self._batches = iter(batches)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


class OnnxRuntimeQuantizer(Quantizer):
    name = "onnxruntime"
    summary = "ONNX Runtime static quantization, QDQ format (int8: integer kernels on x86 through `session.qdqisint8allowed`)"
    suffix = ".onnx"
    file_format = "ONNX `.onnx`"
    runtime = "onnxruntime"
    profiler = "profile_onnx"
    observers = tuple(CALIBRATION)
    activations = tuple(ACTIVATION_TYPES)

    def prepare(self, model: nn.Module) -> PreparedOnnx:
        workdir = tempfile.TemporaryDirectory(prefix="edgeml-onnx-")
        folder = Path(workdir.name)
        export_onnx(WithFeatureMap(model), folder / "fp32.onnx")
        quant_pre_process(str(folder / "fp32.onnx"), str(folder / "fp32_prepared.onnx"))
        method, options = CALIBRATION[self.params.observer]
        calibrator = create_calibrator(
            folder / "fp32_prepared.onnx", None, augmented_model_path=str(folder / "augmented.onnx"),
            calibrate_method=method, extra_options=options,
        )
        return PreparedOnnx(workdir, folder / "fp32_prepared.onnx", calibrator)

    def calibrate(self, prepared: PreparedOnnx, images: torch.Tensor) -> None:
        prepared.calibrator.collect_data(_Batches([b.numpy() for b in normalized_batches(images, 250, "calibrate")]))

    def convert(self, prepared: PreparedOnnx) -> onnx.ModelProto:
        method, _ = CALIBRATION[self.params.observer]
        ranges, out = prepared.model_path.with_name("ranges.json"), prepared.model_path.with_name("int8.onnx")
        save_tensors_data(prepared.calibrator.compute_data(), ranges)
        quantize_static(
            str(prepared.model_path),
            str(out),
            None,
            calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ,
            activation_type=ACTIVATION_TYPES[self.params.activations],
            weight_type=QuantType.QInt8,
            per_channel=self.params.per_channel,
            reduce_range=self.params.reduce_range,
            calibrate_method=method,
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

    @classmethod
    def head(cls, path: Path) -> nn.Linear:
        """The Gemm that computes the logits output, its weight and bias evaluated through their
        DequantizeLinear (per-channel or per-tensor) when quantized."""
        model = onnx.load(str(path))
        producers = {output: node for node in model.graph.node for output in node.output}
        node = producers[model.graph.output[0].name]
        while node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = producers[node.input[0]]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            raise ValueError(f"{path}: the logits come from {node.op_type} {node.name!r}, not a plain linear layer (Gemm)")
        weight, bias = _constants(model, node.input[1:3])
        return linear_head(torch.from_numpy(weight if attributes.get("transB", 0) else weight.T), torch.from_numpy(bias))


def _constants(model: onnx.ModelProto, names: Sequence[str]) -> list[np.ndarray]:
    """The values of tensors that depend on initializers only (e.g. a weight through its DequantizeLinear)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    inputs = {i.name for i in model.graph.input}
    needed, pending = [], list(names)
    while pending:
        name = pending.pop()
        if name in inputs:
            raise ValueError(f"{list(names)} depend on the model's input {name!r}, not only on stored tensors")
        if name in producers and producers[name] not in needed:
            needed.append(producers[name])
            pending.extend(producers[name].input)
    graph = onnx.helper.make_graph(
        [node for node in model.graph.node if node in needed], "constants", [],
        [onnx.helper.make_empty_tensor_value_info(name) for name in names],
        [t for t in model.graph.initializer if t.name in names or any(t.name in node.input for node in needed)],
    )
    constant = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    session = ort_session(constant.SerializeToString(), optimize=False)  # ONNX's own arithmetic, unfused
    return [value.astype(np.float32) for value in session.run(None, {})]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: Optional[torch.Tensor | tuple[torch.Tensor, ...]] = None,
    inputs: Sequence[str] = (INPUT,),
    outputs: Sequence[str] = OUTPUTS,
    opset: int = 17,
) -> None:
    """Export a module to ONNX with a dynamic batch dimension on every input and output (``example``: one
    input tensor, or a tuple of them)."""
    example = torch.zeros(1, 3, 32, 32) if example is None else example
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # TorchScript-based exporter deprecation notice
        torch.onnx.export(
            model.eval(), example if isinstance(example, tuple) else (example,), str(tmp), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)}, opset_version=opset, dynamo=False,
        )
