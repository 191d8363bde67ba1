"""Stage sweep_timing: every sweep recipe's INT8 file and both FP32 paths timed in this one process,
taking turns over sweep.timing_rounds rounds, against this machine's compute floor; so the sweep's
choice does not depend on drift between stages run minutes apart."""

import tempfile

import torch

from edgeml import params as P
from edgeml.bench import cpu as cpu_timing
from edgeml.bench import environment as host
from edgeml.bench import roofline
from edgeml.io import write_json
from edgeml.model.resnet import load_checkpoint
from edgeml.quantization import export_fp32, int8_path, load_deployable
from edgeml.stage import run


def main() -> None:
    params = P.load()
    bench, recipes = params.bench, params.sweep.recipes
    torch.set_num_threads(bench.threads)  # before loading: ONNX Runtime sessions take torch's thread count
    fp32 = load_checkpoint("models/fp32.pt")
    int8 = {name: load_deployable(int8_path(r.backend, f"models/sweep/{name}"), r.backend) for name, r in recipes.items()}
    with tempfile.TemporaryDirectory() as tmp:
        float_paths = {name: load_deployable(path) for name, path in export_fp32(fp32, tmp).items()}
        timing = cpu_timing.time_recipes(
            float_paths, int8, bench.threads, bench.warmup, params.sweep.timing_rounds,
            -(-bench.runs // params.sweep.timing_rounds), bench.throughput_batch_size, bench.throughput_runs,
        )
    macs, peaks = roofline.count_macs(fp32, torch.zeros(1, 3, 32, 32)), roofline.gemm_peak_gmacs(bench.threads)
    floor = roofline.floor_ms(macs, peaks)
    write_json("metrics/sweep_timing.json", {
        **timing, "macs_per_sample": macs, "gemm_peak_gmacs": peaks, "floor_ms": floor,
        "environment": host.environment(bench.threads),
    })


if __name__ == "__main__":
    run(main)
