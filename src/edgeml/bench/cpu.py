"""CPU timing: batch-1 latency and batch throughput, with models taking turns so drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from edgeml.bench.isolated import Timer, latency_stats_ms
from edgeml.model.inference import normalize

if TYPE_CHECKING:  # pytorch-ood is needed only where detectors are timed
    from edgeml.ood.detectors import Detector


def latency_rounds_s(
    timers: Mapping[str, Timer], batch: int, warmup: int, rounds: int, block: int = 50, settle: int = 10,
) -> dict[str, list[list[float]]]:
    """Seconds per forward of each model at ``batch``: ``rounds`` rounds of ``block`` timed runs each.

    The models take turns within every round, so drift in machine load hits all of them alike; each is
    timed in its own process (:class:`edgeml.bench.isolated.InOwnProcess`), so none runs beside another's
    thread pool. Each block starts with ``settle`` untimed runs: the previous model's threads (ONNX
    Runtime's spinning workers, OpenMP's) linger for a few runs and would otherwise be charged to this one
    (measured here in one process: TorchScript FP32 2.3 ms alone, up to 6 ms right after ORT)."""
    for timer in timers.values():
        timer.samples(batch, 0, warmup)
    times: dict[str, list[list[float]]] = {name: [] for name in timers}
    for _ in tqdm(range(rounds), desc=f"latency batch {batch}", leave=False):
        for name, timer in timers.items():
            times[name].append(timer.samples(batch, settle, block))
    return times


def cpu_latency_ms(
    timers: Mapping[str, Timer], batch: int, warmup: int, runs: int, block: int = 50, settle: int = 10,
) -> dict[str, float]:
    """Median ms per forward of each model at ``batch`` over about ``runs`` interleaved runs (:func:`latency_rounds_s`)."""
    rounds = latency_rounds_s(timers, batch, warmup, -(-runs // block), block, settle)
    return {name: 1e3 * statistics.median(t for samples in r for t in samples) for name, r in rounds.items()}


def time_recipes(
    fp32: Mapping[str, Timer], int8: Mapping[str, Timer], warmup: int, rounds: int, block: int, batch_size: int,
    batch_runs: int,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``batch_size`` throughput of every FP32 path and INT8 recipe, taking turns
    for ``rounds`` rounds of ``block`` runs; each recipe's speed-up over the fastest FP32 path (median over
    median), per round and overall, and its spread: the interquartile range of the per-round speed-ups over
    their median (a robust spread: one round disturbed by another process does not set it)."""
    samples, cpu = timed_cpu({**fp32, **int8}, warmup, rounds, block, batch_size, batch_runs)
    round_ms = {name: [1e3 * statistics.median(r) for r in per_round] for name, per_round in samples.items()}
    fastest = min(fp32, key=lambda name: cpu[name]["latency_ms"])
    recipes = {}
    for name in int8:
        per_round = [f / i for f, i in zip(round_ms[fastest], round_ms[name])]
        recipes[name] = {
            **cpu[name],
            "speedup": cpu[fastest]["latency_ms"] / cpu[name]["latency_ms"],
            "speedup_rounds": per_round,
            "speedup_spread": _iqr(per_round) / statistics.median(per_round),
        }
    return {"fp32": {name: cpu[name] for name in fp32}, "fastest_fp32_path": fastest, "recipes": recipes,
            "rounds": rounds, "runs_per_round": block, "timed": "each model in its own process, taking turns"}


def _iqr(values: list[float]) -> float:
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return high - low


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return interleaved_median_seconds({"": fn}, repeats)[""]


def interleaved_median_seconds(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each function's median seconds over ``rounds`` rounds, every round running each function once, in turn:
    a drift in the machine's speed then falls on all of them alike, and their ratios hold."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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


def timed_cpu(
    timers: Mapping[str, Timer], warmup: int, rounds: int, block: int, batch_size: int, batch_runs: int,
) -> tuple[dict[str, list[list[float]]], dict[str, dict[str, Any]]]:
    """Per model, taking turns: the batch-1 seconds by round (:func:`latency_rounds_s`), and its record: batch-1
    latency (ms/sample: the median, and min, p10, median and p90) and throughput (images/s at ``batch_size``)."""
    samples = latency_rounds_s(timers, 1, warmup, rounds, block)
    batch_ms = cpu_latency_ms(timers, batch_size, max(2, warmup // 10), batch_runs, block=5, settle=3)
    records = {}
    for name, per_round in samples.items():
        stats = latency_stats_ms([t for r in per_round for t in r])
        records[name] = {"latency_ms": stats["median"], "latency_stats_ms": stats,
                         "throughput_images_per_s": batch_size / (batch_ms[name] / 1e3)}
    return samples, records


def bench_cpu(timers: Mapping[str, Timer], warmup: int, runs: int, batch_size: int, batch_runs: int) -> dict[str, dict[str, Any]]:
    """:func:`timed_cpu`'s records for about ``runs`` batch-1 runs per model, in rounds of 50."""
    return timed_cpu(timers, warmup, -(-runs // 50), 50, batch_size, batch_runs)[1]
