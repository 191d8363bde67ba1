"""ExecuTorch with the XNNPACK quantizer, deployed as an ExecuTorch program (``.pte``): the runtime of ARM
edge devices, whose XNNPACK kernels are tuned for NEON. On x86 it runs XNNPACK's x86 kernels, so its speed
here says little about ARM.

The float model is captured with ``torch.export`` (dynamic batch up to :data:`MAX_BATCH`), annotated by
``XNNPACKQuantizer`` (int8 activations, affine; int8 weights, symmetric -127..127, per channel or per
tensor), calibrated and converted by PT2E, then lowered with ``to_edge_transform_and_lower`` and the
``XnnpackPartitioner``: XNNPACK runs the quantized convs, adds, pooling and linear layer. The program
carries the classifier's dequantized weight and bias as constant methods, for :meth:`head`.

Recipe params -> XNNPACK quantizer: ``observer`` picks the activation observer (the quantizer's default
is histogram); ``per_channel`` the weight scales; ``activations`` must be int8 (XNNPACK's QS8 kernels)
and ``reduce_range`` false (XNNPACK accumulates in int32: no overflow to avoid).

Docs relied on: https://docs.pytorch.org/executorch/stable/backends-xnnpack.html (quantization and
lowering), https://docs.pytorch.org/executorch/stable/runtime-python-api-reference.html (Runtime).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from executorch.exir import to_edge_transform_and_lower
from executorch.extension.pybindings import portable_lib
from executorch.runtime import Runtime
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationConfig

from edgeml.io import atomic_path
from edgeml.params import ParamsError, QuantizeParams
from edgeml.model.inference import WithFeatureMap
from edgeml.quantization.base import Quantizer, linear_head, normalized_batches
from edgeml.quantization.pt2e import ACTIVATION_OBSERVERS, EPS, export_program, graph_head

# The program's memory is planned for this many images; larger batches (ood: 500) are run in chunks.
MAX_BATCH = 512
HEAD_METHODS = ("head_weight", "head_bias")  # constant methods: the classifier, float


class ExecuTorchQuantizer(Quantizer):
    name = "executorch"
    summary = ("ExecuTorch with its XNNPACK quantizer (`torch.export`, PT2E, lowered to the XNNPACK delegate), the runtime "
               "of ARM phones and boards; not packaged: its Python runtime comes only in the `executorch` wheel, which "
               "requires torch (a device would use ExecuTorch's C++ runtime, outside this project)")
    suffix = ".pte"
    file_format = "ExecuTorch program `.pte`"
    runtime = "executorch"
    profiler = "profile_executorch"
    arm_note = "ARM-oriented (ExecuTorch XNNPACK, tuned for NEON), measured on x86: its speed here is not ARM's"
    observers = tuple(ACTIVATION_OBSERVERS)
    activations = ("int8",)
    reduce_range_without_dot_product = False  # XNNPACK accumulates in int32: full range everywhere

    @classmethod
    def check(cls, params: QuantizeParams) -> None:
        super().check(params)
        if params.reduce_range:
            raise ParamsError(
                f"quantize.reduce_range: backend {cls.name!r} has full-range int8 kernels only (XNNPACK accumulates "
                f"in int32, no overflow to avoid); set it to false"
            )

    def config(self) -> QuantizationConfig:
        config = get_symmetric_quantization_config(is_per_channel=self.params.per_channel)
        observer = ACTIVATION_OBSERVERS[self.params.observer].with_args(eps=EPS)
        activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer)
        return dataclasses.replace(config, input_activation=activation, output_activation=activation)

    def prepare(self, model: nn.Module) -> torch.fx.GraphModule:
        program = export_program(WithFeatureMap(model).eval(), torch.zeros(2, 3, 32, 32), MAX_BATCH)
        return prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(self.config()))

    @torch.no_grad()
    def calibrate(self, prepared: torch.fx.GraphModule, images: torch.Tensor) -> None:
        for batch in normalized_batches(images, 250, "calibrate"):
            prepared(batch)

    def convert(self, prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return convert_pt2e(prepared)

    def export(self, converted: torch.fx.GraphModule, path: Path) -> None:
        """Lowered with torch's mkldnn and nnpack convolutions off: re-tracing a conv (edge dialect, memory planning) asks whether they would take
        the batch (>= 16 images), which narrows the batch dimension to the example's side (2..15) and plans the
        program's memory for 15 images. They choose torch's own CPU kernels only; the program has none."""
        head = graph_head(converted, str(path))
        program = export_program(converted, torch.zeros(2, 3, 32, 32), MAX_BATCH)
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
            lowered = to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()],
                constant_methods=dict(zip(HEAD_METHODS, (head.weight.detach(), head.bias.detach()))),
            ).to_executorch()
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(lowered.buffer)

    @classmethod
    def load(cls, path: Path) -> nn.Module:
        return ExecuTorchModule(path)

    @classmethod
    def head(cls, path: Path) -> nn.Linear:
        program = Runtime.get().load_program(Path(path))
        weight, bias = (program.load_method(name).execute([])[0] for name in HEAD_METHODS)
        return linear_head(weight, bias)


class ExecuTorchModule(nn.Module):
    """An ExecuTorch program behind the ``nn.Module`` call the pipeline uses (tensor in, tensors out).

    XNNPACK's thread pool follows torch's thread setting at every call, so one ``torch.set_num_threads``
    governs every backend. Batches above :data:`MAX_BATCH` run in chunks. Outputs are copied out of the
    program's memory, which the next call reuses; call it from one thread at a time."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.method = Runtime.get().load_program(self.path).load_method("forward")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if portable_lib._threadpool_get_thread_count() != torch.get_num_threads():
            portable_lib._unsafe_reset_threadpool(torch.get_num_threads())
        chunks = [
            [output.clone() for output in self.method.execute([chunk.detach().float().contiguous()])]
            for chunk in images.split(MAX_BATCH)
        ]
        return tuple(torch.cat(outputs) for outputs in zip(*chunks))
