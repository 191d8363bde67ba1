"""The finetune stage's work: install published fine-tuned weights, or search the recipes of
``finetune.recipes`` on short runs, choose on validation data only, and fine-tune the chosen one in full.

Validation here is what every choice in the project is made on (OpenOOD's protocol): top-1 on the
held-out training split, and the mean AUROC of the ID validation images vs the near and far OOD
validation sets for every detector the artifact can carry, each with its settings chosen by the same
grid search as the ood stage. No test image is read.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeml import paths
from edgeml.bench.environment import cpu_info
from edgeml.data.splits import id_split, load_ood_validation
from edgeml.io import read_json, write_json
from edgeml.model import finetune
from edgeml.model.inference import WithFeatureMap, to_tensor
from edgeml.model.outliers import GENERATORS, training_encoding
from edgeml.model.published import install_weights
from edgeml.model.resnet import load_checkpoint, save_checkpoint
from edgeml.ood import protocol
from edgeml.ood.detectors import Evidence, ModelContext, detector_class, fit_set
from edgeml.params import Params, ParamsError
from edgeml.reporting.markdown import cpu_label
from edgeml.runtime.artifact import sha256_file


class Autocast(nn.Module):
    """A (logits, features, map) model run under bf16 autocast, its outputs as float32: validation during
    fine-tuning runs as the training does (the record says whether bf16 was on); the ood stage measures
    the final model in FP32."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        super().__init__()
        self.model, self.enabled = model, enabled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            return tuple(t.float() for t in self.model(x))


def validator(params: Params, arrays: Mapping[str, np.ndarray], prepared: Path, bf16: bool) -> Callable[[nn.Module], dict[str, Any]]:
    """``evaluate(model)``: validation top-1 and, for each carriable detector of ``ood.detectors``, its mean
    validation AUROC with settings chosen on validation; ``auroc`` and ``detector`` name the best of them,
    the detector the package stage's rule would carry (before its per-image cost bound)."""
    ood = params.ood
    val_x, val_y = to_tensor(arrays["val_x"]), torch.from_numpy(arrays["val_y"])
    id_images = to_tensor(id_split(arrays, ood.id_split, prepared)[1][: ood.validation_images])
    ood_images = {group: to_tensor(x) for group, x in load_ood_validation(ood.validation_sets).items()}
    fit_images, fit_labels = fit_set(arrays, ood.fit_images, ood.seed)
    names = [name for name in ood.detectors if detector_class(name).carriable]

    def evaluate(model: nn.Module) -> dict[str, Any]:
        net = Autocast(WithFeatureMap(model).eval(), bf16)
        top1 = protocol.top1(Evidence("validation/all", val_x, net, ood.batch_size).outputs.logits, val_y)
        validation = (Evidence("validation/id", id_images, net, ood.batch_size),
                      {group: Evidence(f"validation/{group}", x, net, ood.batch_size) for group, x in ood_images.items()})
        fit = Evidence("fit", fit_images, net, ood.batch_size).outputs
        context = ModelContext(copy.deepcopy(model.fc).float().requires_grad_(False))
        records = {name: protocol.choose(name, ood.search.get(name, {}), context, fit, fit_labels, validation)[1] for name in names}
        best = max(records, key=lambda name: records[name]["validation_auroc"])
        return {
            "top1": top1,
            "auroc": records[best]["validation_auroc"],
            "detector": best,
            "aurocs": {name: r["validation_auroc"] for name, r in records.items()},
            "auroc_by_group": {name: r["validation_auroc_by_group"] for name, r in records.items()},
            "settings": {name: r["chosen"] for name, r in records.items()},
        }

    return evaluate


def steps_per_epoch(params: Params, images: int) -> int:
    """One epoch: every training image once in the ID half of the batches (the ragged last batch dropped)."""
    steps = images // params.finetune.id_batch
    if steps == 0:
        raise ParamsError(f"finetune.id_batch: {params.finetune.id_batch} exceeds the {images} training images")
    return steps


def shared_run_id(params: Params, start_sha: str, encoding: Any) -> str:
    """What every run shares, fingerprinted: the settings (not the recipes, nor the full run's length, nor
    threads, which change only the speed), the start weights, the outliers' encoding, the code, and the OOD
    validation files the runs are judged on, so a regenerated validation set never reuses old results."""
    settings = params.finetune
    shared = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("recipes", "recipe", "weights", "epochs", "threads")}
    validation_files = {name: sha256_file(paths.ood_set(name)) for _, name in params.ood.validation_sets.items()}
    return finetune.fingerprint(shared, dataclasses.asdict(params.ood), start_sha, encoding, validation_files)


def search(
    start: nn.Module, params: Params, data_for: Callable[[str], finetune.Data], evaluate: Callable[[nn.Module], dict[str, Any]],
    run_id: Callable[[str], str], work: Path,
) -> dict[str, Any]:
    """Each recipe's short run (``finetune.search_steps``) from ``start``. Results are kept in ``work`` as
    they come, each under its own run id (``run_id(name)``: the recipe, the shared settings, the start
    weights, the code), so a resumed or widened search re-runs only what is new or changed.
    Returns {recipe: the record of its run}."""
    progress = work / "search.json"
    kept = read_json(progress) if progress.exists() else {}
    results = {}
    for name, recipe in params.finetune.recipes.items():
        key = run_id(name)
        if kept.get(name, {}).get("run_id") == key:
            results[name] = kept[name]["result"]
            continue
        model = copy.deepcopy(start)
        history = finetune.run(model, data_for(name), recipe, params.finetune, 1, params.finetune.search_steps,
                               work / f"search-{name}.pt", key, evaluate, f"search {name}")
        results[name] = history[-1]
        kept[name] = {"run_id": key, "result": history[-1]}
        write_json(progress, kept)
        (work / f"search-{name}.pt").unlink(missing_ok=True)
    return results


def check_recipes(params: Params) -> None:
    """Refuse a recipe naming an unknown outlier generator before any work (params.py cannot: it loads without torch)."""
    for name, recipe in params.finetune.recipes.items():
        unknown = sorted(set(recipe.outliers) - set(GENERATORS))
        if unknown:
            raise ParamsError(f"finetune.recipes.{name}.outliers: unknown generator(s) {unknown}; known: {sorted(GENERATORS)}")


def finetune_model(params: Params, arrays: Mapping[str, np.ndarray], start_path: Path, raw_cifar: Path, prepared: Path,
                   dest: Path, work: Path) -> dict[str, Any]:
    """Fine-tune the model at ``start_path`` into ``dest`` (search, choice, full run; resumable through
    ``work``); returns the record of metrics/finetune.json."""
    settings = params.finetune
    check_recipes(params)
    torch.set_num_threads(settings.threads)
    bf16 = finetune.use_bf16(settings.bf16)
    encoding = training_encoding(raw_cifar)
    start = load_checkpoint(start_path)
    start_sha = sha256_file(start_path)
    images, labels = to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"])
    evaluate = validator(params, arrays, prepared, bf16)
    work.mkdir(parents=True, exist_ok=True)
    base = shared_run_id(params, start_sha, encoding)

    def run_id(name: str, *extra: Any) -> str:
        return finetune.fingerprint(base, name, dataclasses.asdict(settings.recipes[name]), *extra)

    def data_for(name: str) -> finetune.Data:
        return finetune.Data(images, labels, finetune.make_maker(settings.recipes[name], settings, encoding))

    start_file = work / "start_validation.json"
    cached = read_json(start_file) if start_file.exists() else {}
    start_validation = cached.get("validation") if cached.get("run_id") == base else None
    if start_validation is None:
        start_validation = evaluate(start)
        write_json(start_file, {"run_id": base, "validation": start_validation})
    record: dict[str, Any] = {"start": {"source": str(start_path), "sha256": start_sha, "validation": start_validation}}
    if settings.recipe == "auto":
        results = search(start, params, data_for, evaluate, run_id, work)
        chosen, rule = finetune.choose_recipe(results, start_validation["top1"], settings.top1_tolerance)
        record["search"] = {"steps": settings.search_steps, "rule": rule, "results": results}
        record["recipes_tried"] = {name: dataclasses.asdict(recipe) for name, recipe in settings.recipes.items()}
    else:
        chosen, rule = settings.recipe, "named by finetune.recipe (no search)"
    model = copy.deepcopy(start)
    epochs = finetune.run(model, data_for(chosen), settings.recipes[chosen], settings, settings.epochs,
                          steps_per_epoch(params, len(images)), work / "full.pt", run_id(chosen, "full", settings.epochs), evaluate, f"finetune {chosen}")
    save_checkpoint(model, params.model.stem, params.model.num_classes, dest)
    return record | {
        "origin": "fine-tuned",
        "recipe": {"name": chosen, "rule": rule, **dataclasses.asdict(settings.recipes[chosen])},
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("recipes", "weights", "recipe")},
        "epochs": epochs,
        "validation": {k: epochs[-1][k] for k in ("top1", "auroc", "detector", "aurocs")},
        "train_seconds": sum(e["seconds"] for e in epochs),  # the full run's training steps
        "wall_seconds": full_run_seconds(epochs),
        "outlier_encoding": encoding.record() if encoding is not None else "none (the source stores raw pixels)",
        "bf16_autocast": bf16,
        "threads": settings.threads,
        "cpu": cpu_info(),
        "sha256": sha256_file(dest),
    }


def full_run_seconds(epochs: list[Mapping[str, Any]]) -> float:
    """The full run's time, validation after each epoch included, from its epochs' own records: a run resumed
    after a kill counts the epochs done before it too (this process's clock would see only the last ones)."""
    return sum(e["seconds"] + e["validation_seconds"] for e in epochs)


def install(params: Params, start_path: Path, dest: Path, record_path: Path) -> dict[str, Any]:
    """The published fine-tuned weights (``finetune.weights``) onto ``dest``, with the record of the run
    that made them (``record_path``, beside the weights). Refused when that run started from other
    weights than ``start_path``: the provenance would be false."""
    weights = params.finetune.weights
    if not record_path.exists():
        raise ParamsError(f"finetune.weights: no provenance record {record_path} beside the weights; it is written by "
                          "the run that made them (dvc exp run -S finetune.weights=null)")
    made = read_json(record_path)
    start_sha = sha256_file(start_path)
    if made["start"]["sha256"] != start_sha:
        raise ParamsError(
            f"finetune.weights: fine-tuned from weights with sha256 {made['start']['sha256'][:12]}..., but the train stage "
            f"installed {start_sha[:12]}... ({start_path}); point train.weights at the start weights, or fine-tune these "
            "(finetune.weights: null)"
        )
    _, provenance = install_weights(weights, params.model, dest, key="finetune.weights")
    if provenance["sha256"] != made["sha256"]:
        raise ParamsError(f"finetune.weights: {record_path} describes weights with sha256 {made['sha256'][:12]}..., not these")
    return made | {"origin": "installed", "installed": provenance}


def search_table(record: Mapping[str, Any]) -> str:
    """metrics/finetune_search.md: every recipe tried, with its validation numbers, and the choice."""
    start = record["start"]["validation"]
    if "search" not in record:
        return f"# Fine-tuning recipe search\n\nNo search: {record['recipe']['rule']}.\n"
    search_record = record["search"]
    names = list(start["aurocs"])
    head = "| recipe | loss | weight | outliers | top-1 | " + " | ".join(names) + " | best (near, far) |\n"
    head += "|---" * (6 + len(names)) + "|\n"
    rows = [f"| start (no fine-tune) | | | | {start['top1'] * 100:.2f} | " + " | ".join(f"{start['aurocs'][n] * 100:.2f}" for n in names)
            + f" | {_best(start)} |"]
    tolerance = start["top1"] - record["settings"]["top1_tolerance"]
    for name, result in search_record["results"].items():
        recipe = record["recipes_tried"][name]
        mix = ", ".join(f"{k} {v:g}" for k, v in recipe["outliers"].items())
        mark = " **chosen**" if name == record["recipe"]["name"] else ("" if result["top1"] >= tolerance else " (top-1 out)")
        terms = (recipe["loss"] + ("+logitnorm" if recipe["id_loss"] == "logitnorm" else "") + (f" + distill {recipe['distill']:g}" if recipe.get("distill") else "")
                 + (", T2FNorm" if recipe.get("normalized_features") else ""))
        rows.append(f"| {name}{mark} | {terms} | {recipe['weight']:g} | {mix} | "
                    f"{result['top1'] * 100:.2f} | " + " | ".join(f"{result['aurocs'][n] * 100:.2f}" for n in names)
                    + f" | {_best(result)} |")
    return (f"# Fine-tuning recipe search\n\nEach recipe: {search_record['steps']} steps from the start weights; validation only "
            f"(top-1 on the held-out training split; mean AUROC, near and far validation sets, per carriable detector).\n"
            f"Rule: {search_record['rule']}.\n\n" + head + "\n".join(rows) + "\n" + full_run_table(record))


def _best(validation: Mapping[str, Any]) -> str:
    """The best carriable detector's mean validation AUROC, and its near and far parts where recorded."""
    text = f"{validation['detector']} {validation['auroc'] * 100:.2f}"
    groups = validation.get("auroc_by_group", {}).get(validation["detector"])
    return text + (f" ({groups['near'] * 100:.2f}, {groups['far'] * 100:.2f})" if groups else "")


def full_run_table(record: Mapping[str, Any]) -> str:
    """The chosen recipe's full run, epoch by epoch: where its time went and what validation said."""
    rows = [f"| {e['epoch']} | {e['seconds']:.0f} | {e['images_per_second']:.0f} | {e['validation_seconds']:.0f} | "
            f"{100 * e['top1']:.2f} | {_best(e)} |" for e in record["epochs"]]
    start, end, allowed = record["start"]["validation"]["top1"], record["epochs"][-1]["top1"], record["settings"]["top1_tolerance"]
    within = "within" if start - end <= allowed else "more than"
    return "\n".join([
        "", f"## The chosen recipe in full: `{record['recipe']['name']}`", "",
        f"{len(record['epochs'])} epochs in {record['wall_seconds'] / 60:.1f} min on {cpu_label(record['cpu'])}, {record['threads']} threads, "
        f"bf16 autocast {'on' if record['bf16_autocast'] else 'off'}, validation after each epoch included.", "",
        "| epoch | training s | images/s | validation s | validation top-1 | best carriable detector, validation AUROC (near, far) |",
        "|---|---|---|---|---|---|", *rows, "",
        f"The weights are the last epoch's: validation top-1 {100 * end:.2f}%, {100 * (start - end):.2f} points below the start "
        f"model's {100 * start:.2f}%, {within} the {100 * allowed:.2f} points the rule allows (the rule judged each recipe's short run).",
    ]) + "\n"
