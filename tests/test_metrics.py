import numpy as np
import pytest

from edgeml.ood.metrics import auroc_interval, detection_error, fpr_at_tpr, ood_metrics


def test_perfect_separation():
    m = ood_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2]))
    assert m["auroc"] == 1.0
    assert m["aupr_in_ap"] == m["aupr_out_ap"] == m["aupr_in_trapz"] == m["aupr_out_trapz"] == 1.0
    assert m["fpr_at_95_tpr"] == 0.0 and m["detection_error"] == 0.0
    assert (m["id_samples"], m["ood_samples"]) == (3, 2)


def test_hand_computed_case():
    # ID (positive) 4, 3, 1; OOD 2, 0. Thresholds >= s, ROC points (FPR, TPR):
    # (0,0) (0,1/3) (0,2/3) (1/2,2/3) (1/2,1) (1,1)
    ids, oods = np.array([4.0, 3.0, 1.0]), np.array([2.0, 0.0])
    m = ood_metrics(ids, oods)
    assert m["auroc"] == pytest.approx(5 / 6)  # 5 of 6 (ID, OOD) pairs ordered correctly
    # 95% TPR is first reached at TPR=1, where FPR=1/2.
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)
    # OpenOOD (OOD positive, lower score = OOD): catching both OOD inputs needs threshold <= 2,
    # which also rejects the ID input scored 1: 1 of 3 ID inputs rejected.
    assert m["openood_fpr95_ood_positive"] == pytest.approx(1 / 3)
    # min 0.5(1-TPR)+0.5FPR: at (0, 2/3) -> 1/6; at (1/2, 1) -> 1/4.
    assert m["detection_error"] == pytest.approx(1 / 6)
    # AUPR-In, ODIN's step sum (precision from rates TPR / (TPR + FPR)): at recalls 1/3, 2/3, 1 the
    # precisions are 1, 1 and 1 / (1 + 1/2) = 2/3.
    assert m["aupr_in_ap"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    # OpenOOD's trapezoids through (recall, precision by counts): (0,1) (1/3,1) (2/3,1) (2/3,2/3) (1,3/4).
    assert m["aupr_in_trapz"] == pytest.approx(1 / 3 + 1 / 3 + (2 / 3 + 3 / 4) / 2 / 3)
    # AUPR-Out: OOD positive, negated scores, order 0(OOD) -1(ID) -2(OOD): recalls 1/2, 1 with rate
    # precisions 1 and (1) / (1 + 1/3) = 3/4.
    assert m["aupr_out_ap"] == pytest.approx((1 + 3 / 4) / 2)
    # trapezoids: (0,1) (1/2,1) (1/2,1/2) (1,2/3)
    assert m["aupr_out_trapz"] == pytest.approx(1 / 2 + (1 / 2 + 2 / 3) / 2 / 2)


def test_ties_move_tpr_and_fpr_together():
    # All scores tied: the only thresholds give (0,0) and (1,1); a tie never counts as separated.
    ids, oods = np.full(5, 0.5), np.full(5, 0.5)
    assert ood_metrics(ids, oods)["auroc"] == 0.5
    assert fpr_at_tpr(ids, oods) == 1.0
    assert detection_error(ids, oods) == 0.5


def test_partial_tie():
    # ID 1, 1; OOD 1, 0: the tied pair counts half.
    m = ood_metrics(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert m["auroc"] == pytest.approx((2 * 1 + 2 * 0.5) / 4)
    # thresholds: >=1 gives TPR 1, FPR 1/2
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5)
    assert m["detection_error"] == pytest.approx(0.25)


def test_scores_must_be_finite():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(np.array([np.nan, 1.0]), np.array([0.0]))


def test_ap_weighs_both_classes_equally_as_odin():
    # Duplicating every OOD score leaves ODIN's rates (and so its AUPR) unchanged; count-based AP would move.
    ids, oods = np.array([4.0, 3.0, 1.0]), np.array([2.0, 0.0])
    once, twice = ood_metrics(ids, oods), ood_metrics(ids, np.r_[oods, oods])
    assert twice["aupr_in_ap"] == pytest.approx(once["aupr_in_ap"])
    assert twice["aupr_in_trapz"] != pytest.approx(once["aupr_in_trapz"])


def test_auroc_interval_holds_the_sample_auroc_and_narrows_with_more_images():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    true_auroc = norm.cdf(1 / np.sqrt(2))  # ID ~ N(1, 1) vs OOD ~ N(0, 1)

    def interval(n: int) -> tuple[float, float, float]:
        ids, oods = rng.normal(1, 1, n), rng.normal(0, 1, n)
        lo, hi = auroc_interval(ids, oods, resamples=400)
        return lo, ood_metrics(ids, oods)["auroc"], hi

    lo, sample, hi = interval(250)
    assert lo < sample < hi and lo < true_auroc < hi
    big_lo, _, big_hi = interval(4000)
    # the standard error shrinks as 1 / sqrt(n): 16x the images, about a quarter of the width
    assert 0.15 < (big_hi - big_lo) / (hi - lo) < 0.4
    assert auroc_interval(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == [1.0, 1.0]  # separated in every resample


def test_set_metrics_adds_the_interval_only_when_asked():
    from edgeml.ood.protocol import set_metrics

    scores = {"id": np.arange(10.0), "a": np.arange(10.0) - 3}
    assert "auroc_ci95" not in set_metrics(scores, ["a"], {})["a"]
    lo, hi = set_metrics(scores, ["a"], {}, interval=True)["a"]["auroc_ci95"]
    assert lo < ood_metrics(scores["id"], scores["a"])["auroc"] < hi
