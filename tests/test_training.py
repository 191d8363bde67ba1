import dataclasses
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import edgeml.model.loop as loop
import edgeml.model.train as training
from edgeml.params import ParamsError, TrainParams
from edgeml.stage import run as run_stage

PARAMS = TrainParams(
    epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, label_smoothing=0.0, seed=0, threads=1
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )


def tiny_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(model: nn.Module, tmp: Path, fingerprint: str = "cfg", params: TrainParams = PARAMS) -> dict:
    x, y = tiny_data()
    return training.train(model, x, y, x[:16], y[:16], params, tmp / "ckpt.pt", tmp / "live", fingerprint)


def curve(live: Path, name: str) -> list[str]:
    return (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()


def test_augment_crops_and_flips_within_padding():
    images = torch.arange(32 * 32, dtype=torch.int32).view(1, 1, 32, 32).repeat(64, 3, 1, 1)
    out = loop.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    flipped = 0
    for image in out:
        row = image[0, 16]  # a middle row is never padding: consecutive values, +1 or -1 apart
        step = (row[1:] - row[:-1])[4:-4]
        assert (step == 1).all() or (step == -1).all()
        flipped += int((step == -1).all())
    assert 10 < flipped < 54  # flips happen about half the time


def test_batches_are_normalized_on_the_device_they_live_on():
    """On a GPU the training images stay there: normalisation must not pull in CPU tensors
    (the meta device stands in for CUDA, and fails on any mix as CUDA does)."""
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert loop.normalize(images).device.type == "meta"


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch
    reference = tiny_model()
    run(reference, tmp_path / "a")

    calls = {"n": 0}
    original = training.predict_logits

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "predict_logits", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model(), tmp_path / "b")
    assert len(torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["history"]) == 1
    monkeypatch.setattr(training, "predict_logits", original)
    stale = tmp_path / "b" / "live" / "plots" / "metrics" / "stale.tsv"  # e.g. from an older run
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tstale\n0\t1\n")

    resumed = tiny_model()
    run(resumed, tmp_path / "b")
    for p, q in zip(reference.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q)
    # the curves hold both epochs, rewritten from the checkpoint's history: nothing left from before
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert curve(tmp_path / "b" / "live", name) == curve(tmp_path / "a" / "live", name)
        assert len(curve(tmp_path / "b" / "live", name)) == 3
    assert not stale.exists()


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    run(tiny_model(), tmp_path)
    capsys.readouterr()
    run(tiny_model(), tmp_path, fingerprint="other")
    out = capsys.readouterr().out
    assert "ignoring" in out and "epoch 1/2:" in out and "epoch 2/2:" in out


def test_complete_checkpoint_gives_its_metrics_and_curves_without_training(tmp_path, capsys):
    """DVC re-runs the stage after deleting its outputs: the finished run's results come back whole."""
    first = run(tiny_model(), tmp_path)
    live = tmp_path / "live"
    expected = {name: curve(live, name) for name in ("train_loss", "val_acc")}
    for file in live.rglob("*.tsv"):
        file.unlink()
    capsys.readouterr()
    model = tiny_model()
    again = run(model, tmp_path)
    assert "epoch 1/2:" not in capsys.readouterr().out
    assert again == first
    assert {name: curve(live, name) for name in expected} == expected
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])


def test_fingerprint_covers_the_training_code(tmp_path, monkeypatch):
    # the modules that decide the weights ...
    assert {p.name for p in training.CODE} >= {"train.py", "resnet.py", "augment.py", "inference.py", "images.py"}
    # ... and an edit to any of them changes the fingerprint
    source = tmp_path / "train.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(training, "CODE", (source,))
    before = training.config_fingerprint(PARAMS, {"data": "d"})
    assert training.config_fingerprint(PARAMS, {"data": "d"}) == before
    source.write_text("x = 2\n")
    assert training.config_fingerprint(PARAMS, {"data": "d"}) != before


def test_cuda_without_a_gpu_is_a_one_line_params_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match="train.device"):
        training.resolve_device("cuda")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: training.resolve_device("cuda"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: train.device:") and err.count("\n") == 1


def test_logitnorm_matches_a_hand_computation():
    logits = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    targets = torch.tensor([1, 0])
    tau = 0.5
    # row 1: norm 5, scaled logits (1.2, 1.6); row 2: norm 2, scaled (0, -2)
    by_hand = (math.log(1 + math.exp(1.2 - 1.6)) + math.log(1 + math.exp(-2.0 - 0.0))) / 2
    assert loop.logitnorm_loss(logits, targets, tau).item() == pytest.approx(by_hand, rel=1e-6)
    params = dataclasses.replace(PARAMS, loss="logitnorm", logitnorm_tau=tau)
    assert loop.classification_loss(logits, targets, params).item() == pytest.approx(by_hand, rel=1e-6)
    # scaling the logits does not change the loss: that is the point of the method
    assert loop.logitnorm_loss(7 * logits, targets, tau).item() == pytest.approx(by_hand, rel=1e-6)


def test_logitnorm_training_runs_and_records_its_loss(tmp_path):
    params = dataclasses.replace(PARAMS, loss="logitnorm", logitnorm_tau=0.1)
    result = run(tiny_model(), tmp_path, params=params)
    ce = run(tiny_model(), tmp_path / "ce")
    assert result["train_loss"] != ce["train_loss"]
    assert math.isfinite(result["val_loss"])


def _ddp_worker(rank: int, world: int, port: int, tmp: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    model = tiny_model()
    x, y = tiny_data()
    with training.distributed("cpu"):
        fingerprint = training.config_fingerprint(PARAMS, {})
        result = training.train(model, x, y, x[:16], y[:16], PARAMS, tmp / "ckpt.pt", tmp / "live", fingerprint)
        main = training.is_main_process()
    torch.save({"state": model.state_dict(), "result": result, "main": main}, tmp / f"rank{rank}.pt")


def test_distributed_data_parallel_on_two_cpu_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["main"] for r in ranks] == [True, False]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["result"]["processes"] == 2
    # rank 0's checkpoint is complete and holds the weights both ranks ended with
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert len(checkpoint["history"]) == PARAMS.epochs
    model = tiny_model()
    model.load_state_dict(checkpoint["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][key]), key
    assert len(curve(tmp_path / "live", "val_acc")) == PARAMS.epochs + 1
    # the whole permutation was used: each epoch saw the full batches of both ranks
    assert ranks[0]["result"]["train_images_per_second"] > 0
