"""The `edgeml predict` path: the artifact on image files, against the model alone."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from edgeml.bench.cpu import file_size_mb, interleaved_median_seconds, median_seconds
from edgeml.bench.memory import PeakRSS
from edgeml.runtime.artifact import DECODE_WORKERS, EdgeModel
from edgeml.runtime.images import read_image

# Rounds of the throughput figures: each round times every figure once, in turn (the model alone, decoding, each
# schedule), so the share of the bound compares runs made under the same conditions.
ROUNDS = 5


def bench_artifact(
    artifact: str | Path, images: np.ndarray, workdir: Path, threads: int, batch_size: int, rounds: int = ROUNDS
) -> dict[str, object]:
    """The whole `edgeml predict` path on real files: load, then file -> decode -> model -> decision.

    Latency is per file at batch 1. Throughput (images/s, median of ``rounds``) is measured on ``images`` as
    32x32 PNGs and enlarged to 256x256 JPEGs (a camera-like decoding cost), decoding in the calling thread
    (``sequential``: workers 0; the model's calls still overlap it where the runner pipelines them) and by the
    default pool of decoding threads (``parallel``). Two figures bound it: the artifact's model alone on the
    decoded batches (``model_only``, what decoding ahead can approach at best, as both compete for the same
    cores) and the decoding cost per file on one thread; they are timed in the same rounds as the schedules.
    Peak RSS (and its growth over the RSS before) comes from one more run of each schedule, before the timed
    rounds and untimed (its sampling thread would take the GIL from the run it measures); it also warms each
    schedule up (the throughput-compiled model is compiled on its first stream)."""
    png_files, jpeg_files = [], []
    for i, image in enumerate(images):
        png_files.append(workdir / f"{i:05d}.png")
        Image.fromarray(image).save(png_files[-1])
        jpeg_files.append(workdir / f"{i:05d}.jpg")
        Image.fromarray(image).resize((256, 256), Image.BILINEAR).save(jpeg_files[-1], quality=90)
    load_s = median_seconds(lambda: EdgeModel.load(artifact, threads=threads), rounds)
    model = EdgeModel.load(artifact, threads=threads)
    list(model.predict(png_files[:10], batch_size=1))  # warm-up
    latencies = []
    for file in tqdm(png_files, desc="artifact latency", leave=False):
        start = time.perf_counter()
        list(model.predict([file], batch_size=1, workers=0))
        latencies.append(time.perf_counter() - start)
    batches = [np.stack([read_image(f) for f in png_files[i : i + batch_size]]) for i in range(0, len(png_files), batch_size)]
    by_threads = {n: model if n == threads else EdgeModel.load(artifact, threads=n) for n in sorted({1, threads})}
    schedules = {"sequential": (threads, 0), "parallel": (threads, DECODE_WORKERS), **({
        f"model {n} thread{'s' if n > 1 else ''}, {workers} decoding": (n, workers)
        for n in by_threads for workers in range(1, threads + 1) if (n, workers) != (threads, DECODE_WORKERS)} if threads > 1 else {})}
    kinds = {"png_32": png_files, "jpeg_256": jpeg_files}

    def run(kind: str, mode: str) -> Callable[[], object]:
        n, workers = schedules[mode]
        return lambda: list(by_threads[n].predict(kinds[kind], batch_size, workers))

    for m in by_threads.values():
        m.predict_images(batches[0])  # warm-up: the dynamic-batch model is compiled on its first batch
    peak_rss = {}
    for kind in kinds:
        for mode in schedules:
            with PeakRSS() as rss:
                run(kind, mode)()
            peak_rss[(kind, mode)] = rss
    seconds = interleaved_median_seconds(
        {("model_only", n): (lambda m=m: [m.predict_images(batch) for batch in batches]) for n, m in by_threads.items()}
        | {("decode", kind): (lambda files=files: [read_image(f) for f in files]) for kind, files in kinds.items()}
        | {(kind, mode): run(kind, mode) for kind in kinds for mode in schedules},
        rounds,
    )
    model_only = {n: len(png_files) / seconds[("model_only", n)] for n in by_threads}
    throughput: dict[str, dict[str, object]] = {}
    for kind, files in kinds.items():
        decode_s = seconds[("decode", kind)] / len(files)
        bound = predict_bound(model_only, decode_s, threads)
        throughput[kind] = {"decode_us_per_file": 1e6 * decode_s, "bound_images_per_s": bound}
        for mode, (n, workers) in schedules.items():
            rss = peak_rss[(kind, mode)]
            images_per_s = len(files) / seconds[(kind, mode)]
            throughput[kind][mode] = {
                "model_threads": n, "decode_workers": workers,
                "images_per_s": images_per_s,
                "share_of_model_only": images_per_s / model_only[threads],
                "share_of_bound": images_per_s / bound,
                "peak_rss_mb": rss.peak_mb,
                "rss_growth_mb": None if rss.peak_mb is None else rss.peak_mb - rss.start_mb,
            }
        throughput[kind]["speedup"] = throughput[kind]["parallel"]["images_per_s"] / throughput[kind]["sequential"]["images_per_s"]
    return {
        "artifact_load_ms": 1e3 * load_s,
        "artifact_size_mb": file_size_mb(model.path),
        "artifact_latency_ms": 1e3 * statistics.median(latencies),
        "artifact_throughput_images_per_s": throughput["png_32"]["parallel"]["images_per_s"],  # as `edgeml predict` runs
        "model_only_images_per_s": model_only[threads],
        "model_only_images_per_s_by_threads": {str(n): v for n, v in model_only.items()},
        "decode_workers": DECODE_WORKERS,
        "throughput": throughput,
    }


def predict_bound(model_only: dict[int, float], decode_s: float, cores: int) -> float:
    """The most images/s `edgeml predict` can reach when decoding and the model share ``cores``: every image costs
    the model's core time at its most efficient thread count measured (``model_only``: images/s by threads; n
    threads busy for 1 / images/s each) plus its decoding time on one core, all spread over the cores. It uses the
    model's measured scaling: with imperfect scaling, a 1-thread model beside decoding wastes less than 2 threads."""
    model_core_s = min(n / images_per_s for n, images_per_s in model_only.items())
    return cores / (model_core_s + decode_s)
