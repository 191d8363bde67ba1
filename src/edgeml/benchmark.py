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
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from edgeml.deploy import EdgeModel
from edgeml.detectors import LogitDetector

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
        "versions": {pkg: version(pkg) for pkg in ("torch", "torchvision", "numpy")},
        "python": platform.python_version(),
        "quantized_engine": torch.backends.quantized.engine,
    }


@torch.no_grad()
def cpu_latency_ms(
    models: dict[str, nn.Module], example: torch.Tensor, warmup: int, runs: int, block: int = 10
) -> dict[str, float]:
    """Median ms per forward of each model on ``example``.

    The models take turns in blocks of ``block`` runs, so drift in machine load hits all of
    them alike, while each block still sees its own kernels warm in cache (alternating every
    single call would charge each model for the other's cache and thread-pool state)."""
    for model in models.values():
        for _ in range(warmup):
            model(example)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in tqdm(range(-(-runs // block)), desc=f"latency batch {len(example)}", leave=False):
        for name, model in models.items():
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


@torch.no_grad()
def detector_cost_us(model: nn.Module, detectors: dict[str, LogitDetector], runs: int) -> dict[str, float]:
    """What each logit detector adds per sample on top of ``model`` (median µs at batch 1)."""
    logits = model(torch.randn(1, 3, 32, 32))
    return {
        name: 1e6 * _median_seconds(lambda d=detector: d.score_logits(logits), runs)
        for name, detector in detectors.items()
    }


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
    batch_ms = cpu_latency_ms(models, batch, max(2, warmup // 10), batch_runs, block=1)
    return {
        name: {
            "latency_ms": latency[name],
            "throughput_images_per_s": batch_size / (batch_ms[name] / 1e3),
        }
        for name in models
    }


def bench_gpu(models: dict[str, Optional[nn.Module]], warmup: int, runs: int) -> dict[str, float | str]:
    """Batch-1 GPU latency per model; a model without a GPU path (None) is recorded as not measured."""
    if not torch.cuda.is_available():
        return {name: f"{NOT_MEASURED}: no CUDA GPU on this machine" for name in models}
    example = torch.randn(1, 3, 32, 32)
    return {
        name: gpu_latency_ms(model, example, warmup, runs)
        if model is not None
        else f"{NOT_MEASURED}: PyTorch INT8 kernels (fbgemm/qnnpack) are CPU-only; GPU INT8 needs TensorRT"
        for name, model in models.items()
    }

