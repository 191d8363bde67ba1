"""Latency, throughput and size of deployable models, plus the hardware they were measured on.

Latency is the median over many timed single-sample runs after warm-up, with the models
interleaved in short blocks so that drift in machine load hits all of them alike. A GPU number is
only ever a real CUDA-event measurement; without a GPU it is recorded as not measured.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from edgeml.deploy import EdgeModel
from edgeml.detectors import ODIN, Detector, Outputs
from edgeml.preprocess import normalize
from edgeml.quantization import LogitsOnly

NOT_MEASURED = "not measured"
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")


def cpu_info() -> dict[str, object]:
    """CPU model and the ISA flags that decide which INT8/FP32 kernels run."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags = set(value.split())
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
    }


def environment(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_info(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {pkg: _version(pkg) for pkg in ("torch", "torchvision", "numpy", "onnxruntime", "torchao")},
        "python": platform.python_version(),
        "quantized_engine": torch.backends.quantized.engine,
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@torch.no_grad()
def cpu_latency_ms(
    models: dict[str, nn.Module], example: torch.Tensor, warmup: int, runs: int, block: int = 50, settle: int = 10
) -> dict[str, float]:
    """Median ms per forward of each model on ``example``.

    The models take turns in blocks of ``block`` timed runs, so drift in machine load hits all
    of them alike. Each block starts with ``settle`` untimed runs: the previous model's thread
    pool (ONNX Runtime's spinning workers, OpenMP's) lingers for a few runs and would otherwise
    be charged to this one (measured here: TorchScript FP32 2.3 ms alone, up to 6 ms right after ORT)."""
    for model in models.values():
        for _ in range(warmup):
            model(example)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in tqdm(range(-(-runs // block)), desc=f"latency batch {len(example)}", leave=False):
        for name, model in models.items():
            for _ in range(settle):
                model(example)
            for _ in range(block):
                start = time.perf_counter()
                model(example)
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def gpu_latency_ms(model: nn.Module, example: torch.Tensor, warmup: int, runs: int) -> float:
    """Median ms per forward on the GPU, timed with CUDA events."""
    model, example = model.cuda(), example.cuda()
    times = []
    for i in range(warmup + runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(example)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_artifact(
    artifact: str | Path, images: np.ndarray, workdir: Path, threads: int, batch_size: int, repeats: int
) -> dict[str, float]:
    """The whole `edgeml predict` path on real PNG files: load, then file -> decode -> model -> decision."""
    torch.set_num_threads(threads)
    files = []
    for i, image in enumerate(images):
        files.append(workdir / f"{i:05d}.png")
        Image.fromarray(image).save(files[-1])
    load_s = _median_seconds(lambda: EdgeModel.load(artifact), repeats)
    model = EdgeModel.load(artifact)
    list(model.predict(files[:10], batch_size=1))  # warm-up
    latencies = []
    for file in tqdm(files, desc="artifact latency", leave=False):
        start = time.perf_counter()
        list(model.predict([file], batch_size=1))
        latencies.append(time.perf_counter() - start)
    batch_s = _median_seconds(lambda: list(model.predict(files, batch_size)), repeats)
    return {
        "artifact_load_ms": 1e3 * load_s,
        "artifact_size_mb": file_size_mb(artifact),
        "artifact_latency_ms": 1e3 * statistics.median(latencies),
        "artifact_throughput_images_per_s": len(files) / batch_s,
    }


def detector_cost_us(model: nn.Module, detectors: dict[str, Detector], runs: int) -> dict[str, float]:
    """What each (fitted) detector adds per sample on top of ``model``, which returns (logits, features):
    median µs at batch 1. KNN's cost grows with the number of fitted samples; ODIN's includes the
    FP32 twin's forward and backward pass and a second forward pass of ``model``."""
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = Outputs(*model(normalize(image)))
    logits_model = LogitsOnly(model)

    def cost(detector: Detector) -> float:
        if isinstance(detector, ODIN):  # measured on top of the plain forward pass it replaces
            return _median_seconds(lambda: detector.score_images(logits_model, image), runs) - _median_seconds(
                lambda: logits_model(normalize(image)), runs
            )
        return _median_seconds(lambda: detector.score(outputs), runs)

    return {name: 1e6 * cost(detector) for name, detector in detectors.items()}


def file_size_mb(path: str | Path) -> float:
    """Size on disk in MB (10^6 bytes), as the paper reports it."""
    return Path(path).stat().st_size / 1e6


def bench_cpu(
    models: dict[str, nn.Module], threads: int, warmup: int, runs: int, batch_size: int, batch_runs: int
) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms/sample) and throughput (images/s at ``batch_size``) per model."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    # Plain contiguous NCHW, as a caller passes it (a channels-last batch of one sends the
    # frozen FP32 TorchScript model down a slow path, ~5x here).
    single = torch.randn(1, 3, 32, 32, generator=generator)
    batch = torch.randn(batch_size, 3, 32, 32, generator=generator)
    latency = cpu_latency_ms(models, single, warmup, runs)
    batch_ms = cpu_latency_ms(models, batch, max(2, warmup // 10), batch_runs, block=5, settle=3)
    return {
        name: {
            "latency_ms": latency[name],
            "throughput_images_per_s": batch_size / (batch_ms[name] / 1e3),
        }
        for name in models
    }


def bench_gpu(float_model: nn.Module, int8_onnx: Optional[Path], warmup: int, runs: int) -> dict[str, float | str]:
    """Batch-1 GPU latency of FP32 (PyTorch, CUDA events) and of INT8 through ONNX Runtime's TensorRT
    provider (the QDQ model from the onnxruntime backend); anything that cannot run is recorded as not measured."""
    if not torch.cuda.is_available():
        reason = f"{NOT_MEASURED}: no CUDA GPU on this machine"
        return {"fp32": reason, "int8": reason}
    result: dict[str, float | str] = {"fp32": gpu_latency_ms(float_model, torch.randn(1, 3, 32, 32), warmup, runs)}
    if int8_onnx is None:
        result["int8"] = (
            f"{NOT_MEASURED}: PyTorch INT8 kernels are CPU-only; GPU INT8 needs TensorRT "
            f"(quantize with backend onnxruntime to get a QDQ model TensorRT runs)"
        )
    elif "TensorrtExecutionProvider" not in ort_providers():
        result["int8"] = f"{NOT_MEASURED}: onnxruntime here has no TensorRT provider (install onnxruntime-gpu and TensorRT)"
    else:
        from edgeml.quantization.onnxrt import OnnxModule

        trt = OnnxModule(int8_onnx, providers=[("TensorrtExecutionProvider", {"trt_int8_enable": True}), "CUDAExecutionProvider"])
        # Host-to-device copies included: ORT takes the input from host memory.
        result["int8"] = cpu_latency_ms({"int8": trt}, torch.randn(1, 3, 32, 32), warmup, runs)["int8"]
    return result


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


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


def gemm_peak_gmacs(threads: int, size: int = 1024, repeats: int = 10) -> dict[str, dict[str, float]]:
    """This machine's matrix-multiply peak (GMAC/s, best of ``repeats``) for FP32 and INT8 (u8 x s8 -> s32),
    per library, at ``threads`` threads: the compute floor a model's latency is compared with."""
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
            seconds = min(_median_seconds(run, 1) for _ in range(repeats))
            peaks.setdefault(dtype, {})[library] = size**3 / seconds / 1e9
        peaks[dtype]["best"] = max(peaks[dtype].values())
    return peaks


def _ort_matmuls(size: int, threads: int) -> dict[str, Callable[[], object]]:
    """One-op ONNX Runtime models: FP32 MatMul and u8 x s8 MatMulInteger (MLAS kernels, as the ORT backend uses)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    specs = {
        "fp32": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                 rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)),
        "int8": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                 rng.integers(0, 256, (size, size), dtype=np.uint8), rng.integers(-128, 128, (size, size), dtype=np.int8)),
    }
    runs = {}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    for dtype, (op, a_type, b_type, y_type, a, b) in specs.items():
        graph = helper.make_graph(
            [helper.make_node(op, ["A", "B"], ["Y"])], op,
            [helper.make_tensor_value_info("A", a_type, [size, size])],
            [helper.make_tensor_value_info("Y", y_type, [size, size])],
            initializer=[helper.make_tensor("B", b_type, [size, size], b.tobytes(), raw=True)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs[dtype] = lambda session=session, a=a: session.run(None, {"A": a})
    return runs


def compare_to_floor(
    cpu: dict[str, dict[str, float]], fp32_paths: list[str], macs: int, peaks: dict[str, dict[str, float]]
) -> dict[str, object]:
    """The fastest FP32 path, the INT8 speed-up over it, and each batch-1 latency as a multiple of its
    compute floor (MACs / the best GEMM peak of its data type)."""
    fastest = min(fp32_paths, key=lambda name: cpu[name]["latency_ms"])
    floor_ms = {dtype: 1e3 * macs / (peaks[dtype]["best"] * 1e9) for dtype in ("fp32", "int8")}
    return {
        "fastest_fp32_path": fastest,
        "int8_speedup_vs_fastest_fp32": cpu[fastest]["latency_ms"] / cpu["int8"]["latency_ms"],
        "macs_per_sample": macs,
        "gemm_peak_gmacs": peaks,
        "floor_ms": floor_ms,
        "latency_over_floor": {
            name: cpu[name]["latency_ms"] / floor_ms["int8" if name == "int8" else "fp32"] for name in cpu
        },
    }
