"""INT8 quantization recipes behind one interface (:class:`~edgeml.quantization.base.Quantizer`).

One module per backend; each is imported only when its recipe is used, so a machine without
onnxruntime or torchao still runs the others. A new backend is one module plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeml.model.inference import to_tensor
from edgeml.params import ParamsError, QuantizeParams
from edgeml.model.inference import WithFeatureMap
from edgeml.quantization.base import LogitsOnly, Quantizer

__all__ = [
    "BACKENDS", "LogitsOnly", "Quantizer", "WithFeatureMap", "deployed_models", "deployed_paths", "export_fp32",
    "file_quantizer", "fp32_paths", "int8_path", "load_deployable", "load_file", "load_head", "make_quantizer",
    "quantize", "quantizer_class",
]

BACKENDS = {  # quantize.backend -> "module:class"
    "fbgemm": "edgeml.quantization.eager:Fbgemm",
    "qnnpack": "edgeml.quantization.eager:Qnnpack",
    "pt2e_x86": "edgeml.quantization.pt2e:PT2EX86Quantizer",
    "onnxruntime": "edgeml.quantization.onnxrt:OnnxRuntimeQuantizer",
    "openvino": "edgeml.quantization.openvino:OpenVinoQuantizer",
    "executorch": "edgeml.quantization.executorch:ExecuTorchQuantizer",
}


def quantizer_class(backend: str) -> type[Quantizer]:
    if backend not in BACKENDS:
        raise ParamsError(f"quantize.backend: {backend!r} is not one of {list(BACKENDS)}")
    module, name = BACKENDS[backend].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ParamsError(
            f"quantize.backend: {backend!r} needs {exc.name!r}, which is not installed; "
            f"`pip install -e .` installs every backend's package"
        ) from exc


def make_quantizer(params: QuantizeParams) -> Quantizer:
    """The backend for ``params``; an unknown backend or unsupported combination raises ParamsError before any work."""
    return quantizer_class(params.backend)(params)


def quantize(quantizer: Quantizer, model: nn.Module, arrays: Mapping[str, np.ndarray], path: Path) -> nn.Module:
    """Quantize the float ``model`` by ``quantizer``'s recipe into the deployable file ``path``.

    Calibration images are drawn (seeded) from the recipe's calibration split, val or train,
    never test; QAT, when on, fine-tunes on the train split."""
    recipe = quantizer.params
    pool = arrays[f"{recipe.calibration_split}_x"]
    chosen = np.sort(np.random.default_rng(recipe.seed).choice(len(pool), recipe.calibration_size, replace=False))
    train = (to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"])) if recipe.qat_epochs else None
    return quantizer.run(model, to_tensor(pool[chosen]), path, train)


def int8_path(backend: str, folder: str | Path = "models/deploy") -> Path:
    """Where the quantize stage writes the INT8 deployable file of ``backend``."""
    return Path(folder) / f"int8{quantizer_class(backend).suffix}"


def fp32_paths(folder: str | Path = "models/deploy") -> dict[str, Path]:
    """The FP32 reference files INT8 is compared with, by path name: TorchScript and ONNX Runtime."""
    return {"fp32_torchscript": Path(folder) / "fp32.pt", "fp32_onnxruntime": Path(folder) / "fp32.onnx"}


def export_fp32(model: nn.Module, folder: str | Path = "models/deploy") -> dict[str, Path]:
    """Write the float ``model`` (logits, features and feature map out) to every :func:`fp32_paths` file."""
    from edgeml.quantization.eager import export_torchscript
    from edgeml.quantization.onnxrt import export_onnx

    paths = fp32_paths(folder)
    export_torchscript(WithFeatureMap(model), paths["fp32_torchscript"])
    export_onnx(WithFeatureMap(model), paths["fp32_onnxruntime"])
    return paths


def file_quantizer(path: str | Path, backend: str = "fbgemm") -> type[Quantizer]:
    """The backend that reads ``path``: the one whose format its suffix names, ``backend`` first
    (TorchScript INT8 needs its engine)."""
    for name in dict.fromkeys([backend, *BACKENDS]):
        cls = quantizer_class(name)
        if cls.suffix == Path(path).suffix:
            return cls
    raise ValueError(f"{path}: unknown deployable format {Path(path).suffix!r}")


def load_file(path: str | Path, backend: str = "fbgemm") -> nn.Module:
    """A deployable file as saved, with every output it has."""
    return file_quantizer(path, backend).load(Path(path))


def load_head(path: str | Path, backend: str = "fbgemm") -> nn.Linear:
    """The classifier layer of the FP32 or INT8 deployable file ``path``, as a float ``nn.Linear`` (eval, no
    grad): an INT8 file's quantized weights dequantized, and its bias. Applied to the file's own features
    it gives the file's logits (INT8: to within the rounding of the logits' quantization)."""
    return file_quantizer(path, backend).head(Path(path))


def load_deployable(path: str | Path, backend: str = "fbgemm", features: bool = False) -> nn.Module:
    """A model file written by the quantize stage: normalised float NCHW in, logits out
    (``features``: (logits, penultimate features [N, 512], layer4 map [N, 512, h, w]) out)."""
    model = load_file(path, backend)
    return model if features else LogitsOnly(model)


def deployed_paths(backend: str, folder: str | Path = "models/deploy") -> dict[str, Path]:
    """The quantize stage's FP32 reference (TorchScript) and INT8 files, as compared in accuracy and OOD metrics."""
    return {"fp32": fp32_paths(folder)["fp32_torchscript"], "int8": int8_path(backend, folder)}


def deployed_models(backend: str, folder: str | Path = "models/deploy", features: bool = False) -> dict[str, nn.Module]:
    """The :func:`deployed_paths` files, loaded."""
    return {name: load_deployable(path, backend, features) for name, path in deployed_paths(backend, folder).items()}
