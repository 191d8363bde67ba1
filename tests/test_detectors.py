import numpy as np
import pytest
import torch
from pytorch_ood.detector import ASH as PoodASH
from pytorch_ood.detector import EnergyBased
from pytorch_ood.detector.odin import odin_preprocessing
from torch import nn

from edgeml.model.inference import normalize
from edgeml.ood.detectors import (
    DETECTORS,
    MSP,
    Evidence,
    GradientSigns,
    ModelContext,
    Outputs,
    check_params,
    make_detector,
    predict_outputs,
)
from edgeml.ood.metrics import ood_metrics
from edgeml.params import ParamsError
from edgeml.ood.protocol import choose, choose_packaged
from edgeml.runtime.images import CIFAR10_STD

NO_HEAD = ModelContext(head=nn.Linear(4, 3))


class MeanColour(nn.Module):
    """A stand-in model: logits are the mean of each channel, features the first four pixels, map the image."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.flatten(1)[:, :4], x


def evidence_of(outputs: Outputs, key: str = "set") -> Evidence:
    """Evidence whose outputs are given (no model run)."""
    evidence = Evidence(key, torch.zeros(len(outputs), 3, 1, 1, dtype=torch.uint8), model=None)
    evidence.outputs = outputs
    return evidence


def outputs_of(features: torch.Tensor, head: nn.Linear) -> Outputs:
    with torch.no_grad():
        return Outputs(head(features), features, features[:, :, None, None])


def test_msp_on_hand_made_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    scores = MSP(NO_HEAD).score_logits(logits).numpy()
    assert scores[1] == pytest.approx(1 / 3)
    assert scores[0] == pytest.approx(np.exp(10) / (np.exp(10) + 2))
    assert scores[0] > scores[2] > scores[1]


def test_outputs_are_computed_in_batches_and_kept_in_order():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = predict_outputs(MeanColour(), images, batch_size=2)
    logits, features, maps = MeanColour()(normalize(images))
    torch.testing.assert_close(outputs.logits, logits)
    torch.testing.assert_close(outputs.features, features)
    torch.testing.assert_close(outputs.maps, maps)
    evidence = Evidence("images", images, MeanColour(), batch_size=2)
    np.testing.assert_allclose(MSP(NO_HEAD).score(evidence).numpy(), logits.softmax(1).amax(1).numpy(), rtol=1e-6)


def test_a_sample_of_evidence_keeps_images_and_outputs_aligned():
    images = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    evidence = Evidence("images", images, MeanColour(), batch_size=4)
    sample = evidence.sample(4, seed=0)
    assert len(sample.images) == 4 and sample.key != evidence.key  # a different set for per-set caches
    torch.testing.assert_close(sample.outputs.logits, predict_outputs(MeanColour(), sample.images).logits)
    assert evidence.sample(None, seed=0) is evidence and evidence.sample(100, seed=0) is evidence


def test_unknown_detector_names_the_param():
    with pytest.raises(ValueError, match="ood.detectors: 'nope'"):
        make_detector("nope", NO_HEAD)


HAND_MADE = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, -1.0]])


def test_maxlogit_and_energy_on_hand_made_logits():
    np.testing.assert_allclose(make_detector("maxlogit", NO_HEAD).score_logits(HAND_MADE).numpy(), [4.0, 1.0, 2.0])
    expected = [np.log(np.exp(4) + 2), 1 + np.log(3), np.log(2 * np.exp(2) + np.exp(-1))]
    np.testing.assert_allclose(make_detector("energy", NO_HEAD).score_logits(HAND_MADE).numpy(), expected, rtol=1e-6)


def test_gen_ranks_as_negative_generalized_entropy():
    p = HAND_MADE.softmax(1).numpy()
    entropy = (p**0.1 * (1 - p) ** 0.1).sum(1)  # GEN's entropy, gamma 0.1, all classes
    scores = make_detector("gen", NO_HEAD).score_logits(HAND_MADE).numpy()
    assert (np.argsort(scores) == np.argsort(-entropy)).all()


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy", "gen"])
def test_confident_logits_score_as_more_in_distribution(name):
    # ID-positive convention: a peaked prediction must outscore a flat one (pytorch-ood is OOD-positive)
    confident, flat = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    detector = make_detector(name, NO_HEAD)
    assert detector.score_logits(confident) > detector.score_logits(flat)


def clusters(rng: np.random.Generator, centres: np.ndarray, per_class: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around ``centres``: (features, labels)."""
    features = np.concatenate([c + spread * rng.standard_normal((per_class, centres.shape[1])) for c in centres])
    labels = np.repeat(np.arange(len(centres)), per_class)
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("name", ["mds", "knn", "vim"])
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
    detector = make_detector(name, ModelContext(head), **({"dim": 2} if name == "vim" else {}))  # ViM: the ID subspace
    detector.fit(outputs_of(fit_features, head), fit_labels)
    id_scores = detector.score(evidence_of(outputs_of(id_features, head))).numpy()
    ood_scores = detector.score(evidence_of(outputs_of(ood_features, head))).numpy()
    assert ood_metrics(id_scores, ood_scores)["auroc"] > 0.99


def test_mds_is_the_distance_to_the_closest_class_mean():
    # class means (1, 0) and (11, 0), shared covariance c * identity: score = -squared distance / c
    offsets = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    features = torch.cat([torch.tensor([1.0, 0.0]) + offsets, torch.tensor([11.0, 0.0]) + offsets])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    head = nn.Linear(2, 2)
    detector = make_detector("mds", ModelContext(head)).fit(outputs_of(features, head), labels)
    queries = torch.tensor([[1.0, 0.0], [11.0, 0.0], [4.0, 0.0], [1.0, 3.0], [11.0, -3.0]])
    scores = detector.score(evidence_of(outputs_of(queries, head))).numpy()
    np.testing.assert_allclose(scores[:2], 0.0, atol=1e-4)
    assert scores[2] < 0
    np.testing.assert_allclose(scores[2:], scores[2], rtol=1e-4)  # same distance, any direction, either class


def test_react_clips_at_the_id_percentile_then_scores_energy_with_the_models_own_head():
    head, other = nn.Linear(4, 3), nn.Linear(4, 3)
    fit = torch.arange(1.0, 101.0).view(25, 4)  # activations 1..100
    detector = make_detector("react", ModelContext(head)).fit(outputs_of(fit, other), torch.zeros(25, dtype=torch.long))
    threshold = detector.hyperparameters()["threshold"]
    assert threshold == pytest.approx(np.percentile(np.arange(1, 101), 90), abs=1.0)
    features = torch.tensor([[1.0, 500.0, 2.0, 3.0]])
    with torch.no_grad():
        expected = torch.logsumexp(head(features.clip(max=threshold)), dim=1)
    # the context's head is applied, whatever head produced the logits
    torch.testing.assert_close(detector.score(evidence_of(outputs_of(features, other))), expected)


def test_ash_map_prunes_the_activation_map_before_pooling():
    # One sample, 2 channels of 2x2: values 1..8, sum 36. ASH-S at 75% keeps the top 2 of 8 (7 and 8, both
    # in channel 1), scales them by exp(36 / 15); then global average pooling and the head, then energy.
    head = nn.Linear(2, 3)
    maps = torch.arange(1.0, 9.0).view(1, 2, 2, 2)
    detector = make_detector("ash_map", ModelContext(head), percentile=0.75)
    pooled = torch.tensor([[0.0, (7.0 + 8.0) * np.exp(36.0 / 15.0) / 4]], dtype=torch.float32)
    with torch.no_grad():
        expected = torch.logsumexp(head(pooled), dim=1)
    outputs = Outputs(head(maps.mean(dim=(2, 3))), maps.mean(dim=(2, 3)), maps)
    torch.testing.assert_close(detector.score(evidence_of(outputs)), expected)


def test_ash_prunes_the_pooled_features_as_published():
    # Pooled features 1..4 (sum 10): ASH-S at 50% keeps 3 and 4 and scales them by exp(10 / 7), whatever
    # the map they were pooled from; then the head and energy (andrijazz/ash: apply_ash after avg_pool2d).
    head = nn.Linear(4, 3)
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    maps = torch.rand(1, 4, 2, 2)  # ignored by the published variant
    kept = torch.tensor([[0.0, 0.0, 3.0, 4.0]]) * np.exp(10.0 / 7.0)
    with torch.no_grad():
        expected = torch.logsumexp(head(kept), dim=1)
    score = make_detector("ash", ModelContext(head), percentile=0.5).score(evidence_of(Outputs(head(features), features, maps)))
    torch.testing.assert_close(score, expected)


def test_ash_map_matches_pytorch_ood_on_the_same_map():
    torch.manual_seed(0)
    head = nn.Linear(16, 10)
    maps = torch.relu(torch.randn(12, 16, 4, 4))
    reference = PoodASH(nn.Identity(), lambda m: head(m.mean(dim=(2, 3))), variant="ash-s", percentile=0.65,
                        detector=EnergyBased.score)
    outputs = Outputs(head(maps.mean(dim=(2, 3))), maps.mean(dim=(2, 3)), maps)
    ours = make_detector("ash_map", ModelContext(head), percentile=0.65).score(evidence_of(outputs))
    torch.testing.assert_close(ours, -reference.predict_feature_maps(maps), rtol=1e-5, atol=1e-5)
    # pruning the pooled features (the published ASH) is a different method on a 4x4 map
    pooled = make_detector("ash", ModelContext(head), percentile=0.65).score(evidence_of(outputs))
    assert not torch.allclose(ours, pooled, rtol=1e-3)


def test_fdbd_is_the_mean_boundary_distance_over_the_distance_to_the_training_mean():
    # Two classes, w = (+1, 0) and (-1, 0), b = 0: the boundary is x = 0 and ||w_0 - w_1|| = 2. A feature at
    # (3, 4) is 2 * 3 / 2 = 3 from it; the training mean is (0, 0), 5 away: score 3 / 5. Far from the training
    # mean at the same boundary distance scores lower, as fDBD intends.
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    fit = outputs_of(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), head)
    detector = make_detector("fdbd", ModelContext(head)).fit(fit, torch.tensor([0, 1]))
    scores = detector.score(evidence_of(outputs_of(torch.tensor([[3.0, 4.0], [3.0, 40.0]]), head)))
    torch.testing.assert_close(scores[0], torch.tensor(0.6))
    assert scores[1] < scores[0]


def choose_knn_case() -> tuple[Outputs, torch.Tensor, tuple[Evidence, Evidence]]:
    # KNN with k=1 vs k=10: OOD validation points sit next to one stray ID training point each,
    # so the nearest neighbour (k=1) calls them ID and k=10 separates them.
    rng = np.random.default_rng(0)
    head = nn.Linear(4, 2)
    fit_features = torch.tensor(rng.normal(0, 0.1, (40, 4)), dtype=torch.float32)
    fit_features[:, 0] += 1.0
    strays = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    fit = outputs_of(torch.cat([fit_features, strays]), head)
    labels = torch.zeros(43, dtype=torch.long)
    # near: the strays; far: the strays pushed twice as far
    validation = (evidence_of(outputs_of(fit_features[:10] + 0.01, head)),
                  {"near": evidence_of(outputs_of(strays + 0.01, head)), "far": evidence_of(outputs_of(2 * strays, head))})
    return fit, labels, validation


def test_choose_takes_the_setting_with_the_best_validation_auroc():
    fit, labels, validation = choose_knn_case()
    detector, record = choose("knn", {"k": [1, 10]}, ModelContext(nn.Linear(4, 2)), fit, labels, validation)
    assert record["chosen"] == {"k": 10} and detector.k == 10 and record["hyperparameters"] == {"k": 10}
    (setting_1, auroc_1), (setting_10, auroc_10) = record["tried"]
    assert setting_1 == {"k": 1} and auroc_1 < auroc_10 == record["validation_auroc"] == 1.0


def test_choose_without_a_grid_records_the_defaults_validation_auroc():
    fit, labels, validation = choose_knn_case()
    detector, record = choose("mds", {}, ModelContext(nn.Linear(4, 2)), fit, labels, validation)
    assert record["chosen"] == {} and len(record["tried"]) == 1
    id_scores = detector.score(validation[0]).numpy()
    by_group = {group: ood_metrics(id_scores, detector.score(e).numpy())["auroc"] for group, e in validation[1].items()}
    assert record["validation_auroc_by_group"] == by_group
    assert record["validation_auroc"] == pytest.approx((by_group["near"] + by_group["far"]) / 2, abs=1e-12)


def test_unknown_hyperparameter_names_the_param_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"ood.search.knn: unknown hyperparameter\(s\) \['kk'\]; allowed: \['k'\]"):
        make_detector("knn", NO_HEAD, kk=5)


def odin_context(model: nn.Module) -> ModelContext:
    return ModelContext(model.fc, GradientSigns(model))


def test_odin_without_perturbation_is_temperature_scaled_msp(float_model_and_images):
    model, images = float_model_and_images
    detector = make_detector("odin", odin_context(model), temperature=10, eps=0)
    evidence = Evidence("images", images[:8], _with_maps(model), batch_size=3)
    with torch.no_grad():
        expected = (model(normalize(images[:8])) / 10).softmax(1).amax(1)
    torch.testing.assert_close(detector.score(evidence), expected)


def _with_maps(model: nn.Module) -> nn.Module:
    from edgeml.quantization import WithFeatureMap

    return WithFeatureMap(model).eval()


def test_odin_equals_pytorch_ood_preprocessing(float_model_and_images):
    model, images = float_model_and_images
    detector = make_detector("odin", odin_context(model), temperature=100, eps=0.004)
    scores = detector.score(Evidence("images", images[:10], _with_maps(model), batch_size=4))
    nudged = odin_preprocessing(model, normalize(images[:10]), eps=0.004, temperature=100, norm_std=list(CIFAR10_STD))
    with torch.no_grad():
        expected = (model(nudged) / 100).softmax(1).amax(1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_odin_nudge_from_the_twin_raises_the_score_and_is_computed_once_per_set(float_model_and_images):
    # The nudge climbs the twin's temperature-scaled confidence; scored by the twin itself
    # (as the FP32 model is), every input's score goes up.
    model, images = float_model_and_images
    context = odin_context(model)
    evidence = Evidence("images", images[:16], _with_maps(model))
    plain = make_detector("odin", context, temperature=1000, eps=0).score(evidence)
    backward_passes = []
    hook = model.conv1.register_full_backward_hook(lambda *args: backward_passes.append(1))
    try:  # the model is shared by other tests: the hook must not outlive this one
        nudged = make_detector("odin", context, temperature=1000, eps=0.004).score(evidence)
        make_detector("odin", context, temperature=1000, eps=0.0014).score(evidence)  # another eps: same gradients
    finally:
        hook.remove()
    assert (nudged > plain).all() and len(backward_passes) == 1


def test_mds_survives_a_singular_covariance():
    # Fewer samples than dimensions and a dead feature: the covariance has no inverse.
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(0, 1, (6, 16)), dtype=torch.float32)
    features[:, 3] = 0.0
    head = nn.Linear(16, 2)
    detector = make_detector("mds", ModelContext(head)).fit(outputs_of(features, head), torch.tensor([0, 0, 0, 1, 1, 1]))
    scores = detector.score(evidence_of(outputs_of(torch.cat([features[:1], 10 * features[:1]]), head)))
    assert torch.isfinite(scores).all() and scores[0] > scores[1]


@pytest.mark.parametrize("name", ["knn", "ash", "react", "mds"])
def test_dead_features_give_finite_scores(name):
    # An input whose penultimate features are all zero (every ReLU off) must still get a score.
    rng = np.random.default_rng(0)
    features = torch.tensor(np.abs(rng.normal(0, 1, (60, 8))), dtype=torch.float32)
    head = nn.Linear(8, 2)
    detector = make_detector(name, ModelContext(head)).fit(outputs_of(features, head), torch.arange(60) % 2)
    scores = detector.score(evidence_of(outputs_of(torch.cat([features[:2], torch.zeros(1, 8)]), head)))
    assert torch.isfinite(scores).all()


def test_vim_refuses_fewer_fit_images_than_its_subspace():
    head = nn.Linear(8, 2)
    features = torch.randn(6, 8)
    with pytest.raises(ValueError, match="vim: dim 6 needs more than 6 fit images"):
        make_detector("vim", ModelContext(head), dim=6).fit(outputs_of(features, head), torch.arange(6) % 2)


def test_packaged_detector_is_the_best_on_validation_among_the_cheap_ones():
    auroc = {"msp": 0.80, "energy": 0.86, "gen": 0.84, "maxlogit": 0.85}
    cost = {"msp": 5.0, "energy": 150.0, "gen": 20.0, "maxlogit": 8.0}
    name, record = choose_packaged(auroc, cost, max_added_us=100)
    assert name == "maxlogit"  # energy is better but too slow for the bound
    assert choose_packaged(auroc, cost, max_added_us=200)[0] == "energy"
    with pytest.raises(ValueError, match="package.max_added_us"):
        choose_packaged(auroc, cost, max_added_us=1)


@pytest.mark.parametrize("detectors, search, message", [
    (["msp", "nope"], {}, "ood.detectors: 'nope' is not one of"),
    (["knn"], {"knn": {"kk": [5]}}, "ood.search.knn: unknown hyperparameter 'kk'; allowed: \\['k'\\]"),
    (["knn"], {"knn": {"k": [0]}}, "ood.search.knn.k: 0 must be >= 1"),
    (["react"], {"react": {"percentile": [0.9, 1.0]}}, "ood.search.react.percentile: 1.0 must be > 0.0 and < 1.0"),
    (["odin"], {"odin": {"temperature": [0]}}, "ood.search.odin.temperature: 0 must be > 0.0"),
    (["odin"], {"odin": {"eps": [-0.001]}}, "ood.search.odin.eps: -0.001 must be >= 0.0"),
])
def test_detector_params_are_refused_before_any_work(detectors, search, message):
    from edgeml.ood.detectors import check_params

    with pytest.raises(ValueError, match=message):
        check_params(detectors, search)


def test_committed_detector_params_pass():
    from edgeml import params as P
    from edgeml.ood.detectors import check_params

    ood = P.load().ood
    check_params(ood.detectors, ood.search)


def test_vim_fits_an_ill_conditioned_covariance():
    # Quantized features of a barely trained model: few distinct values, many repeated eigenvalues
    # (float32's eigensolver failed on such features from a tiny ONNX Runtime INT8 model).
    rng = np.random.default_rng(0)
    features = torch.tensor(np.round(np.abs(rng.normal(0, 1, (60, 64))) * 2) / 2, dtype=torch.float32)
    features[:, 10:] = features[:, :1] * 3  # rank 10 of 64
    head = nn.Linear(64, 2)
    detector = make_detector("vim", ModelContext(head), dim=8).fit(outputs_of(features, head), torch.arange(60) % 2)
    assert torch.isfinite(detector.score(evidence_of(outputs_of(features[:5], head)))).all()


def test_vim_equals_pytorch_ood_where_its_float32_solver_converges():
    from pytorch_ood.detector import ViM as PoodViM

    rng = np.random.default_rng(1)
    features = torch.tensor(np.abs(rng.normal(0, 1, (400, 32))), dtype=torch.float32)
    head = nn.Linear(32, 10)
    ours = make_detector("vim", ModelContext(head), dim=8).fit(outputs_of(features, head), torch.arange(400) % 10)
    reference = PoodViM(None, d=8, w=head.weight.detach(), b=head.bias.detach()).fit_features(features, torch.arange(400) % 10)
    queries = torch.tensor(np.abs(rng.normal(0, 1.5, (20, 32))), dtype=torch.float32)
    torch.testing.assert_close(ours.score(evidence_of(outputs_of(queries, head))),
                               -reference.predict_features(queries), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(n for n, cls in DETECTORS.items() if cls.carriable))
def test_carriable_detectors_score_the_same_inside_an_onnx_graph(name, tmp_path):
    """What the artifact computes (the detector's scorer, exported to ONNX and run by ONNX Runtime) is the
    detector's own score, to within float32 rounding, on ID-like and far-off features."""
    import onnxruntime as ort

    from edgeml.quantization.onnxrt import export_onnx

    torch.manual_seed(0)
    head = nn.Linear(16, 4)
    labels = torch.randint(0, 4, (200,))
    fit = outputs_of(torch.relu(torch.randn(200, 16) + labels[:, None].float()), head)
    detector = make_detector(name, ModelContext(head)) if name != "vim" else make_detector(name, ModelContext(head), dim=8)
    detector.fit(fit, labels)
    features = torch.cat([torch.relu(torch.randn(20, 16) + 1), 5 * torch.rand(10, 16)])
    outputs = outputs_of(features, head)
    expected = detector.score(evidence_of(outputs))
    scorer = detector.scorer()
    with torch.no_grad():
        torch.testing.assert_close(scorer(outputs.logits, outputs.features), expected, rtol=1e-4, atol=1e-4)
    path = tmp_path / "scorer.onnx"
    export_onnx(scorer, path, (outputs.logits[:2], outputs.features[:2]), ["logits", "features"], ["score"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"logits": outputs.logits.numpy(), "features": outputs.features.numpy()}
    (onnx_scores,) = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})  # logit scores: no features
    np.testing.assert_allclose(onnx_scores, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_detectors_that_need_more_than_logits_and_features_cannot_travel():
    for name in ("odin", "knn", "ash_map"):
        assert not DETECTORS[name].carriable
        with pytest.raises(NotImplementedError, match="cannot travel in the artifact"):
            make_detector(name, ModelContext(nn.Linear(4, 2))).scorer()


def test_edge_knn_is_knn_on_a_bank_that_fits_an_edge_file():
    torch.manual_seed(1)
    head = nn.Linear(16, 4)
    labels = torch.randint(0, 4, (300,))
    fit = outputs_of(torch.relu(torch.randn(300, 16) + labels[:, None].float()), head)
    queries = evidence_of(outputs_of(torch.cat([torch.relu(torch.randn(20, 16) + 1), 5 * torch.rand(10, 16)]), head))
    full = make_detector("knn", ModelContext(head), k=3).fit(fit, labels)
    whole_bank = make_detector("knn_edge", ModelContext(head), k=3, bank=300).fit(fit, labels)
    torch.testing.assert_close(whole_bank.score(queries).float(), full.score(queries).float(), rtol=1e-5, atol=1e-6)
    sampled = make_detector("knn_edge", ModelContext(head), k=3, bank=40).fit(fit, labels)
    assert sampled.features.shape == (40, 16) and sampled.hyperparameters() == {"k": 3, "bank": 40}
    # a sample is farther from every query than the whole set is: its k-th distances are never smaller
    assert (-sampled.score(queries) >= -full.score(queries) - 1e-6).all()
    # the largest bank allowed is 2 MB of float32 at ResNet18's 512 dimensions
    assert DETECTORS["knn_edge"].MAX_BANK * 512 * 4 <= 2 * 2**20
    with pytest.raises(ParamsError, match=r"ood.search.knn_edge.bank: 2048 must be >= 1 and < 1025"):
        check_params(["knn_edge"], {"knn_edge": {"bank": [2048]}})
