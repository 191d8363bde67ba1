"""Compute floors: MACs per image, measured GEMM peaks, and latency as a multiple of its floor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from edgeml.bench.cpu import median_seconds
from edgeml.bench.gpu import ort_providers
from edgeml.runtime.runners import ort_session

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    pass


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per sample (convolutions and linear layers)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs += output[0].numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(example[:1])
    for handle in handles:
        handle.remove()
    return macs


def gemm_peak_gmacs(threads: int, size: int = 2048, repeats: int = 10) -> dict[str, dict[str, float]]:
    """This machine's matrix-multiply peak (GMAC/s, best of ``repeats``) for FP32 and INT8 (u8 x s8 -> s32),
    per library, at ``threads`` threads: the compute floor a model's latency is compared with. 2048x2048:
    at 1024 ONNX Runtime's AMX INT8 peak came out at either ~1,100 or ~2,150 GMAC/s from one run to the
    next (a Xeon with amx_int8), which moved the INT8 floor 2x; at 2048 three runs agreed within 2%."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a8 = torch.randint(0, 128, (size, size), dtype=torch.int8, generator=generator)
    b8 = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator)
    kernels: dict[str, dict[str, Callable[[], object]]] = {
        "fp32": {"torch": lambda: torch.mm(a, b)},
        "int8": {"torch": lambda: torch._int_mm(a8, b8)},
    }
    if "CPUExecutionProvider" in ort_providers():
        for dtype, run in _ort_matmuls(size, threads).items():
            kernels[dtype]["onnxruntime"] = run
    peaks: dict[str, dict[str, float]] = {}
    for dtype, by_library in kernels.items():
        for library, run in by_library.items():
            run()  # warm-up
            seconds = min(median_seconds(run, 1) for _ in range(repeats))
            peaks.setdefault(dtype, {})[library] = size**3 / seconds / 1e9
        peaks[dtype]["best"] = max(peaks[dtype].values())
    return peaks


def _ort_matmuls(size: int, threads: int) -> dict[str, Callable[[], object]]:
    """One-op ONNX Runtime models: FP32 MatMul and u8 x s8 MatMulInteger (MLAS kernels, as the ORT backend uses)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    specs = {
        "fp32": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                 rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)),
        "int8": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                 rng.integers(0, 256, (size, size), dtype=np.uint8), rng.integers(-128, 128, (size, size), dtype=np.int8)),
    }
    runs = {}
    for dtype, (op, a_type, b_type, y_type, a, b) in specs.items():
        graph = helper.make_graph(
            [helper.make_node(op, ["A", "B"], ["Y"])], op,
            [helper.make_tensor_value_info("A", a_type, [size, size])],
            [helper.make_tensor_value_info("Y", y_type, [size, size])],
            initializer=[helper.make_tensor("B", b_type, [size, size], b.tobytes(), raw=True)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = ort_session(model.SerializeToString(), threads)
        runs[dtype] = lambda session=session, a=a: session.run(None, {"A": a})
    return runs


def floor_ms(macs: int, peaks: dict[str, dict[str, float]]) -> dict[str, float]:
    """Batch-1 compute floor per data type: ``macs`` per image at the best GEMM peak measured for it."""
    return {dtype: 1e3 * macs / (peaks[dtype]["best"] * 1e9) for dtype in ("fp32", "int8")}


def compare_to_floor(
    cpu: dict[str, dict[str, float]], fp32_paths: list[str], macs: int, peaks: dict[str, dict[str, float]]
) -> dict[str, object]:
    """The fastest FP32 path, the INT8 speed-up over it, and each batch-1 latency as a multiple of its
    compute floor (MACs / the best GEMM peak of its data type)."""
    fastest = min(fp32_paths, key=lambda name: cpu[name]["latency_ms"])
    floor = floor_ms(macs, peaks)
    return {
        "fastest_fp32_path": fastest,
        "int8_speedup_vs_fastest_fp32": cpu[fastest]["latency_ms"] / cpu["int8"]["latency_ms"],
        "macs_per_sample": macs,
        "gemm_peak_gmacs": peaks,
        "floor_ms": floor,
        "latency_over_floor": {
            name: cpu[name]["latency_ms"] / floor["int8" if name == "int8" else "fp32"] for name in cpu
        },
    }
