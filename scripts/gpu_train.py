"""The GPU session's training run: the paper's CIFAR-stem ResNet18 trained on a lent GPU machine,
which has no DVC, dvclive, package registry or internet (scripts/gpu_run.sh runs it there;
metrics/gpu_recipe/PROVENANCE.md records such a run).

It calls what the stages call, so its data and models are the pipeline's: CIFAR-10 is fetched from
the mirror archive (checked against the SHA256SUMS beside it) and split as the prepare stage does,
each recipe (ce: cross-entropy, logitnorm: LogitNorm) is trained as the train stage trains (the
committed params.yaml, ``train.weights: null``, with the options given here overriding it), and its
test top-1 is measured as the evaluate stage does, recorded only: settings are chosen on validation
accuracy. Into OUT/<recipe>/ go params.yaml (the settings used), train.json, test.json, curves/
(dvclive's layout) and fp32.pt in 15 MiB parts (`cat fp32.pt.part-* > fp32.pt`, then check
fp32.pt.sha256), as soon as the recipe ends; OUT/summary.json compares the recipes.

    python scripts/gpu_train.py --out /tmp/out --archive .gpu_data/cifar10-jpeg.tar.gz

Smoke test on a CPU: add ``--device cpu --threads 2 --stem torchvision --epochs 2 --batch 64 --subset 512``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from edgeml import params as P
from edgeml.data.readers import load_cifar10
from edgeml.data.sources import fetch
from edgeml.data.splits import split_cifar10
from edgeml.io import write_json, write_npz, write_text
from edgeml.model.inference import predict_logits, to_tensor
from edgeml.model.resnet import load_checkpoint
from edgeml.model.train import resolve_device
from edgeml.model.weights import fp32_model

REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20  # the device tool brings back files of up to 16 MiB
SUMMARY_KEYS = ("val_acc", "val_loss", "epochs", "seconds_per_epoch", "median_epoch_seconds", "train_seconds")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="receives the results")
    parser.add_argument("--archive", type=Path, default=REPO / ".gpu_data" / "cifar10-jpeg.tar.gz", help="SHA256SUMS beside it")
    parser.add_argument("--work", type=Path, default=REPO / ".gpu_run", help="data, checkpoints and models (git-ignored)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the settings the options override")
    parser.add_argument("--recipes", nargs="+", choices=("ce", "logitnorm"), default=["ce", "logitnorm"])
    parser.add_argument("--stem", choices=("cifar", "torchvision", "conv3s2"), default="cifar")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cuda")
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    parser.add_argument("--batch", type=int, help="default: train.batch_size")
    parser.add_argument("--lr", type=float, help="default: train.lr")
    parser.add_argument("--tau", type=float, help="LogitNorm's temperature; default: train.logitnorm_tau")
    parser.add_argument("--threads", type=int, help="default: train.threads")
    parser.add_argument("--subset", type=int, default=0, help="> 0: train on this many training images only (smoke tests)")
    return parser.parse_args(argv)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prepare(
    archive: Path, settings: P.PrepareParams, subset: int, raw: Path, dest: Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The fetch and prepare stages' CIFAR-10 arrays (the same split) written to ``dest``, and the
    sha256 of the archive (copied to ``raw``) and of that file."""
    record = fetch("cifar10", P.Source(str(archive)), raw)
    arrays = split_cifar10(load_cifar10(record.path), settings.val_size, settings.seed)
    if subset:  # spread over the whole set (its files are sorted by class)
        for key in ("train_x", "train_y"):
            arrays[key] = arrays[key][:: len(arrays[key]) // subset][:subset]
    write_npz(dest, **arrays)
    return arrays, {"archive_sha256": record.sha256, "cifar10_npz_sha256": sha256(dest)}


def recipe_params(raw: dict[str, Any], recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    """``raw`` (params.yaml's contents) with this recipe's model and train settings, validated."""
    train = {"weights": None, "loss": recipe, "device": args.device}
    for option, key in (("epochs", "epochs"), ("batch", "batch_size"), ("lr", "lr"), ("tau", "logitnorm_tau"), ("threads", "threads")):
        if getattr(args, option) is not None:
            train[key] = getattr(args, option)
    raw = {**raw, "model": {**raw["model"], "stem": args.stem}, "train": {**raw["train"], **train}}
    P.parse(raw)
    return raw


def top1_on_test(model_path: Path, arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, Any]:
    """The evaluate stage's FP32 top-1 on the test split."""
    model = load_checkpoint(model_path).to(device, memory_format=torch.channels_last)
    logits = predict_logits(model, to_tensor(arrays["test_x"]), device=device)
    return {"test_top1": (logits.argmax(1) == torch.from_numpy(arrays["test_y"])).float().mean().item(), "test_images": len(logits)}


def write_parts(path: Path, dest: Path) -> None:
    """``path`` in parts that fit the transfer limit, named as split(1) names them, and its sha256 in
    sha256sum's format."""
    data = path.read_bytes()
    suffixes = (a + b for a in string.ascii_lowercase for b in string.ascii_lowercase)
    for start, suffix in zip(range(0, len(data), PART_BYTES), suffixes):
        (dest / f"{path.name}.part-{suffix}").write_bytes(data[start : start + PART_BYTES])
    write_text(dest / f"{path.name}.sha256", f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raw = yaml.safe_load(args.params.read_text())
    data = args.work / "prepared" / "cifar10.npz"
    arrays, provenance = prepare(args.archive.resolve(), P.parse(raw).prepare, args.subset, args.work / "raw", data)
    shared = P.parse(recipe_params(raw, args.recipes[0], args)).train  # the recipes differ in train.loss only
    rows: dict[str, dict[str, Any]] = {}
    for recipe in args.recipes:
        settings = recipe_params(raw, recipe, args)
        params, work, out = P.parse(settings), args.work / recipe, args.out / recipe
        print(f"== {recipe}: {params.model.stem} stem, {params.train.epochs} epochs, batch {params.train.batch_size}, "
              f"lr {params.train.lr}, {params.train.device}", flush=True)
        write_text(out / "params.yaml", yaml.safe_dump(settings, sort_keys=False))
        metrics = fp32_model(params, data, work / "fp32.pt", work / "checkpoint.pt", out / "curves")
        write_json(out / "train.json", metrics)
        test = top1_on_test(work / "fp32.pt", arrays, resolve_device(params.train.device))
        write_json(out / "test.json", test)
        write_parts(work / "fp32.pt", out)
        rows[recipe] = {key: metrics[key] for key in SUMMARY_KEYS} | test
    write_json(args.out / "summary.json", {
        "recipes": rows,
        "settings": {"STEM": args.stem, "EPOCHS": shared.epochs, "BATCH": shared.batch_size, "LR": shared.lr,
                     "TAU": shared.logitnorm_tau, "DEVICE": shared.device, "THREADS": shared.threads, "SUBSET": args.subset},
        "data": provenance,
        "environment": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    })
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
