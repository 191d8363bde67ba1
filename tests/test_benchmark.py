"""GPU rows of Table 1 without a GPU: the CUDA boundary (device, graph capture, event timer) is
replaced by the meta device and a fake timer, so everything above it runs for real."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeml.bench import cpu as cpu_timing
from edgeml.bench import gpu as gpu_timing
from edgeml.model.resnet import build_resnet18, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "not measured: no CUDA GPU on this machine"
NO_TENSORRT = "not measured: TensorRT not installed"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).eval()


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """CUDA "available", the GPU replaced by the meta device; records (dtype, batch, device, graph) per timing."""
    timed: list[tuple] = []

    def capture(forward, warmup):
        def replay():
            return forward()

        replay.captured = True
        return replay

    def timer(forward, warmup, runs):
        out = forward()
        captured = getattr(forward, "captured", False)
        timed.append((out.dtype, out.shape[0], out.device.type, captured))
        # fp32 eager 3 ms, fp32 graph 2 ms, fp16 graph 1 ms, bf16 graph 1.5 ms; batch 64 +10 ms
        return {torch.float32: 3.0, torch.float16: 2.0, torch.bfloat16: 2.5}[out.dtype] - captured + 10 * (out.shape[0] > 1)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_timing, "GPU", torch.device("meta"))
    monkeypatch.setattr(gpu_timing, "_cuda_graph", capture)
    monkeypatch.setattr(gpu_timing, "_event_median_ms", timer)
    monkeypatch.setattr(gpu_timing, "tensorrt_runtimes", lambda: [])
    return timed


def test_gpu_rows_time_copies_and_leave_the_callers_model_on_cpu(fake_cuda):
    model = tiny_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    gpu = gpu_timing.bench_gpu(model, None, warmup=1, runs=1, batch_size=64)

    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # still usable on CPU tensors, as the bench stage does

    assert sorted(fake_cuda, key=str) == sorted(
        [(dtype, batch, "meta", graph) for dtype, graph in gpu_timing.GPU_PATHS.values() for batch in (1, 64)], key=str
    )
    assert gpu == {
        "fp32_eager": {"batch1_ms": 3.0, "batch64_ms": 13.0},
        "fp32_cuda_graph": {"batch1_ms": 2.0, "batch64_ms": 12.0},
        "fp16_cuda_graph": {"batch1_ms": 1.0, "batch64_ms": 11.0},
        "bf16_cuda_graph": {"batch1_ms": 1.5, "batch64_ms": 11.5},
        "int8": NO_TENSORRT,
    }
    # Table 1's FP32 cell is the fastest FP32 path, named; FP16 is not FP32 even when faster
    assert gpu_timing.gpu_table_cells(gpu) == {
        "fp32": {"path": "fp32_cuda_graph", "latency_ms": 2.0},
        "int8": {"path": None, "latency_ms": NO_TENSORRT},
    }


def test_int8_row_says_which_tensorrt_front_end_is_missing_what(fake_cuda, monkeypatch):
    monkeypatch.setattr(gpu_timing, "tensorrt_runtimes", lambda: ["torch_tensorrt"])
    int8 = gpu_timing.bench_gpu(tiny_model(), None, warmup=1, runs=1, batch_size=2)["int8"]
    assert int8.startswith("not measured: ") and "onnxruntime backend" in int8 and "torch_tensorrt" in int8


def test_without_cuda_every_gpu_row_is_not_measured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = gpu_timing.bench_gpu(tiny_model(), None, warmup=1, runs=1, batch_size=64)
    assert gpu == dict.fromkeys(["fp32_eager", "fp32_cuda_graph", "fp16_cuda_graph", "bf16_cuda_graph", "int8"], NO_CUDA)
    assert gpu_timing.gpu_table_cells(gpu) == {
        "fp32": {"path": None, "latency_ms": NO_CUDA},
        "int8": {"path": None, "latency_ms": NO_CUDA},
    }


def test_gpu_bench_script_runs_without_the_pipeline_tools(tmp_path):
    """As on the lent GPU machine: no pytorch-ood, dvclive, DVC or scikit-learn, run from the working tree."""
    checkpoint, output = tmp_path / "fp32.pt", tmp_path / "gpu.json"
    save_checkpoint(build_resnet18("cifar"), "cifar", 10, checkpoint)
    code = textwrap.dedent(
        f"""
        import importlib.abc, importlib.machinery, runpy, sys

        class Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"pytorch_ood", "dvclive", "dvc", "sklearn"}}:
                    return importlib.machinery.ModuleSpec(name, self)  # no origin: found, but fails to import

            def exec_module(self, module):
                raise ModuleNotFoundError(f"No module named {{module.__name__!r}}", name=module.__name__)

        sys.meta_path.insert(0, Missing())
        sys.argv = ["gpu_bench.py", {str(checkpoint)!r}, {str(output)!r}, "--warmup", "1", "--runs", "2"]
        runpy.run_path("scripts/gpu_bench.py", run_name="__main__")
        """
    )
    env = {**os.environ, "PYTHONPATH": "src", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    result = json.loads(output.read_text())
    assert result["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert set(result["gpu_paths"].values()) == {NO_CUDA}
    assert result["table1_gpu"]["fp32"] == {"path": None, "latency_ms": NO_CUDA}
    environment = result["environment"]
    assert environment["gpu"] is None and environment["cuda"] == torch.version.cuda
    assert environment["cpu"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (result["settings"]["warmup"], result["settings"]["runs"]) == (1, 2)


def test_fp32_torchscript_runs_fused_by_onednn_and_restores_the_switch(tmp_path, float_model_and_images):
    from edgeml.model.inference import normalize
    from edgeml.quantization import WithFeatureMap, load_file
    from edgeml.quantization.eager import export_torchscript
    from edgeml.runtime.torch_files import OneDNNFused, load_torchscript

    model, images = float_model_and_images
    path = tmp_path / "fp32.pt"
    export_torchscript(WithFeatureMap(model), path)
    fused, plain = load_file(path), load_torchscript(path)
    assert isinstance(fused, OneDNNFused)
    x = normalize(images[:1])
    with torch.no_grad():
        for _ in range(3):  # the fuser compiles after a couple of profiling runs
            outputs = fused(x)
        assert "prim::oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())
        for a, b in zip(outputs, plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.jit.onednn_fusion_enabled()


def test_detector_cost_runs_no_forward_pass_between_timed_calls():
    # A model's forward pass just before a timed call leaves its thread pool busy (ONNX Runtime spins):
    # outputs are computed once, so a logit detector's cost never follows a forward pass.
    from edgeml.ood.detectors import ModelContext, make_detector

    calls = []

    class Model(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return torch.zeros(len(x), 10), torch.zeros(len(x), 4), torch.zeros(len(x), 4, 1, 1)

    detector = make_detector("energy", ModelContext(nn.Linear(4, 10)))
    cpu_timing.detector_cost_us(Model(), {"energy": detector}, runs=5)
    assert len(calls) == 5 + 1  # the timed plain forward passes, then the outputs once


def test_file_size_counts_the_weights_file_of_a_two_file_format(tmp_path):
    (tmp_path / "int8.xml").write_bytes(b"x" * 1000)
    (tmp_path / "int8.bin").write_bytes(b"w" * 2_000_000)
    (tmp_path / "int8.onnx").write_bytes(b"o" * 3000)
    assert cpu_timing.file_size_mb(tmp_path / "int8.xml") == 2.001  # OpenVINO IR: topology + weights
    assert cpu_timing.file_size_mb(tmp_path / "int8.onnx") == 0.003


def test_the_artifacts_calls_count_their_median_process_and_keep_each_ones_median():
    """The artifact and its bare call are each timed in several processes (their medians differ by process): the
    median process's statistics count, every process's median is kept; other workers and settings stay apart."""
    from edgeml.bench.suite import artifact_calls

    def record(median: float) -> dict:
        return {"latency_stats_ms": {"min": median - 0.1, "p10": median - 0.05, "median": median, "p90": median + 0.1}}

    timed = {"int8": record(9.0), "artifact#0": record(1.0), "artifact#1": record(3.0), "artifact#2": record(2.0),
             "artifact_bare#0": record(1.0), "artifact_bare#1": record(1.2), "artifact_bare#2": record(0.8),
             "artifact_bare 1 thread#0": record(4.0)}
    calls = artifact_calls(timed, floor_ms=0.5, fastest_fp32_ms=8.0)
    assert calls["as_called_ms"] == {**timed["artifact#2"]["latency_stats_ms"], "process_medians": [1.0, 2.0, 3.0]}
    assert calls["bare_ms"]["median"] == 1.0 and calls["bare_ms"]["process_medians"] == [0.8, 1.0, 1.2]
    assert calls["as_called_over_bare"] == pytest.approx(2.0) and calls["as_called_over_roofline"] == pytest.approx(4.0)
    assert calls["as_called_speedup_vs_fastest_fp32"] == pytest.approx(4.0)
    assert set(calls["bare_settings_ms"]) == {"default", "1 thread"} and calls["bare_settings_ms"]["1 thread"]["median"] == 4.0
    without_bare = artifact_calls({"artifact#0": record(1.0)}, floor_ms=0.5, fastest_fp32_ms=8.0)
    assert without_bare["as_called_over_bare"] is None and without_bare["bare_settings_ms"] == {}
    assert without_bare["bare_ms"].startswith("not measured")


def test_interleaved_timing_takes_turns_and_keeps_each_functions_own_median(monkeypatch):
    """Each round runs every function once, in turn, so a drift in the machine's speed falls on all alike."""
    clock, calls = [0.0], []
    monkeypatch.setattr(cpu_timing.time, "perf_counter", lambda: clock[0])

    def taking(name: str, seconds: list[float]):
        durations = iter(seconds)

        def fn() -> None:
            calls.append(name)
            clock[0] += next(durations)
        return fn

    medians = cpu_timing.interleaved_median_seconds({"a": taking("a", [5.0, 1.0, 2.0]), "b": taking("b", [0.1, 0.3, 0.2])}, 3)
    assert calls == ["a", "b"] * 3
    assert medians == pytest.approx({"a": 2.0, "b": 0.2})
