"""The bench stages' measurements: CPU and GPU speed of every FP32 path and INT8 (and of every sweep recipe), the
compute floor, ONNX Runtime's and OpenVINO's profiles of their files (and of each sweep backend's fastest recipe), what each detector adds, the `edgeml predict` path and its
soak, and Table 1's rows."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from edgeml.bench import artifact as predict_bench
from edgeml.bench import cpu as cpu_timing
from edgeml.bench import environment as host
from edgeml.bench import gpu as gpu_timing
from edgeml.bench import loadtest, roofline
from edgeml.bench.isolated import Load, Workers
from edgeml.bench.profile import profile_onnx, profile_openvino, profiler
from edgeml.data.splits import load_arrays
from edgeml.io import read_json
from edgeml.model.resnet import load_checkpoint, parameter_count
from edgeml.ood.detectors import Evidence, GradientSigns, ModelContext, fit_set
from edgeml.ood.protocol import fitted
from edgeml.params import Params
from edgeml.quantization import export_fp32, load_deployable, load_head
from edgeml.runtime.artifact import DECODE_WORKERS, find_artifact


def table1_rows(
    table_models: Mapping[str, str],
    backend: str,
    parameters: int,
    files: Mapping[str, Path],
    cpu: Mapping[str, Mapping[str, float]],
    gpu_cells: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Table 1's rows, by row name (``table_models``: row -> the measured path it shows), from the CPU
    numbers per path, the GPU cells per row and the files' sizes."""
    return {
        name: {
            "path": backend if name == "int8" else source.removeprefix("fp32_"),
            # Quantization changes storage, not the number of weights.
            "parameters": parameters,
            "size_mb": cpu_timing.file_size_mb(files[source]),
            "cpu_latency_ms": cpu[source]["latency_ms"],
            "cpu_throughput_images_per_s": cpu[source]["throughput_images_per_s"],
            "gpu_latency_ms": gpu_cells[name]["latency_ms"],
            "gpu_path": gpu_cells[name]["path"],
        }
        for name, source in table_models.items()
    }


def run_bench(
    params: Params, fp32: Path, fp32_files: Mapping[str, Path], int8: Path, prepared: Path, choices: Path, artifact_dir: Path
) -> dict[str, Any]:
    """Every bench measurement and Table 1's rows. ``fp32`` is the checkpoint, ``fp32_files`` its
    deployable files by path name, ``int8`` the INT8 file; the detectors are timed with the INT8
    settings the ood stage chose (``choices``), fitted on the training sample of the arrays file
    ``prepared``; ``artifact_dir`` holds the packaged artifact."""
    bench, backend = params.bench, params.quantize.backend
    float_model = load_checkpoint(fp32)
    files = {**fp32_files, "int8": int8}
    packaged = find_artifact(artifact_dir)
    loads = {name: deployable_load(path, backend, bench.threads) for name, path in files.items()}
    # the INT8 model as `edgeml predict` calls it, and (OpenVINO IR) the same file called bare: static, zero-copy,
    # each in CALL_PROCESSES processes
    for copy in range(CALL_PROCESSES):
        loads[f"artifact{PROCESS_MARK}{copy}"] = Load("edgeml.bench.isolated:artifact", {"path": str(packaged), "threads": bench.threads})
    if packaged.suffix == ".xml":  # and the settings OpenVINO offers for it, tried on the bare call
        for setting, (changed, env) in {"": ({}, {}), **OPENVINO_SETTINGS}.items():
            for copy in range(CALL_PROCESSES if setting == "" else 1):
                loads[f"artifact_bare{setting}{PROCESS_MARK}{copy}"] = Load(
                    "edgeml.bench.isolated:bare_openvino", {"path": str(packaged), "threads": bench.threads} | changed, env)
    with Workers(loads) as workers:
        timed = cpu_timing.bench_cpu(workers, bench.warmup, bench.runs, bench.throughput_batch_size, bench.throughput_runs)
    cpu = {name: timed[name] for name in files}
    example = torch.zeros(1, 3, 32, 32)
    compute = roofline.compare_to_floor(
        cpu, list(fp32_files), roofline.count_macs(float_model, example), roofline.gemm_peak_gmacs(bench.threads)
    )
    # where ONNX Runtime's and OpenVINO's batch-1 time goes, for every ONNX and OpenVINO IR file timed above
    ort_profile = {
        name: profile_onnx(path, bench.threads, bench.runs, bench.warmup) for name, path in files.items() if path.suffix == ".onnx"
    }
    openvino_profile = {
        name: profile_openvino(path, bench.threads, bench.runs, bench.warmup) for name, path in files.items() if path.suffix == ".xml"
    }
    parts = roofline.measure_parts(float_model, bench.threads, bench.runs, bench.warmup)
    measured, source = roofline.measured_layers(int8, parts, bench.runs, bench.warmup,
                                                ort_profile.get("int8", {}).get("node_us"))
    compute["roofline"] = parts.floor(roofline.RUNTIMES.get(int8.suffix), compute["gemm_peak_gmacs"]["int8"]["best"], measured, source)
    compute["int8_over_roofline"] = cpu["int8"]["latency_ms"] / compute["roofline"]["floor_ms"]
    compute["artifact_model"] = artifact_calls(timed, compute["roofline"]["floor_ms"], cpu[compute["fastest_fp32_path"]]["latency_ms"])
    int8_onnx = int8 if int8.suffix == ".onnx" else None
    gpu = gpu_timing.bench_gpu(float_model, int8_onnx, bench.warmup, bench.runs, bench.throughput_batch_size)
    gpu_cells = gpu_timing.gpu_table_cells(gpu)  # Table 1: the fastest FP32 GPU path at batch 1
    int8_with_features = load_deployable(int8, backend, features=True)
    arrays = load_arrays(prepared)
    fit_images, fit_labels = fit_set(arrays, params.ood.fit_images, params.ood.seed)
    fit = Evidence("fit", fit_images, int8_with_features, params.ood.batch_size).outputs
    # the INT8 model's own head and its validation-chosen settings, as the ood stage used them
    context = ModelContext(load_head(int8, backend), GradientSigns(float_model))
    chosen = read_json(choices)["int8"]
    detectors = {name: fitted(name, chosen[name]["chosen"], context, fit, fit_labels) for name in params.ood.detectors}
    detector_cost = cpu_timing.detector_cost_us(int8_with_features, detectors, bench.runs)
    images = arrays["test_x"][: bench.artifact_images]
    with tempfile.TemporaryDirectory() as workdir:
        artifact = predict_bench.bench_artifact(
            packaged, images, Path(workdir), bench.threads, bench.throughput_batch_size
        )
        folder = Path(workdir, "soak")
        loadtest.write_mixed_files(folder, bench.soak_files)
        artifact["soak"] = {"mix": loadtest.MIX} | {
            mode: loadtest.soak(artifact_dir, folder, bench.throughput_batch_size, workers, bench.threads)
            for mode, workers in {"sequential": 0, "parallel": DECODE_WORKERS}.items()
        }
    # Table 1 compares INT8 with the fastest FP32 path measured in this run.
    table_models = {"fp32": compute["fastest_fp32_path"], "int8": "int8"}
    return (
        table1_rows(table_models, backend, parameter_count(float_model), files, cpu, gpu_cells)
        | {"cpu_paths": cpu, "gpu_paths": gpu, "compute": compute, "artifact": artifact, "detector_cost_us": detector_cost}
        | {"ort_profile": ort_profile, "openvino_profile": openvino_profile}
        | {"environment": host.environment(bench.threads), "settings": dataclasses.asdict(bench)}
    )


# OpenVINO settings the bench tries on the packaged IR's bare batch-1 call, each in its own process, against its
# defaults (the bench's threads, OpenVINO's own pinning): the artifact keeps its defaults unless one of these is
# faster, measured. Each is (factory kwargs, environment). Huge pages: glibc's malloc asks for transparent huge
# pages on its large blocks (the compiled weights among them) where THP is "madvise", as here: fewer TLB misses
# on the 8 MB of layer4 weights each call reads.
OPENVINO_SETTINGS = {
    " 1 thread": ({"threads": 1}, {}),
    " pinned": ({"pinning": True}, {}),
    " not pinned": ({"pinning": False}, {}),
    " huge pages": ({}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
}

# The artifact's median varies from process to process more than a bare call's does (measured here, 6 processes
# each, blocks of 50 taking turns: 0.877-0.940 ms as called, 0.845-0.859 ms bare; two bench runs of the same code
# read +2.4% and +14.8% over bare), so each of the two is timed in this many processes, and the median one counts.
CALL_PROCESSES = 3
PROCESS_MARK = "#"  # worker names: "artifact#0", "artifact_bare#1", "artifact_bare 1 thread#0"


def deployable_load(path: Path, backend: str, threads: int) -> Load:
    """How a timing worker loads a quantize-stage file (:func:`edgeml.bench.isolated.deployable`)."""
    return Load("edgeml.bench.isolated:deployable", {"path": str(path), "backend": backend, "threads": threads})


def artifact_calls(timed: Mapping[str, Mapping[str, Any]], floor_ms: float, fastest_fp32_ms: float) -> dict[str, Any]:
    """The packaged model's batch-1 latency as `edgeml predict` calls it, from one run of
    :func:`edgeml.bench.cpu.bench_cpu` (``timed``: a record per worker, ``artifact#0`` and so on): against the same
    file called bare (static, zero-copy; OpenVINO IR only), the roofline floor (``floor_ms``) and the fastest FP32
    path (its median, ``fastest_fp32_ms``), median over median. The artifact and the bare call each take the
    statistics of their median process among their :data:`CALL_PROCESSES` (robust to one unrepresentative
    process), with every process's median beside them."""

    def median_process(name: str) -> Optional[dict[str, Any]]:
        stats = sorted((record["latency_stats_ms"] for worker, record in timed.items() if worker.split(PROCESS_MARK)[0] == name),
                       key=lambda s: s["median"])
        if not stats:
            return None
        return stats[(len(stats) - 1) // 2] | {"process_medians": [s["median"] for s in stats]}

    called, bare = median_process("artifact"), median_process("artifact_bare")
    return {
        "as_called_ms": called,
        "as_called_over_roofline": called["median"] / floor_ms,
        "as_called_speedup_vs_fastest_fp32": fastest_fp32_ms / called["median"],
        "bare_ms": bare if bare else "not measured: the bare call is measured for OpenVINO IR artifacts",
        "as_called_over_bare": called["median"] / bare["median"] if bare else None,
        "bare_settings_ms": {setting.strip() or "default": stats for setting in ("", *OPENVINO_SETTINGS)
                             if (stats := median_process(f"artifact_bare{setting}"))},
    }


def time_sweep(params: Params, fp32: Path, int8: Mapping[str, Path]) -> dict[str, Any]:
    """Every sweep recipe's INT8 file (``int8``, by recipe) and both FP32 paths of the checkpoint ``fp32``
    timed in one run, each in its own process, taking turns over ``sweep.timing_rounds`` rounds, against the compute floor."""
    bench, recipes = params.bench, params.sweep.recipes
    float_model = load_checkpoint(fp32)
    with tempfile.TemporaryDirectory() as tmp:
        float_paths = {name: deployable_load(path, "fbgemm", bench.threads) for name, path in export_fp32(float_model, tmp).items()}
        int8_models = {name: deployable_load(int8[name], recipe.backend, bench.threads) for name, recipe in recipes.items()}
        with Workers({**float_paths, **int8_models}) as workers:
            timing = cpu_timing.time_recipes(
                {name: workers[name] for name in float_paths}, {name: workers[name] for name in int8_models},
                bench.warmup, params.sweep.timing_rounds, -(-bench.runs // params.sweep.timing_rounds),
                bench.throughput_batch_size, bench.throughput_runs,
            )
    macs, peaks = roofline.count_macs(float_model, torch.zeros(1, 3, 32, 32)), roofline.gemm_peak_gmacs(bench.threads)
    parts = roofline.measure_parts(float_model, bench.threads, bench.runs, bench.warmup)
    return {
        **timing, "macs_per_sample": macs, "gemm_peak_gmacs": peaks, "floor_ms": roofline.floor_ms(macs, peaks),
        "profiles": profile_backends(params, int8, timing["recipes"], parts, peaks["int8"]["best"]),
        "environment": host.environment(bench.threads),
    }


def profile_backends(
    params: Params, int8: Mapping[str, Path], timed: Mapping[str, Mapping[str, float]], parts: roofline.RooflineParts,
    gemm_peak_gmacs: float,
) -> dict[str, Any]:
    """Where each backend's batch-1 time goes: its fastest recipe (by ``timed`` latency) profiled by the backend's
    profiler (``Quantizer.profiler``), after the timing, so profiling never disturbs it; a
    backend without one says so (``profiler: null``). Each against the per-layer roofline (``parts``), with its
    per-layer times where its runtime reports them (OpenVINO, ONNX Runtime)."""
    by_backend: dict[str, list[str]] = {}
    for name, recipe in params.sweep.recipes.items():
        by_backend.setdefault(recipe.backend, []).append(name)
    profiles: dict[str, Any] = {}
    for backend, names in by_backend.items():
        fastest = min(names, key=lambda name: timed[name]["latency_ms"])
        profile = profiler(backend)
        measured = profile(int8[fastest], params.bench.threads, params.bench.runs, params.bench.warmup) if profile else {}
        layers, source = roofline.measured_layers(int8[fastest], parts, params.bench.runs, params.bench.warmup, measured.get("node_us"))
        floor = parts.floor(roofline.RUNTIMES.get(int8[fastest].suffix), gemm_peak_gmacs, layers, source)
        profiles[backend] = {"recipe": fastest, "file": int8[fastest].name, "profiler": profile.func.__name__ if profile else None,
                             "roofline": floor} | measured
    return profiles
