import contextlib
import pytest
import torch

from edgeml.bench.roofline import count_macs
from edgeml.model.resnet import build_resnet18


def resnet18_macs(stem_kernel: int, stem_stride: int, max_pool: bool, size: int = 32, classes: int = 10) -> int:
    """ResNet18's multiply-accumulates from its layer shapes: a conv is (output pixels) x (out channels)
    x (in channels x kernel area); the stem's output is halved again by the max-pool when present."""
    side = size // stem_stride
    macs = side * side * 64 * 3 * stem_kernel**2
    side //= 2 if max_pool else 1
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        if stage:  # a stride-2 3x3 conv and a 1x1 stride-2 shortcut open the stage
            side //= 2
            macs += side * side * width * (channels * 9 + channels)
        else:
            macs += side * side * width * channels * 9
        macs += 3 * side * side * width * width * 9  # the stage's other three 3x3 convs
        channels = width
    return macs + channels * classes  # the classifier


# By hand: torchvision stem 16x16x64x147 + body at 8x8 (layer1 4x8x8x64x576, then per stage 3x its
# 3x3 convs + the opening conv and shortcut) + fc 5120 = 37,016,576 (the paper's figure).
# CIFAR stem: 32x32x64x27 = 1,769,472; layer1 at 32x32: 150,994,944; layers 2-4 (16, 8, 4):
# 3 x 134,217,728; fc 5,120: 555,422,720. conv3s2: 16x16x64x27 = 442,368; layer1 at 16x16:
# 37,748,736; layers 2-4: 3 x 33,554,432; fc 5,120: 138,859,520.
@pytest.mark.parametrize(
    "stem, shape, expected",
    [
        ("torchvision", (7, 2, True), 37_016_576),
        ("cifar", (3, 1, False), 555_422_720),
        ("conv3s2", (3, 2, False), 138_859_520),
    ],
)
def test_count_macs_of_each_stem(stem, shape, expected):
    assert resnet18_macs(*shape) == expected
    assert count_macs(build_resnet18(stem), torch.zeros(1, 3, 32, 32)) == expected


def test_layers_are_the_gemms_resnet18_runs_at_batch_1():
    from edgeml.bench.roofline import gemm_layers

    model = build_resnet18(stem="cifar")
    layers = gemm_layers(model, torch.zeros(1, 3, 32, 32))
    assert len(layers) == 21 and sum(layer.macs for layer in layers) == count_macs(model, torch.zeros(1, 3, 32, 32))
    assert sum(layer.weights for layer in layers) == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    last_conv = layers[-2]  # layer4's last 3x3 conv: a 4x4 map, 512 x 9 inputs per output, 512 outputs
    assert (last_conv.m, last_conv.k, last_conv.n) == (16, 4608, 512) and last_conv.label == "3x3 conv 512→512 @4x4"
    assert layers[-1].label == "linear 512→10" and (layers[-1].m, layers[-1].k, layers[-1].n) == (1, 512, 10)


def test_the_roofline_takes_the_larger_floor_per_layer_and_adds_one_call():
    from edgeml.bench.roofline import Layer, layer_roofline

    wide = Layer("early", m=1024, k=576, n=64, weights=36_864, key=(64, 32, 32, 64, 3))  # 37.7 M MACs, 36.9 KB
    deep = [Layer(f"late{i}", m=16, k=4608, n=512, weights=2_359_296, key=(512, 4, 4, 512, 3)) for i in range(2)]
    # per round: the floor takes a library's best round, and each shape's library is the one with the best round
    gemm_us = {(1024, 576, 64): {"onnxruntime": [45.0, 30.0], "torch": [33.0, 34.0]}, (16, 4608, 512): {"onnxruntime": [31.0, 31.0], "torch": [25.0, 60.0]}}
    result = layer_roofline([wide, *deep], gemm_us, bandwidth_gbs=50.0, call_us=20.0,
                            gemm_peak_gmacs=2000.0, measured_us={(64, 32, 32, 64, 3): [60.0], (512, 4, 4, 512, 3): [100.0, 110.0]})
    early, late = result["layers"]
    assert early["compute_us"] == pytest.approx(30.0) and early["bound"] == "compute"  # 30 > 37.7M / 2000 G = 18.9
    assert early["compute_slowest_round_us"] == pytest.approx(45.0) and early["gemm_rounds"] == 2
    assert late["compute_slowest_round_us"] == pytest.approx(2 * 60.0)  # the chosen library's slowest round, per conv x 2
    assert (early["gemm_library"], late["gemm_library"]) == ("onnxruntime", "torch")  # each shape's fastest library
    assert early["measured_over_roofline"] == pytest.approx(2.0)
    assert late["count"] == 2 and late["weight_read_us"] == pytest.approx(2 * 2_359_296 / 50e3)  # 94.4 µs of reads
    assert late["compute_us"] == pytest.approx(50.0) and late["bound"] == "weight reads"
    assert late["measured_us"] == pytest.approx(210.0)
    assert result["floor_ms"] == pytest.approx((30.0 + 2 * 2_359_296 / 50e3 + 20.0) / 1e3)
    assert result["gemm_floor_ms"] == pytest.approx((wide.macs + 2 * deep[0].macs) / 2000e3 / 1e3)
    # a layer the runtime did not report leaves the model's measured sum unknown rather than short
    partial = layer_roofline([wide, *deep], gemm_us, 50.0, 20.0, 2000.0, {(64, 32, 32, 64, 3): [60.0]})
    assert partial["layers"][1]["measured_us"] is None and partial["measured_layers_us"] is None


def test_onnx_nodes_are_charged_to_the_layer_whose_module_path_names_them():
    from edgeml.bench.roofline import gemm_layers, onnx_layer_us

    layers = gemm_layers(build_resnet18(stem="cifar"), torch.zeros(1, 3, 32, 32))
    node_us = {
        "/conv1/Conv": 9.0,
        "/layer1/layer1.0/conv1/Conv_quant": 5.0,  # fused by ORT: the name keeps the module path
        "/layer1/layer1.0/relu/Relu": 100.0,  # no GEMM layer: not charged
        "/layer2/layer2.0/downsample/downsample.0/Conv": 3.0,
        "/layer4/layer4.1/conv2/Conv": 20.0, "/layer4/layer4.0/conv2/Conv": 30.0,
        "/fc/Gemm": 1.0,
    }
    by_key = onnx_layer_us(node_us, layers)
    assert by_key[(64, 32, 32, 3, 3)] == [9.0] and by_key[(64, 32, 32, 64, 3)] == [5.0]
    assert by_key[(128, 16, 16, 64, 1)] == [3.0] and by_key[(10, 0, 0, 512, 0)] == [1.0]
    assert sorted(by_key[(512, 4, 4, 512, 3)]) == [20.0, 30.0]  # layer4's 3x3 512->512 convs that were profiled


def test_each_int8_gemm_shape_is_timed_in_every_library_each_round_with_its_call_taken_off():
    pytest.importorskip("onnxruntime")
    from edgeml.bench.roofline import GEMM_LIBRARIES, int8_gemm_rounds_us

    timed = int8_gemm_rounds_us([(16, 64, 32), (16, 64, 32), (4, 32, 8)], threads=1, rounds=3, repeats=3)
    assert set(timed) == {(4, 32, 8), (16, 64, 32)}  # each shape once
    for by_library in timed.values():
        assert set(by_library) == set(GEMM_LIBRARIES)
        assert all(len(rounds) == 3 and all(us >= 0.0 for us in rounds) for rounds in by_library.values())


def test_each_library_times_every_shape_in_its_own_process_in_turns(monkeypatch):
    """A library is never timed beside another's threads, and a slow spell of the machine reaches every shape in
    the same round rather than one shape in every round."""
    from edgeml.bench import isolated, roofline

    order: list[tuple[str, tuple[int, int, int]]] = []

    class FakeWorker:
        def __init__(self, load: isolated.Load):
            self.library, self.shapes = load.kwargs["library"], [tuple(shape) for shape in load.kwargs["shapes"]]

        def samples(self, batch: int, settle: int, runs: int) -> list[float]:
            order.append((self.library, self.shapes[batch]))
            return [1e-6 * len(order), 1e-6 * (len(order) + 5)]  # the best of the runs counts

    monkeypatch.setattr(isolated, "Workers", lambda loads: contextlib.nullcontext({name: FakeWorker(load) for name, load in loads.items()}))
    monkeypatch.setattr(roofline, "GEMM_LIBRARIES", {"a": "A", "b": "B"})
    timed = roofline.int8_gemm_rounds_us([(4, 4, 4), (2, 2, 2)], threads=1, rounds=2, repeats=1)
    one_round = [(library, shape) for library in "ab" for shape in (roofline.CALL_SHAPE, (2, 2, 2), (4, 4, 4))]
    assert order == one_round * 2
    # each time less its library's call in the same round: a's 2 and 3 after its call 1, b's 5 and 6 after 4, ...
    assert timed == {(2, 2, 2): {"a": pytest.approx([1.0, 1.0]), "b": pytest.approx([1.0, 1.0])},
                     (4, 4, 4): {"a": pytest.approx([2.0, 2.0]), "b": pytest.approx([2.0, 2.0])}}
