from pathlib import Path

import pytest
import torch
from torch import nn

import edgeml.training as training
from edgeml.params import TrainParams

PARAMS = TrainParams(
    epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, label_smoothing=0.0, seed=0, threads=1
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def tiny_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(model: nn.Module, tmp: Path, fingerprint: str = "cfg") -> dict:
    x, y = tiny_data()
    return training.train(model, x, y, x[:16], y[:16], PARAMS, tmp / "ckpt.pt", tmp / "live", fingerprint)


def test_augment_crops_and_flips_within_padding():
    images = torch.arange(32 * 32, dtype=torch.int32).view(1, 1, 32, 32).repeat(64, 3, 1, 1)
    out = training.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    flipped = 0
    for image in out:
        row = image[0, 16]  # a middle row is never padding: consecutive values, +1 or -1 apart
        step = (row[1:] - row[:-1])[4:-4]
        assert (step == 1).all() or (step == -1).all()
        flipped += int((step == -1).all())
    assert 10 < flipped < 54  # flips happen about half the time


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
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
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(training, "predict_logits", original)

    resumed = tiny_model()
    run(resumed, tmp_path / "b")
    for p, q in zip(reference.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q)
    # the per-epoch log was continued, not restarted
    assert len((tmp_path / "b" / "live" / "plots" / "metrics" / "val_acc.tsv").read_text().splitlines()) == 3


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    run(tiny_model(), tmp_path)
    capsys.readouterr()
    run(tiny_model(), tmp_path, fingerprint="other")
    out = capsys.readouterr().out
    assert "ignoring" in out and "epoch 1/2:" in out and "epoch 2/2:" in out
