"""scripts/gpu_train.py, the GPU session's training run, on a CPU: tiny CIFAR-10 from a mirror, one epoch per recipe."""

import hashlib
import json
import runpy
from pathlib import Path

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
    main = runpy.run_path(str(REPO / "scripts" / "gpu_train.py"), run_name="gpu_train")["main"]
    main([
        "--out", str(out), "--archive", str(archive), "--work", str(tmp_path / "work"), "--params", str(params),
        "--device", "cpu", "--threads", "1", "--stem", "torchvision", "--epochs", "1", "--batch", "32",
    ])

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recipes"]) == {"ce", "logitnorm"}
    assert summary["settings"] == {
        "STEM": "torchvision", "EPOCHS": 1, "BATCH": 32, "LR": raw["train"]["lr"], "TAU": raw["train"]["logitnorm_tau"],
        "DEVICE": "cpu", "THREADS": 1, "SUBSET": 0,
    }
    assert summary["data"]["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    prepared = tmp_path / "work" / "prepared" / "cifar10.npz"
    assert summary["data"]["cifar10_npz_sha256"] == hashlib.sha256(prepared.read_bytes()).hexdigest()
    arrays = split_cifar10(load_cifar10(archive), 20, raw["prepare"]["seed"])  # what the prepare stage makes
    for recipe in ("ce", "logitnorm"):
        folder = out / recipe
        used = yaml.safe_load((folder / "params.yaml").read_text())
        assert used["train"]["loss"] == recipe and used["train"]["weights"] is None
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
        assert summary["recipes"][recipe] == {
            **{key: train[key] for key in ("val_acc", "val_loss", "epochs", "seconds_per_epoch", "median_epoch_seconds", "train_seconds")},
            "test_top1": pytest.approx(top1), "test_images": 40,
        }
