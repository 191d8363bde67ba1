"""Stage bench: parameters, size on disk, CPU (and GPU when present) latency and throughput."""

import dataclasses
import tempfile
from pathlib import Path

from edgeml import benchmark
from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.detectors import make_detector
from edgeml.io import write_json
from edgeml.models import load_checkpoint, parameter_count
from edgeml.quantization import load_deployable
from edgeml.stage import run

DEPLOYABLE = {"fp32": "models/deploy/fp32.pt", "int8": "models/deploy/int8.pt"}
ARTIFACT = "models/edgeml_int8.pt"


def main() -> None:
    params = P.load()
    bench = params.bench
    float_model = load_checkpoint("models/fp32.pt")
    deployed = {name: load_deployable(path, params.quantize.backend) for name, path in DEPLOYABLE.items()}
    cpu = benchmark.bench_cpu(
        deployed, bench.threads, bench.warmup, bench.runs, bench.throughput_batch_size, bench.throughput_runs
    )
    gpu = benchmark.bench_gpu({"fp32": float_model, "int8": None}, bench.warmup, bench.runs)
    detectors = {name: make_detector(name) for name in params.ood.detectors}
    detector_cost = benchmark.detector_cost_us(deployed["int8"], detectors, bench.runs)
    images = load_arrays("data/prepared/cifar10.npz")["test_x"][: bench.artifact_images]
    with tempfile.TemporaryDirectory() as workdir:
        artifact = benchmark.bench_artifact(
            ARTIFACT, images, Path(workdir), bench.threads, bench.throughput_batch_size, repeats=3
        )
    write_json(
        "metrics/bench.json",
        {
            name: {
                # Quantization changes storage, not the number of weights.
                "parameters": parameter_count(float_model),
                "size_mb": benchmark.file_size_mb(path),
                "cpu_latency_ms": cpu[name]["latency_ms"],
                "cpu_throughput_images_per_s": cpu[name]["throughput_images_per_s"],
                "gpu_latency_ms": gpu[name],
            }
            for name, path in DEPLOYABLE.items()
        }
        | {"artifact": artifact, "detector_cost_us": detector_cost}
        | {"environment": benchmark.environment(bench.threads), "settings": dataclasses.asdict(bench)},
    )


if __name__ == "__main__":
    run(main)
