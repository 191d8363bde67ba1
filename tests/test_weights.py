"""Published weights (train.weights): verified before loading, refused when they are another model,
installed unchanged, measured on the validation split by the train stage."""

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import edgeml.model.weights as weights_module
from edgeml import params as P
from edgeml.data.sources import FetchError
from edgeml.model.inference import normalize, to_tensor
from edgeml.model.resnet import build_resnet18, load_checkpoint, save_checkpoint
from edgeml.model.weights import install_weights
from edgeml.params import ModelParams, ParamsError, Weights

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, str]:
    """A torchvision-stem checkpoint as the train stage writes it, and its sha256."""
    path = tmp_path_factory.mktemp("release") / "resnet18-torchvision.pt"
    torch.manual_seed(0)
    save_checkpoint(build_resnet18("torchvision"), "torchvision", 10, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_relative_source_is_found_from_the_repository_root_and_installed_unchanged(published, tmp_path, monkeypatch):
    path, sha256 = published
    root = tmp_path / "repo"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "w.pt").write_bytes(path.read_bytes())
    elsewhere = tmp_path / "elsewhere"  # e.g. the temporary copy a queued DVC experiment runs in
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DVC_ROOT", str(root))
    dest = elsewhere / "models" / "fp32.pt"
    model, provenance = install_weights(Weights("weights/w.pt", sha256), ModelParams("torchvision"), dest)
    assert dest.read_bytes() == path.read_bytes()
    assert provenance == {"source": "weights/w.pt", "sha256": sha256, "bytes": path.stat().st_size}
    assert not model.training
    for key, value in load_checkpoint(dest).state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    assert [p.name for p in dest.parent.iterdir()] == ["fp32.pt"]  # no temporary left


def test_checksum_is_verified_before_anything_is_unpickled(published, tmp_path, monkeypatch):
    path, sha256 = published

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load ran before the checksum was checked")

    monkeypatch.setattr(weights_module.torch, "load", no_load)
    wrong = "0" * 64
    with pytest.raises(FetchError, match="checksum mismatch"):
        install_weights(Weights(str(path), wrong), ModelParams("torchvision"), tmp_path / "models" / "fp32.pt")
    assert list((tmp_path / "models").iterdir()) == []


def test_checkpoint_of_another_architecture_is_refused_naming_both(published, tmp_path):
    path, sha256 = published
    dest = tmp_path / "fp32.pt"
    with pytest.raises(ParamsError) as error:
        install_weights(Weights(str(path), sha256), ModelParams("cifar"), dest)
    message = str(error.value)
    assert "'torchvision'" in message and "model.stem is 'cifar'" in message and "\n" not in message
    with pytest.raises(ParamsError, match="100"):
        install_weights(Weights(str(path), sha256), ModelParams("torchvision", num_classes=100), dest)
    assert not dest.exists()


def test_weights_params_are_validated():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["weights"] = {"source": "x.pt", "sha256": "abc"}
    with pytest.raises(ParamsError, match="train.weights.sha256"):
        P.parse(raw)
    raw["train"]["weights"] = {"source": "x.pt"}
    with pytest.raises(ParamsError, match="train.weights.sha256: missing"):
        P.parse(raw)
    raw["train"]["weights"] = None
    raw["train"]["logitnorm_tau"] = 0
    with pytest.raises(ParamsError, match="train.logitnorm_tau"):
        P.parse(raw)


def test_train_stage_installs_weights_and_measures_them(published, tmp_path, monkeypatch):
    path, sha256 = published
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] = {"stem": "torchvision", "num_classes": 10}
    raw["train"].update(weights={"source": str(path), "sha256": sha256}, threads=1, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    val_x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    val_y = rng.integers(0, 10, 40)
    data = tmp_path / "data" / "prepared"
    data.mkdir(parents=True)
    np.savez(data / "cifar10.npz", train_x=val_x[:8], train_y=val_y[:8], val_x=val_x, val_y=val_y)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    runpy.run_path(str(REPO / "stages" / "train.py"), run_name="stage")["main"]()

    assert (tmp_path / "models" / "pretrained.pt").read_bytes() == path.read_bytes()  # the finetune stage starts from it
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["origin"] == "installed" and metrics["sha256"] == sha256 and metrics["val_images"] == 40
    with torch.no_grad():
        logits = load_checkpoint(path)(normalize(to_tensor(val_x))).float()
    labels = torch.from_numpy(val_y)
    assert metrics["val_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert metrics["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    live = tmp_path / "plots" / "train"
    assert (live / "plots" / "metrics" / "val_acc.tsv").read_text() == f"step\tval_acc\n0\t{metrics['val_acc']}\n"
    assert json.loads((live / "metrics.json").read_text()) == {
        "val_loss": metrics["val_loss"], "val_acc": metrics["val_acc"], "step": 0
    }
