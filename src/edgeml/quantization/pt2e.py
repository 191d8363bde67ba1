"""PT2E export quantization with torchao's X86 Inductor quantizer, deployed as a torch.export ``.pt2`` file.

The float model is captured with ``torch.export`` (dynamic batch), annotated by
``X86InductorQuantizer``, calibrated and converted to a graph of quantize/dequantize ops
that Inductor lowers to oneDNN INT8 kernels when the loaded program is compiled (with
weight freezing, which pre-packs the INT8 weights).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from pathlib import Path

import torch
from torch import nn
from torchao.quantization import pt2e as observers
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
from torchvision.models.resnet import BasicBlock

from edgeml.io import atomic_path
from edgeml.model.inference import WithFeatureMap
from edgeml.quantization.base import Quantizer, linear_head, normalized_batches
from edgeml.runtime.torch_files import load_torch_file

ACTIVATION_OBSERVERS = {
    "minmax": observers.MinMaxObserver,
    "moving_average_minmax": observers.MovingAverageMinMaxObserver,
    "histogram": observers.HistogramObserver,
}
EPS = 2**-12  # the X86 Inductor default configuration's observer eps
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default


class _UnsharedReluBlock(BasicBlock):
    """torchvision's BasicBlock applies one ReLU module twice; the quantizer matches conv-add-relu
    patterns per module, so the block's output ReLU needs a module of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + identity)


def export_program(model: nn.Module, example: torch.Tensor, max_batch: int = 65536) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic batch dimension up to ``max_batch`` (the example needs a batch of at least 2)."""
    batch = torch.export.Dim("batch", max=max_batch)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


class PT2EX86Quantizer(Quantizer):
    name = "pt2e_x86"
    summary = "`torch.export` + torchao's X86 Inductor quantizer; Inductor compiles it to oneDNN INT8 kernels on load"
    suffix = ".pt2"
    file_format = "torch.export `.pt2`"
    runtime = "torch"  # no profiler: torch.profiler does not record Inductor's generated kernels as operators
    observers = tuple(ACTIVATION_OBSERVERS)

    def config(self) -> x86.QuantizationConfig:
        p = self.params
        config = x86.get_default_x86_inductor_quantization_config(reduce_range=p.reduce_range)
        activation = dataclasses.replace(
            config.input_activation, observer_or_fake_quant_ctr=ACTIVATION_OBSERVERS[p.observer].with_args(eps=EPS)
        )
        weight = config.weight
        if not p.per_channel:
            weight = dataclasses.replace(
                weight,
                observer_or_fake_quant_ctr=observers.MinMaxObserver.with_args(eps=EPS),
                qscheme=torch.per_tensor_symmetric,
                ch_axis=None,
            )
        return dataclasses.replace(config, input_activation=activation, output_activation=activation, weight=weight)

    def prepare(self, model: nn.Module) -> torch.fx.GraphModule:
        model = copy.deepcopy(model).eval()
        for block in model.modules():
            if isinstance(block, BasicBlock):
                block.__class__ = _UnsharedReluBlock
                block.relu_out = nn.ReLU()
        quantizer = x86.X86InductorQuantizer().set_global(self.config())
        return prepare_pt2e(export_program(WithFeatureMap(model), torch.zeros(2, 3, 32, 32)).module(), quantizer)

    @torch.no_grad()
    def calibrate(self, prepared: torch.fx.GraphModule, images: torch.Tensor) -> None:
        for batch in normalized_batches(images, 250, "calibrate"):
            prepared(batch)

    def convert(self, prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
        converted = convert_pt2e(prepared)
        _output_dequantized(converted)
        _drop_unused_tensors(converted)  # the float weights the INT8 constants replaced
        return converted

    def export(self, converted: torch.fx.GraphModule, path: Path) -> None:
        program = export_program(converted, torch.zeros(2, 3, 32, 32))
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))

    @classmethod
    def load(cls, path: Path) -> nn.Module:
        return load_torch_file(path)

    @classmethod
    def head(cls, path: Path) -> nn.Linear:
        return graph_head(torch.export.load(str(path)).module(), str(path))


def graph_head(module: torch.fx.GraphModule, source: str) -> nn.Linear:
    """The ``aten.linear`` that computes the logits output of a PT2E graph (``source`` names it in errors),
    its weight evaluated through its dequantize op."""
    output = next(node for node in module.graph.nodes if node.op == "output")
    node = output.args[0][0]
    while node.target in (DEQUANTIZE, QUANTIZE):
        node = node.args[0]
    if node.target is not torch.ops.aten.linear.default:
        raise ValueError(f"{source}: the logits come from {node.target}, not a linear layer; quantize with a PT2E backend")
    return linear_head(_constant(module, node.args[1]), _constant(module, node.args[2]))


def _output_dequantized(module: torch.fx.GraphModule) -> None:
    """Graph outputs the quantizer left as float values in front of their quantize op (the layer4 map)
    become that value quantized and dequantized, as the INT8 model's next op reads it."""
    output = next(node for node in module.graph.nodes if node.op == "output")
    for value in output.all_input_nodes:
        for quantize in (user for user in value.users if user.target is QUANTIZE):
            output.replace_input_with(value, next(user for user in quantize.users if user.target is DEQUANTIZE))
            break
    module.recompile()


def _constant(module: torch.fx.GraphModule, node: torch.fx.node.Argument) -> torch.Tensor:
    """The value of a graph node that depends on stored tensors only (e.g. a weight through its dequantize op)."""
    if not isinstance(node, torch.fx.Node):
        return node
    if node.op == "get_attr":
        return operator.attrgetter(node.target)(module)
    if node.op != "call_function":
        raise ValueError(f"graph node {node.name} depends on the input, not only on stored tensors")
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda arg: _constant(module, arg))
    return node.target(*args, **kwargs)


def _drop_unused_tensors(module: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the converted graph does not read, so they are not exported (4x the size)."""
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    tensors = [name for name, _ in (*module.named_parameters(), *module.named_buffers())]
    for name in tensors:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(module.get_submodule(owner), attribute)
    module.delete_all_unused_submodules()


