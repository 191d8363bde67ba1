"""GPU timing: FP32 eager and CUDA-graph paths in FP32/FP16/BF16, INT8 through TensorRT where installed."""

from __future__ import annotations

import copy
import importlib.util
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from edgeml.bench.cpu import cpu_latency_ms
from edgeml.bench.isolated import InProcess

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    pass


NOT_MEASURED = "not measured"


GPU = torch.device("cuda")


GPU_PATHS = {  # GPU row name -> (dtype of the model copy and its input, replay a captured CUDA graph)
    "fp32_eager": (torch.float32, False),
    "fp32_cuda_graph": (torch.float32, True),
    "fp16_cuda_graph": (torch.float16, True),
    "bf16_cuda_graph": (torch.bfloat16, True),
}


@torch.no_grad()
def gpu_latency_ms(
    model: nn.Module, example: torch.Tensor, warmup: int, runs: int, dtype: torch.dtype = torch.float32, cuda_graph: bool = False
) -> float:
    """Median ms per forward of a ``dtype`` copy of ``model`` on the GPU, timed with CUDA events.

    A copy, because the caller keeps using ``model`` on the CPU (the bench stage's detectors do).
    ``cuda_graph``: replay one captured graph, which removes the per-kernel launch cost that bounds
    a small batch in eager mode."""
    model = copy.deepcopy(model).to(GPU, dtype).eval()
    example = example.to(GPU, dtype)

    def forward() -> object:
        return model(example)

    return _event_median_ms(_cuda_graph(forward, warmup) if cuda_graph else forward, warmup, runs)


def _cuda_graph(forward: Callable[[], object], warmup: int) -> Callable[[], object]:
    """``forward`` captured once as a CUDA graph (its input tensor is the graph's static input);
    warmed up on a side stream first, as capture requires (cuDNN picks its kernels there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 3)):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def _event_median_ms(forward: Callable[[], object], warmup: int, runs: int) -> float:
    """Median ms of ``forward`` on the GPU's timeline between two CUDA events, one call at a time."""
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_gpu(
    float_model: nn.Module, int8_onnx: Optional[Path], warmup: int, runs: int, batch_size: int
) -> dict[str, dict[str, float] | str]:
    """GPU latency (ms per batch, CUDA events) at batch 1 and ``batch_size`` of every :data:`GPU_PATHS`
    row, and of INT8 through ONNX Runtime's TensorRT provider (the onnxruntime backend's QDQ model);
    a row that cannot run here is a "not measured: why" string. ``float_model`` is left untouched."""
    if not torch.cuda.is_available():
        return dict.fromkeys([*GPU_PATHS, "int8"], f"{NOT_MEASURED}: no CUDA GPU on this machine")
    sizes = (1, batch_size)
    examples = {size: torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(0)) for size in sizes}
    result: dict[str, dict[str, float] | str] = {
        name: {
            f"batch{size}_ms": gpu_latency_ms(float_model, examples[size], warmup, runs, dtype, cuda_graph)
            for size in sizes
        }
        for name, (dtype, cuda_graph) in GPU_PATHS.items()
    }
    runtimes = tensorrt_runtimes()
    if not runtimes:
        result["int8"] = f"{NOT_MEASURED}: TensorRT not installed"
    elif int8_onnx is None or "onnxruntime" not in runtimes:
        result["int8"] = (
            f"{NOT_MEASURED}: INT8 on the GPU is measured from the onnxruntime backend's QDQ model through "
            f"onnxruntime's TensorRT provider (found here: {', '.join(runtimes)}; INT8 model: {int8_onnx or 'not ONNX'})"
        )
    else:
        from edgeml.runtime.torch_files import OnnxModule

        trt = OnnxModule(int8_onnx, providers=[("TensorrtExecutionProvider", {"trt_int8_enable": True}), "CUDAExecutionProvider"])
        # Host-to-device copies included: ORT takes the input from host memory.
        result["int8"] = {
            f"batch{size}_ms": cpu_latency_ms({"int8": InProcess(trt, lambda _: examples[size])}, size, warmup, runs)["int8"]
            for size in sizes
        }
    return result


def tensorrt_runtimes() -> list[str]:
    """The TensorRT front ends installed here: Torch-TensorRT and ONNX Runtime's TensorRT provider."""
    found = ["torch_tensorrt"] if importlib.util.find_spec("torch_tensorrt") else []
    return found + (["onnxruntime"] if "TensorrtExecutionProvider" in ort_providers() else [])


def gpu_table_cells(gpu: dict[str, dict[str, float] | str]) -> dict[str, dict[str, float | str | None]]:
    """Table 1's GPU cells, batch 1: FP32 is the fastest FP32 row, INT8 its row, each named in ``path``
    (None, with the reason as latency, where nothing was measured)."""

    def fastest(names: list[str]) -> dict[str, float | str | None]:
        measured = [name for name in names if isinstance(gpu[name], dict)]
        if not measured:
            return {"path": None, "latency_ms": gpu[names[0]]}
        best = min(measured, key=lambda name: gpu[name]["batch1_ms"])
        return {"path": best, "latency_ms": gpu[best]["batch1_ms"]}

    return {"fp32": fastest([name for name in GPU_PATHS if name.startswith("fp32_")]), "int8": fastest(["int8"])}


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()
