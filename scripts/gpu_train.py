"""The GPU session's training run: the paper's CIFAR-stem ResNet18 trained on a lent GPU machine,
which has no DVC, dvclive, package registry or internet (scripts/gpu_run.sh runs it there;
metrics/gpu_recipe/PROVENANCE.md records such a run).

It calls what the stages call, so its data and models are the pipeline's: CIFAR-10 is fetched from
the mirror archive (checked against the SHA256SUMS beside it) and split as the prepare stage does,
each recipe (ce: cross-entropy, logitnorm: LogitNorm, rotpred: RotPred's rotation head, pixmix:
PixMix with generated mixing pictures, rotpred_pixmix: both, as OpenOOD v1.5 reports them) is trained
as the train stage trains (the committed params.yaml, ``train.weights: null``, with the options given
here overriding it), and its test top-1 is measured as the evaluate stage does, recorded only.
The recipe is chosen on validation only (edgeml.model.selection): among recipes whose validation
top-1 is >= --min-val-top1, the best mean validation MSP AUROC of the ID validation split against
the --ood-val sets (.npz files of uint8 HWC images under key ``x``, e.g. data/prepared/ood/tin_val.npz
and a far-OOD one). Into OUT/<recipe>/ go params.yaml (the settings used), train.json, test.json,
val_ood.json, curves/ (dvclive's layout) and fp32.pt in 15 MiB parts (`cat fp32.pt.part-* > fp32.pt`,
then check fp32.pt.sha256), as soon as the recipe ends; OUT/summary.json compares the recipes and
records the choice (or, when no recipe keeps the top-1, why not, and the script then fails).

    python scripts/gpu_train.py --out /tmp/out --archive .gpu_data/cifar10-jpeg.tar.gz \
        --ood-val .gpu_data/tin_val.npz .gpu_data/shapes_val.npz

Smoke test on a CPU: add ``--device cpu --threads 2 --stem torchvision --epochs 2 --batch 64 --subset 512 --min-val-top1 0``.
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
from edgeml.model.rotpred import load_rotation_head, rotpred_score
from edgeml.model.selection import MIN_TOP1, Candidate, NoEligibleRecipe, choose_recipe, validation_auroc
from edgeml.model.train import resolve_device
from edgeml.model.weights import fp32_model

REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20  # the device tool brings back files of up to 16 MiB
SUMMARY_KEYS = ("val_acc", "val_loss", "epochs", "seconds_per_epoch", "median_epoch_seconds", "train_seconds")
# train.* settings of each recipe (LogitNorm stays combinable through params.yaml's train.loss)
RECIPES = {
    "ce": {"loss": "ce"},
    "logitnorm": {"loss": "logitnorm"},
    "rotpred": {"loss": "ce", "rotpred": True},
    "pixmix": {"loss": "ce", "pixmix": True},
    "rotpred_pixmix": {"loss": "ce", "rotpred": True, "pixmix": True},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="receives the results")
    parser.add_argument("--archive", type=Path, default=REPO / ".gpu_data" / "cifar10-jpeg.tar.gz", help="SHA256SUMS beside it")
    parser.add_argument("--work", type=Path, default=REPO / ".gpu_run", help="data, checkpoints and models (git-ignored)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the settings the options override")
    parser.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--ood-val", type=Path, nargs="+", required=True,
                        help=".npz files of OOD validation images (uint8 HWC, key x); never a test set")
    parser.add_argument("--min-val-top1", type=float, default=MIN_TOP1, help="a recipe must keep this validation top-1")
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
    train = {"weights": None, "rotpred": False, "pixmix": False, **RECIPES[recipe], "device": args.device}
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


def ood_validation(
    model_path: Path, arrays: dict[str, np.ndarray], ood_val: dict[str, np.ndarray], device: torch.device
) -> dict[str, Any]:
    """MSP AUROC of the ID validation split against each OOD validation set, and their mean (what the
    recipe is chosen on); with a rotation head also RotPred's own score's AUROCs, recorded only."""
    model = load_checkpoint(model_path).to(device, memory_format=torch.channels_last)
    msp = lambda images: torch.softmax(predict_logits(model, to_tensor(images), device=device), 1).amax(1).numpy()  # noqa: E731
    result = {"msp_auroc": validation_auroc(msp(arrays["val_x"]), {name: msp(x) for name, x in ood_val.items()})}
    head = load_rotation_head(model_path)
    if head is not None:
        model.cpu()
        score = lambda images: torch.cat([rotpred_score(model, head, batch) for batch in to_tensor(images).split(500)]).numpy()  # noqa: E731
        result["rotpred_auroc"] = validation_auroc(score(arrays["val_x"]), {name: score(x) for name, x in ood_val.items()})
    return result


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
    shared = P.parse(recipe_params(raw, args.recipes[0], args)).train  # the recipes differ in RECIPES' keys only
    ood_val = {path.stem: np.load(path)["x"] for path in args.ood_val}
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
        validation = ood_validation(work / "fp32.pt", arrays, ood_val, resolve_device(params.train.device))
        write_json(out / "val_ood.json", validation)
        write_parts(work / "fp32.pt", out)
        rows[recipe] = {key: metrics[key] for key in SUMMARY_KEYS} | test | {"val_ood_msp_auroc": validation["msp_auroc"]}
    candidates = {name: Candidate(row["val_acc"], row["val_ood_msp_auroc"]["mean"]) for name, row in rows.items()}
    try:
        choice: dict[str, Any] = {"recipe": choose_recipe(candidates, args.min_val_top1)}
    except NoEligibleRecipe as exc:
        choice = {"recipe": None, "error": str(exc)}
    choice |= {"rule": f"validation top-1 >= {args.min_val_top1}, then the best mean validation MSP AUROC over "
                       f"{sorted(ood_val)}; ties: first name", "min_val_top1": args.min_val_top1}
    write_json(args.out / "summary.json", {
        "recipes": rows,
        "choice": choice,
        "settings": {"STEM": args.stem, "EPOCHS": shared.epochs, "BATCH": shared.batch_size, "LR": shared.lr,
                     "TAU": shared.logitnorm_tau, "DEVICE": shared.device, "THREADS": shared.threads, "SUBSET": args.subset,
                     "PIXMIX_K": shared.pixmix_k, "PIXMIX_BETA": shared.pixmix_beta, "ROTPRED_WEIGHT": shared.rotpred_weight,
                     "OOD_VAL": {path.stem: sha256(path) for path in args.ood_val}},
        "data": provenance,
        "environment": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    })
    print(json.dumps({"recipes": rows, "choice": choice}, indent=2))
    if choice["recipe"] is None:
        raise SystemExit(f"error: {choice['error']}")


if __name__ == "__main__":
    main()
