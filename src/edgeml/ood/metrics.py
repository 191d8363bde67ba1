"""OOD detection metrics with ODIN's conventions (Liang et al. 2018).

In-distribution (ID) is the positive class and a higher score means "more in-distribution".
Every threshold is taken at the ROC's own points (each distinct score), so ties are handled
exactly: tied scores move TPR and FPR together, never one before the other.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def _labels_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("OOD metrics need at least one ID and one OOD score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("OOD scores contain NaN or infinity")
    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    return labels, np.concatenate([id_scores, ood_scores])


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1), ID positive."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """FPR at the first threshold whose TPR (ID kept) reaches ``tpr_level``."""
    fpr, tpr = roc_points(id_scores, ood_scores)
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12, side="left")])


def detection_error(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """min over thresholds of 0.5 (1 - TPR) + 0.5 FPR (equal priors), exact over the ROC points."""
    fpr, tpr = roc_points(id_scores, ood_scores)
    return float(np.min(0.5 * (1 - tpr) + 0.5 * fpr))


def aupr_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as ODIN's released code computes it: a step sum over
    thresholds, ``auprBase += (recallTemp-recall)*precision`` (odin-pytorch, code/calMetric.py,
    ``auprIn``), with precision from *rates*, ``tp / (tp + fp)`` where tp and fp are the fractions of
    positives and negatives kept. That is average precision with both classes weighted equally;
    here it is exact over every distinct score instead of ODIN's 200,000-point grid."""
    weights = np.where(labels == 1, 1 / labels.sum(), 1 / (len(labels) - labels.sum()))
    return float(average_precision_score(labels, scores, sample_weight=weights))


def aupr_trapz(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as OpenOOD reports it: trapezoids through sklearn's PR
    points (``metrics.auc(recall, precision)`` in openood/evaluators/metrics.py), precision by counts."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """ODIN's table: FPR at 95% TPR, detection error, AUROC, AUPR-In, AUPR-Out (fractions, not %),
    plus OpenOOD's FPR95, which takes OOD as the positive class: the fraction of ID inputs
    rejected when 95% of OOD inputs are caught. AUPR comes in both published definitions:
    ``_ap`` (ODIN's step sum, shown in Table 2 as the paper compares with ODIN) and ``_trapz`` (OpenOOD's)."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    return {
        "fpr_at_95_tpr": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "openood_fpr95_ood_positive": fpr_at_tpr(-np.asarray(ood_scores), -np.asarray(id_scores), 0.95),
        "detection_error": detection_error(id_scores, ood_scores),
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in_ap": aupr_ap(labels, scores),
        "aupr_out_ap": aupr_ap(1 - labels, -scores),
        "aupr_in_trapz": aupr_trapz(labels, scores),
        "aupr_out_trapz": aupr_trapz(1 - labels, -scores),
        "id_samples": int(len(id_scores)),
        "ood_samples": int(len(ood_scores)),
    }


def auroc_interval(id_scores: np.ndarray, ood_scores: np.ndarray, level: float = 0.95, resamples: int = 1000,
                   seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the AUROC (Efron & Tibshirani 1993): ID and OOD scores resampled
    apart, with replacement, ``resamples`` times. For detectors scored on a sample of each set (ODIN),
    it says how far the sampled AUROC may sit from the full set's."""
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = np.asarray(id_scores), np.asarray(ood_scores)
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    aurocs = [
        roc_auc_score(labels, np.r_[rng.choice(id_scores, len(id_scores)), rng.choice(ood_scores, len(ood_scores))])
        for _ in range(resamples)
    ]
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(aurocs, [tail, 100 - tail])]


def group_means(per_set: dict[str, dict[str, float]], groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Mean of each metric over the OOD sets of each group (e.g. near / far), keyed ``mean_<group>``."""
    keys = ("fpr_at_95_tpr", "openood_fpr95_ood_positive", "detection_error", "auroc",
            "aupr_in_ap", "aupr_out_ap", "aupr_in_trapz", "aupr_out_trapz")
    return {
        f"mean_{group}": {key: float(np.mean([per_set[name][key] for name in members])) for key in keys}
        for group, members in groups.items()
    }
