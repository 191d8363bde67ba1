"""Model files that need torch to run: TorchScript (``.pt``), torch.export (``.pt2``), and ONNX Runtime or an
artifact's runner behind an ``nn.Module`` call. The pipeline's backends and the runtime's torch artifacts load them the same way.

Imported only where torch is installed: the ONNX path of the edge runtime never imports this module.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from edgeml.runtime.runners import ort_session

if TYPE_CHECKING:
    from edgeml.runtime.runners import Runner


class WithEngine(nn.Module):
    """INT8 TorchScript run with the quantization engine it was built for. The engine is process-wide,
    and one process may hold fbgemm and qnnpack files (the sweep times every recipe together), so it is
    selected on every call."""

    def __init__(self, scripted: torch.jit.ScriptModule, engine: str):
        super().__init__()
        self.scripted, self.engine = scripted, engine

    def forward(self, x: torch.Tensor):
        torch.backends.quantized.engine = self.engine
        return self.scripted(x)


class OneDNNFused(nn.Module):
    """FP32 TorchScript run with PyTorch's oneDNN Graph fuser (conv + bias + ReLU + add fused, weights
    prepacked). Without it, ATen sends small batch-1 convolutions (the stem, the 8x8 and 4x4 stages) to
    its im2col + GEMM fallback and runs each ReLU and add as its own parallel pass: ~3x slower than ONNX
    Runtime at 2 threads. The switch is process-wide, so it is on only during this call."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor):
        was_on = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            return self.scripted(x)
        finally:
            torch.jit.enable_onednn_fusion(was_on)


def load_torchscript(path: str | Path, engine: str = "fbgemm") -> torch.jit.ScriptModule:
    """Load a TorchScript file; INT8 kernels need the quantization engine it was built for."""
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


class CompiledProgram(nn.Module):
    """An exported program compiled by Inductor, behind the ``nn.Module`` call the pipeline uses.

    Exported programs are always in inference mode and refuse ``train()``/``eval()``; here those
    are no-ops. Compiles with weight freezing (INT8 weights pre-packed once, quantize/dequantize
    pairs fused into oneDNN INT8 kernels) on the first call of each kind: batch 1 as a static graph
    with Inductor's C++ wrapper (no Python between kernels; measured here: 2.3 vs 3.0 ms with
    ``dynamic=True`` and the Python wrapper), any other batch as one dynamic graph."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        # not child modules: the program holds the weights
        self.__dict__["_single"] = torch.compile(program.module(), dynamic=False, options={"cpp_wrapper": True})
        self.__dict__["_batched"] = torch.compile(program.module(), dynamic=True)

    def train(self, mode: bool = True) -> "CompiledProgram":
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        compiled = self._single if len(inputs[0]) == 1 else self._batched
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compiled(*inputs)


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call the pipeline uses (tensor in, tensor out).

    Threads default to torch's current setting, so one ``torch.set_num_threads`` governs both."""

    def __init__(self, path: str | Path, threads: Optional[int] = None, providers: Optional[list[str]] = None):
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(path, threads or torch.get_num_threads(), providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: images.detach().contiguous().numpy()})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class RunnerModule(nn.Module):
    """A runtime runner (uint8 NHWC arrays in, numpy out) behind the ``nn.Module`` call the pipeline's checks
    use: uint8 NCHW tensor in, (class probabilities, OOD scores) tensors out."""

    def __init__(self, runner: "Runner"):
        super().__init__()
        self.runner = runner

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities, scores = self.runner(images.detach().permute(0, 2, 3, 1).numpy())
        return torch.from_numpy(probabilities), torch.from_numpy(scores)


def load_torch_file(path: str | Path, engine: str = "fbgemm") -> nn.Module:
    """A TorchScript or torch.export file, ready to call: INT8 TorchScript with its quantization ``engine``,
    FP32 TorchScript under the oneDNN fuser, an exported program compiled by Inductor."""
    path = Path(path)
    if path.suffix == ".pt2":
        import torchao.quantization.pt2e  # noqa: F401  registers the quantized_decomposed ops the program calls

        return CompiledProgram(torch.export.load(str(path)))
    module = load_torchscript(path, engine=engine)
    quantized = any(n.kind().startswith("quantized::") for n in module.graph.nodes())
    return WithEngine(module, engine) if quantized else OneDNNFused(module)
