"""ONNX Runtime's and OpenVINO's profiles of a batch-1 run (edgeml.bench.profile): real profiling runs of a
tiny conv net, float and quantized (QDQ for ORT, NNCF for OpenVINO), parsed and summed per op type; no
timing assertions. ExecuTorch's profile is tested with its recipes (tests/test_quantization.py), in their
own process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeml import sweep
from edgeml.bench.profile import profile_onnx, profile_openvino, run_breakdowns, summarize
from edgeml.bench.roofline import Layer, RooflineParts
from edgeml.bench.suite import profile_backends
from edgeml.reporting import tables


def tiny_convnet(path: Path) -> Path:
    """Conv-ReLU-Conv with a skip Add, global average pool and a linear head: the ResNet pattern, small."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wl", "bl"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8), init("wl", 10, 8), init("bl", 10)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class _Random(CalibrationDataReader):
    def __init__(self) -> None:
        self.batches = iter(np.random.default_rng(1).standard_normal((4, 1, 3, 16, 16), dtype=np.float32))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("profile")
    fp32 = tiny_convnet(folder / "fp32.onnx")
    quantize_static(str(fp32), str(folder / "int8.onnx"), _Random(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return {"fp32": fp32, "int8": folder / "int8.onnx"}


@pytest.fixture(scope="module")
def profiles(models: dict[str, Path]) -> dict[str, dict]:
    return {name: profile_onnx(path, threads=1, runs=12, warmup=2, block=6, settle=2) for name, path in models.items()}


def test_kernel_times_per_op_type_add_up_to_the_run(profiles):
    for profile in profiles.values():
        assert profile["runs"] == 12 and 0 < profile["runs_summarized"] <= 12
        assert all(ms >= 0 for ms in profile["kernel_ms"].values())
        assert profile["kernels_ms"] == pytest.approx(sum(profile["kernel_ms"].values()))
        assert min(profile["between_kernels_ms"], profile["outside_executor_ms"], profile["unprofiled_ms"]) >= 0
        assert 0 < profile["kernels_ms"] <= profile["wall_ms"]
        parts = profile["kernels_ms"] + profile["between_kernels_ms"] + profile["outside_executor_ms"]
        assert parts == pytest.approx(profile["wall_ms"]) == profile["kernels_ms"] + profile["outside_kernels_ms"]
        assert set(profile["kernel_ms"]) <= set(profile["nodes"]["optimized"])  # every kernel is a node ORT ran
    assert "GlobalAveragePool" in profiles["fp32"]["kernel_ms"] and "Gemm" in profiles["fp32"]["kernel_ms"]
    assert {"Conv", "FusedConv"} & set(profiles["fp32"]["kernel_ms"])


def test_node_counts_show_what_ort_fused(profiles):
    fp32, int8 = profiles["fp32"]["nodes"], profiles["int8"]["nodes"]
    assert fp32["file"] == {"Conv": 2, "Relu": 2, "Add": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert int8["file"]["Conv"] == 2 and int8["file"]["DequantizeLinear"] > int8["file"]["QuantizeLinear"] > 0
    assert int8["optimized"]["QLinearConv"] == 2 and "Conv" not in int8["optimized"]  # the QDQ pairs fused into the conv
    assert "QLinearConv" in profiles["int8"]["kernel_ms"]


def test_each_kernel_is_charged_to_the_run_it_started_in():
    def event(cat: str, name: str, ts: int, dur: int, op: str = "") -> dict:
        return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"op_name": op} if op else {}}

    events = [
        event("Session", "model_run", 0, 100), event("Session", "SequentialExecutor::Execute", 5, 90),
        event("Node", "conv_kernel_time", 10, 40, "Conv"), event("Node", "add_kernel_time", 60, 10, "Add"),
        event("Node", "conv_fence_before", 9, 1, "Conv"),  # not a kernel
        event("Session", "model_run", 200, 50), event("Session", "SequentialExecutor::Execute", 202, 45),
        event("Node", "conv_kernel_time", 210, 30, "Conv"),
    ]
    runs = run_breakdowns(events)
    assert runs == [{"wall_us": 100, "execute_us": 90, "kernel_us": {"Conv": 40, "Add": 10}, "node_us": {"conv": 40, "add": 10}},
                    {"wall_us": 50, "execute_us": 45, "kernel_us": {"Conv": 30}, "node_us": {"conv": 30}}]
    summary = summarize(runs)
    assert summary["kernel_ms"] == pytest.approx({"Conv": 0.035, "Add": 0.005})
    assert summary["between_kernels_ms"] == pytest.approx(0.0675 - 0.04)
    assert summary["outside_executor_ms"] == pytest.approx(0.075 - 0.0675)


def test_the_markdown_table_shows_every_op_type_and_the_floor(profiles):
    bench = {"ort_profile": {"int8": profiles["int8"], "fp32_onnxruntime": profiles["fp32"]},
             "environment": {"cpu": {"model": "AMD EPYC"}}, "compute": {"floor_ms": {"int8": 0.5, "fp32": 2.0}}}
    text = tables.ort_profile_markdown(bench)
    assert "(AMD EPYC, 1 threads, ORT's profiler)" in text
    assert "| `QLinearConv` |" in text and "| compute floor | 0.500 |  | 2.000 |  |" in text
    assert "run as: 2 Transpose, 2 QLinearConv" in text.split("INT8 file: ")[1]


@pytest.fixture(scope="module")
def openvino_profile(models: dict[str, Path]) -> dict:
    """The tiny net converted to OpenVINO, quantized by NNCF on random images, saved as IR and profiled."""
    import nncf
    import openvino as ov

    from edgeml.quantization.openvino import save_ir

    model = ov.convert_model(str(models["fp32"]))
    model.reshape([-1, 3, 16, 16])
    images = list(np.random.default_rng(1).standard_normal((4, 1, 3, 16, 16), dtype=np.float32))
    path = models["fp32"].with_name("int8.xml")
    save_ir(nncf.quantize(model, nncf.Dataset(images), subset_size=4), path)
    return profile_openvino(path, threads=1, runs=12, warmup=2, block=6, settle=2)


def test_openvino_node_times_add_up_and_show_the_int8_kernels(openvino_profile):
    profile = openvino_profile
    assert profile["runs"] == 12 and 0 < profile["runs_summarized"] <= 12
    assert profile["kernels_ms"] == pytest.approx(sum(profile["kernel_ms"].values())) and profile["kernels_ms"] > 0
    assert profile["kernels_ms"] + profile["outside_kernels_ms"] == pytest.approx(profile["wall_ms"])
    assert "between_kernels_ms" not in profile  # ORT's executor split has no counterpart in the plugin's counters
    assert set(profile["kernel_ms"]) <= set(profile["nodes"]["optimized"]) == set(profile["kernels"])
    assert profile["nodes"]["file"]["Convolution"] == 2 and profile["nodes"]["file"]["FakeQuantize"] > 0
    assert profile["nodes"]["optimized"]["Convolution"] == 2  # FakeQuantize folded into the convolutions
    # they ran as INT8 kernels: the plugin names a kernel after its input's precision, `_I8` for u8
    # (the ReLU'd map) and `_i8` for s8 (the signed input image)
    assert all(kind.lower().endswith("_i8") for kind in profile["kernels"]["Convolution"])


def test_openvino_counts_the_nodes_that_ran_kernels_the_same_in_every_profile(openvino_profile, models):
    """The counters' status says NOT_RUN for a node whose time rounds to 0 µs (the tiny net's Reorders and
    input FakeQuantize, often): node counts must not follow it, or they flip from profile to profile."""
    for _ in range(3):
        again = profile_openvino(models["fp32"].with_name("int8.xml"), threads=1, runs=4, warmup=1, block=2, settle=1)
        assert again["nodes"] == openvino_profile["nodes"] and again["kernels"] == openvino_profile["kernels"]
        assert set(again["kernel_ms"]) == set(again["nodes"]["optimized"])


def test_the_openvino_table_shows_each_op_type_its_kernels_and_the_floor(openvino_profile):
    bench = {"openvino_profile": {"int8": openvino_profile}, "environment": {"cpu": {"model": "AMD EPYC"}},
             "compute": {"floor_ms": {"int8": 0.5, "fp32": 2.0}}}
    text = tables.openvino_profile_markdown(bench)
    assert "(AMD EPYC, 1 threads, the CPU plugin's performance counters)" in text
    row = next(line for line in text.splitlines() if line.startswith("| `Convolution` |"))
    assert row.startswith(f"| `Convolution` | {openvino_profile['kernel_ms']['Convolution']:.3f} (")
    assert all(f"{kind} ×{n}" in row for kind, n in openvino_profile["kernels"]["Convolution"].items())
    assert "| compute floor | 0.500 |  |  |" in text
    assert "Not measured" in tables.openvino_profile_markdown({**bench, "openvino_profile": {}})


def test_each_backend_is_profiled_on_its_fastest_recipe_and_one_without_a_profiler_says_so(models, tmp_path):
    recipes = {"ort_a": "onnxruntime", "ort_b": "onnxruntime", "pt2e_a": "pt2e_x86"}
    params = SimpleNamespace(sweep=SimpleNamespace(recipes={name: SimpleNamespace(backend=b) for name, b in recipes.items()}),
                             bench=SimpleNamespace(threads=1, runs=8, warmup=2))
    int8 = {"ort_a": models["fp32"], "ort_b": models["int8"], "pt2e_a": tmp_path / "int8.pt2"}  # no .pt2 is read
    timed = {"ort_a": {"latency_ms": 2.0}, "ort_b": {"latency_ms": 1.0}, "pt2e_a": {"latency_ms": 3.0}}
    layer = Layer("conv", m=256, k=27, n=8, weights=216, key=(8, 16, 16, 3, 3))  # 55,296 MACs
    parts = RooflineParts([layer], {(256, 27, 8): {"onnxruntime": [2.0, 2.5], "torch": [3.0, 3.0]}}, {"1": 20.0}, {"onnxruntime": 5.0, "openvino": 10.0}, threads=1)
    profiles = profile_backends(params, int8, timed, parts, gemm_peak_gmacs=100.0)
    assert set(profiles) == {"onnxruntime", "pt2e_x86"}
    # the layer's own GEMM, 2 µs (its fastest library, call taken off), is above its GEMM floor (0.55 µs) and its reads (0.01 µs); + ORT's call
    assert profiles["onnxruntime"]["roofline"]["floor_ms"] == pytest.approx((2.0 + 5.0) / 1e3)
    assert profiles["pt2e_x86"].pop("roofline")["floor_ms"] == pytest.approx(2.0 / 1e3)  # no one-op model for .pt2: no call cost
    ort = profiles["onnxruntime"]
    assert (ort["recipe"], ort["file"], ort["profiler"]) == ("ort_b", "int8.onnx", "profile_onnx")
    assert "QLinearConv" in ort["nodes"]["optimized"]  # the quantized file was profiled, not the float one
    assert profiles["pt2e_x86"] == {"recipe": "pt2e_a", "file": "int8.pt2", "profiler": None}

    timing = {"floor_ms": {"int8": 0.25}, "environment": {"cpu": {"model": "AMD EPYC"}, "threads": 1},
              "recipes": timed, "profiles": profiles}
    text = sweep.render_backend_profiles(timing, {})
    assert "(AMD EPYC, 1 threads)" in text
    row = next(line for line in text.splitlines() if line.startswith("| onnxruntime (ort_b) |"))
    conv = sum(ms for op, ms in ort["kernel_ms"].items() if "Conv" in op)
    assert row.startswith(f"| onnxruntime (ort_b) | 1.000 (4.0x) | 142.86x | {ort['wall_ms']:.3f} ({ort['unprofiled_ms']:.3f}) | "
                          f"{100 * conv / ort['wall_ms']:.0f}% | ")
    assert row.endswith(f"| QLinearConv ×{ort['nodes']['optimized']['QLinearConv']} |")
    assert "| pt2e_x86 (pt2e_a) | 3.000 (12.0x) |  | not profiled: no profiler for its pt2 file here |" in text
