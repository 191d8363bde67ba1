"""OpenVINO with NNCF post-training quantization, deployed as OpenVINO IR: ``int8.xml`` (the graph) with
its weights in ``int8.bin`` beside it, as ``openvino.save_model`` writes and ``read_model`` finds them.

The float model is captured with ``torch.export`` (dynamic batch) and converted by
``openvino.convert_model``; ``nncf.quantize`` collects activation ranges on the calibration images
and inserts FakeQuantize ops (weights stored as int8 constants), which OpenVINO's CPU plugin runs
as oneDNN INT8 kernels. The x86 edge boxes' runtime: the IR needs only the ``openvino`` package.

Recipe params -> NNCF (target device CPU):

- ``observer`` (activation ranges): ``minmax`` -> ``RangeEstimatorParametersSet.MINMAX`` (global
  min and max over the calibration images); ``histogram`` -> ``HISTOGRAM`` (NNCF's port of torchao's
  HistogramObserver). NNCF's own default for activations, ``MEAN_MINMAX`` (the extremes of each
  batch, averaged), is not offered: ``moving_average_minmax`` names torch's exponential average,
  which it is not. Weights take min-max, as in every backend.
- ``per_channel``: one weight scale per output channel (NNCF's default), or one per tensor.
- ``activations``: ``uint8`` -> preset MIXED (asymmetric: uint8 codes with a zero point, as uint8
  means in the other backends); ``int8`` -> preset PERFORMANCE (NNCF's CPU default: symmetric, zero
  point 0, int8 codes where a tensor goes negative and uint8 where it does not).
- ``reduce_range``: 7-bit weights in every conv and linear layer (``OverflowFix.ENABLE``, for CPUs
  without VNNI, like ONNX Runtime's reduce_range), else the full 8 bits (``DISABLE``).

NNCF's fast bias correction (its default) stays on: each layer's bias is shifted to cancel the
mean error that quantization adds to its output, so the file's biases differ from the float model's.

Docs relied on: https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/basic-quantization-flow.html
(nncf.quantize, nncf.Dataset), https://docs.openvino.ai/2026/openvino-workflow/model-preparation/convert-model-pytorch.html
(convert_model of a torch.export.ExportedProgram), https://docs.openvino.ai/2024/openvino-workflow/running-inference/inference-devices-and-modes/cpu-device.html
(CPU plugin: bf16 by default on AVX512_BF16 CPUs, hence the f32 hint), and NNCF's docstrings of
AdvancedQuantizationParameters, OverflowFix and RangeEstimatorParametersSet.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import nncf
import numpy as np
import openvino as ov
import openvino.properties.hint as hints
import torch
from nncf.quantization.advanced_parameters import OverflowFix, QuantizationParameters
from nncf.quantization.range_estimator import RangeEstimatorParametersSet
from torch import nn

from edgeml.io import atomic_path
from edgeml.model.inference import WithFeatureMap
from edgeml.quantization.base import Quantizer, linear_head, normalized_batches
from edgeml.runtime.runners import OpenVinoCalls

INPUT, OUTPUTS = "input", ("logits", "features", "feature_map")
RANGES = {"minmax": RangeEstimatorParametersSet.MINMAX, "histogram": RangeEstimatorParametersSet.HISTOGRAM}
PRESETS = {"int8": nncf.QuantizationPreset.PERFORMANCE, "uint8": nncf.QuantizationPreset.MIXED}  # best first


@dataclasses.dataclass
class PreparedOpenVino:
    """The float model as OpenVINO IR in memory, and the model NNCF quantized on the calibration images."""

    model: ov.Model
    quantized: Optional[ov.Model] = None


class OpenVinoQuantizer(Quantizer):
    name = "openvino"
    summary = ("OpenVINO with NNCF post-training quantization (`nncf.quantize` on the model `openvino.convert_model` "
               "made from `torch.export`), the runtime of x86 edge boxes")
    suffix = ".xml"  # the IR's graph; its weights are the .bin beside it
    file_format = "OpenVINO IR `.xml` + `.bin` (sizes count both)"
    runtime = "openvino"
    profiler = "profile_openvino"
    observers = tuple(RANGES)
    activations = tuple(PRESETS)

    def prepare(self, model: nn.Module) -> PreparedOpenVino:
        """Captured by ``torch.export``: convert_model's default for a module is TorchScript tracing, which torch deprecates."""
        batch = torch.export.Dim("batch", max=65536)
        program = torch.export.export(WithFeatureMap(model).eval(), (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
        converted = ov.convert_model(program)
        converted.reshape([-1, 3, 32, 32])  # static image size, as the ONNX files have; the batch stays dynamic
        # (OpenVinoModule compiles a static batch-1 copy for single images)
        converted.inputs[0].get_tensor().set_names({INPUT})
        for output, name in zip(converted.outputs, OUTPUTS):
            output.get_tensor().set_names({name})
        return PreparedOpenVino(converted)

    def calibrate(self, prepared: PreparedOpenVino, images: torch.Tensor) -> None:
        """NNCF's statistics pass and bias correction, on all the calibration images."""
        p = self.params
        batches = [b.numpy() for b in normalized_batches(images, 250, "calibrate")]
        weights = QuantizationParameters(per_channel=p.per_channel)
        prepared.quantized = nncf.quantize(
            prepared.model, nncf.Dataset(batches), preset=PRESETS[p.activations], target_device=nncf.TargetDevice.CPU,
            subset_size=len(batches),  # counts dataset items, here batches
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE if p.reduce_range else OverflowFix.DISABLE,
                weights_quantization_params=weights,
                activations_range_estimator_params=RANGES[p.observer],
            ),
        )

    def convert(self, prepared: PreparedOpenVino) -> ov.Model:
        if prepared.quantized is None:
            raise ValueError("calibrate the prepared model before converting it")
        _output_quantized(prepared.quantized)
        return prepared.quantized

    def export(self, converted: ov.Model, path: Path) -> None:
        save_ir(converted, path)

    @classmethod
    def load(cls, path: Path) -> nn.Module:
        return OpenVinoModule(path)

    @classmethod
    def head(cls, path: Path) -> nn.Linear:
        """The MatMul + Add that compute the logits output, the weight evaluated through its dequantization."""
        model = ov.Core().read_model(str(path))
        add = model.get_results()[0].input_value(0).get_node()
        sources = [value.get_node() for value in add.input_values()] if add.get_type_name() == "Add" else []
        matmul = next((node for node in sources if node.get_type_name() == "MatMul"), None)
        if matmul is None or matmul.get_attributes()["transpose_a"]:
            raise ValueError(f"{path}: the logits do not come from a plain linear layer (MatMul + Add); quantize with the openvino backend")
        bias_source = add.input_value(1 - sources.index(matmul))
        weight, bias = _constant(matmul.input_value(1)), _constant(bias_source)
        weight = weight if matmul.get_attributes()["transpose_b"] else weight.T
        return linear_head(torch.from_numpy(weight), torch.from_numpy(bias.reshape(-1)))


def save_ir(model: ov.Model, path: Path) -> None:
    """``model`` as OpenVINO IR: ``path`` (.xml) and its weights beside it (.bin), full precision. The .bin is
    renamed into place first, then the .xml that reads it: a reader never finds a new graph with old weights."""
    with tempfile.TemporaryDirectory(prefix="edgeml-openvino-") as folder:
        saved = Path(folder) / "model.xml"
        ov.save_model(model, saved, compress_to_fp16=False)
        for source, target in ((saved.with_suffix(".bin"), path.with_suffix(".bin")), (saved, path)):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)


def _output_quantized(model: ov.Model) -> None:
    """Graph outputs that the next op reads through a FakeQuantize (the pooled features, the layer4 map)
    become that FakeQuantize's output, the value the INT8 model computes with; their names move along."""
    for result in model.get_results():
        value = result.input_value(0)
        quantizers = [t.get_node() for t in value.get_target_inputs() if t.get_node().get_type_name() == "FakeQuantize"]
        if len(quantizers) > 1:
            raise ValueError(f"output {value.get_names()} is quantized {len(quantizers)} ways; expected one FakeQuantize")
        if quantizers:
            names = value.get_names()
            value.get_tensor().set_names(set())
            result.input(0).replace_source_output(quantizers[0].output(0))
            quantizers[0].output(0).get_tensor().set_names(names)
    model.validate_nodes_and_infer_types()


def _constant(value: ov.Output) -> np.ndarray:
    """The value of a tensor that depends on stored constants only (e.g. int8 weights through their scale), as float32."""
    node = value.get_node()
    if node.get_type_name() == "Constant":
        return node.data.astype(np.float32)
    compiled = ov.Core().compile_model(ov.Model([value], []), "CPU", {hints.inference_precision: ov.Type.f32})
    return compiled({})[0].astype(np.float32)


class OpenVinoModule(nn.Module):
    """An OpenVINO CPU model behind the ``nn.Module`` call the pipeline uses (tensor in, tensors out), compiled
    and called as the runtime calls an artifact (:class:`edgeml.runtime.runners.OpenVinoCalls`: static batch 1
    on arrays bound once); threads default to torch's current setting, so one ``torch.set_num_threads`` governs every
    backend. Call it from one thread at a time."""

    def __init__(self, path: str | Path, threads: Optional[int] = None):
        super().__init__()
        self.path = Path(path)
        self.calls = OpenVinoCalls(ov.Core().read_model(str(self.path)), threads or torch.get_num_threads(), [1, 3, 32, 32])

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [torch.from_numpy(output) for output in self.calls(images.detach().float().contiguous().numpy())]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
