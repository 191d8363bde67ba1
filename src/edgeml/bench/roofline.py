"""Floors for a model's batch-1 latency, measured on this machine.

The GEMM floor divides the MACs per image by one large GEMM's peak, where each weight byte is used thousands
of times. At batch 1 the late layers use each weight byte only H x W times (16 in layer4, on a 4x4 map): they
are bound by reading weights, not by multiply-adds. The per-layer roofline is a floor that applies: for each
layer, the larger of its own GEMM's time at its batch-1 shape (the fastest INT8 GEMM library here, its call
taken off) and its INT8 weight bytes over the read bandwidth of a buffer as large as all the weights; summed,
plus the cost of one call of the runtime (a one-op model). Williams, Waterman and Patterson, "Roofline" (CACM 2009).

A floor is the fastest GEMM measured here, not one library's: on an AMD EPYC with AVX512-VNNI and no AMX, a
roofline made of ONNX Runtime's MatMulInteger alone once sat above OpenVINO's own convolutions (the whole model
at 0.92x it). Each shape is timed in every library of :func:`int8_gemms` and the fastest counts.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgeml.bench.cpu import median_seconds
from edgeml.runtime.runners import ort_session



def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per sample (convolutions and linear layers)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        macs += output[0].numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(example[:1])
    for handle in handles:
        handle.remove()
    return macs


def gemm_peak_gmacs(threads: int, size: int = 2048, repeats: int = 10) -> dict[str, dict[str, float]]:
    """This machine's matrix-multiply peak (GMAC/s, best of ``repeats``) for FP32 and INT8 (u8 x s8 -> s32),
    per library, at ``threads`` threads: the compute floor a model's latency is compared with. 2048x2048:
    at 1024 ONNX Runtime's AMX INT8 peak came out at either ~1,100 or ~2,150 GMAC/s from one run to the
    next (a Xeon with amx_int8), which moved the INT8 floor 2x; at 2048 three runs agreed within 2%."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    kernels: dict[str, dict[str, Callable[[], object]]] = {
        "fp32": {"torch": lambda: torch.mm(a, b), "onnxruntime": _ort_matmul((size, size, size), threads, "fp32")},
        "int8": int8_gemms((size, size, size), threads),
    }
    peaks: dict[str, dict[str, float]] = {}
    for dtype, by_library in kernels.items():
        for library, run in by_library.items():
            run()  # warm-up
            seconds = min(median_seconds(run, 1) for _ in range(repeats))
            peaks.setdefault(dtype, {})[library] = size**3 / seconds / 1e9
        peaks[dtype]["best"] = max(peaks[dtype].values())
    return peaks


def _ort_matmul(shape: tuple[int, int, int], threads: int, dtype: str) -> Callable[[], object]:
    """A one-op ONNX Runtime model of ``shape`` (M, K, N), B a constant as a layer's weights are: FP32 MatMul
    (``dtype`` "fp32") or u8 x s8 MatMulInteger ("int8"), the MLAS kernels the ORT backend uses."""
    from onnx import TensorProto, helper

    m, k, n = shape
    rng = np.random.default_rng(0)
    op, a_type, b_type, y_type, a, b = {
        "fp32": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                 rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)),
        "int8": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                 rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-128, 128, (k, n), dtype=np.int8)),
    }[dtype]
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], op,
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        initializer=[helper.make_tensor("B", b_type, [k, n], b.tobytes(), raw=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort_session(model.SerializeToString(), threads)
    return lambda: session.run(None, {"A": a})


def floor_ms(macs: int, peaks: dict[str, dict[str, float]]) -> dict[str, float]:
    """Batch-1 compute floor per data type: ``macs`` per image at the best GEMM peak measured for it."""
    return {dtype: 1e3 * macs / (peaks[dtype]["best"] * 1e9) for dtype in ("fp32", "int8")}


def compare_to_floor(
    cpu: dict[str, dict[str, float]], fp32_paths: list[str], macs: int, peaks: dict[str, dict[str, float]]
) -> dict[str, object]:
    """The fastest FP32 path, the INT8 speed-up over it, and each batch-1 latency as a multiple of its
    compute floor (MACs / the best GEMM peak of its data type)."""
    fastest = min(fp32_paths, key=lambda name: cpu[name]["latency_ms"])
    floor = floor_ms(macs, peaks)
    return {
        "fastest_fp32_path": fastest,
        "int8_speedup_vs_fastest_fp32": cpu[fastest]["latency_ms"] / cpu["int8"]["latency_ms"],
        "macs_per_sample": macs,
        "gemm_peak_gmacs": peaks,
        "floor_ms": floor,
        "latency_over_floor": {
            name: cpu[name]["latency_ms"] / floor["int8" if name == "int8" else "fp32"] for name in cpu
        },
    }


@dataclasses.dataclass(frozen=True)
class Layer:
    """A convolution or linear layer as the GEMM it is at batch 1: ``m`` output positions, ``k`` inputs per
    output, ``n`` output channels; ``key`` matches it with a runtime's node (out channels, output H x W, in
    channels, kernel)."""

    name: str
    m: int
    k: int
    n: int
    weights: int
    key: tuple[int, ...]

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def label(self) -> str:
        out_channels, height, width, in_channels, kernel = self.key
        return f"{kernel}x{kernel} conv {in_channels}→{out_channels} @{height}x{width}" if height else f"linear {in_channels}→{out_channels}"


def gemm_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Every convolution and linear layer of ``model`` at batch 1, in the order they run."""
    layers: list[Layer] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                kernel, (height, width) = module.kernel_size[0], output.shape[2:]
                layers.append(Layer(name, height * width, module.in_channels // module.groups * kernel * kernel,
                                    module.out_channels, module.weight.numel(), (module.out_channels, height, width, module.in_channels, kernel)))
            else:
                layers.append(Layer(name, 1, module.in_features, module.out_features, module.weight.numel(),
                                    (module.out_features, 0, 0, module.in_features, 0)))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(example[:1])
    for handle in handles:
        handle.remove()
    return layers


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    return min(median_seconds(run, 1) for _ in range(repeats))


CALL_SHAPE = (1, 8, 8)  # a GEMM with next to no work: what one call of a library costs
TURN_PAUSE_S = 0.1  # :func:`int8_gemm_rounds_us`: idle time before each library's turn
GEMM_ROUNDS = 5  # :func:`int8_gemm_rounds_us`: the floor takes each shape's best round, the report shows the slowest
GEMM_LIBRARIES = {"onnxruntime": "ONNX Runtime's MatMulInteger", "torch": "PyTorch's `torch._int_mm`"}  # :func:`int8_gemms`, as reports name them


def int8_gemm(library: str, shape: tuple[int, int, int], threads: int) -> Callable[[], object]:
    """An INT8 GEMM (8-bit inputs, int32 sums) of ``shape`` (M, K, N) in ``library`` (:data:`GEMM_LIBRARIES`):
    ONNX Runtime's MatMulInteger (MLAS, as the ORT backend runs it) or PyTorch's ``torch._int_mm``, B a constant
    as a layer's weights are."""
    if library == "onnxruntime":
        return _ort_matmul(shape, threads, "int8")
    if library != "torch":
        raise ValueError(f"no INT8 GEMM library {library!r}; expected one of {sorted(GEMM_LIBRARIES)}")
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    m, k, n = shape
    a = torch.randint(0, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)
    return lambda: torch._int_mm(a, b)


def int8_gemms(shape: tuple[int, int, int], threads: int) -> dict[str, Callable[[], object]]:
    """:func:`int8_gemm` of ``shape`` in every library, by name."""
    return {library: int8_gemm(library, shape, threads) for library in GEMM_LIBRARIES}


def int8_gemm_worker(library: str, shapes: list[list[int]], threads: int) -> tuple[Callable[[Any], object], Callable[[int], Any]]:
    """A timing-worker factory (:mod:`edgeml.bench.isolated`): ``library``'s INT8 GEMMs of ``shapes``, in a process
    of their own. The worker's inputs are the GEMMs (the one asked for as batch ``i`` is ``shapes[i]``'s); its
    model runs the one it is given."""
    gemms = [int8_gemm(library, (m, k, n), threads) for m, k, n in shapes]
    return (lambda gemm: gemm()), gemms.__getitem__


def int8_gemm_rounds_us(shapes: list[tuple[int, int, int]], threads: int, rounds: int = GEMM_ROUNDS, repeats: int = 40
                        ) -> dict[tuple[int, int, int], dict[str, list[float]]]:
    """Each shape's INT8 GEMM time per library (:data:`GEMM_LIBRARIES`) in µs, once per round, less the same
    library's time at :data:`CALL_SHAPE` in that round (its cost of a call, which the roofline counts once, for the
    runtime). Each library runs in a worker process of its own and the workers take turns, each after a pause
    that lets the other's threads go to sleep, timing every shape per round (``repeats`` untimed runs, then the
    best of ``repeats``). Why (AMD EPYC, 2 cores, layer4's 16x4608x512): in one process, ONNX Runtime right after
    ``torch._int_mm`` timed 178 µs in 2 of 12 tries, against 98-117 µs in all 24 timed alone. What is left is
    the libraries' own: the same shape in the same worker still moved between about 100 and 180 µs from one
    round to the next, so the floor takes each shape's best round and the report shows its slowest."""
    from edgeml.bench.isolated import Load, Workers

    ordered = [CALL_SHAPE, *sorted(set(shapes) - {CALL_SHAPE})]
    loads = {library: Load("edgeml.bench.roofline:int8_gemm_worker", {"library": library, "shapes": [list(shape) for shape in ordered],
                                                                       "threads": threads}) for library in GEMM_LIBRARIES}
    times: dict[tuple[int, int, int], dict[str, list[float]]] = {shape: {library: [] for library in GEMM_LIBRARIES} for shape in ordered}
    with Workers(loads) as workers:
        for _ in range(rounds):
            for library, worker in workers.items():
                time.sleep(TURN_PAUSE_S)  # the worker before this one lets its threads go to sleep
                for index, shape in enumerate(ordered):
                    times[shape][library].append(1e6 * min(worker.samples(index, repeats, repeats)))
    call = times.pop(CALL_SHAPE)
    return {shape: {library: [max(us - call_us, 0.0) for us, call_us in zip(rounds_us, call[library])] for library, rounds_us in by_library.items()}
            for shape, by_library in times.items()}


def read_bandwidth_gbs(nbytes: int, threads: int, repeats: int = 100) -> float:
    """GB/s of reading an ``nbytes`` buffer (the INT8 weights' size) at ``threads`` threads: the fastest of an
    int8 max and a float32 sum over it, best of ``repeats``."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    as_int8 = torch.randint(-128, 128, (nbytes,), dtype=torch.int8, generator=generator)
    as_float = torch.randn(nbytes // 4, generator=generator)
    return nbytes / min(best_seconds(as_int8.max, repeats), best_seconds(as_float.sum, repeats)) / 1e9


def one_op_model(runtime: str, threads: int) -> tuple[Callable[[Any], object], Callable[[int], Any]]:
    """A timing-worker factory (:mod:`edgeml.bench.isolated`): one ReLU on a [1, 3, 32, 32] input in ``runtime``
    (openvino: static batch 1, as an artifact is called; onnxruntime), called as the project calls its models: the cost of a call."""
    if runtime == "openvino":
        import openvino as ov
        import openvino.opset13 as ops

        from edgeml.runtime.runners import OpenVinoCalls

        parameter = ops.parameter([-1, 3, 32, 32], ov.Type.f32)
        calls = OpenVinoCalls(ov.Model([ops.relu(parameter)], [parameter]), threads, [1, 3, 32, 32])
        return calls, lambda batch: np.zeros((batch, 3, 32, 32), np.float32)
    if runtime == "onnxruntime":
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 32, 32])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = ort_session(model.SerializeToString(), threads)
        return (lambda x: session.run(None, {"x": x})), lambda batch: np.zeros((batch, 3, 32, 32), np.float32)
    raise ValueError(f"no one-op model for runtime {runtime!r}; expected openvino or onnxruntime")


def openvino_layer_us(path: str | Path, threads: int, runs: int, warmup: int) -> dict[tuple[int, ...], list[float]]:
    """Each convolution's and fully connected node's median µs over ``runs`` batch-1 runs of the OpenVINO IR
    ``path`` (static, from the CPU plugin's counters), by :class:`Layer` key, in the order they ran."""
    import openvino as ov

    from edgeml.runtime.runners import openvino_compiled

    model = ov.Core().read_model(str(path))
    shape = [d.get_length() if d.is_static else 1 for d in model.inputs[0].get_partial_shape()]
    compiled = openvino_compiled(model, threads, profiling=True, shape=shape)
    ops = {op.get_friendly_name(): op for op in compiled.get_runtime_model().get_ops()}
    request = compiled.create_infer_request()
    feed = {0: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    times: defaultdict[str, list[float]] = defaultdict(list)
    for run in range(warmup + runs):
        request.infer(feed)
        if run >= warmup:
            for node in request.profiling_info:
                if node.node_type.startswith(("Convolution", "FullyConnected")) and node.real_time.total_seconds() > 0:
                    times[node.node_name].append(node.real_time.total_seconds() * 1e6)
    by_key: defaultdict[tuple[int, ...], list[float]] = defaultdict(list)
    for name, samples in times.items():
        op = ops[name]
        weights = [int(d) for d in op.input_value(1).get_partial_shape().to_shape()]
        out = [int(d) for d in op.get_output_partial_shape(0).to_shape()]
        key = (out[1], out[2], out[3], weights[1], weights[2]) if len(out) == 4 else (out[-1], 0, 0, weights[-1], 0)
        by_key[key].append(statistics.median(samples))
    return dict(by_key)


def layer_roofline(
    layers: list[Layer], gemm_us: dict[tuple[int, int, int], dict[str, list[float]]], bandwidth_gbs: float,
    call_us: float, gemm_peak_gmacs: float, measured_us: dict[tuple[int, ...], list[float]] | None = None,
) -> dict[str, Any]:
    """The per-layer roofline of INT8 ``layers``, grouped by shape: each group's GEMM floor (MACs / the large GEMM's
    peak ``gemm_peak_gmacs``), its compute floor (its own GEMM's best round in the fastest library of ``gemm_us``,
    calls taken off, never below the GEMM floor; the same library's slowest round beside it), its weight-read floor (bytes / ``bandwidth_gbs``), the roofline
    (the larger of the two) and, where ``measured_us`` has them, a runtime's node times; the sum of the
    roofline and ``call_us`` (the runtime's cost of one call) is the floor of the whole model."""
    groups: dict[tuple[int, ...], list[Layer]] = {}
    for layer in layers:
        groups.setdefault(layer.key, []).append(layer)
    rows = []
    for key, members in groups.items():
        first, macs = members[0], sum(layer.macs for layer in members)
        gemm_floor_us = macs / (gemm_peak_gmacs * 1e3)
        by_library = gemm_us[(first.m, first.k, first.n)]
        library = min(by_library, key=lambda name: min(by_library[name]))
        compute_us = max(len(members) * min(by_library[library]), gemm_floor_us)
        read_us = sum(layer.weights for layer in members) / (bandwidth_gbs * 1e3)
        row = {
            "layer": first.label, "count": len(members), "layers": [layer.name for layer in members],
            "macs": macs, "weight_bytes": sum(layer.weights for layer in members),
            "gemm_floor_us": gemm_floor_us, "gemm_library": library, "compute_us": compute_us,
            "compute_slowest_round_us": max(len(members) * max(by_library[library]), gemm_floor_us), "gemm_rounds": len(by_library[library]), "weight_read_us": read_us, "roofline_us": max(compute_us, read_us),
            "bound": "weight reads" if read_us > compute_us else "compute",
        }
        if measured_us is not None:
            measured = measured_us.get(key, [])
            row["measured_us"] = sum(measured) if len(measured) == len(members) else None
            row["measured_over_roofline"] = row["measured_us"] / row["roofline_us"] if row["measured_us"] else None
        rows.append(row)
    layers_us = sum(row["roofline_us"] for row in rows)
    return {
        "layers": rows,
        "layers_roofline_us": layers_us,
        "call_us": call_us,
        "floor_ms": (layers_us + call_us) / 1e3,
        "gemm_floor_ms": sum(row["gemm_floor_us"] for row in rows) / 1e3,
        "measured_layers_us": sum(row["measured_us"] for row in rows) if measured_us is not None and all(row["measured_us"] for row in rows) else None,
    }


RUNTIMES = {".xml": "openvino", ".onnx": "onnxruntime"}  # INT8 file suffix -> the runtime with a one-op model


@dataclasses.dataclass
class RooflineParts:
    """What the per-layer roofline is made of, measured on this machine (:func:`measure_parts`)."""

    layers: list[Layer]
    gemm_us: dict[tuple[int, int, int], dict[str, list[float]]]  # per round (:func:`int8_gemm_rounds_us`)
    read_bandwidth_gbs: dict[str, float]
    call_us: dict[str, float]
    threads: int

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def floor(self, runtime: str | None, gemm_peak_gmacs: float, measured_us: dict[tuple[int, ...], list[float]] | None = None,
              layer_times: str = "") -> dict[str, Any]:
        """:func:`layer_roofline` with the call cost of ``runtime`` (None: a runtime without a one-op model, cost 0)
        and its per-layer times ``measured_us`` (from ``layer_times``, said in the result)."""
        result = layer_roofline(self.layers, self.gemm_us, self.read_bandwidth_gbs[str(self.threads)],
                                self.call_us.get(runtime, 0.0), gemm_peak_gmacs, measured_us)
        return result | {
            "runtime": runtime or "not measured: no one-op model for this runtime (its call cost counts as 0)",
            "layer_times": layer_times if measured_us is not None else "not measured: no per-layer times from this runtime",
            "weight_bytes": self.weight_bytes, "read_bandwidth_gbs": self.read_bandwidth_gbs, "call_us_by_runtime": self.call_us,
            "gemm_rounds_us_by_shape": {f"{m}x{k}x{n}": us for (m, k, n), us in self.gemm_us.items()},
            "gemm_libraries": {library: GEMM_LIBRARIES[library] for library in next(iter(self.gemm_us.values()))},
            "gemm_call_shape": list(CALL_SHAPE),
        }


def measure_parts(float_model: nn.Module, threads: int, runs: int, warmup: int) -> RooflineParts:
    """Measure here what the roofline of ``float_model``'s layers in INT8 needs: each layer shape's INT8 GEMMs, the
    read bandwidth of a buffer as large as the INT8 weights at 1 and ``threads`` threads, and each runtime's
    cost of a call (a one-op model in its own process, median of ``runs``)."""
    from edgeml.bench.isolated import Load, Workers

    layers = gemm_layers(float_model, torch.zeros(1, 3, 32, 32))
    weight_bytes = sum(layer.weights for layer in layers)
    bandwidth = {str(n): read_bandwidth_gbs(weight_bytes, n) for n in sorted({1, threads})}
    gemm_us = int8_gemm_rounds_us([(layer.m, layer.k, layer.n) for layer in layers], threads)
    loads = {runtime: Load("edgeml.bench.roofline:one_op_model", {"runtime": runtime, "threads": threads}) for runtime in RUNTIMES.values()}
    with Workers(loads) as workers:
        for worker in workers.values():
            worker.samples(1, 0, warmup)
        call_us = {runtime: 1e6 * statistics.median(worker.samples(1, 0, runs)) for runtime, worker in workers.items()}
    return RooflineParts(layers, gemm_us, bandwidth, call_us, threads)


def measured_layers(path: Path, parts: RooflineParts, runs: int, warmup: int, onnx_node_us: dict[str, float] | None = None
                    ) -> tuple[dict[tuple[int, ...], list[float]] | None, str]:
    """An INT8 file's per-layer times by :class:`Layer` key, and where they come from: OpenVINO's counters for an
    IR (profiled here), ONNX Runtime's profiler for an ONNX file (``onnx_node_us``: its nodes' times, by name);
    None for other formats."""
    if path.suffix == ".xml":
        return openvino_layer_us(path, parts.threads, runs, warmup), "OpenVINO's per-node counters"
    if path.suffix == ".onnx" and onnx_node_us is not None:
        return onnx_layer_us(onnx_node_us, parts.layers), "ONNX Runtime's profiler, per node"
    return None, ""


def onnx_layer_us(node_us: dict[str, float], layers: list[Layer]) -> dict[tuple[int, ...], list[float]]:
    """ONNX Runtime's node times summed per layer, by :class:`Layer` key. The exporter names a node by the module
    path it came from, one folder per module, each relative to its parent ("/layer2/layer2.0/downsample/
    downsample.0/Conv" is layer2.0.downsample.0); nodes ORT fused from it keep that name with a suffix."""
    by_name: defaultdict[str, float] = defaultdict(float)
    for node, us in node_us.items():
        path: list[str] = []
        for folder in node.strip("/").split("/")[:-1]:
            if path and folder.startswith(path[-1] + "."):
                path[-1] = folder
            else:
                path.append(folder)
        by_name[".".join(path)] += us
    by_key: defaultdict[tuple[int, ...], list[float]] = defaultdict(list)
    for layer in layers:
        if layer.name in by_name:
            by_key[layer.key].append(by_name[layer.name])
    return dict(by_key)
