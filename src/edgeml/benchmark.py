"""Latency, throughput and size of deployable models, plus the hardware they were measured on.

Latency is the median over many timed single-sample runs after warm-up, with the models
interleaved in short blocks so that drift in machine load hits all of them alike. A GPU number is
only ever a real CUDA-event measurement; without a GPU it is recorded as not measured.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import platform
import statistics
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from edgeml.deploy import DECODE_WORKERS, EdgeModel
from edgeml.memory import PeakRSS
from edgeml.preprocess import normalize, read_image

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    from edgeml.detectors import Detector

NOT_MEASURED = "not measured"
ISA_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "asimddp",
)


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
        # the vector ISA PyTorch dispatches its own CPU kernels to (DEFAULT, AVX2, AVX512, ...)
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def gpu_environment() -> dict[str, object]:
    """The GPU and the CUDA stack its numbers come from. FP32 convolutions run on TF32 tensor cores
    where ``fp32_convolutions_allow_tf32`` (PyTorch's default)."""
    available = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if available else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "fp32_convolutions_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def environment(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_info(),
        "threads": threads,
        **gpu_environment(),
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
def latency_rounds_s(
    models: dict[str, Callable[[torch.Tensor], object]], example: torch.Tensor, warmup: int, rounds: int,
    block: int = 50, settle: int = 10,
) -> dict[str, list[list[float]]]:
    """Seconds per forward of each model on ``example``: ``rounds`` rounds of ``block`` timed runs each.

    The models take turns within every round, so drift in machine load hits all of them alike. Each
    block starts with ``settle`` untimed runs: the previous model's thread pool (ONNX Runtime's
    spinning workers, OpenMP's) lingers for a few runs and would otherwise be charged to this one
    (measured here: TorchScript FP32 2.3 ms alone, up to 6 ms right after ORT)."""
    for model in models.values():
        for _ in range(warmup):
            model(example)
    times: dict[str, list[list[float]]] = {name: [] for name in models}
    for _ in tqdm(range(rounds), desc=f"latency batch {len(example)}", leave=False):
        for name, model in models.items():
            for _ in range(settle):
                model(example)
            samples = []
            for _ in range(block):
                start = time.perf_counter()
                model(example)
                samples.append(time.perf_counter() - start)
            times[name].append(samples)
    return times


def cpu_latency_ms(
    models: dict[str, nn.Module], example: torch.Tensor, warmup: int, runs: int, block: int = 50, settle: int = 10
) -> dict[str, float]:
    """Median ms per forward of each model on ``example`` over about ``runs`` interleaved runs (:func:`latency_rounds_s`)."""
    rounds = latency_rounds_s(models, example, warmup, -(-runs // block), block, settle)
    return {name: 1e3 * statistics.median(t for samples in r for t in samples) for name, r in rounds.items()}


def time_recipes(
    fp32: dict[str, Callable[[torch.Tensor], object]], int8: dict[str, Callable[[torch.Tensor], object]],
    threads: int, warmup: int, rounds: int, block: int, batch_size: int, batch_runs: int,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``batch_size`` throughput of every FP32 path and INT8 recipe, all in this
    process, taking turns for ``rounds`` rounds of ``block`` runs; each recipe's speed-up over the fastest
    FP32 path, per round and overall, and its spread ((max - min) / median of the per-round speed-ups)."""
    torch.set_num_threads(threads)
    models = {**fp32, **int8}
    generator = torch.Generator().manual_seed(0)
    single = torch.randn(1, 3, 32, 32, generator=generator)
    batch = torch.randn(batch_size, 3, 32, 32, generator=generator)
    samples = latency_rounds_s(models, single, warmup, rounds, block)
    round_ms = {name: [1e3 * statistics.median(r) for r in per_round] for name, per_round in samples.items()}
    latency_ms = {name: 1e3 * statistics.median(t for r in per_round for t in r) for name, per_round in samples.items()}
    batch_ms = cpu_latency_ms(models, batch, max(2, warmup // 10), batch_runs, block=5, settle=3)
    cpu = {name: {"latency_ms": latency_ms[name], "throughput_images_per_s": batch_size / (batch_ms[name] / 1e3)}
           for name in models}
    fastest = min(fp32, key=lambda name: latency_ms[name])
    recipes = {}
    for name in int8:
        per_round = [f / i for f, i in zip(round_ms[fastest], round_ms[name])]
        recipes[name] = {
            **cpu[name],
            "speedup": latency_ms[fastest] / latency_ms[name],
            "speedup_rounds": per_round,
            "speedup_spread": (max(per_round) - min(per_round)) / statistics.median(per_round),
        }
    return {"fp32": {name: cpu[name] for name in fp32}, "fastest_fp32_path": fastest, "recipes": recipes,
            "rounds": rounds, "runs_per_round": block}


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


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_artifact(
    artifact: str | Path, images: np.ndarray, workdir: Path, threads: int, batch_size: int, repeats: int
) -> dict[str, object]:
    """The whole `edgeml predict` path on real files: load, then file -> decode -> model -> decision.

    Latency is per file at batch 1. Throughput (images/s, median of ``repeats``) and peak RSS are
    measured on ``images`` as 32x32 PNGs and enlarged to 256x256 JPEGs (a camera-like decoding
    cost), decoding in turn (``sequential``: workers 0) and by the default pool of decoding threads
    (``parallel``); RSS growth is the peak over the RSS before the run. Two figures bound it: the
    artifact's model alone on the decoded batches (``model_only``, what decoding ahead can approach
    at best, as both compete for the same cores) and the decoding cost per file on one thread."""
    png_files, jpeg_files = [], []
    for i, image in enumerate(images):
        png_files.append(workdir / f"{i:05d}.png")
        Image.fromarray(image).save(png_files[-1])
        jpeg_files.append(workdir / f"{i:05d}.jpg")
        Image.fromarray(image).resize((256, 256), Image.BILINEAR).save(jpeg_files[-1], quality=90)
    load_s = _median_seconds(lambda: EdgeModel.load(artifact, threads=threads), repeats)
    model = EdgeModel.load(artifact, threads=threads)
    list(model.predict(png_files[:10], batch_size=1))  # warm-up
    latencies = []
    for file in tqdm(png_files, desc="artifact latency", leave=False):
        start = time.perf_counter()
        list(model.predict([file], batch_size=1, workers=0))
        latencies.append(time.perf_counter() - start)
    batches = [np.stack([read_image(f) for f in png_files[i : i + batch_size]]) for i in range(0, len(png_files), batch_size)]
    model_only = len(png_files) / _median_seconds(lambda: [model.predict_images(batch) for batch in batches], repeats)
    throughput: dict[str, dict[str, object]] = {}
    for kind, files in {"png_32": png_files, "jpeg_256": jpeg_files}.items():
        decode_s = _median_seconds(lambda: [read_image(f) for f in files], repeats)
        throughput[kind] = {"decode_us_per_file": 1e6 * decode_s / len(files)}
        for mode, workers in {"sequential": 0, "parallel": DECODE_WORKERS}.items():
            with PeakRSS() as rss:
                seconds = _median_seconds(lambda: list(model.predict(files, batch_size, workers)), repeats)
            throughput[kind][mode] = {
                "images_per_s": len(files) / seconds,
                "share_of_model_only": len(files) / seconds / model_only,
                "peak_rss_mb": rss.peak_mb,
                "rss_growth_mb": None if rss.peak_mb is None else rss.peak_mb - rss.start_mb,
            }
        throughput[kind]["speedup"] = throughput[kind]["parallel"]["images_per_s"] / throughput[kind]["sequential"]["images_per_s"]
    return {
        "artifact_load_ms": 1e3 * load_s,
        "artifact_size_mb": file_size_mb(model.path),
        "artifact_latency_ms": 1e3 * statistics.median(latencies),
        "artifact_throughput_images_per_s": throughput["png_32"]["parallel"]["images_per_s"],  # as `edgeml predict` runs
        "model_only_images_per_s": model_only,
        "decode_workers": DECODE_WORKERS,
        "throughput": throughput,
    }


def detector_cost_us(model: nn.Module, detectors: dict[str, "Detector"], runs: int) -> dict[str, float]:
    """What each (fitted) detector adds per sample on top of ``model``, which returns (logits, features,
    map): median µs at batch 1, outputs computed beforehand. KNN's cost grows with the number of fitted
    samples. Input-perturbation detectors (ODIN) run the model again on changed inputs: their cost is
    their scoring time minus the plain forward pass they replace, and their per-set gradient cache is
    bypassed (each run is a fresh image set), so the FP32 twin's forward and backward pass is counted."""
    from edgeml.detectors import Evidence

    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    forward_s = _median_seconds(lambda: model(normalize(image)), runs)
    # computed once, not before each timed call: ONNX Runtime's worker threads spin on after a run and
    # would be charged to the detector (measured: energy 209 µs right after a forward, 25 µs otherwise)
    outputs = Evidence("cost", image, model, batch_size=1).outputs
    runs_done = iter(range(10**9))

    def evidence() -> "Evidence":
        fresh = Evidence(f"cost/{next(runs_done)}", image, model, batch_size=1)
        fresh.outputs = outputs
        return fresh

    def cost(detector: "Detector") -> float:
        timed = []
        for _ in range(runs):
            fresh = evidence()
            start = time.perf_counter()
            detector.score(fresh)
            timed.append(time.perf_counter() - start)
        return statistics.median(timed) - (forward_s if detector.perturbs_inputs else 0.0)

    return {name: 1e6 * cost(detector) for name, detector in detectors.items()}


WEIGHT_FILES = {".xml": ".bin"}  # formats whose weights sit in a second file: OpenVINO IR


def file_size_mb(path: str | Path) -> float:
    """Size on disk in MB (10^6 bytes), as the paper reports it, with the weights file of a two-file format."""
    path = Path(path)
    files = [path] + ([path.with_suffix(WEIGHT_FILES[path.suffix])] if path.suffix in WEIGHT_FILES else [])
    return sum(f.stat().st_size for f in files) / 1e6


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
        from edgeml.quantization.onnxrt import OnnxModule

        trt = OnnxModule(int8_onnx, providers=[("TensorrtExecutionProvider", {"trt_int8_enable": True}), "CUDAExecutionProvider"])
        # Host-to-device copies included: ORT takes the input from host memory.
        result["int8"] = {
            f"batch{size}_ms": cpu_latency_ms({"int8": trt}, examples[size], warmup, runs)["int8"] for size in sizes
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
