"""Stage sweep@<recipe>: one quantization recipe on the committed FP32 model: its deployable file, size and
quality on validation data only (top-1 on the held-out training split, logit detectors' AUROC vs the
OOD validation set). No test image is read; speed is measured for all recipes at once by sweep_timing."""

import dataclasses
import sys
import tempfile
import time

import torch

from edgeml import params as P
from edgeml.bench.cpu import file_size_mb
from edgeml.data.splits import load_arrays
from edgeml.io import atomic_dir, write_json
from edgeml.model.inference import to_tensor
from edgeml.model.resnet import load_checkpoint
from edgeml.ood.detectors import ModelContext, check_params
from edgeml.ood.protocol import validation_quality
from edgeml.params import ParamsError
from edgeml.quantization import (
    export_fp32,
    int8_path,
    load_deployable,
    load_head,
    make_quantizer,
    quantize,
)
from edgeml.stage import run


def main() -> None:
    params = P.load()
    name = sys.argv[1]
    if name not in params.sweep.recipes:
        raise ParamsError(f"sweep.recipes: no recipe {name!r} (defined: {sorted(params.sweep.recipes)})")
    recipe, ood = params.sweep.recipes[name], params.ood
    check_params(ood.detectors, {})
    quantizer = make_quantizer(recipe)  # a bad recipe stops here, before any work
    torch.set_num_threads(params.bench.threads)
    arrays = load_arrays("data/prepared/cifar10.npz")
    fp32 = load_checkpoint("models/fp32.pt")
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(f"models/sweep/{name}") as out:
        path = int8_path(recipe.backend, out)
        start = time.perf_counter()
        quantize(quantizer, fp32, arrays, path)
        quantize_seconds = time.perf_counter() - start
        quality = validation_quality(
            load_deployable(path, recipe.backend, features=True), ModelContext(load_head(path, recipe.backend)),
            to_tensor(arrays["val_x"]), torch.from_numpy(arrays["val_y"]),
            to_tensor(load_arrays(f"data/prepared/ood/{ood.validation_set}.npz")["x"]),
            ood.detectors, ood.validation_images, ood.batch_size,
        )
        size_mb = {"fp32": file_size_mb(export_fp32(fp32, tmp)["fp32_torchscript"]), "int8": file_size_mb(path)}
    write_json(
        f"metrics/sweep/{name}.json",
        {"recipe": dataclasses.asdict(recipe), "size_mb": size_mb, "validation": quality, "quantize_seconds": quantize_seconds},
    )


if __name__ == "__main__":
    run(main)
