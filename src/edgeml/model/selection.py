"""Choosing the training recipe on validation data only (issue 17): test sets never vote.

Rule: a recipe is eligible when its validation top-1 is at least ``min_top1`` (the accuracy the
paper's model must keep); among the eligible, the highest validation OOD AUROC wins, that AUROC being
the mean over the OOD validation sets of AUROC(ID validation images vs that set), ID positive. Equal
AUROCs go to the alphabetically first name, so the choice never depends on dict order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.metrics import roc_auc_score

MIN_TOP1 = 0.905


@dataclasses.dataclass(frozen=True)
class Candidate:
    val_top1: float
    val_ood_auroc: float  # mean over the OOD validation sets


class NoEligibleRecipe(ValueError):
    """Every candidate's validation top-1 is below the floor."""


def validation_auroc(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> dict[str, float]:
    """AUROC of each OOD validation set against the ID validation scores (higher score = ID), and
    their mean under ``"mean"``."""
    if not ood_scores:
        raise ValueError("no OOD validation set given")
    aurocs = {
        name: float(roc_auc_score(np.r_[np.ones(len(id_scores)), np.zeros(len(scores))], np.r_[id_scores, scores]))
        for name, scores in ood_scores.items()
    }
    return aurocs | {"mean": float(np.mean(list(aurocs.values())))}


def choose_recipe(candidates: dict[str, Candidate], min_top1: float = MIN_TOP1) -> str:
    """The eligible candidate (val top-1 >= ``min_top1``) with the best mean validation OOD AUROC;
    ties go to the first name. :class:`NoEligibleRecipe` names every candidate's top-1 when none is eligible."""
    eligible = [name for name, c in candidates.items() if c.val_top1 >= min_top1]
    if not eligible:
        found = ", ".join(f"{name}: {c.val_top1:.4f}" for name, c in sorted(candidates.items()))
        raise NoEligibleRecipe(f"no recipe keeps validation top-1 >= {min_top1} ({found or 'no candidates'})")
    return min(eligible, key=lambda name: (-candidates[name].val_ood_auroc, name))
