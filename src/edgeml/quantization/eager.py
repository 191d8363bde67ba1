"""PyTorch eager-mode static quantization: fbgemm (x86) or qnnpack (ARM), deployed as TorchScript.

The recipe follows torchvision's quantizable models: fuse conv-bn-relu, insert observers (or
fake-quant modules for QAT), calibrate on held-out training images, convert, trace and freeze.
``torch.ao.quantization`` is deprecated in favour of torchao; it is confined to this module.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.quantization import resnet as quantizable_resnet

from edgeml.io import atomic_path
from edgeml.model.loop import train_epoch
from edgeml.params import ParamsError, QuantizeParams
from edgeml.quantization.base import Quantizer, linear_head, normalized_batches
from edgeml.runtime.torch_files import load_torch_file, load_torchscript

q = torch.ao.quantization
ACTIVATION_OBSERVERS = {
    "minmax": q.MinMaxObserver,
    "moving_average_minmax": q.MovingAverageMinMaxObserver,
    "histogram": q.HistogramObserver,
}


class EagerQuantizer(Quantizer):
    """fbgemm / qnnpack kernels through ``torch.ao.quantization``; QAT from the FP32 checkpoint."""

    suffix = ".pt"
    file_format = "TorchScript `.pt`"
    runtime = "torch"
    profiler = "profile_torchscript"
    observers = tuple(ACTIVATION_OBSERVERS)
    supports_qat = True

    @classmethod
    def check(cls, params: QuantizeParams) -> None:
        super().check(params)
        if cls.name not in torch.backends.quantized.supported_engines:
            raise ParamsError(
                f"quantize.backend: {cls.name!r} is not supported by this torch build "
                f"(supported engines: {torch.backends.quantized.supported_engines})"
            )
        if params.qat_epochs and params.observer == "histogram":
            raise ParamsError(
                "quantize.observer: QAT tracks activation ranges with fake-quant modules; "
                "allowed with qat_epochs > 0: ['minmax', 'moving_average_minmax']"
            )

    def qconfig(self) -> q.QConfig:
        p = self.params
        if p.per_channel:
            weight_observer, weight_scheme = q.PerChannelMinMaxObserver, torch.per_channel_symmetric
        else:
            weight_observer, weight_scheme = q.MinMaxObserver, torch.per_tensor_symmetric
        activation = ACTIVATION_OBSERVERS[p.observer].with_args(reduce_range=p.reduce_range)
        weight = weight_observer.with_args(dtype=torch.qint8, qscheme=weight_scheme)
        if not p.qat_epochs:
            return q.QConfig(activation=activation, weight=weight)
        return q.QConfig(
            activation=q.FakeQuantize.with_args(
                observer=ACTIVATION_OBSERVERS[p.observer], quant_min=0, quant_max=127 if p.reduce_range else 255,
                dtype=torch.quint8,
            ),
            weight=q.FakeQuantize.with_args(
                observer=weight_observer, quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=weight_scheme
            ),
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        torch.backends.quantized.engine = self.name
        quantizable = quantizable_copy(model)
        qat = bool(self.params.qat_epochs)
        quantizable.train(qat)
        quantizable.fuse_model(is_qat=qat)
        quantizable.qconfig = self.qconfig()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return (q.prepare_qat if qat else q.prepare)(quantizable)

    def fine_tune(self, prepared: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A few epochs of SGD through the fake-quant model, BN statistics frozen (a small-lr fine-tune,
        cosine-annealed), each epoch on the first ``qat_images`` of a fresh permutation of the images."""
        p = self.params
        generator = torch.Generator().manual_seed(p.seed)
        steps_per_epoch = min(p.qat_images, len(images)) // p.qat_batch_size
        total = p.qat_epochs * steps_per_epoch
        optimizer = torch.optim.SGD(prepared.parameters(), lr=p.qat_lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
        prepared.train()
        prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
        for epoch in range(p.qat_epochs):
            train_epoch(
                lambda x: prepared(x)[0], images, labels, p.qat_batch_size, steps_per_epoch, optimizer, scheduler,
                generator, F.cross_entropy, desc=f"QAT epoch {epoch + 1}/{p.qat_epochs}",
            )
        prepared.eval()

    @torch.no_grad()
    def calibrate(self, prepared: nn.Module, images: torch.Tensor) -> None:
        prepared.eval()
        for batch in normalized_batches(images, 250, "calibrate"):
            prepared(batch)

    def convert(self, prepared: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return q.convert(prepared.eval())

    def export(self, converted: nn.Module, path: Path) -> None:
        export_torchscript(converted, path)  # already returns (logits, features, feature map)

    @classmethod
    def load(cls, path: Path) -> nn.Module:
        return load_torch_file(path, engine=cls.name)

    @classmethod
    def head(cls, path: Path) -> nn.Linear:
        return torchscript_head(path)


class Fbgemm(EagerQuantizer):
    """x86 server/desktop CPUs."""

    name = "fbgemm"
    summary = "PyTorch eager static quantization, x86 kernels (torchvision's recipe: fuse, prepare, calibrate, convert)"
    profiler_options = {"engine": "fbgemm"}


class Qnnpack(EagerQuantizer):
    """ARM edge CPUs (runs on x86 too, slower)."""

    name = "qnnpack"
    summary = "the same for ARM edge CPUs (runs on x86 too, slowly)"
    profiler_options = {"engine": "qnnpack"}
    arm_note = "ARM-oriented (QNNPACK, PyTorch's ARM engine), measured on x86: its speed here is not ARM's"
    reduce_range_without_dot_product = False  # QNNPACK's kernels accumulate in int32: no reduced range needed


class _QuantizableResNetWithFeatureMap(quantizable_resnet.QuantizableResNet):
    """torchvision's quantizable ResNet returning (logits, penultimate features, layer4 map), all dequantized."""

    def __init__(self, num_classes: int):
        super().__init__(quantizable_resnet.QuantizableBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.dequant_features = q.DeQuantStub()
        self.dequant_map = q.DeQuantStub()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.quant(x)))))
        feature_map = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(feature_map), 1)
        return self.dequant(self.fc(features)), self.dequant_features(features), self.dequant_map(feature_map)


def quantizable_copy(model: nn.Module) -> nn.Module:
    """torchvision's quantizable ResNet18 (quant/dequant stubs, fusable blocks) with ``model``'s stem and weights."""
    quantizable = _QuantizableResNetWithFeatureMap(model.fc.out_features)
    quantizable.conv1 = copy.deepcopy(model.conv1)
    quantizable.maxpool = copy.deepcopy(model.maxpool)
    quantizable.load_state_dict(model.state_dict())
    return quantizable.eval()


def export_torchscript(model: nn.Module, path: str | Path) -> None:
    """Save a deployable TorchScript file (loads with ``torch.jit.load``, no project code needed);
    ``model`` returns (logits, features, feature map): wrap a float ResNet in :class:`WithFeatureMap`."""
    example = torch.zeros(1, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.trace(model.eval(), example))
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))


def torchscript_head(path: str | Path) -> nn.Linear:
    """The classifier layer of a frozen TorchScript file: the linear op that computes the logits output
    (``aten::linear`` for FP32, ``quantized::linear`` with its packed INT8 weights for INT8), read from
    the graph's constants because freezing inlines the ``fc`` module."""
    graph = load_torchscript(path).graph
    (outputs,) = graph.outputs()
    node = outputs.node().inputsAt(0).node()  # the tuple's first element: logits
    if node.kind() == "aten::dequantize":
        node = node.inputsAt(0).node()
    constants = [value.toIValue() if value.node().kind() == "prim::Constant" else None for value in node.inputs()]
    if node.kind() == "aten::linear" and isinstance(constants[1], torch.Tensor):
        return linear_head(constants[1], constants[2])
    if node.kind() == "quantized::linear" and constants[1] is not None:
        weight, bias = torch.ops.quantized.linear_unpack(constants[1])
        return linear_head(weight.dequantize(), bias)
    raise ValueError(
        f"{path}: the logits come from {node.kind()!r}, not a frozen linear layer with constant weights; "
        f"export the model with edgeml.quantization.eager.export_torchscript"
    )
