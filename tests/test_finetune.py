"""OOD fine-tuning (edgeml.model.finetune, edgeml.finetuning) on tiny data: resume after a kill, frozen
layers and batch-norm statistics, the losses, the recipe rule, and the provenance check on install."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from edgeml import finetuning
from edgeml.model import finetune, outliers
from edgeml.model import pictures as generated
from edgeml.model.resnet import build_resnet18, save_checkpoint
from edgeml.runtime.artifact import sha256_file
from edgeml.params import FinetuneParams, FinetuneRecipe, ParamsError, Weights, parse
from test_outliers import smooth_images

ROOT = Path(__file__).resolve().parents[1]
RECIPE = FinetuneRecipe(outliers={"jigsaw": 1, "procedural": 1}, loss="oe", weight=0.5)


def tiny_params(**changes) -> FinetuneParams:
    return FinetuneParams(recipes={"r": RECIPE}, id_batch=4, outlier_batch=4, bf16="off", pictures=16, **changes)


def tiny_data(count: int = 32) -> finetune.Data:
    images = smooth_images(count)
    maker = outliers.OutlierMaker(RECIPE.outliers, generated.mixing_pictures(16, 0), encoding=None)
    return finetune.Data(images, torch.arange(count) % 10, maker)


class Killed(Exception):
    pass


def run(model, checkpoint: Path, recipe: FinetuneRecipe = RECIPE, kill_at_epoch: int | None = None, params=None):
    seen = []

    def evaluate(m):
        seen.append(1)
        if kill_at_epoch is not None and len(seen) == kill_at_epoch:
            raise Killed  # killed during epoch kill_at_epoch's validation: its checkpoint is not written
        return {"top1": 0.5}

    return finetune.run(model, tiny_data(), recipe, params or tiny_params(), 3, 2, checkpoint, "run-1", evaluate, "test")


@pytest.mark.parametrize("recipe", [RECIPE, dataclasses.replace(RECIPE, distill=1.0), dataclasses.replace(RECIPE, normalized_features=True)],
                         ids=["oe", "oe+distill", "oe+t2fnorm"])
def test_a_killed_fine_tune_resumes_to_the_same_weights(tmp_path, recipe):
    """With distillation the teacher must be the start weights on resume too, not the checkpoint's; with
    T2FNorm the feature scale must be the start model's, not the resumed one's."""
    torch.manual_seed(0)
    start = build_resnet18("cifar")
    whole = build_resnet18("cifar")
    whole.load_state_dict(start.state_dict())
    history = run(whole, tmp_path / "whole.pt", recipe)
    assert [e["epoch"] for e in history] == [1, 2, 3]
    resumed = build_resnet18("cifar")
    resumed.load_state_dict(start.state_dict())
    with pytest.raises(Killed):
        run(resumed, tmp_path / "resumed.pt", recipe, kill_at_epoch=3)
    before_kill = torch.load(tmp_path / "resumed.pt", weights_only=True)["history"]
    after_kill = build_resnet18("cifar")
    after_kill.load_state_dict(start.state_dict())  # a new process starts from the start weights again
    history_resumed = run(after_kill, tmp_path / "resumed.pt", recipe)
    assert [e["epoch"] for e in history_resumed] == [1, 2, 3]
    # the recorded time counts the epochs done before the kill, which this process never saw
    assert history_resumed[:2] == before_kill
    assert finetuning.full_run_seconds(history_resumed) > sum(e["seconds"] + e["validation_seconds"] for e in before_kill)
    for (name, a), b in zip(whole.state_dict().items(), after_kill.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    torch.manual_seed(0)
    model = build_resnet18("cifar")
    run(model, tmp_path / "c.pt")
    other = build_resnet18("cifar")
    history = finetune.run(other, tiny_data(), RECIPE, tiny_params(), 1, 1, tmp_path / "c.pt", "run-2", lambda m: {}, "test")
    assert len(history) == 1 and history[0]["epoch"] == 1


def test_frozen_layers_and_batch_norm_statistics_stay_the_start_models(tmp_path):
    torch.manual_seed(0)
    model = build_resnet18("cifar")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, tmp_path / "c.pt", params=tiny_params(freeze="layer1", lr=0.05))
    after = model.state_dict()
    for name in before:
        frozen = name.startswith(("conv1.", "bn1.", "layer1.")) or "running_" in name or "num_batches" in name
        assert torch.equal(before[name], after[name]) == frozen, name


def test_t2fnorm_trains_on_logits_over_the_feature_norm_and_leaves_the_deployed_forward_pass_raw():
    torch.manual_seed(0)
    model = build_resnet18("cifar").eval()
    x = finetune.normalize(smooth_images(6))
    body = torch.nn.Sequential(*list(model.children())[:-1], torch.nn.Flatten())
    with torch.no_grad():
        features = body(x)
        raw = model(x)
        with finetune.normalized_features(model, 3.0):
            trained = model(x)
        after = model(x)
    norms = features.norm(dim=1, keepdim=True)
    assert torch.allclose(trained, model.fc(features) * 3.0 / norms, atol=1e-5)
    assert torch.allclose(raw, model.fc(features), atol=1e-5) and torch.equal(after, raw)
    assert not torch.allclose(trained, raw, atol=1e-3)  # the scale is not the features' own norm
    assert torch.equal(trained.argmax(1), raw.argmax(1))  # training and deployed forward passes predict alike
    logits, start_norms = finetune.start_pass(model, smooth_images(6), batch_size=4)  # two batches, in order
    assert torch.allclose(logits, raw, atol=1e-5) and torch.allclose(start_norms, norms.squeeze(1), rtol=1e-4)
    assert not model.fc._forward_pre_hooks


def test_a_t2fnorm_run_records_the_start_models_feature_scale(tmp_path):
    torch.manual_seed(0)
    model = build_resnet18("cifar")
    recipe = dataclasses.replace(RECIPE, normalized_features=True)
    history = run(model, tmp_path / "c.pt", recipe)
    assert history[-1]["feature_scale"] > 0
    assert not model.fc._forward_hooks  # the deployed model keeps the raw forward pass


@pytest.mark.parametrize("normalized", [False, True], ids=["plain", "t2fnorm"])
def test_the_teacher_is_seen_through_the_models_own_training_forward_pass(tmp_path, normalized):
    """With the weights held still (lr 0) the model is its teacher, so distillation must cost nothing, also with
    T2FNorm: a teacher scored by its raw logits would set the normalised student a target it cannot reach."""
    recipe = dataclasses.replace(RECIPE, normalized_features=normalized)
    losses = {}
    for distill in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_resnet18("cifar")
        history = run(model, tmp_path / f"{distill}.pt", dataclasses.replace(recipe, distill=distill), params=tiny_params(lr=0.0))
        losses[distill] = [e["id_loss"] for e in history]
    assert losses[1.0] == pytest.approx(losses[0.0], abs=1e-5)


def test_the_outlier_losses():
    confident = torch.tensor([[20.0, 0, 0], [0, 20.0, 0]])
    uniform = torch.zeros(2, 3)
    oe = dataclasses.replace(RECIPE, loss="oe")
    assert finetune.outlier_loss(oe, confident, uniform, (0, 0)).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert finetune.outlier_loss(oe, confident, confident, (0, 0)) > 10  # confident outliers cost
    energy = dataclasses.replace(RECIPE, loss="energy")
    # ID energies about -20 (below m_in = -10) and outlier energies -log 3 (above m_out = -5): no loss
    assert finetune.outlier_loss(energy, confident, uniform, (-10.0, -5.0)).item() == 0.0
    # outliers as confident as the ID images: (m_out - E_out)^2 = (-5 + 20)^2
    assert finetune.outlier_loss(energy, confident, confident, (-10.0, -5.0)).item() == pytest.approx(15.0**2, rel=1e-3)


def test_distillation_costs_only_where_the_model_leaves_the_start_models_predictions():
    teacher = torch.tensor([[2.0, 0, 0], [0, 3.0, 1.0]])
    assert finetune.distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert finetune.distillation_loss(teacher + 5.0, teacher).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    p = torch.softmax(teacher, 1)
    q = torch.softmax(torch.zeros(2, 3), 1)
    expected = (p * (p.log() - q.log())).sum(1).mean().item()  # KL(teacher || uniform model), by hand
    assert finetune.distillation_loss(torch.zeros(2, 3), teacher).item() == pytest.approx(expected, rel=1e-5)


def test_a_negative_distillation_weight_is_refused_naming_its_key():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["finetune"]["recipes"]["oe_gray_distill"]["distill"] = -1.0
    with pytest.raises(ParamsError, match=r"finetune.recipes.oe_gray_distill.distill: .*-1"):
        parse(raw)


def test_energy_margins_are_percentiles_of_the_start_models_energies():
    # a logit row of ten equal values c has energy -logsumexp = -(c + log 10)
    levels = torch.arange(101, dtype=torch.float32)
    logits = levels[:, None].expand(101, 10)
    low, high = finetune.energy_margins(logits, [50.0, 99.0])
    log10 = torch.log(torch.tensor(10.0)).item()
    assert low == pytest.approx(-(50 + log10), abs=1e-4) and high == pytest.approx(-(1 + log10), abs=1e-4)


def test_the_recipe_rule_keeps_top1_then_takes_the_best_auroc():
    results = {"lossy": {"top1": 0.90, "auroc": 0.99}, "good": {"top1": 0.914, "auroc": 0.95}, "meh": {"top1": 0.916, "auroc": 0.93}}
    name, rule = finetune.choose_recipe(results, start_top1=0.917, tolerance=0.005)
    assert name == "good" and "0.5 points" in rule
    with pytest.raises(ParamsError, match="finetune.top1_tolerance"):
        finetune.choose_recipe({"lossy": results["lossy"]}, start_top1=0.917, tolerance=0.005)


def test_an_unknown_generator_is_refused_before_any_work():
    class P:
        finetune = FinetuneParams(recipes={"bad": FinetuneRecipe(outliers={"glyphs": 1})})

    with pytest.raises(ParamsError, match=r"finetune.recipes.bad.outliers: unknown generator\(s\) \['glyphs'\]"):
        finetuning.check_recipes(P)


def test_the_shared_run_id_follows_the_validation_files_and_the_settings_not_the_run_length(tmp_path, monkeypatch):
    """A regenerated validation set (same params, new images) must not reuse cached search results; the
    full run's length and the thread count, which change no search run, keep the id."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    params = parse(yaml.safe_load((ROOT / "params.yaml").read_text()))
    names = [name for _, name in params.ood.validation_sets.items()]
    (tmp_path / "data/prepared/ood").mkdir(parents=True)
    for name in names:
        np.savez(f"data/prepared/ood/{name}.npz", x=np.zeros((2, 32, 32, 3), np.uint8))
    key = finetuning.shared_run_id(params, "0" * 64, None)
    longer = dataclasses.replace(params, finetune=dataclasses.replace(params.finetune, epochs=params.finetune.epochs + 1, threads=1))
    assert finetuning.shared_run_id(longer, "0" * 64, None) == key
    assert finetuning.shared_run_id(params, "1" * 64, None) != key
    stronger = dataclasses.replace(params, finetune=dataclasses.replace(params.finetune, lr=params.finetune.lr * 2))
    assert finetuning.shared_run_id(stronger, "0" * 64, None) != key
    np.savez(f"data/prepared/ood/{names[1]}.npz", x=np.ones((2, 32, 32, 3), np.uint8))
    assert finetuning.shared_run_id(params, "0" * 64, None) != key


def test_installing_published_weights_checks_their_start_and_their_own_digest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint(build_resnet18("cifar"), "cifar", 10, tmp_path / "start.pt")
    save_checkpoint(build_resnet18("cifar"), "cifar", 10, tmp_path / "tuned.pt")
    tuned_sha = sha256_file(tmp_path / "tuned.pt")

    class P:
        model = type("M", (), {"stem": "cifar", "num_classes": 10})()
        finetune = FinetuneParams(recipes={"r": RECIPE}, weights=Weights(source="tuned.pt", sha256=tuned_sha))

    record = tmp_path / "finetune.json"
    record.write_text(json.dumps({"start": {"sha256": "0" * 64}, "sha256": tuned_sha}))
    with pytest.raises(ParamsError, match="fine-tuned from weights with sha256 000000000000"):
        finetuning.install(P, tmp_path / "start.pt", tmp_path / "fp32.pt", record)
    assert not (tmp_path / "fp32.pt").exists()
    record.write_text(json.dumps({"start": {"sha256": sha256_file(tmp_path / "start.pt")}, "sha256": tuned_sha}))
    installed = finetuning.install(P, tmp_path / "start.pt", tmp_path / "fp32.pt", record)
    assert installed["origin"] == "installed" and sha256_file(tmp_path / "fp32.pt") == tuned_sha


def test_publishing_points_params_at_the_published_weights_and_keeps_the_rest():
    import importlib.util

    import yaml

    from edgeml import params as P

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("publish", root / "scripts/publish_finetuned.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    text = (root / "params.yaml").read_text()
    once = publish.point_params_at(text, "weights/a.pt", "a" * 64)
    twice = publish.point_params_at(once, "weights/b.pt", "b" * 64)
    parsed = P.parse(yaml.safe_load(twice))
    assert parsed.finetune.weights == Weights(source="weights/b.pt", sha256="b" * 64)
    before = yaml.safe_load(text)
    del before["finetune"]["weights"]
    after = yaml.safe_load(twice)
    del after["finetune"]["weights"]
    assert after == before and len(twice.splitlines()) == len(text.splitlines()) + (2 if "weights: null" in text else 0)


def test_the_search_table_shows_every_recipe_the_rule_and_the_full_run():
    def result(top1: float, auroc: float) -> dict:
        return {"top1": top1, "auroc": auroc, "detector": "energy", "aurocs": {"msp": auroc - 0.01, "energy": auroc},
                "auroc_by_group": {"msp": {"near": 0.5, "far": 0.5}, "energy": {"near": auroc - 0.02, "far": auroc + 0.02}}}

    recipe = dataclasses.asdict(RECIPE)
    record = {
        "start": {"validation": result(0.916, 0.88)},
        "settings": {"top1_tolerance": 0.005},
        "search": {"steps": 250, "rule": "the rule", "results": {"kept": result(0.914, 0.95), "lossy": result(0.90, 0.97)}},
        "recipes_tried": {"kept": recipe, "lossy": recipe | {"distill": 2.0, "normalized_features": True}},
        "recipe": {"name": "kept"},
        "epochs": [{"epoch": 1, "seconds": 360.0, "images_per_second": 250.0, "validation_seconds": 28.0, **result(0.912, 0.956)}],
        "wall_seconds": 388.0, "threads": 2, "bf16_autocast": True,
        "cpu": {"model": "Xeon", "isa": {"amx_bf16": True, "asimd": False}},
    }
    text = finetuning.search_table(record)
    assert "| kept **chosen** | oe | 0.5 | jigsaw 1, procedural 1 | 91.40 | 94.00 | 95.00 | energy 95.00 (93.00, 97.00) |" in text
    assert "| lossy (top-1 out) | oe + distill 2, T2FNorm | 0.5 |" in text and "Rule: the rule." in text
    assert "1 epochs in 6.5 min on Xeon (amx_bf16), 2 threads, bf16 autocast on," in text
    assert "| 1 | 360 | 250 | 28 | 91.20 | energy 95.60 (93.60, 97.60) |" in text
    assert "validation top-1 91.20%, 0.40 points below the start model's 91.60%, within the 0.50 points the rule allows" in text
    # a full run that ends further below the start than the search allowed says so
    record["epochs"][-1]["top1"] = 0.9094
    assert "validation top-1 90.94%, 0.66 points below the start model's 91.60%, more than the 0.50 points" in finetuning.search_table(record)
