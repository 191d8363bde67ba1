"""The machine a timing was measured on: CPU model and ISA, GPU and CUDA stack, library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    pass


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
