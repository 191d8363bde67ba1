import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgeml.model.inference import normalize
from edgeml.model.resnet import build_resnet18
from edgeml.params import ParamsError, QuantizeParams
from edgeml.quantization import base
from edgeml.quantization import (
    BACKENDS,
    WithFeatureMap,
    export_fp32,
    int8_path,
    load_deployable,
    load_head,
    make_quantizer,
    quantize,
    quantizer_class,
)
from edgeml.quantization.eager import export_torchscript
from edgeml.quantization.onnxrt import export_onnx
from edgeml.runtime.torch_files import load_torchscript

RECIPES = {
    "fbgemm-per-channel-histogram": QuantizeParams(backend="fbgemm", observer="histogram", reduce_range=True),
    "fbgemm-per-tensor-minmax": QuantizeParams(backend="fbgemm", per_channel=False, observer="minmax", reduce_range=True),
    "fbgemm-moving-average": QuantizeParams(backend="fbgemm", observer="moving_average_minmax", reduce_range=True),
    # lr ~0: the QAT path (fuse for QAT, fake-quant, convert) must preserve the float model
    "fbgemm-qat": QuantizeParams(
        backend="fbgemm", observer="moving_average_minmax", qat_epochs=1, qat_images=32, qat_batch_size=16, qat_lr=1e-9,
        reduce_range=True,
    ),
    "qnnpack": QuantizeParams(backend="qnnpack", observer="histogram", reduce_range=False),
    "pt2e-x86-histogram": QuantizeParams(backend="pt2e_x86", observer="histogram", reduce_range=False),
    "pt2e-x86-per-tensor-minmax": QuantizeParams(backend="pt2e_x86", per_channel=False, observer="minmax", reduce_range=True),
    "onnxruntime-u8s8-per-tensor-minmax": QuantizeParams(backend="onnxruntime", observer="minmax", per_channel=False,
                                                         activations="uint8", reduce_range=True),
    "onnxruntime-entropy": QuantizeParams(backend="onnxruntime", observer="entropy", activations="uint8", reduce_range=True),
    "onnxruntime-s8s8-percentile": QuantizeParams(backend="onnxruntime", observer="percentile", activations="int8", reduce_range=False),
    "openvino-performance-minmax": QuantizeParams(backend="openvino", observer="minmax", activations="int8", reduce_range=False),
    "openvino-mixed-histogram-per-tensor": QuantizeParams(backend="openvino", per_channel=False, observer="histogram",
                                                          activations="uint8", reduce_range=False),
}
# ExecuTorch's runtime library bundles its own XNNPACK and cpuinfo beside torch's. In a pytest process that
# has already run the rest of the suite (the other backends, onnxruntime, OpenVINO) it crashed with SIGSEGV
# in CI, at its second recipe; alone it passes. So its recipes run in a process of their own:
# test_executorch_recipes_in_their_own_process starts it with ISOLATED set.
ISOLATED = "EDGEML_TEST_EXECUTORCH"
EXECUTORCH_RECIPES = {
    "executorch-xnnpack-histogram": QuantizeParams(backend="executorch", observer="histogram", activations="int8", reduce_range=False),
    "executorch-xnnpack-per-tensor-minmax": QuantizeParams(
        backend="executorch", per_channel=False, observer="minmax", activations="int8", reduce_range=False
    ),
}
if os.environ.get(ISOLATED):
    RECIPES = EXECUTORCH_RECIPES


EPS32 = torch.finfo(torch.float32).eps
q = torch.ao.quantization


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def arrays_from(images: torch.Tensor) -> dict[str, np.ndarray]:
    """The prepare stage's layout (uint8 NHWC); the test split holds a sentinel that must never be used."""
    hwc = images.permute(0, 2, 3, 1).numpy()
    labels = np.arange(len(hwc)) % 10
    return {"val_x": hwc[:64], "train_x": hwc[:64], "train_y": labels[:64], "test_x": np.full_like(hwc[:1], 255)}


class FixedFakeQuant(nn.Module):
    """A calibrated observer's quantization simulated in float. Quantized kernels clamp to the dtype's
    range, not to the observer's (reduced) one, so the twin does too."""

    def __init__(self, observer: q.ObserverBase):
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.quant_min, self.quant_max = torch.iinfo(observer.dtype).min, torch.iinfo(observer.dtype).max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)


def fake_quant_weight_(module: nn.Module) -> None:
    observer = module.qconfig.weight()
    observer(module.weight)
    scale, zero_point = observer.calculate_qparams()
    with torch.no_grad():
        if observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            fake = torch.fake_quantize_per_channel_affine(
                module.weight, scale, zero_point.int(), observer.ch_axis, observer.quant_min, observer.quant_max
            )
        else:
            fake = torch.fake_quantize_per_tensor_affine(
                module.weight, float(scale), int(zero_point), observer.quant_min, observer.quant_max
            )
        module.weight.copy_(fake)


class OnnxUnfused(nn.Module):
    """A QDQ file run op by op (no graph optimisation): float ops between QuantizeLinear/DequantizeLinear."""

    def __init__(self, path: Path):
        super().__init__()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {"input": x.numpy()}))


class OpenVinoFloat(nn.Module):
    """An IR file run by OpenVINO's CPU plugin without its low-precision transformations: each FakeQuantize
    is computed in float (f32) instead of being folded into INT8 kernels. LP_TRANSFORMS_MODE is the plugin's
    internal switch for this; an unknown key would make compile_model raise, not pass silently."""

    def __init__(self, path: Path):
        super().__init__()
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"LP_TRANSFORMS_MODE": False, "INFERENCE_PRECISION_HINT": "f32"})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.compiled(x.numpy())
        return tuple(torch.from_numpy(results[output]) for output in self.compiled.outputs)


def fake_quant_twin(recipe: QuantizeParams, model: nn.Module, calibration: torch.Tensor, path: Path) -> nn.Module:
    """The PTQ model simulated in float (quantize/dequantize around float ops), built apart from the INT8 kernels:
    eager and ExecuTorch from a freshly prepared, calibrated (and converted: the PT2E graph before lowering to
    XNNPACK) copy, PT2E, ONNX Runtime and OpenVINO from the file itself, run uncompiled (torch.export), unfused
    (ONNX Runtime) or without low-precision transformations (OpenVINO)."""
    if recipe.backend == "executorch":
        quantizer = make_quantizer(recipe)
        prepared = quantizer.prepare(model)
        quantizer.calibrate(prepared, calibration)
        return quantizer.convert(prepared)
    if recipe.backend == "onnxruntime":
        return OnnxUnfused(path)
    if recipe.backend == "openvino":
        return OpenVinoFloat(path)
    if recipe.backend == "pt2e_x86":
        return torch.export.load(str(path)).module()
    quantizer = make_quantizer(recipe)
    twin = quantizer.prepare(model)
    quantizer.calibrate(twin, calibration)
    for module in list(twin.modules()):
        if isinstance(getattr(module, "activation_post_process", None), q.ObserverBase):
            module.activation_post_process = FixedFakeQuant(module.activation_post_process)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fake_quant_weight_(module)
    return twin.eval()


def logits_quantization(path: Path, twin: nn.Module | None = None) -> tuple[float, int] | None:
    """The (scale, zero point) the file records for its logits output; None where the logits stay float.
    ExecuTorch's lowered program hides them in XNNPACK's blob: read from its PT2E ``twin``, the graph it was lowered from."""
    if path.suffix == ".pte":
        dequantize = next(node for node in twin.graph.nodes if node.op == "output").args[0][0]
        return float(dequantize.args[1]), int(dequantize.args[2])
    if path.suffix == ".pt":
        graph = load_torchscript(path).graph
        linear = next((n for n in graph.nodes() if n.kind() == "quantized::linear"), None)
        return None if linear is None else (linear.inputsAt(2).toIValue(), linear.inputsAt(3).toIValue())
    if path.suffix == ".onnx":
        model = onnx.load(str(path))
        stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
        return (float(stored[last.input[1]]), int(stored[last.input[2]])) if last.op_type == "DequantizeLinear" else None
    return None  # PT2E x86 and OpenVINO: the last linear layer's output stays float (quantizers sit on op inputs)


def weight_step(recipe: QuantizeParams, weight: torch.Tensor) -> torch.Tensor:
    """The recipe's symmetric INT8 weight step, per output channel or one for the tensor, from the float weights:
    torch's observers map max|w| to 127.5 (range -128..127), ONNX Runtime's and XNNPACK's to 127 (-127..127; ONNX
    Runtime: 64 with reduce_range), NNCF's to 127 (255 levels; 63.5 with reduce_range, its overflow fix: 128 levels)."""
    absmax = weight.abs().amax(1, keepdim=True) if recipe.per_channel else weight.abs().max()
    if recipe.backend in ("onnxruntime", "executorch"):
        return absmax / (64 if recipe.reduce_range else 127)
    if recipe.backend == "openvino":
        return absmax / (63.5 if recipe.reduce_range else 127)
    return absmax / 127.5


@dataclasses.dataclass
class Deployed:
    recipe: QuantizeParams
    path: Path
    model: nn.Module
    twin: nn.Module | None


@pytest.fixture(scope="module", params=RECIPES.values(), ids=RECIPES.keys())
def deployed(request, float_model_and_images, tmp_path_factory) -> Deployed:
    """Each recipe quantized once (64 calibration images, drawn by :func:`quantize` from the val split)."""
    model, images = float_model_and_images
    recipe = QuantizeParams(**{**request.param.__dict__, "calibration_size": 64})
    path = int8_path(recipe.backend, tmp_path_factory.mktemp(recipe.backend))
    int8 = quantize(make_quantizer(recipe), model, arrays_from(images), path)
    twin = None if recipe.qat_epochs else fake_quant_twin(recipe, model, images[:64], path)  # QAT: its own test
    return Deployed(recipe, path, int8, twin)


def test_every_backend_agrees_with_fp32(float_model_and_images, deployed):
    model, images = float_model_and_images
    held_out = normalize(images[64:])
    with torch.no_grad():
        reference, int8 = WithFeatureMap(model)(held_out), deployed.model(held_out)
    assert [tuple(t.shape) for t in int8] == [(32, 10), (32, 512), (32, 512, 1, 1)]
    # A sanity bound only (the fake-quant twin test below is the tight one), for an untrained
    # ResNet18 on noise (near-tied logits): relative L2 error under 35% (60% for KL calibration,
    # which clips this noise-fed model's ranges hard) and top-1 agreement of at least 65% (50%).
    # A broken conversion is far off (relative error ~1).
    tolerance, agreement = (0.6, 0.5) if deployed.recipe.observer == "entropy" else (0.35, 0.65)
    for int8_output, reference_output in zip(int8, reference):
        assert relative_error(int8_output, reference_output) < tolerance
    assert (int8[0].argmax(1) == reference[0].argmax(1)).float().mean() >= agreement
    files = [deployed.path, *([deployed.path.with_suffix(".bin")] if deployed.path.suffix == ".xml" else [])]  # OpenVINO IR
    assert sum(f.stat().st_size for f in files) < 13e6  # ~4x smaller than 44.7 MB of FP32 weights
    with torch.no_grad():  # the file, loaded afresh, runs exactly the exported model
        torch.testing.assert_close(load_deployable(deployed.path, deployed.recipe.backend)(held_out), int8[0])
        for fresh, output in zip(load_deployable(deployed.path, deployed.recipe.backend, features=True)(held_out), int8):
            torch.testing.assert_close(fresh, output)


def test_int8_follows_its_fake_quant_twin(float_model_and_images, deployed, request):
    # The INT8 kernels must compute what the recipe simulates: each layer's requantization may break
    # a rounding tie the other way (one step, which deeper layers can amplify), so the twin must explain
    # the INT8 model far better than the float model does, and the features (512 pooled values, each a
    # quantized activation) must sit within one step of the twin's on average.
    if deployed.twin is None:
        pytest.skip("QAT's twin is its fine-tuned fake-quant model: test_qat_trains_and_int8_matches_its_fake_quant_model")
    if deployed.recipe.backend == "qnnpack":  # known, strict: passing would mean the cause went away
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "qnnpack (ARM's engine, run on x86 here) is within one step of its twin per layer, but its rounding "
            "differences add up over 20 layers to ~2.4 output steps on average; cause not found")))
    model, images = float_model_and_images
    held_out = normalize(images[64:])
    with torch.no_grad():
        int8, twin, reference = deployed.model(held_out), deployed.twin(held_out), WithFeatureMap(model)(held_out)
    # OpenVINO: its stem conv is one step off its twin on 3 of 524,288 values (the test below), which 20 layers of
    # this untrained, noise-fed model amplify to measured ratios of 0.31-0.50; a broken conversion is near 1.
    # ExecuTorch: XNNPACK's stem (conv, ReLU, max-pool) is one step off its twin on 0.05% of values (measured on this
    # model cut after the stem), amplified to measured ratios of 0.50-0.55.
    bound = 0.6 if deployed.recipe.backend in ("openvino", "executorch") else 0.25
    for name, a, b, c in zip(("logits", "features", "map"), int8, twin, reference):
        assert (a - b).abs().mean() < bound * (a - c).abs().mean(), name


def test_openvino_runs_int8_kernels_that_round_as_their_float_simulation(float_model_and_images, deployed):
    # Every conv of the loaded file runs INT8 (no silent float fallback), and the stem conv, whose input both
    # runs quantize alike, is within one step of its float simulation with next to no rounding ties broken apart.
    if deployed.recipe.backend != "openvino":
        pytest.skip("OpenVINO's CPU plugin chooses INT8 kernels per layer at compile time")
    for compiled in (deployed.model.calls.single, deployed.model.calls.batched):  # static batch 1, and dynamic
        runtime = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
        precisions = [info["runtimePrecision"].astype(str) for info in runtime if info["layerType"].astype(str) == "Convolution"]
        assert len(precisions) == 20 and set(precisions) <= {"u8", "i8"}, precisions
    model = ov.Core().read_model(str(deployed.path))
    quantizers = [n for n in model.get_ordered_ops() if n.get_type_name() == "FakeQuantize"][:2]  # the input's, the stem's
    model.add_outputs([quantizer.output(0) for quantizer in quantizers])
    x = normalize(float_model_and_images[1][64:]).numpy()
    runs = []
    for config in ({}, {"LP_TRANSFORMS_MODE": False}):
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})
        results = compiled(x)
        runs.append([results[output] for output in compiled.outputs[-2:]])
    for quantizer, int8, simulated in zip(quantizers, *runs):
        low, high = (quantizer.input_value(i).get_node().data for i in (3, 4))
        steps = np.abs(int8 - simulated) / ((high - low) / (quantizer.get_attributes()["levels"] - 1)).max()
        assert steps.max() <= 1.001 and (steps > 0.5).mean() < 1e-4


def test_head_reproduces_the_files_logits_and_holds_its_quantized_weights(float_model_and_images, deployed):
    model, images = float_model_and_images
    recipe = deployed.recipe
    head = load_head(deployed.path, recipe.backend)
    assert isinstance(head, nn.Linear) and not head.training and not head.weight.requires_grad
    calibration = normalize(images[:64])  # inside the calibrated ranges, except where INT8 features push past them
    with torch.no_grad():
        logits, features, _ = deployed.model(calibration)
        from_head = head(features)
    # Float arithmetic: the dot products' rounding bound n*eps*sum|w x| (Higham); INT8 logits add
    # their requantization, half a recorded step, except where they clamp at the end of the range.
    slack = features.shape[1] * EPS32 * (features.abs() @ head.weight.abs().T + head.bias.abs())
    quantization = logits_quantization(deployed.path, deployed.twin)
    if quantization is None:
        assert ((from_head - logits).abs() <= slack).all()
    else:
        scale, zero_point = quantization
        codes = torch.round(logits / scale) + zero_point
        clamped = (codes == codes.min()) | (codes == codes.max())
        assert ((from_head - logits).abs()[~clamped] <= scale / 2 + slack[~clamped] + 1e-6).all()
        # Clamped logits: the head goes past the end of the range, it does not fall short of it.
        assert (((from_head - logits) * torch.where(codes == codes.max(), 1, -1))[clamped] >= -scale / 2 - 1e-6).all()
    # The quantized weights: within half a step of the float ones, on the recipe's grid (per-channel or per-tensor).
    step = weight_step(recipe, model.fc.weight.detach())
    assert ((head.weight - model.fc.weight).abs() <= step / 2 * (1 + 1e-4)).all()
    torch.testing.assert_close(head.weight / step, torch.round(head.weight / step), atol=1e-3, rtol=0)
    # NNCF's bias correction shifts the bias by the mean error quantization adds to the logits (measured <= 0.007 here).
    torch.testing.assert_close(head.bias, model.fc.bias, atol=0.05 if recipe.backend == "openvino" else 1e-4, rtol=0)


def test_minmax_logit_range_follows_reduce_range(float_model_and_images, deployed):
    # Min-max calibration maps [min(0, lowest), max(0, highest)] FP32 logit of the calibration images
    # onto the activation codes: 0..127 with torch's reduce_range, 0..255 without; ONNX Runtime's
    # reduce_range narrows the weights only (checked by the weight grid above), activations keep 0..255.
    recipe, quantization = deployed.recipe, logits_quantization(deployed.path, deployed.twin)
    if recipe.observer != "minmax" or quantization is None:
        pytest.skip("the logits' range is the calibrated min-max only with the minmax observer and quantized logits")
    model, images = float_model_and_images
    with torch.no_grad():
        logits = model(normalize(images[:64]))
    codes = 127 if recipe.reduce_range and recipe.backend != "onnxruntime" else 255
    expected = (logits.max().clamp(min=0) - logits.min().clamp(max=0)).item() / codes
    assert quantization[0] == pytest.approx(expected, rel=1e-3)


def test_executorch_program_runs_any_batch(float_model_and_images, deployed):
    # One .pte serves bench (batch 1, 64) and the ood stage (500); batches beyond its planned 512 run in chunks.
    # XNNPACK computes each image on its own, so every batch gives each image the same outputs as batch 1.
    if deployed.recipe.backend != "executorch":
        pytest.skip("the ExecuTorch program's memory is planned for a bounded dynamic batch")
    images = normalize(float_model_and_images[1])
    batch = images.repeat(7, 1, 1, 1)[:600]  # 600 > MAX_BATCH
    with torch.no_grad():
        singles = [deployed.model(image[None]) for image in images[:3]]
        for size in (1, 64, 500, 600):
            outputs = deployed.model(batch[:size])
            assert [tuple(t.shape) for t in outputs] == [(size, 10), (size, 512), (size, 512, 1, 1)]
            for i, single in enumerate(singles[:size]):
                for output, expected in zip(outputs, single):
                    torch.testing.assert_close(output[i : i + 1], expected, rtol=0, atol=1e-6)


# How each profiler shows that a convolution ran as an INT8 kernel: the op ORT fused it into, the precision
# OpenVINO's kernel names (_I8: u8 input, _i8: s8), XNNPACK's (QC8: per-channel weight scales, QS8: per-tensor),
# TorchScript's quantized operator.
INT8_CONVOLUTION = {
    "onnxruntime": lambda op, kernel: op == "QLinearConv",
    "openvino": lambda op, kernel: kernel.lower().endswith("_i8"),
    "executorch": lambda op, kernel: re.search(r", Q[CS]8\)", kernel) is not None,
    "fbgemm": lambda op, kernel: op.startswith("quantized::conv2d"),
    "qnnpack": lambda op, kernel: op.startswith("quantized::conv2d"),
}


def test_each_backend_profile_charges_all_twenty_convolutions_to_int8_kernels(deployed):
    """The backend's profiler (Quantizer.profiler) on its real INT8 file: the kernels' times add up
    with the rest of the run, and ResNet18's 20 convolutions all ran as INT8 kernels."""
    from edgeml.bench.profile import profiler
    from edgeml.sweep import CONVOLUTION

    backend = deployed.recipe.backend
    profile_file = profiler(backend)
    if profile_file is None:
        pytest.skip(f"{backend} has no profiler")
    profile = profile_file(deployed.path, threads=1, runs=12, warmup=2, block=6, settle=2)
    assert profile["runs"] == 12 and 0 < profile["runs_summarized"] <= 12 and profile["unprofiled_ms"] > 0
    assert profile["kernels_ms"] == pytest.approx(sum(profile["kernel_ms"].values())) and profile["kernels_ms"] > 0
    assert profile["kernels_ms"] + profile["outside_kernels_ms"] == pytest.approx(profile["wall_ms"])
    ran = profile["nodes"]["optimized"]
    kernels = profile.get("kernels", {op: {op: n} for op, n in ran.items()})  # ORT and TorchScript: the op is the kernel
    convolutions = {(op, kernel): n for op in ran if CONVOLUTION.fullmatch(op) for kernel, n in kernels[op].items()}
    assert sum(convolutions.values()) == 20, ran
    # every recipe, ONNX Runtime's s8s8 on x86 included: ORT fuses QDQ around s8 activations into integer kernels
    # on ARM only by default (QDQIsInt8Allowed() in onnxruntime/core/optimizer/qdq_transformer/selectors_actions/
    # qdq_selector_action_transformer.h), and the project's sessions allow it everywhere (session.qdqisint8allowed)
    assert all(INT8_CONVOLUTION[backend](op, kernel) for op, kernel in convolutions), convolutions


@pytest.mark.skipif(bool(os.environ.get(ISOLATED)), reason="this is the isolated process")
def test_executorch_recipes_in_their_own_process():
    """Every recipe test above, for the ExecuTorch recipes, in a fresh interpreter (see ISOLATED)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "executorch"],
        env={**os.environ, ISOLATED: "1"}, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]


def test_package_refuses_an_executorch_file(tmp_path):
    # No artifact is built from .pte (its runtime needs torch): the package stage must say so, naming the param, not fail deep inside.
    from edgeml.package import write_artifact

    with pytest.raises(ParamsError, match=r"quantize.backend: 'executorch' files \(.pte\) cannot be packaged; the artifact is built from"):
        write_artifact(tmp_path / "int8.pte", "executorch", None, "{}", tmp_path / "artifact.pte")


def test_eager_int8_file_runs_fused_blocks(deployed):
    # fuse_model folds every batch norm into its conv and fuses conv-ReLU and add-ReLU: a missed
    # fusion leaves quantized batch-norm or lone ReLU ops, and re-quantizes in between.
    if deployed.path.suffix != ".pt":
        pytest.skip("eager-mode fusion is this project's code; torch.export and ONNX Runtime fuse by pattern themselves")
    kinds = [node.kind() for node in load_torchscript(deployed.path).graph.nodes() if node.kind().startswith("quantized::")]
    assert kinds.count("quantized::conv2d_relu") == 9  # the stem and the first conv of each of the 8 blocks
    assert kinds.count("quantized::add_relu") == 8  # each block's residual sum
    assert kinds.count("quantized::conv2d") == 8 + 3  # each block's second conv, 3 downsampling convs
    assert not [k for k in kinds if "batch_norm" in k or k in ("quantized::relu", "quantized::add")]


def test_onnxruntime_entropy_calibration_is_not_min_max(float_model_and_images, tmp_path):
    # quantize_static alone runs Entropy with as many histogram bins as quantized bins: one
    # candidate threshold, i.e. min-max. The backend runs ORT's calibrator with 2048 bins.
    model, images = float_model_and_images

    def activation_scales(observer: str) -> np.ndarray:
        path = tmp_path / f"{observer}.onnx"
        quantize(make_quantizer(QuantizeParams(backend="onnxruntime", observer=observer, calibration_size=64)), model, arrays_from(images), path)
        graph = onnx.load(str(path)).graph
        return np.array([numpy_helper.to_array(t).item() for t in graph.initializer if t.name.endswith("_output_0_scale")])

    minmax, entropy = activation_scales("minmax"), activation_scales("entropy")
    assert len(minmax) == len(entropy) > 20
    assert (entropy <= minmax + 1e-9).all() and (entropy < 0.99 * minmax).mean() > 0.5  # ranges clipped, not max


def test_qat_trains_and_int8_matches_its_fake_quant_model(float_model_and_images):
    model, images = float_model_and_images
    quantizer = make_quantizer(
        QuantizeParams(backend="fbgemm", observer="moving_average_minmax", qat_epochs=2, qat_images=64, qat_batch_size=16)
    )
    prepared = quantizer.prepare(model)
    before = prepared.fc.weight.detach().clone()
    quantizer.fine_tune(prepared, images[:64], torch.arange(64) % 10)
    assert not torch.equal(prepared.fc.weight, before)  # it trained
    quantizer.calibrate(prepared, images[:64])
    held_out = normalize(images[64:])
    with torch.no_grad():
        fake_quant, start = prepared(held_out)[0], model(held_out)
        int8 = quantizer.convert(prepared)(held_out)[0]
    # The INT8 model follows its fine-tuned fake-quant twin, not the float model QAT started
    # from (measured relative error 0.23 vs 0.79 on this untrained model).
    assert relative_error(int8, fake_quant) < 0.5 * relative_error(int8, start)




@pytest.mark.parametrize("export, suffix", [(export_torchscript, ".pt"), (export_onnx, ".onnx")])
def test_fp32_exports_round_trip(float_model_and_images, tmp_path, export, suffix):
    model, images = float_model_and_images
    x = normalize(images[:4])
    path = tmp_path / f"fp32{suffix}"
    export(WithFeatureMap(model), path)
    with torch.no_grad():
        outputs = load_deployable(path, features=True)(x)
        for output, expected in zip(outputs, WithFeatureMap(model)(x)):
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(outputs[0], model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(load_deployable(path)(x), outputs[0])
        head = load_head(path)
        torch.testing.assert_close(head.weight, model.fc.weight, rtol=0, atol=0)
        torch.testing.assert_close(head.bias, model.fc.bias, rtol=0, atol=0)
        torch.testing.assert_close(head(outputs[1]), outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["fp32", "fbgemm", "openvino"])
def test_cifar_stem_files_expose_the_4x4_map_that_features_pool(tmp_path, backend):
    # ASH prunes the map before global pooling: for the CIFAR stem it is 512x4x4, and the
    # features output is its spatial mean (INT8: the mean rounded to the map's quantization grid).
    torch.manual_seed(0)
    model = build_resnet18("cifar").eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    if backend == "fp32":
        path = export_fp32(model, tmp_path)["fp32_torchscript"]
    else:
        path = int8_path(backend, tmp_path)
        make_quantizer(QuantizeParams(backend=backend, observer="minmax")).run(model, images, path)
    with torch.no_grad():
        logits, features, feature_map = load_deployable(path, "fbgemm", features=True)(normalize(images))
    assert feature_map.shape == (4, 512, 4, 4) and features.shape == (4, 512) and logits.shape == (4, 10)
    step = feature_map.flatten().unique().diff().min().item() if backend != "fp32" else 0.0
    torch.testing.assert_close(features, feature_map.mean((2, 3)), rtol=0, atol=step / 2 + 1e-5)


@pytest.mark.parametrize(
    "recipe, message",
    [
        (dict(backend="tensorrt"), r"quantize.backend: 'tensorrt' is not one of \['fbgemm', 'qnnpack', 'pt2e_x86', 'onnxruntime', 'openvino', 'executorch'\]"),
        (dict(backend="onnxruntime", observer="histogram"), r"quantize.observer: 'histogram' is not offered by backend 'onnxruntime'; allowed: \['minmax'"),
        (dict(backend="fbgemm", observer="entropy"), r"quantize.observer: 'entropy' is not offered by backend 'fbgemm'"),
        (dict(backend="pt2e_x86", activations="int8"), r"quantize.activations: 'int8' is not offered by backend 'pt2e_x86'; allowed: \['uint8'\]"),
        (dict(backend="onnxruntime", observer="minmax", qat_epochs=2), r"quantize.qat_epochs: backend 'onnxruntime' has no quantization-aware training"),
        (dict(backend="openvino", observer="moving_average_minmax"), r"quantize.observer: 'moving_average_minmax' is not offered by backend 'openvino'; allowed: \['minmax', 'histogram'\]"),
        (dict(backend="openvino", observer="minmax", qat_epochs=2), r"quantize.qat_epochs: backend 'openvino' has no quantization-aware training"),
        (dict(backend="executorch", activations="uint8"), r"quantize.activations: 'uint8' is not offered by backend 'executorch'; allowed: \['int8'\]"),
        (dict(backend="executorch", reduce_range=True), r"quantize.reduce_range: backend 'executorch' has full-range int8 kernels only"),
        (dict(backend="executorch", activations="int8", reduce_range=False, observer="entropy"), r"quantize.observer: 'entropy' is not offered by backend 'executorch'"),
        (dict(backend="fbgemm", observer="histogram", qat_epochs=2), r"quantize.observer: QAT .* allowed with qat_epochs > 0: \['minmax', 'moving_average_minmax'\]"),
    ],
)
def test_bad_recipe_is_refused_before_work(recipe, message):
    with pytest.raises(ParamsError, match=message):
        make_quantizer(QuantizeParams(**recipe))


@pytest.mark.parametrize("dot_product", [True, False])
def test_auto_resolves_to_each_backends_best_on_this_cpu(monkeypatch, dot_product):
    """`-S quantize.backend=X` alone works for every backend: auto picks its activations and reduce_range."""
    monkeypatch.setattr(base, "has_int8_dot_product", lambda: dot_product)
    best = {"fbgemm": "uint8", "qnnpack": "uint8", "pt2e_x86": "uint8", "onnxruntime": "uint8", "openvino": "int8", "executorch": "int8"}
    reduced = {"fbgemm": True, "qnnpack": False, "pt2e_x86": True, "onnxruntime": True, "openvino": True, "executorch": False}
    for backend in BACKENDS:
        resolved = quantizer_class(backend).resolve(QuantizeParams(backend=backend))
        assert (resolved.activations, resolved.reduce_range) == (best[backend], reduced[backend] and not dot_product), backend
        quantizer_class(backend).check(resolved)  # and the backend accepts what auto chose
    explicit = quantizer_class("fbgemm").resolve(QuantizeParams(backend="fbgemm", reduce_range=True, activations="uint8"))
    assert (explicit.reduce_range, explicit.activations) == (True, "uint8")  # an explicit value is kept


def test_every_backend_is_tested():
    assert {recipe.backend for recipe in {**RECIPES, **EXECUTORCH_RECIPES}.values()} == set(BACKENDS)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_each_backend_declares_what_the_rest_of_the_project_reads(backend):
    """One place per backend: its Quantizer class. Every fact the package stage, the bench, the sweep,
    `edgeml backends` and the docs read is declared there and means something."""
    from edgeml.bench import profile
    from edgeml.runtime.artifact import PACKAGED_SUFFIXES

    cls = quantizer_class(backend)
    assert cls.name == backend and cls.summary and cls.file_format and cls.suffix in cls.file_format
    assert cls.runtime in ("torch", "onnxruntime", "openvino", "executorch")
    assert cls.profiler is None or callable(getattr(profile, cls.profiler))
    assert cls.packageable() == (cls.suffix in PACKAGED_SUFFIXES)
    assert cls.activations and set(cls.observers) and cls.activations[0] in cls.activations
    assert (cls.arm_note is not None) == (backend in ("executorch", "qnnpack"))  # built for ARM


def test_edgeml_backends_lists_every_backend_from_its_class_and_names_what_is_missing(capsys, monkeypatch):
    from edgeml import cli
    from edgeml.quantization import catalog

    assert cli.main(["backends", "--json"]) == 0
    listed = {b["backend"]: b for b in json.loads(capsys.readouterr().out)}
    assert list(listed) == list(BACKENDS)
    for name, b in listed.items():
        cls = quantizer_class(name)
        assert (b["observers"], b["activations"], b["packageable"]) == (list(cls.observers), list(cls.activations), cls.packageable())
    assert not listed["executorch"]["packageable"] and listed["openvino"]["runtime"] == "openvino"

    real = catalog.quantizer_class

    def without_openvino(backend):
        if backend == "openvino":
            raise ParamsError("quantize.backend: 'openvino' needs 'nncf', which is not installed")
        return real(backend)

    monkeypatch.setattr(catalog, "quantizer_class", without_openvino)
    assert cli.main(["backends"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")}
    assert rows.pop("`backend`").startswith("| `backend` | what it is |")  # the header
    assert set(rows) == {f"`{b}`" for b in BACKENDS}
    assert "needs 'nncf', which is not installed" in rows["`openvino`"] and rows["`openvino`"].endswith("| no |  |")
    assert "not representative: ARM-oriented" in rows["`executorch`"] or catalog.ARM_HOST
