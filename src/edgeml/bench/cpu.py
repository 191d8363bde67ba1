"""CPU timing: batch-1 latency and batch throughput, with models taking turns so drift hits all alike."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from edgeml.model.inference import normalize

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    from edgeml.ood.detectors import Detector


@torch.no_grad()
def latency_rounds_s(
    models: dict[str, Callable[[torch.Tensor], object]], example: torch.Tensor, warmup: int, rounds: int,
    block: int = 50, settle: int = 10, clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[list[float]]]:
    """Seconds per forward of each model on ``example``: ``rounds`` rounds of ``block`` timed runs each.

    The models take turns within every round, so drift in machine load hits all of them alike. Each
    block starts with ``settle`` untimed runs: the previous model's thread pool (ONNX Runtime's
    spinning workers, OpenMP's) lingers for a few runs and would otherwise be charged to this one
    (measured here: TorchScript FP32 2.3 ms alone, up to 6 ms right after ORT). ``clock``: seconds now
    (tests pass a simulated one, so the decision logic above the timings is tested without timing)."""
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
                start = clock()
                model(example)
                samples.append(clock() - start)
            times[name].append(samples)
    return times


def cpu_latency_ms(
    models: dict[str, nn.Module], example: torch.Tensor, warmup: int, runs: int, block: int = 50, settle: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median ms per forward of each model on ``example`` over about ``runs`` interleaved runs (:func:`latency_rounds_s`)."""
    rounds = latency_rounds_s(models, example, warmup, -(-runs // block), block, settle, clock)
    return {name: 1e3 * statistics.median(t for samples in r for t in samples) for name, r in rounds.items()}


def time_recipes(
    fp32: dict[str, Callable[[torch.Tensor], object]], int8: dict[str, Callable[[torch.Tensor], object]],
    threads: int, warmup: int, rounds: int, block: int, batch_size: int, batch_runs: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``batch_size`` throughput of every FP32 path and INT8 recipe, all in this
    process, taking turns for ``rounds`` rounds of ``block`` runs; each recipe's speed-up over the fastest
    FP32 path, per round and overall, and its spread: the interquartile range of the per-round speed-ups over
    their median (a robust spread: one round disturbed by another process does not set it)."""
    torch.set_num_threads(threads)
    models = {**fp32, **int8}
    generator = torch.Generator().manual_seed(0)
    single = torch.randn(1, 3, 32, 32, generator=generator)
    batch = torch.randn(batch_size, 3, 32, 32, generator=generator)
    samples = latency_rounds_s(models, single, warmup, rounds, block, clock=clock)
    round_ms = {name: [1e3 * statistics.median(r) for r in per_round] for name, per_round in samples.items()}
    latency_ms = {name: 1e3 * statistics.median(t for r in per_round for t in r) for name, per_round in samples.items()}
    batch_ms = cpu_latency_ms(models, batch, max(2, warmup // 10), batch_runs, block=5, settle=3, clock=clock)
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
            "speedup_spread": _iqr(per_round) / statistics.median(per_round),
        }
    return {"fp32": {name: cpu[name] for name in fp32}, "fastest_fp32_path": fastest, "recipes": recipes,
            "rounds": rounds, "runs_per_round": block}


def _iqr(values: list[float]) -> float:
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return high - low


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def detector_cost_us(model: nn.Module, detectors: dict[str, "Detector"], runs: int) -> dict[str, float]:
    """What each (fitted) detector adds per sample on top of ``model``, which returns (logits, features,
    map): median µs at batch 1, outputs computed beforehand. KNN's cost grows with the number of fitted
    samples. Input-perturbation detectors (ODIN) run the model again on changed inputs: their cost is
    their scoring time minus the plain forward pass they replace, and their per-set gradient cache is
    bypassed (each run is a fresh image set), so the FP32 twin's forward and backward pass is counted."""
    from edgeml.ood.detectors import Evidence

    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    forward_s = median_seconds(lambda: model(normalize(image)), runs)
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
