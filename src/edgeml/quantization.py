"""Post-training static INT8 quantization behind one small interface.

All ``torch.ao.quantization`` use is confined to this module (it is deprecated in favour of
torchao), so another backend is a new :class:`Quantizer` implementation and nothing else.
The recipe follows torchvision's quantizable models: fuse conv-bn-relu, prepare with
observers, calibrate on held-out training images, convert, export to TorchScript.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn
from torchvision.models.quantization import resnet as quantizable_resnet
from tqdm import tqdm

from edgeml.io import atomic_path
from edgeml.params import ParamsError, QuantizeParams
from edgeml.preprocess import normalize


class Quantizer(ABC):
    """prepare -> calibrate -> convert -> export; ``run`` chains them for a float model."""

    def __init__(self, params: QuantizeParams):
        self.params = params

    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with observers inserted."""

    @torch.no_grad()
    def calibrate(self, prepared: nn.Module, images: torch.Tensor, batch_size: int = 250) -> None:
        """Feed uint8 NCHW calibration images through the observers."""
        prepared.eval()
        for start in tqdm(range(0, len(images), batch_size), desc="calibrate", leave=False):
            prepared(normalize(images[start : start + batch_size]))

    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """The INT8 model, from a calibrated prepared model."""

    def run(self, model: nn.Module, calibration_images: torch.Tensor) -> nn.Module:
        prepared = self.prepare(model)
        self.calibrate(prepared, calibration_images)
        return self.convert(prepared)


class EagerQuantizer(Quantizer):
    """PyTorch eager-mode static quantization (fbgemm on x86, qnnpack on ARM)."""

    def qconfig(self) -> torch.ao.quantization.QConfig:
        q = torch.ao.quantization
        # fbgemm without VNNI accumulates u8*s8 pairs in int16: 7-bit activations avoid overflow.
        reduce_range = self.params.backend == "fbgemm"
        activation = {
            "minmax": q.MinMaxObserver,
            "moving_average_minmax": q.MovingAverageMinMaxObserver,
            "histogram": q.HistogramObserver,
        }[self.params.observer].with_args(reduce_range=reduce_range)
        if self.params.per_channel:
            weight = q.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        else:
            weight = q.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        return q.QConfig(activation=activation, weight=weight)

    def prepare(self, model: nn.Module) -> nn.Module:
        torch.backends.quantized.engine = self.params.backend
        quantizable = quantizable_copy(model)
        quantizable.fuse_model(is_qat=False)
        quantizable.qconfig = self.qconfig()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.ao.quantization.prepare(quantizable)

    def convert(self, prepared: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.ao.quantization.convert(prepared.eval())


BACKENDS = {"fbgemm": EagerQuantizer, "qnnpack": EagerQuantizer}


def make_quantizer(params: QuantizeParams) -> Quantizer:
    if params.backend not in BACKENDS:
        raise ParamsError(f"quantize.backend: {params.backend!r} is not one of {sorted(BACKENDS)}")
    if params.backend not in torch.backends.quantized.supported_engines:
        raise ParamsError(
            f"quantize.backend: {params.backend!r} is not supported by this torch build "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    return BACKENDS[params.backend](params)


def quantizable_copy(model: nn.Module) -> nn.Module:
    """torchvision's quantizable ResNet18 (quant/dequant stubs, fusable blocks) with ``model``'s stem and weights."""
    quantizable = quantizable_resnet.QuantizableResNet(
        quantizable_resnet.QuantizableBasicBlock, [2, 2, 2, 2], num_classes=model.fc.out_features
    )
    quantizable.conv1 = copy.deepcopy(model.conv1)
    quantizable.maxpool = copy.deepcopy(model.maxpool)
    quantizable.load_state_dict(model.state_dict())
    return quantizable.eval()


def export(model: nn.Module, path: str | Path, example: torch.Tensor) -> None:
    """Save a deployable TorchScript file (loads with ``torch.jit.load``, no project code needed)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.trace(model.eval(), example))
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))


def load_deployable(path: str | Path, backend: str = "fbgemm") -> torch.jit.ScriptModule:
    """Load an exported model; INT8 kernels need the quantization engine it was built for."""
    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()
