import numpy as np
import pytest
import torch
from torch import nn

from edgeml.detectors import MSP, Outputs, choose, make_detector, predict_outputs
from edgeml.metrics import ood_metrics
from edgeml.preprocess import normalize


class MeanColour(nn.Module):
    """A stand-in model: logits are the mean of each channel, features the first four pixels."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.flatten(1)[:, :4]


def test_msp_on_hand_made_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    scores = MSP().score_logits(logits).numpy()
    assert scores[1] == pytest.approx(1 / 3)
    assert scores[0] == pytest.approx(np.exp(10) / (np.exp(10) + 2))
    assert scores[0] > scores[2] > scores[1]


def test_outputs_are_computed_in_batches_and_kept_in_order():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = predict_outputs(MeanColour(), images, batch_size=2)
    logits, features = MeanColour()(normalize(images))
    torch.testing.assert_close(outputs.logits, logits)
    torch.testing.assert_close(outputs.features, features)
    np.testing.assert_allclose(MSP().score(outputs).numpy(), logits.softmax(1).amax(1).numpy(), rtol=1e-6)


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


def clusters(rng: np.random.Generator, centres: np.ndarray, per_class: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around ``centres``: (features, labels)."""
    features = np.concatenate([c + spread * rng.standard_normal((per_class, centres.shape[1])) for c in centres])
    labels = np.repeat(np.arange(len(centres)), per_class)
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


def outputs_of(features: torch.Tensor, head: nn.Linear) -> Outputs:
    with torch.no_grad():
        return Outputs(head(features), features)


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim"])
def test_feature_detectors_separate_gaussian_clusters(name):
    # ID: two classes in the first two of 16 dimensions; OOD: a cluster far off both classes,
    # in the dimensions the ID data does not use (ViM's residual space).
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 16))
    centres[0, 0], centres[1, 1] = 10.0, 10.0
    head = nn.Linear(16, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres / 10, dtype=torch.float32))
        head.bias.zero_()
    fit_features, fit_labels = clusters(rng, centres, 200, spread=0.5)
    id_features, _ = clusters(rng, centres, 100, spread=0.5)
    ood_centre = np.zeros((1, 16))
    ood_centre[0, 5:] = 4.0
    ood_features, _ = clusters(rng, ood_centre, 100, spread=0.5)
    detector = make_detector(name, head)
    if name == "vim":
        detector.dim = 2  # the ID principal subspace
    detector.fit(outputs_of(fit_features, head), fit_labels)
    id_scores = detector.score(outputs_of(id_features, head)).numpy()
    ood_scores = detector.score(outputs_of(ood_features, head)).numpy()
    assert ood_metrics(id_scores, ood_scores)["auroc"] > 0.99


def test_mahalanobis_is_the_distance_to_the_closest_class_mean():
    # class means (1, 0) and (11, 0), shared covariance c * identity: score = -squared distance / c
    offsets = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    features = torch.cat([torch.tensor([1.0, 0.0]) + offsets, torch.tensor([11.0, 0.0]) + offsets])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    detector = make_detector("mahalanobis").fit(Outputs(torch.zeros(8, 2), features), labels)
    queries = torch.tensor([[1.0, 0.0], [11.0, 0.0], [4.0, 0.0], [1.0, 3.0], [11.0, -3.0]])
    scores = detector.score(Outputs(torch.zeros(5, 2), queries)).numpy()
    np.testing.assert_allclose(scores[:2], 0.0, atol=1e-4)
    assert scores[2] < 0
    np.testing.assert_allclose(scores[2:], scores[2], rtol=1e-4)  # same distance, any direction, either class


def test_react_clips_at_the_id_percentile_then_scores_energy():
    head = nn.Linear(4, 3)
    fit = torch.arange(1.0, 101.0).view(25, 4)  # activations 1..100
    detector = make_detector("react", head).fit(Outputs(torch.zeros(25, 3), fit), torch.zeros(25, dtype=torch.long))
    threshold = detector.hyperparameters()["threshold"]
    assert threshold == pytest.approx(np.percentile(np.arange(1, 101), 90), abs=1.0)
    features = torch.tensor([[1.0, 500.0, 2.0, 3.0]])
    with torch.no_grad():
        expected = torch.logsumexp(head(features.clip(max=threshold)), dim=1)
    torch.testing.assert_close(detector.score(Outputs(torch.zeros(1, 3), features)), expected)


def test_ash_keeps_the_top_activations_rescaled_then_scores_energy():
    head = nn.Linear(10, 3)
    features = torch.arange(1.0, 11.0).view(1, 10)  # sum 55; ASH-S at 90% keeps the top one, 10
    detector = make_detector("ash", head)
    pruned = torch.zeros(1, 10)
    pruned[0, 9] = 10.0 * np.exp(55.0 / 10.0)
    with torch.no_grad():
        expected = torch.logsumexp(head(pruned), dim=1)
    torch.testing.assert_close(detector.score(Outputs(torch.zeros(1, 3), features)), expected)


def test_choose_takes_the_setting_with_the_best_validation_auroc():
    # KNN with k=1 vs k=10: OOD validation points sit next to one stray ID training point each,
    # so the nearest neighbour (k=1) calls them ID and k=10 separates them.
    rng = np.random.default_rng(0)
    fit_features = torch.tensor(rng.normal(0, 0.1, (40, 4)), dtype=torch.float32)
    fit_features[:, 0] += 1.0
    strays = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    fit = Outputs(torch.zeros(43, 2), torch.cat([fit_features, strays]))
    labels = torch.zeros(43, dtype=torch.long)
    validation_id = Outputs(torch.zeros(10, 2), fit_features[:10] + 0.01)
    validation_ood = Outputs(torch.zeros(3, 2), strays + 0.01)
    detector, record = choose(
        {"k": [1, 10]},
        lambda **setting: make_detector("knn", **setting).fit(fit, labels),
        lambda d: (d.score(validation_id), d.score(validation_ood)),
    )
    assert record["chosen"] == {"k": 10} and detector.k == 10
    (setting_1, auroc_1), (setting_10, auroc_10) = record["tried"]
    assert setting_1 == {"k": 1} and auroc_1 < auroc_10 == record["validation_auroc"] == 1.0


def test_unknown_hyperparameter_names_the_param_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"ood.search.knn: unknown hyperparameter\(s\) \['kk'\]; allowed: \['k'\]"):
        make_detector("knn", None, kk=5)


def test_odin_without_perturbation_is_temperature_scaled_msp(float_model_and_images):
    model, images = float_model_and_images
    detector = make_detector("odin", twin=model, temperature=10, eps=0)
    with torch.no_grad():
        expected = (model(normalize(images[:8])) / 10).softmax(1).amax(1)
    torch.testing.assert_close(detector.score_images(model, images[:8], batch_size=3), expected)


def test_odin_nudge_from_the_twin_raises_the_score(float_model_and_images):
    # The nudge climbs the twin's temperature-scaled confidence; scored by the twin itself
    # (as the FP32 model is), every input's score goes up.
    model, images = float_model_and_images
    plain = make_detector("odin", twin=model, temperature=1000, eps=0).score_images(model, images[:16])
    nudged = make_detector("odin", twin=model, temperature=1000, eps=0.004).score_images(model, images[:16])
    assert (nudged > plain).all()


def test_mahalanobis_survives_a_singular_covariance():
    # Fewer samples than dimensions and a dead feature: the covariance has no inverse.
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(0, 1, (6, 16)), dtype=torch.float32)
    features[:, 3] = 0.0
    detector = make_detector("mahalanobis").fit(Outputs(torch.zeros(6, 2), features), torch.tensor([0, 0, 0, 1, 1, 1]))
    scores = detector.score(Outputs(torch.zeros(2, 2), torch.cat([features[:1], 10 * features[:1]])))
    assert torch.isfinite(scores).all() and scores[0] > scores[1]


@pytest.mark.parametrize("name", ["knn", "ash", "react", "mahalanobis"])
def test_dead_features_give_finite_scores(name):
    # An input whose penultimate features are all zero (every ReLU off) must still get a score.
    rng = np.random.default_rng(0)
    features = torch.tensor(np.abs(rng.normal(0, 1, (60, 8))), dtype=torch.float32)
    head = nn.Linear(8, 2)
    detector = make_detector(name, head).fit(outputs_of(features, head), torch.arange(60) % 2)
    scores = detector.score(outputs_of(torch.cat([features[:2], torch.zeros(1, 8)]), head))
    assert torch.isfinite(scores).all()


def test_vim_refuses_fewer_fit_images_than_its_subspace():
    head = nn.Linear(8, 2)
    features = torch.randn(6, 8)
    with pytest.raises(ValueError, match="vim dim 6 needs more than 6 fit images"):
        make_detector("vim", head, dim=6).fit(outputs_of(features, head), torch.arange(6) % 2)
