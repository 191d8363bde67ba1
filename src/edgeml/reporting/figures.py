"""Figures drawn offline with matplotlib: ROC/PR curves and score histograms, AUROC changes,
training curves, and the review report's ROC overlay, heatmap and recipe scatter.

The curves are also written as CSV for `dvc plots`; PNGs are kept to the few the README and the
review report show, so a re-run does not rewrite dozens of images in git.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from edgeml.io import atomic_path  # noqa: E402
from edgeml.ood.metrics import roc_points

PLOT_POINTS = 200


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most PLOT_POINTS points along a curve, endpoints kept; for plotting only."""
    keep = np.unique(np.linspace(0, len(x) - 1, PLOT_POINTS).round().astype(int))
    return x[keep], y[keep]


def curves(scores: dict[str, dict[str, np.ndarray]], ood_set: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """ROC and PR (ID positive) curve points per model, thinned for plotting."""
    out = {}
    for model, s in scores.items():
        fpr, tpr = _thin(*roc_points(s["id"], s[ood_set]))
        labels = np.r_[np.ones(len(s["id"])), np.zeros(len(s[ood_set]))]
        precision, recall, _ = precision_recall_curve(labels, np.r_[s["id"], s[ood_set]])
        recall, precision = _thin(recall[::-1], precision[::-1])
        out[model] = pd.DataFrame({"fpr": fpr, "tpr": tpr}), pd.DataFrame({"recall": recall, "precision": precision})
    return out


def write_curves(scores: dict[str, dict[str, np.ndarray]], ood_set: str, detector: str, csv_dir: Path) -> None:
    """ROC and PR curves as CSV, csv_dir/{roc,pr}/MODEL/DETECTOR_SET.csv: the data of `dvc plots`."""
    for model, (roc, pr) in curves(scores, ood_set).items():
        for name, frame in (("roc", roc), ("pr", pr)):
            with atomic_path(csv_dir / name / model / f"{detector}_{ood_set}.csv") as tmp:
                frame.to_csv(tmp, index=False)


def plot_ood(scores: dict[str, dict[str, np.ndarray]], ood_set: str, detector: str, path: Path) -> None:
    """One PNG: ROC and PR curves FP32 vs INT8, and each model's ID-vs-OOD score histogram."""
    fig, (roc_ax, pr_ax, *hist_axes) = plt.subplots(1, 2 + len(scores), figsize=(5 * (2 + len(scores)), 4))
    for model, (roc, pr) in curves(scores, ood_set).items():
        roc_ax.plot(roc.fpr, roc.tpr, label=model.upper())
        pr_ax.plot(pr.recall, pr.precision, label=model.upper())
    roc_ax.set(xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title=f"ROC, {detector} vs {ood_set}")
    pr_ax.set(xlabel="Recall (ID)", ylabel="Precision (ID)", title=f"PR-In, {detector} vs {ood_set}")
    for ax in (roc_ax, pr_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    for ax, (model, s) in zip(hist_axes, scores.items()):
        bins = np.linspace(min(s["id"].min(), s[ood_set].min()), max(s["id"].max(), s[ood_set].max()), 50)
        ax.hist(s["id"], bins=bins, alpha=0.6, density=True, label="CIFAR-10 test (ID)")
        ax.hist(s[ood_set], bins=bins, alpha=0.6, density=True, label=f"{ood_set} (OOD)")
        ax.set(xlabel=f"{detector} score", title=f"{model.upper()} scores")
        ax.legend()
    save_figure(fig, path)


def plot_auroc_change(ood: dict, sets: list[str], path: Path) -> None:
    """AUROC change FP32 -> INT8 per detector and OOD set, as bars."""
    detectors = list(ood["fp32"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(detectors) * len(sets) / 2, 3.5))
    width = 0.8 / len(sets)
    for i, ood_set in enumerate(sets):
        change = [100 * (ood["int8"][d][ood_set]["auroc"] - ood["fp32"][d][ood_set]["auroc"]) for d in detectors]
        ax.bar(np.arange(len(detectors)) + i * width, change, width, label=ood_set)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(detectors)) + width * (len(sets) - 1) / 2, detectors)
    ax.set(ylabel="AUROC change, INT8 - FP32 (points)", title="What quantization costs each detector")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_acceptance(package: dict, sets: list[str], path: Path) -> None:
    """The share of each OOD test set taken as in-distribution at the artifact's threshold, FP32 vs INT8."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(sets), 3.5))
    x = np.arange(len(sets))
    for offset, (label, rates) in zip((-0.2, 0.2), (("FP32, same rule", package["fp32_twin"]), ("INT8 artifact", package))):
        ax.bar(x + offset, [100 * rates["test_fpr"][s] for s in sets], 0.4, label=label)
    ax.set_xticks(x, sets, rotation=20)
    ax.set(ylabel="accepted as in-distribution (%)", ylim=(0, 100),
           title=f"What the artifact lets through ({package['detector']}, {100 * package['test_tpr']:.0f}% of ID kept)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_training(live_metrics_dir: Path, path: Path) -> None:
    """Per-epoch loss and accuracy from dvclive's TSV files; installed published weights have only the
    measured validation point (one marker), no training curves."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
            file = live_metrics_dir / f"{split}_{metric}.tsv"
            if not file.exists():
                continue
            frame = pd.read_csv(file, sep="\t")
            ax.plot(frame["step"] + 1, frame[f"{split}_{metric}"], marker="o", markersize=3, label=split)
            ax.set(xlabel="epoch", ylabel=metric)
            ax.legend()
            ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_roc_overlay(roc: dict[str, pd.DataFrame], title: str, path: Path) -> None:
    """ROC curves of several models (e.g. FP32 and INT8) in one chart."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for model, frame in roc.items():
        ax.plot(frame["fpr"], frame["tpr"], label=model.upper())
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_change_heatmap(change: pd.DataFrame, title: str, path: Path) -> None:
    """A rows x columns grid of signed changes, centred on zero (red = worse, blue = better), values written in."""
    limit = max(float(np.nanmax(np.abs(change.to_numpy()))), 1e-9)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * change.shape[1], 1.2 + 0.4 * change.shape[0]))
    image = ax.imshow(change.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(change.shape[1]), change.columns, rotation=45, ha="right")
    ax.set_yticks(range(change.shape[0]), change.index)
    for (row, column), value in np.ndenumerate(change.to_numpy()):
        ax.text(column, row, f"{value:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    save_figure(fig, path)


def plot_recipes(recipes: pd.DataFrame, x: str, y: str, labels: tuple[str, str], title: str, path: Path,
                 goal: float | None = None, best: str | None = None) -> None:
    """One labelled point per recipe (index), with the goal as a dashed line and the best recipe ringed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(recipes[x], recipes[y])
    for name, row in recipes.iterrows():
        ax.annotate(str(name), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if best in recipes.index:
        ax.scatter([recipes.at[best, x]], [recipes.at[best, y]], s=150, facecolors="none", edgecolors="red", label=f"best: {best}")
        ax.legend(fontsize=8)
    if goal is not None:
        ax.axhline(goal, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
