"""Where a runtime's batch-1 time goes. ONNX Runtime: kernel time per op type from ORT's own profiler,
the time outside kernels (executor work between nodes, run set-up), and the optimized graph's nodes
per op type, so QuantizeLinear/DequantizeLinear pairs ORT did not fuse and layout transposes show.
OpenVINO: each executed node's time from its CPU plugin's performance counters, per op type, with the
kernel implementation it ran (which shows whether convolutions ran as INT8 kernels, and on which ISA).
ExecuTorch: each XNNPACK operator's time from the program's ETDump (ExecuTorch's event tracer), per
operator type, with its kernel (layout, precision, algorithm), the delegate's and runtime's time between
operators, and the Python call around ``Method::execute``. TorchScript (fbgemm, qnnpack): each operator the
script calls, from ``torch.profiler``. Each backend names its profiler (``Quantizer.profiler``; :func:`profiler`).

Each model is opened by the project's own ``ort_session`` / ``openvino_compiled`` with the bench's
settings plus profiling, so what is profiled is what the bench times. Profiling itself costs time per
node; the plain model's median is reported beside the profiled runs for that reason.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

from edgeml.runtime.runners import openvino_compiled, ort_session

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
        by_node: Counter[str] = Counter()
        for kernel in kernels:
            if start <= kernel["ts"] <= end:
                by_op[kernel["args"]["op_name"]] += kernel["dur"]
                by_node[kernel["name"].removesuffix(KERNEL_SUFFIX)] += kernel["dur"]
        execute = sum(e["dur"] for e in executes if start <= e["ts"] <= end)
        breakdowns.append({"wall_us": run["dur"], "execute_us": execute, "kernel_us": dict(by_op), "node_us": dict(by_node)})
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


def _in_turns(profiled: Callable[[], Any], plain: Callable[[], Any], runs: int, warmup: int, block: int, settle: int) -> tuple[list[Any], list[float]]:
    """Run ``profiled`` and ``plain`` in turns, blocks of ``block`` counted runs each after ``settle`` uncounted
    ones (the other model's threads linger for a few runs, as in :func:`edgeml.bench.cpu.latency_rounds_s`):
    what ``profiled`` returned on its counted runs, and ``plain``'s counted seconds."""
    for run in (profiled, plain):
        for _ in range(warmup):
            run()
    counted, seconds = [], []
    for _ in range(-(-runs // block)):
        for _ in range(settle):
            profiled()
        counted += [profiled() for _ in range(block)]
        for _ in range(settle):
            plain()
        for _ in range(block):
            start = time.perf_counter()
            plain()
            seconds.append(time.perf_counter() - start)
    return counted, seconds


def _counted(breakdowns: Sequence[Any], warmup: int, block: int, settle: int) -> list[Any]:
    """The breakdowns of the runs :func:`_in_turns` counted, from those of every profiled run in order."""
    return [b for i, b in enumerate(breakdowns[warmup:]) if i % (settle + block) >= settle]


def _kernel_nodes(counters: Sequence[Any], executed: set[str]) -> list[Any]:
    """The performance counters of the nodes the CPU plugin ran a kernel for: those named in its execution
    graph (``executed``: ``compiled.get_runtime_model()``'s ops) but Parameter, Result and Reshape, which move
    no data (exec type ``unknown_<precision>``). Neither the counters' exec type nor their status tells this
    alone: a node fused into another (a residual Add folded into its convolution) may keep a kernel's exec
    type, and the status says NOT_RUN whenever a node's time, kept in whole microseconds, is 0, so it flips
    between runs."""
    return [node for node in counters if node.node_name in executed and not node.exec_type.startswith(("unknown", "undef"))]


def profile_openvino(path: str | Path, threads: int, runs: int = 200, warmup: int = 20, block: int = 50, settle: int = 10) -> dict[str, Any]:
    """Profile about ``runs`` batch-1 runs of the OpenVINO IR ``path`` (random input) at ``threads`` threads
    from the CPU plugin's performance counters (:func:`summarize`: kernels are the nodes that ran one, and the rest
    of the run, wall minus kernels, is outside them), time the same number without counters
    (``unprofiled_ms``: median), in turns, and count the file's ops and the nodes the plugin ran, with each
    op type's kernel implementations."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    shape = [d.get_length() if d.is_static else 1 for d in model.inputs[0].get_partial_shape()]  # batch 1, static, as deployed
    compiled = openvino_compiled(model, threads, profiling=True, shape=shape)
    profiled, plain = compiled.create_infer_request(), openvino_compiled(model, threads, shape=shape).create_infer_request()
    executed = {op.get_friendly_name() for op in compiled.get_runtime_model().get_ops()}
    feed = {0: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

    def profiled_run() -> dict[str, Any]:
        start = time.perf_counter()
        profiled.infer(feed)
        wall_us = 1e6 * (time.perf_counter() - start)
        by_op: Counter[str] = Counter()
        for node in _kernel_nodes(profiled.profiling_info, executed):
            by_op[node.node_type] += node.real_time.total_seconds() * 1e6
        return {"wall_us": wall_us, "execute_us": wall_us, "kernel_us": dict(by_op)}

    counted, seconds = _in_turns(profiled_run, lambda: plain.infer(feed), runs, warmup, block, settle)
    ran: Counter[str] = Counter()
    kernels: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for node in _kernel_nodes(profiled.profiling_info, executed):
        ran[node.node_type] += 1
        kernels[node.node_type][node.exec_type] += 1
    ops = Counter(op.get_type_name() for op in model.get_ops() if op.get_type_name() not in ("Constant", "Parameter", "Result"))
    executor_parts = ("between_kernels_ms", "outside_executor_ms")  # ORT's; the plugin reports nodes only
    return {k: v for k, v in summarize(counted).items() if k not in executor_parts} | {
        "unprofiled_ms": 1e3 * statistics.median(seconds),
        "threads": threads,
        "nodes": {"file": dict(ops.most_common()), "optimized": dict(ran.most_common())},
        "kernels": {op: dict(kinds.most_common()) for op, kinds in kernels.items()},
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
        _, seconds = _in_turns(lambda: profiled.run(None, feeds), lambda: plain.run(None, feeds), runs, warmup, block, settle)
        events = json.loads(Path(profiled.end_profiling()).read_text())
        counted = _counted(run_breakdowns(events), warmup, block, settle)
        nodes = {node for b in counted for node in b["node_us"]}
        return summarize(counted) | {
            # each node's median µs over the counted runs, by node name (per-layer times: edgeml.bench.roofline)
            "node_us": {node: statistics.median(b["node_us"].get(node, 0) for b in counted) for node in sorted(nodes)},
            "unprofiled_ms": 1e3 * statistics.median(seconds),
            "threads": threads,
            "nodes": {"file": node_counts(path), "optimized": node_counts(optimized)},
        }


# XNNPACK names an operator event "<operator> (<layout, precision>) <algorithm> #<n>", e.g.
# "Convolution (NHWC, QS8) IGEMM #3": split into the operator and the kernel it ran.
XNNPACK_EVENT = re.compile(r"(?P<op>[^(#]+?)\s*(?P<kernel>\(.*?)?\s*#\d+")
EXECUTE_EVENT, DELEGATE_EVENT = "Method::execute", "DELEGATE_CALL"


def profile_executorch(
    path: str | Path, threads: int, runs: int = 200, warmup: int = 20, block: int = 50, settle: int = 10
) -> dict[str, Any]:
    """Profile about ``runs`` batch-1 runs of the ExecuTorch program ``path`` (random input) at ``threads``
    threads from its ETDump, read by ``executorch.devtools.Inspector`` (:func:`summarize`: kernels are the
    XNNPACK operators; between kernels, the rest of ``Method::execute``: the delegate call and the runtime;
    outside the executor, the Python call around it), time the same number in the plain program
    (``unprofiled_ms``: median), in turns, and count the operators run, with each type's kernels.
    Event tracing: https://docs.pytorch.org/executorch/stable/etdump.html"""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from edgeml.quantization.executorch import ExecuTorchModule

    torch.set_num_threads(threads)  # ExecuTorchModule sizes XNNPACK's thread pool from it
    portable_lib._unsafe_reset_threadpool(threads)
    traced = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    plain = ExecuTorchModule(path)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    walls_us: list[float] = []

    def profiled_run() -> None:
        start = time.perf_counter()
        traced.forward((image,))
        walls_us.append(1e6 * (time.perf_counter() - start))

    _, seconds = _in_turns(profiled_run, lambda: plain(image), runs, warmup, block, settle)
    with tempfile.TemporaryDirectory(prefix="edgeml-profile-") as tmp:
        etdump = Path(tmp, "trace.etdp")
        traced.write_etdump_result_to_file(str(etdump))
        with warnings.catch_warnings():  # no debug buffer was asked for: times only, no tensors
            warnings.filterwarnings("ignore", message="Output Buffer not found")
            events = [e for b in Inspector(etdump_path=str(etdump)).event_blocks if b.name == "Execute" for e in b.events]
    ms = {e.name: e.perf_data.raw for e in events}  # per run, in order (Inspector's unit: ms)
    if {len(times) for times in ms.values()} != {len(walls_us)} or EXECUTE_EVENT not in ms:
        raise RuntimeError(f"{path}: the ETDump does not hold one {EXECUTE_EVENT} and one time per operator for each of the {len(walls_us)} runs")
    operators = {}  # event name -> (operator, kernel); an event XNNPACK did not name is a portable op of its own
    for name in (name for name in ms if name not in (EXECUTE_EVENT, DELEGATE_EVENT)):  # in the program's order
        match = XNNPACK_EVENT.fullmatch(name)
        operators[name] = (match["op"], match["kernel"] or "") if match else (name, "portable")
    kernels: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for op, kernel in operators.values():
        kernels[op][kernel] += 1
    breakdowns = []
    for i, wall_us in enumerate(walls_us):
        by_op: Counter[str] = Counter()
        for name, (op, _) in operators.items():
            by_op[op] += 1e3 * ms[name][i]
        breakdowns.append({"wall_us": wall_us, "execute_us": 1e3 * ms[EXECUTE_EVENT][i], "kernel_us": dict(by_op)})
    counted = _counted(breakdowns, warmup, block, settle)
    return summarize(counted) | {
        "unprofiled_ms": 1e3 * statistics.median(seconds),
        "threads": threads,
        "nodes": {"optimized": {op: sum(kinds.values()) for op, kinds in sorted(kernels.items(), key=lambda i: -sum(i[1].values()))}},
        "kernels": {op: dict(kinds.most_common()) for op, kinds in kernels.items()},
    }


RUN_EVENT = "edgeml_run"  # the record_function span around each profiled TorchScript call


def profile_torchscript(
    path: str | Path, threads: int, runs: int = 200, warmup: int = 20, block: int = 50, settle: int = 10, engine: str = "fbgemm"
) -> dict[str, Any]:
    """Profile about ``runs`` batch-1 runs of the INT8 TorchScript file ``path`` (random input, quantization
    ``engine``) at ``threads`` threads with ``torch.profiler`` (:func:`summarize`: kernels are the operators the
    script calls, the outermost ``::`` events of a run, e.g. ``quantized::conv2d_relu``; between kernels, the
    rest of the script's ``forward``, its interpreter; outside the executor, the Python call around it), time
    the same number without the profiler (``unprofiled_ms``: median), in turns, and count the operators run."""
    import torch

    from edgeml.runtime.torch_files import WithEngine, load_torchscript

    torch.set_num_threads(threads)
    model = WithEngine(load_torchscript(path, engine), engine)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    walls_us: list[float] = []

    def profiled_run() -> None:
        start = time.perf_counter()
        with torch.profiler.record_function(RUN_EVENT):
            model(image)
        walls_us.append(1e6 * (time.perf_counter() - start))

    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        _, seconds = _in_turns(profiled_run, lambda: model(image), runs, warmup, block, settle)
    spans = [e for e in profiler.events() if e.name == RUN_EVENT]
    if len(spans) != len(walls_us):
        raise RuntimeError(f"{path}: torch.profiler recorded {len(spans)} of the {len(walls_us)} profiled runs")
    breakdowns = []
    for span, wall_us in zip(spans, walls_us):
        by_op: Counter[str] = Counter()
        for call in _outermost_operators(span):
            by_op[call.name] += call.time_range.elapsed_us()
        execute_us = sum(child.time_range.elapsed_us() for child in span.cpu_children)  # the script's forward
        breakdowns.append({"wall_us": wall_us, "execute_us": execute_us, "kernel_us": dict(by_op)})
    ran = Counter(call.name for call in _outermost_operators(spans[-1]))
    counted = _counted(breakdowns, warmup, block, settle)
    return summarize(counted) | {
        "unprofiled_ms": 1e3 * statistics.median(seconds),
        "threads": threads,
        "nodes": {"optimized": dict(ran.most_common())},
    }


def _outermost_operators(event: Any) -> list[Any]:
    """The operator events (``namespace::name``) under ``event`` that no other operator encloses."""
    found = []
    for child in event.cpu_children:
        found += [child] if "::" in child.name else _outermost_operators(child)
    return found


def profiler(backend: str) -> Optional[Callable[..., dict[str, Any]]]:
    """The profiler of ``backend``'s files (``Quantizer.profiler``, a function of this module), or None."""
    from edgeml.quantization import quantizer_class

    cls = quantizer_class(backend)
    return functools.partial(globals()[cls.profiler], **cls.profiler_options) if cls.profiler else None
