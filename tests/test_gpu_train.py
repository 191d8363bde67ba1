"""scripts/gpu_train.py, the GPU session's training run, on a CPU: tiny CIFAR-10 from a mirror, one epoch per recipe."""

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgeml.data.readers import load_cifar10
from edgeml.data.splits import split_cifar10
from edgeml.model.inference import predict_logits, to_tensor
from edgeml.model.resnet import load_checkpoint

REPO = Path(__file__).parents[1]


def test_gpu_train_trains_each_recipe_and_records_its_provenance(mirror, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prepare"]["val_size"] = 20  # of the mirror's 120 training images
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out, archive = tmp_path / "out", mirror / "cifar10-jpeg.tar.gz"
    rng = np.random.default_rng(0)  # stand-ins for the OOD validation sets (any uint8 HWC images)
    ood_val = [tmp_path / "tin_val.npz", tmp_path / "shapes_val.npz"]
    for path in ood_val:
        np.savez(path, x=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    script = runpy.run_path(str(REPO / "scripts" / "gpu_train.py"), run_name="gpu_train")
    main = script["main"]
    main([
        "--out", str(out), "--archive", str(archive), "--work", str(tmp_path / "work"), "--params", str(params),
        "--device", "cpu", "--threads", "1", "--stem", "torchvision", "--epochs", "1", "--batch", "32",
        "--ood-val", *map(str, ood_val), "--min-val-top1", "0",
    ])

    summary = json.loads((out / "summary.json").read_text())
    recipes = ("ce", "logitnorm", "rotpred", "pixmix", "rotpred_pixmix")
    assert set(summary["recipes"]) == set(recipes)
    assert summary["settings"] == {
        "STEM": "torchvision", "EPOCHS": 1, "BATCH": 32, "LR": raw["train"]["lr"], "TAU": raw["train"]["logitnorm_tau"],
        "DEVICE": "cpu", "THREADS": 1, "SUBSET": 0, "PIXMIX_K": raw["train"]["pixmix_k"],
        "PIXMIX_BETA": raw["train"]["pixmix_beta"], "ROTPRED_WEIGHT": raw["train"]["rotpred_weight"],
        "OOD_VAL": {path.stem: hashlib.sha256(path.read_bytes()).hexdigest() for path in ood_val},
    }
    # chosen on validation: the best mean MSP AUROC (every recipe passes the top-1 floor of 0)
    means = {recipe: summary["recipes"][recipe]["val_ood_msp_auroc"]["mean"] for recipe in recipes}
    assert summary["choice"]["recipe"] == min(recipes, key=lambda r: (-means[r], r))
    assert summary["choice"]["min_val_top1"] == 0
    assert summary["data"]["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    prepared = tmp_path / "work" / "prepared" / "cifar10.npz"
    assert summary["data"]["cifar10_npz_sha256"] == hashlib.sha256(prepared.read_bytes()).hexdigest()
    arrays = split_cifar10(load_cifar10(archive), 20, raw["prepare"]["seed"])  # what the prepare stage makes
    for recipe in recipes:
        folder = out / recipe
        used = yaml.safe_load((folder / "params.yaml").read_text())
        assert used["train"]["loss"] == ("logitnorm" if recipe == "logitnorm" else "ce") and used["train"]["weights"] is None
        assert (used["train"]["rotpred"], used["train"]["pixmix"]) == ("rotpred" in recipe, "pixmix" in recipe)
        train = json.loads((folder / "train.json").read_text())
        assert train["origin"] == "trained" and train["epochs"] == 1 and train["device"] == "cpu"
        assert (folder / "curves" / "plots" / "metrics" / "val_acc.tsv").read_text() == f"step\tval_acc\n0\t{train['val_acc']}\n"
        # the parts put back together are the checkpoint whose sha256 and test top-1 are recorded
        weights = tmp_path / f"{recipe}.pt"
        weights.write_bytes(b"".join(part.read_bytes() for part in sorted(folder.glob("fp32.pt.part-*"))))
        assert (folder / "fp32.pt.sha256").read_text() == f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  fp32.pt\n"
        logits = predict_logits(load_checkpoint(weights), to_tensor(arrays["test_x"]))
        top1 = (logits.argmax(1) == torch.from_numpy(arrays["test_y"])).float().mean().item()
        assert json.loads((folder / "test.json").read_text()) == {"test_top1": pytest.approx(top1), "test_images": 40}
        # the validation MSP AUROC, recomputed from the checkpoint: ID validation split vs each set
        model = load_checkpoint(weights)
        msp = lambda images: torch.softmax(predict_logits(model, to_tensor(images)), 1).amax(1).numpy()  # noqa: E731
        id_msp = msp(arrays["val_x"])
        auroc = {path.stem: float(np.mean([(i > o) + 0.5 * (i == o) for i in id_msp for o in msp(np.load(path)["x"])]))
                 for path in ood_val}
        validation = json.loads((folder / "val_ood.json").read_text())
        assert validation["msp_auroc"] == pytest.approx(auroc | {"mean": np.mean(list(auroc.values()))})
        assert ("rotpred_auroc" in validation) == ("rotpred" in recipe)
        assert summary["recipes"][recipe] == {
            **{key: train[key] for key in ("val_acc", "val_loss", "epochs", "seconds_per_epoch", "median_epoch_seconds", "train_seconds")},
            "test_top1": pytest.approx(top1), "test_images": 40, "val_ood_msp_auroc": pytest.approx(validation["msp_auroc"]),
        }


def test_gpu_train_fails_after_writing_the_summary_when_no_recipe_keeps_the_top1(mirror, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prepare"]["val_size"] = 20
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    ood = tmp_path / "far_val.npz"
    np.savez(ood, x=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    main = runpy.run_path(str(REPO / "scripts" / "gpu_train.py"), run_name="gpu_train")["main"]
    with pytest.raises(SystemExit, match=r"no recipe keeps validation top-1 >= 1.01 \(ce: "):
        main([
            "--out", str(tmp_path / "out"), "--archive", str(mirror / "cifar10-jpeg.tar.gz"), "--work", str(tmp_path / "work"),
            "--params", str(params), "--device", "cpu", "--threads", "1", "--stem", "torchvision", "--epochs", "1",
            "--batch", "32", "--recipes", "ce", "--ood-val", str(ood), "--min-val-top1", "1.01",
        ])
    choice = json.loads((tmp_path / "out" / "summary.json").read_text())["choice"]
    assert choice["recipe"] is None and "ce: " in choice["error"]
