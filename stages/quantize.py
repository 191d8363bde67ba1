"""Stage quantize: post-training static INT8 from the FP32 checkpoint; export both as deployable files."""

import dataclasses

import numpy as np

from edgeml import params as P
from edgeml.data import load_arrays
from edgeml.io import atomic_dir, write_json
from edgeml.models import load_checkpoint
from edgeml.preprocess import normalize, to_tensor
from edgeml.quantization import export, make_quantizer
from edgeml.stage import run

DEPLOY = "models/deploy"


def main() -> None:
    params = P.load().quantize
    quantizer = make_quantizer(params)
    arrays = load_arrays("data/prepared/cifar10.npz")
    pool = arrays[f"{params.calibration_split}_x"]  # never the test split: params allow val or train only
    chosen = np.random.default_rng(params.seed).choice(len(pool), params.calibration_size, replace=False)
    calibration = to_tensor(pool[np.sort(chosen)])
    fp32 = load_checkpoint("models/fp32.pt")
    int8 = quantizer.run(fp32, calibration)
    example = normalize(calibration[:1])
    with atomic_dir(DEPLOY) as out:
        export(fp32, out / "fp32.pt", example)
        export(int8, out / "int8.pt", example)
    write_json(
        "metrics/quantize.json",
        {"recipe": dataclasses.asdict(params), "calibration_images": len(calibration)},
    )


if __name__ == "__main__":
    run(main)
