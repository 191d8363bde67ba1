"""Stage sweep@<recipe>: one quantization recipe on the committed FP32 model: size, CPU speed against
every FP32 path, top-1, and MSP AUROC per OOD set, FP32 vs INT8."""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeml import benchmark
from edgeml import params as P
from edgeml.data import id_split, load_arrays
from edgeml.detectors import make_detector
from edgeml.io import atomic_dir, write_json
from edgeml.metrics import ood_metrics
from edgeml.models import load_checkpoint
from edgeml.params import ParamsError
from edgeml.preprocess import to_tensor
from edgeml.quantization import export_fp32, int8_path, load_deployable, make_quantizer, quantize
from edgeml.stage import run
from edgeml.training import predict_logits


def main() -> None:
    params = P.load()
    name = sys.argv[1]
    if name not in params.sweep.recipes:
        raise ParamsError(f"sweep.recipes: no recipe {name!r} (defined: {sorted(params.sweep.recipes)})")
    recipe, bench = params.sweep.recipes[name], params.bench
    quantizer = make_quantizer(recipe)  # a bad recipe stops here, before any work
    torch.set_num_threads(bench.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fp32 = load_checkpoint("models/fp32.pt")
    out_dir = Path("models/sweep") / name
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(out_dir) as out:
        fp32_files = export_fp32(fp32, tmp)
        start = time.perf_counter()
        quantize(quantizer, fp32, arrays, int8_path(recipe.backend, out))
        quantize_seconds = time.perf_counter() - start
        int8 = load_deployable(int8_path(recipe.backend, out), recipe.backend)
        models = {key: load_deployable(path, recipe.backend) for key, path in fp32_files.items()} | {"int8": int8}
        fp32_size = benchmark.file_size_mb(fp32_files["fp32_torchscript"])
        int8_size = benchmark.file_size_mb(int8_path(recipe.backend, out))
        cpu = benchmark.bench_cpu(
            models, bench.threads, bench.warmup, bench.runs, bench.throughput_batch_size, bench.throughput_runs
        )
        compute = benchmark.compare_to_floor(
            cpu, list(fp32_files), benchmark.count_macs(fp32, torch.zeros(1, 3, 32, 32)),
            benchmark.gemm_peak_gmacs(bench.threads),
        )
        images = {"test": to_tensor(arrays["test_x"])} | {
            s: to_tensor(load_arrays(f"data/prepared/ood/{s}.npz")["x"]) for s in params.ood.sets
        }
        labels = torch.from_numpy(arrays["test_y"])
        id_positions, _ = id_split(arrays, params.ood.id_split)
        msp = make_detector("msp")
        quality = {}
        for model_name in ("fp32", "int8"):
            model = models["fp32_torchscript"] if model_name == "fp32" else int8
            logits = {key: predict_logits(model, x, params.ood.batch_size) for key, x in images.items()}
            scores = {key: msp.score_logits(v).numpy() for key, v in logits.items()}
            scores["id"] = scores["test"][id_positions]
            quality[model_name] = {
                "top1": (logits["test"].argmax(1) == labels).float().mean().item(),
                "msp_auroc": {s: ood_metrics(scores["id"], scores[s])["auroc"] for s in params.ood.sets},
            }
    write_json(
        f"metrics/sweep/{name}.json",
        {
            "recipe": dataclasses.asdict(recipe),
            "size_mb": {"fp32": fp32_size, "int8": int8_size},
            "cpu": cpu,
            **compute,
            "quality": quality,
            "quantize_seconds": quantize_seconds,
            "environment": benchmark.environment(bench.threads),
        },
    )


if __name__ == "__main__":
    run(main)
