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
