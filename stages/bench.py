"""Stage bench: parameters, size on disk, CPU (and GPU when present) latency and throughput,
against every FP32 path and this machine's compute floor."""

import dataclasses
import tempfile
from pathlib import Path

import torch

from edgeml import params as P
from edgeml.bench import artifact as predict_bench
from edgeml.bench import cpu as cpu_timing
from edgeml.bench import environment as host
from edgeml.bench import gpu as gpu_timing
from edgeml.bench import loadtest, roofline
from edgeml.data.splits import load_arrays
from edgeml.io import read_json, write_json
from edgeml.model.resnet import load_checkpoint, parameter_count
from edgeml.ood.detectors import (
    Evidence,
    GradientSigns,
    ModelContext,
    check_params,
    fit_set,
)
from edgeml.ood.protocol import fitted
from edgeml.quantization import fp32_paths, int8_path, load_deployable, load_head
from edgeml.runtime.artifact import ARTIFACT_DIR, DECODE_WORKERS, find_artifact
from edgeml.stage import run


def main() -> None:
    params = P.load()
    bench, backend = params.bench, params.quantize.backend
    check_params(params.ood.detectors, {})
    torch.set_num_threads(bench.threads)  # before loading: ONNX Runtime sessions take torch's thread count
    float_model = load_checkpoint("models/fp32.pt")
    files = {**fp32_paths(), "int8": int8_path(backend)}
    deployed = {name: load_deployable(path, backend) for name, path in files.items()}
    cpu = cpu_timing.bench_cpu(
        deployed, bench.threads, bench.warmup, bench.runs, bench.throughput_batch_size, bench.throughput_runs
    )
    example = torch.zeros(1, 3, 32, 32)
    compute = roofline.compare_to_floor(
        cpu, list(fp32_paths()), roofline.count_macs(float_model, example), roofline.gemm_peak_gmacs(bench.threads)
    )
    int8_onnx = files["int8"] if files["int8"].suffix == ".onnx" else None
    gpu = gpu_timing.bench_gpu(float_model, int8_onnx, bench.warmup, bench.runs, bench.throughput_batch_size)
    gpu_cells = gpu_timing.gpu_table_cells(gpu)  # Table 1: the fastest FP32 GPU path at batch 1
    int8_with_features = load_deployable(files["int8"], backend, features=True)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fit_images, fit_labels = fit_set(arrays, params.ood.fit_images, params.ood.seed)
    fit = Evidence("fit", fit_images, int8_with_features, params.ood.batch_size).outputs
    # the INT8 model's own head and its validation-chosen settings, as the ood stage used them
    context = ModelContext(load_head(files["int8"], backend), GradientSigns(float_model))
    chosen = read_json("metrics/detectors.json")["int8"]
    detectors = {name: fitted(name, chosen[name]["chosen"], context, fit, fit_labels) for name in params.ood.detectors}
    detector_cost = cpu_timing.detector_cost_us(int8_with_features, detectors, bench.runs)
    images = arrays["test_x"][: bench.artifact_images]
    with tempfile.TemporaryDirectory() as workdir:
        artifact = predict_bench.bench_artifact(
            find_artifact(ARTIFACT_DIR), images, Path(workdir), bench.threads, bench.throughput_batch_size, repeats=3
        )
        folder = Path(workdir, "soak")
        loadtest.write_mixed_files(folder, bench.soak_files)
        artifact["soak"] = {"mix": loadtest.MIX} | {
            mode: loadtest.soak(ARTIFACT_DIR, folder, bench.throughput_batch_size, workers, bench.threads)
            for mode, workers in {"sequential": 0, "parallel": DECODE_WORKERS}.items()
        }
    # Table 1 compares INT8 with the fastest FP32 path measured in this run.
    table_models = {"fp32": compute["fastest_fp32_path"], "int8": "int8"}
    write_json(
        "metrics/bench.json",
        {
            name: {
                "path": backend if name == "int8" else source.removeprefix("fp32_"),
                # Quantization changes storage, not the number of weights.
                "parameters": parameter_count(float_model),
                "size_mb": cpu_timing.file_size_mb(files[source]),
                "cpu_latency_ms": cpu[source]["latency_ms"],
                "cpu_throughput_images_per_s": cpu[source]["throughput_images_per_s"],
                "gpu_latency_ms": gpu_cells[name]["latency_ms"],
                "gpu_path": gpu_cells[name]["path"],
            }
            for name, source in table_models.items()
        }
        | {"cpu_paths": cpu, "gpu_paths": gpu, "compute": compute, "artifact": artifact, "detector_cost_us": detector_cost}
        | {"environment": host.environment(bench.threads), "settings": dataclasses.asdict(bench)},
    )


if __name__ == "__main__":
    run(main)
