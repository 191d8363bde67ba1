"""One sweep recipe judged on validation data only: its deployable file, its size beside FP32's, and
the quality a recipe is chosen on. Speed is measured for all recipes at once (edgeml.bench.suite)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgeml.bench.cpu import file_size_mb
from edgeml.ood.detectors import ModelContext, check_params
from edgeml.ood.protocol import validation_quality
from edgeml.params import OODParams, Params, ParamsError
from edgeml.quantization import (
    export_fp32,
    int8_path,
    load_deployable,
    load_head,
    make_quantizer,
    quantize,
)
from edgeml.quantization.base import Quantizer


def sweep_quantizer(params: Params, name: str) -> Quantizer:
    """The quantizer of sweep recipe ``name``: a missing or bad recipe, or bad detector params, stop
    here, before any work."""
    if name not in params.sweep.recipes:
        raise ParamsError(f"sweep.recipes: no recipe {name!r} (defined: {sorted(params.sweep.recipes)})")
    check_params(params.ood.detectors, {})
    return make_quantizer(params.sweep.recipes[name])


def sweep_recipe(
    quantizer: Quantizer, fp32: nn.Module, arrays: Mapping[str, np.ndarray], ood_images: Mapping[str, np.ndarray], ood: OODParams,
    out: Path,
) -> dict[str, Any]:
    """Quantize ``fp32`` by ``quantizer``'s recipe into ``out``; its validation quality (``ood_images``:
    the OOD validation sets by group), the deployable file's name, both models' sizes on disk and how long
    quantizing took."""
    recipe = quantizer.params
    with tempfile.TemporaryDirectory() as tmp:
        path = int8_path(recipe.backend, out)
        start = time.perf_counter()
        quantize(quantizer, fp32, arrays, path)
        quantize_seconds = time.perf_counter() - start
        model, context = load_deployable(path, recipe.backend, features=True), ModelContext(load_head(path, recipe.backend))
        quality = validation_quality(model, context, arrays, ood_images, ood)
        size_mb = {"fp32": file_size_mb(export_fp32(fp32, tmp)["fp32_torchscript"]), "int8": file_size_mb(path)}
    return {"recipe": dataclasses.asdict(recipe), "file": path.name, "size_mb": size_mb, "validation": quality, "quantize_seconds": quantize_seconds}
