"""Stage sweep@<recipe>: one quantization recipe on the committed FP32 model: size, CPU speed against
every FP32 path measured in the same run, and quality on validation data only (top-1 on the held-out
training split, logit detectors' AUROC vs the OOD validation set). No test image is read."""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeml import benchmark
from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.detectors import ModelContext, check_params
from edgeml.evaluation import validation_quality
from edgeml.io import atomic_dir, write_json
from edgeml.models import load_checkpoint
from edgeml.params import ParamsError
from edgeml.preprocess import to_tensor
from edgeml.quantization import export_fp32, int8_path, load_deployable, load_head, make_quantizer, quantize
from edgeml.stage import run


def main() -> None:
    params = P.load()
    name = sys.argv[1]
    if name not in params.sweep.recipes:
        raise ParamsError(f"sweep.recipes: no recipe {name!r} (defined: {sorted(params.sweep.recipes)})")
    recipe, bench, ood = params.sweep.recipes[name], params.bench, params.ood
    check_params(ood.detectors, {})
    quantizer = make_quantizer(recipe)  # a bad recipe stops here, before any work
    torch.set_num_threads(bench.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fp32 = load_checkpoint("models/fp32.pt")
    out_dir = Path("models/sweep") / name
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(out_dir) as out:
        fp32_files = export_fp32(fp32, tmp)
        path = int8_path(recipe.backend, out)
        start = time.perf_counter()
        quantize(quantizer, fp32, arrays, path)
        quantize_seconds = time.perf_counter() - start
        int8 = load_deployable(path, recipe.backend, features=True)
        models = {key: load_deployable(file, recipe.backend) for key, file in fp32_files.items()}
        models["int8"] = load_deployable(path, recipe.backend)
        cpu = benchmark.bench_cpu(
            models, bench.threads, bench.warmup, bench.runs, bench.throughput_batch_size, bench.throughput_runs
        )
        compute = benchmark.compare_to_floor(
            cpu, list(fp32_files), benchmark.count_macs(fp32, torch.zeros(1, 3, 32, 32)),
            benchmark.gemm_peak_gmacs(bench.threads),
        )
        quality = validation_quality(
            int8, ModelContext(load_head(path, recipe.backend)), to_tensor(arrays["val_x"]),
            torch.from_numpy(arrays["val_y"]), to_tensor(load_arrays(f"data/prepared/ood/{ood.validation_set}.npz")["x"]),
            ood.detectors, ood.validation_images, ood.batch_size,
        )
        size_mb = {"fp32": benchmark.file_size_mb(fp32_files["fp32_torchscript"]), "int8": benchmark.file_size_mb(path)}
    write_json(
        f"metrics/sweep/{name}.json",
        {
            "recipe": dataclasses.asdict(recipe),
            "size_mb": size_mb,
            "cpu": cpu,
            **compute,
            "validation": quality,
            "quantize_seconds": quantize_seconds,
            "environment": benchmark.environment(bench.threads),
        },
    )


if __name__ == "__main__":
    run(main)
