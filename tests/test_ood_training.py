"""Issue 17: RotPred, PixMix and the validation-only recipe choice, on tiny data made here."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeml.model import pictures as generated
from edgeml.model import pixmix, rotpred
from edgeml.model.inference import normalize
from edgeml.model.resnet import build_resnet18, load_checkpoint, save_checkpoint
from edgeml.model.selection import Candidate, NoEligibleRecipe, choose_recipe, validation_auroc
from edgeml.model.train import train
from edgeml.params import TrainParams

torch.set_num_threads(1)


class Tiny(nn.Module):
    """A classifier with an ``fc`` on 512 pooled features, as ResNet18 has."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 512, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_rotations_and_rotation_loss_shapes():
    x = normalize(images(5))
    rotated, labels = rotpred.rotations(x)
    assert rotated.shape == (20, 3, 32, 32) and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    torch.testing.assert_close(rotated[5:10], x.transpose(2, 3).flip(2))  # 90 degrees counter-clockwise
    torch.testing.assert_close(rotated[10:15], x.flip(2).flip(3))
    net = rotpred.RotPredNet(Tiny(), rotpred.rotation_head(0))
    logits, rot_logits = net(rotated)
    assert logits.shape == (20, 10) and rot_logits.shape == (20, 4)
    class_logits, loss = rotpred.rotpred_loss(net, x, 0.5)
    torch.testing.assert_close(class_logits, logits[:5])
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(rot_logits, labels))
    # the head sees fc's input: the pooled features
    torch.testing.assert_close(rot_logits, net.head(net.backbone.body(rotated)))


def test_rotation_head_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    a = rotpred.rotation_head(7)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.weight, rotpred.rotation_head(7).weight) and not torch.equal(a.weight, rotpred.rotation_head(8).weight)


def test_rotpred_score_matches_the_published_formula_by_hand():
    model, head, x = Tiny().eval(), rotpred.rotation_head(1), images(3)
    score = rotpred.rotpred_score(model, head, x)
    with torch.no_grad():
        p = torch.softmax(model(normalize(x)), 1)
        kl_uniform = (0.1 * torch.log2(0.1 / p)).sum(1)  # KL(U || p), bits
        rot_kl = sum(-torch.log2(torch.softmax(head(model.body(normalize(torch.rot90(x, k, (2, 3))))), 1)[:, k]) for k in range(4)) / 4
    torch.testing.assert_close(score, kl_uniform - rot_kl)
    # a head that names every rotation confidently raises the score (higher = in-distribution)
    sure = nn.Linear(512, 4)
    with torch.no_grad():
        sure.weight.zero_()
        sure.bias.copy_(torch.tensor([9.0, 0, 0, 0]))
    unsure = nn.Linear(512, 4)
    with torch.no_grad():
        unsure.weight.zero_()
        unsure.bias.zero_()
    # constant heads: 'sure' is right on a quarter of the rotations only; 'unsure' gives each 1/4 (2 bits)
    assert torch.allclose(rotpred.rotpred_score(model, unsure, x), kl_uniform - 2, atol=1e-5)
    assert (rotpred.rotpred_score(model, sure, x) < rotpred.rotpred_score(model, unsure, x)).all()


def test_checkpoint_with_a_rotation_head_still_loads_as_the_classifier(tmp_path):
    model, head = build_resnet18("torchvision").eval(), rotpred.rotation_head(0)
    path = tmp_path / "fp32.pt"
    save_checkpoint(model, "torchvision", 10, path, {rotpred.CHECKPOINT_KEY: head.state_dict()})
    loaded = load_checkpoint(path)
    x = normalize(images(2))
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(rotpred.load_rotation_head(path).weight, head.weight)
    plain = tmp_path / "plain.pt"
    save_checkpoint(model, "torchvision", 10, plain)
    assert rotpred.load_rotation_head(plain) is None
    assert set(torch.load(plain, weights_only=True)) == {"stem", "num_classes", "state_dict"}


def lag1_correlation(picture: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels: about 0 for i.i.d. noise, near 1 for smooth pictures."""
    left, right = picture[..., :, :-1].ravel().astype(float), picture[..., :, 1:].ravel().astype(float)
    return float(np.corrcoef(left, right)[0, 1])


def test_mixing_pictures_are_seeded_varied_and_not_iid_noise():
    pictures = generated.mixing_pictures(64, seed=0)
    assert pictures.shape == (64, 3, 32, 32) and pictures.dtype == torch.uint8
    assert torch.equal(pictures, generated.mixing_pictures(64, seed=0))
    assert not torch.equal(pictures, generated.mixing_pictures(64, seed=1))
    assert len({p.numpy().tobytes() for p in pictures}) == 64
    assert all(lag1_correlation(p.numpy()) > 0.5 for p in pictures)
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32))
    assert abs(lag1_correlation(noise)) < 0.1  # the measure does tell noise apart


def test_pixmix_is_in_range_deterministic_and_changes_the_images():
    x, mixer = images(16), pixmix.PixMix(generated.mixing_pictures(32, seed=0), k=4, beta=3.0)
    out = mixer(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, mixer(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, mixer(x, torch.Generator().manual_seed(1)))
    assert (out - x.float()).abs().mean() > 1


def test_mixing_rule_matches_the_official_formulas():
    m, o = torch.full((1, 3, 2, 2), 0.25), torch.full((1, 3, 2, 2), 0.5)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = generated.mix(m, o, 3.0, g)
    g.set_state(state)  # replay the draws: first, u for a (two forms), u for b (two forms), op
    first = torch.rand(1, generator=g) < 0.5
    ua, ua2, ub, ub2 = (torch.rand(1, generator=g) for _ in range(4))
    a = ua ** (1 / 3) if first else 1 + (1 - ua2 ** (1 / 3))
    b = 1 - ub ** (1 / 3) if first else -(1 - ub2 ** (1 / 3))
    use_add = torch.rand(1, generator=g) < 0.5
    expected = (a * (2 * 0.25 - 1) + b * (2 * 0.5 - 1) + 1) / 2 if use_add else (0.5 ** a) * (1.0 ** b) / 2
    torch.testing.assert_close(out, torch.full_like(m, float(expected)).clamp(0, 1))


def test_base_operations_keep_the_value_range():
    x = images(8).float()
    for operation in pixmix.OPERATIONS:
        out = operation(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255


def test_recipe_choice_rule():
    candidates = {
        "ce": Candidate(0.95, 0.90), "logitnorm": Candidate(0.94, 0.93),
        "pixmix": Candidate(0.90, 0.99),  # best AUROC, but below the top-1 floor
        "rotpred": Candidate(0.93, 0.93),  # ties with logitnorm: the first name wins
    }
    assert choose_recipe(candidates) == "logitnorm"
    assert choose_recipe(candidates, min_top1=0.90) == "pixmix"
    assert choose_recipe({"b": Candidate(0.91, 0.8), "a": Candidate(0.91, 0.8)}) == "a"
    with pytest.raises(NoEligibleRecipe, match=r"top-1 >= 0.96 \(ce: 0.9500, logitnorm: 0.9400, pixmix: 0.9000, rotpred: 0.9300\)"):
        choose_recipe(candidates, min_top1=0.96)


def test_validation_auroc_is_the_mean_over_sets():
    id_scores = np.array([0.9, 0.8, 0.7])
    aurocs = validation_auroc(id_scores, {"near": np.array([0.75, 0.1]), "far": np.array([0.0, 0.1])})
    assert aurocs["far"] == 1.0 and aurocs["near"] == pytest.approx(5 / 6)
    assert aurocs["mean"] == pytest.approx((1 + 5 / 6) / 2)


def test_rotpred_pixmix_training_writes_a_loadable_checkpoint(tmp_path):
    params = TrainParams(
        epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, label_smoothing=0.0, seed=0, threads=1,
        device="cpu", rotpred=True, pixmix=True, loss="logitnorm",
    )
    x, y = images(48), torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(2))
    model, head = build_resnet18("torchvision"), rotpred.rotation_head(0)
    before = head.weight.clone()
    result = train(model, x, y, x[:16], y[:16], params, tmp_path / "ckpt.pt", tmp_path / "live", "cfg", rotation_head=head)
    assert math.isfinite(result["train_loss"]) and result["epochs"] == 1
    assert not torch.equal(head.weight, before)  # the head trained with the model
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert any(k.startswith("head.") for k in saved) and any(k.startswith("backbone.") for k in saved)
    path = tmp_path / "fp32.pt"
    save_checkpoint(model, "torchvision", 10, path, {rotpred.CHECKPOINT_KEY: head.state_dict()})
    assert load_checkpoint(path)(normalize(x[:2])).shape == (2, 10)
    with pytest.raises(ValueError, match="rotation head"):
        train(build_resnet18("torchvision"), x, y, x[:16], y[:16], dataclasses.replace(params, rotpred=False),
              tmp_path / "other.pt", tmp_path / "live2", "cfg", rotation_head=head)
