import numpy as np
import pytest
import torch
from torch import nn

from edgeml.detectors import MSP, make_detector


class FixedLogits(nn.Module):
    """A stand-in model that returns fixed logits for a batch of the same size."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_msp_on_hand_made_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    scores = MSP().score_logits(logits).numpy()
    assert scores[1] == pytest.approx(1 / 3)
    assert scores[0] == pytest.approx(np.exp(10) / (np.exp(10) + 2))
    assert scores[0] > scores[2] > scores[1]


def test_msp_scores_a_model_batched():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    model = FixedLogits(logits)
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    scores = make_detector("msp", batch_size=3).fit(model, images).score(model, images)
    np.testing.assert_allclose(scores, logits.softmax(1).amax(1).numpy(), rtol=1e-6)


def test_unknown_detector_names_the_param():
    with pytest.raises(ValueError, match="ood.detectors: 'nope'"):
        make_detector("nope")


HAND_MADE = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, -1.0]])


def test_maxlogit_and_energy_on_hand_made_logits():
    np.testing.assert_allclose(make_detector("maxlogit").score_logits(HAND_MADE).numpy(), [4.0, 1.0, 2.0])
    expected = [np.log(np.exp(4) + 2), 1 + np.log(3), np.log(2 * np.exp(2) + np.exp(-1))]
    np.testing.assert_allclose(make_detector("energy").score_logits(HAND_MADE).numpy(), expected, rtol=1e-6)


def test_gen_ranks_as_negative_generalized_entropy():
    p = HAND_MADE.softmax(1).numpy()
    entropy = (p**0.1 * (1 - p) ** 0.1).sum(1)  # GEN's entropy, gamma 0.1, all classes
    scores = make_detector("gen").score_logits(HAND_MADE).numpy()
    assert (np.argsort(scores) == np.argsort(-entropy)).all()


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy", "gen"])
def test_confident_logits_score_as_more_in_distribution(name):
    # ID-positive convention: a peaked prediction must outscore a flat one (pytorch-ood is OOD-positive)
    confident, flat = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    detector = make_detector(name)
    assert detector.score_logits(confident) > detector.score_logits(flat)
