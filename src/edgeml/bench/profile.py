"""Where an ONNX Runtime session's batch-1 time goes: kernel time per op type from ORT's own profiler,
the time outside kernels (executor work between nodes, run set-up), and the optimized graph's nodes
per op type, so QuantizeLinear/DequantizeLinear pairs ORT did not fuse and layout transposes show.

The session is opened by the project's ``ort_session`` with the bench's settings plus tracing, so what
is profiled is what the bench times. Profiling itself costs time per node; the plain session's median is
reported beside the profiled runs for that reason.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeml.runtime.runners import ort_session

KERNEL_SUFFIX = "_kernel_time"  # ORT names a node's kernel event "<node name>_kernel_time"


def node_counts(path: str | Path) -> dict[str, int]:
    """Nodes per op type of an ONNX file, most frequent first."""
    return dict(Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node).most_common())


def run_breakdowns(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ``session.run`` of an ORT trace (its JSON events): wall µs (``model_run``), executor µs
    (``SequentialExecutor::Execute``) and kernel µs per op type, each kernel assigned to the run whose
    span contains its start."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    executes = [e for e in events if e.get("cat") == "Session" and e["name"].endswith("Executor::Execute")]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith(KERNEL_SUFFIX)]
    breakdowns = []
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        by_op: Counter[str] = Counter()
        for kernel in kernels:
            if start <= kernel["ts"] <= end:
                by_op[kernel["args"]["op_name"]] += kernel["dur"]
        execute = sum(e["dur"] for e in executes if start <= e["ts"] <= end)
        breakdowns.append({"wall_us": run["dur"], "execute_us": execute, "kernel_us": dict(by_op)})
    return breakdowns


def summarize(breakdowns: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ms per run over the runs between the quartiles of wall time: robust to a run disturbed by
    another process, yet additive, so kernels + between kernels + outside the executor = wall exactly."""
    ranked = sorted(breakdowns, key=lambda b: b["wall_us"])
    middle = ranked[len(ranked) // 4: len(ranked) - len(ranked) // 4] or ranked

    def mean_ms(values: Sequence[float]) -> float:
        return sum(values) / len(middle) / 1e3

    ops = {op for b in middle for op in b["kernel_us"]}
    kernel_ms = {op: mean_ms([b["kernel_us"].get(op, 0) for b in middle]) for op in ops}
    kernels = mean_ms([sum(b["kernel_us"].values()) for b in middle])
    execute, wall = mean_ms([b["execute_us"] for b in middle]), mean_ms([b["wall_us"] for b in middle])
    return {
        "runs": len(breakdowns),
        "runs_summarized": len(middle),
        "kernel_ms": dict(sorted(kernel_ms.items(), key=lambda item: -item[1])),
        "kernels_ms": kernels,
        "between_kernels_ms": execute - kernels,
        "outside_executor_ms": wall - execute,
        "outside_kernels_ms": wall - kernels,
        "wall_ms": wall,
        "median_wall_ms": statistics.median(b["wall_us"] for b in breakdowns) / 1e3,
    }


def profile_onnx(
    path: str | Path, threads: int, runs: int = 200, warmup: int = 20, block: int = 50, settle: int = 10
) -> dict[str, Any]:
    """Profile about ``runs`` batch-1 runs of the ONNX file ``path`` (random input) at ``threads`` threads
    (:func:`summarize`), time the same number in a plain session (``unprofiled_ms``: median), and count
    the nodes of the file and of the graph ORT optimized from it. The two sessions take turns in blocks of
    ``block`` runs, each after ``settle`` runs that are not counted: the other session's spinning workers
    linger for a few runs (as in :func:`edgeml.bench.cpu.latency_rounds_s`)."""
    with tempfile.TemporaryDirectory(prefix="edgeml-profile-") as tmp:
        optimized = Path(tmp, "optimized.onnx")

        def tracing(options: Any) -> None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp, "trace"))
            options.optimized_model_filepath = str(optimized)

        profiled, plain = ort_session(path, threads, configure=tracing), ort_session(path, threads)
        feeds = {
            i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
            for i in plain.get_inputs()
        }
        for session in (profiled, plain):
            for _ in range(warmup):
                session.run(None, feeds)
        seconds = []
        for _ in range(-(-runs // block)):
            for session in (profiled, plain):
                for _ in range(settle):
                    session.run(None, feeds)
                for _ in range(block):
                    start = time.perf_counter()
                    session.run(None, feeds)
                    if session is plain:
                        seconds.append(time.perf_counter() - start)
        events = json.loads(Path(profiled.end_profiling()).read_text())
        counted = [b for i, b in enumerate(run_breakdowns(events)[warmup:]) if i % (settle + block) >= settle]
        return summarize(counted) | {
            "unprofiled_ms": 1e3 * statistics.median(seconds),
            "threads": threads,
            "nodes": {"file": node_counts(path), "optimized": node_counts(optimized)},
        }
