"""Tables 1 and 2 in the paper's layout, and the plots: ROC/PR curves, score histograms, training curves.

Every number comes from the metrics files the pipeline wrote; the paper's values appear only
in clearly labelled reference columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from edgeml.io import atomic_path  # noqa: E402
from edgeml.metrics import roc_points  # noqa: E402

MODELS = ("fp32", "int8")
# The paper's reported values (ResNet18, CIFAR-10 vs TinyImageNet crop, MSP), for reference only.
PAPER_TABLE1 = {
    "Parameters (M)": (11.1, 11.1),
    "Model size (MB)": (44.8, 12.4),
    "CPU latency (ms/sample)": (7.91, 2.87),
    "GPU latency (ms/sample)": (5.66, 1.56),
}
PAPER_TABLE2 = {
    "Detection error (%)": (10.0, 12.5),
    "AUROC (%)": (95.3, 89.1),
    "AUPR-In (%)": (96.4, 93.0),
    "AUPR-Out (%)": (93.8, 81.4),
}
PAPER_SETS = ("tin_crop", "tin_resize")  # ODIN's TinyImageNet sets: the paper's Table 2 layout
TABLE2_KEYS = {
    "FPR at 95% TPR (%)": "fpr_at_95_tpr",
    "Detection error (%)": "detection_error",
    "AUROC (%)": "auroc",
    "AUPR-In (%)": "aupr_in",
    "AUPR-Out (%)": "aupr_out",
    "OpenOOD FPR95, OOD positive (%)": "openood_fpr95_ood_positive",
}
PLOT_POINTS = 200
ID_SPLITS = {  # ood.id_split -> where the ID test and validation images come from
    "odin": "all CIFAR-10 test images, as ODIN; hyperparameters chosen on images held out of the training set",
    "openood": "OpenOOD's test_cifar10 list, where ODIN used all 10,000 test images; hyperparameters chosen "
    "on OpenOOD's val_cifar10 list, disjoint from it",
}


def _fmt(value: Any, digits: int = 2) -> str:
    """Numbers to fixed digits; a "not measured: reason" string to its first part (the reason is a footnote)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value).split(":")[0]


def table1(bench: dict, evaluate: dict) -> dict[str, tuple[Any, Any]]:
    """Rows of Table 1 (FP32, INT8), plus accuracy and throughput, which the paper does not report."""
    rows: dict[str, tuple[Any, Any]] = {
        "Parameters (M)": tuple(bench[m]["parameters"] / 1e6 for m in MODELS),
        "Model size (MB)": tuple(bench[m]["size_mb"] for m in MODELS),
        "CPU latency (ms/sample)": tuple(bench[m]["cpu_latency_ms"] for m in MODELS),
        "GPU latency (ms/sample)": tuple(bench[m]["gpu_latency_ms"] for m in MODELS),
        "CPU throughput (images/s)": tuple(bench[m]["cpu_throughput_images_per_s"] for m in MODELS),
        "Top-1 accuracy (%)": tuple(100 * evaluate[f"{m}_top1"] for m in MODELS),
    }
    if "artifact" in bench:  # the deployable INT8 artifact (`edgeml predict`), from image file to decision
        artifact = bench["artifact"]
        rows["Artifact load (ms)"] = ("", artifact["artifact_load_ms"])
        rows["`edgeml predict` latency, file to decision (ms/image)"] = ("", artifact["artifact_latency_ms"])
        rows["`edgeml predict` throughput (images/s)"] = ("", artifact["artifact_throughput_images_per_s"])
    return rows


def table2(ood: dict, detector: str, ood_set: str) -> dict[str, tuple[float, float]]:
    """Rows of Table 2 (FP32, INT8) for one detector and OOD set, in percent."""
    return {row: tuple(100 * ood[m][detector][ood_set][key] for m in MODELS) for row, key in TABLE2_KEYS.items()}


def markdown_table(rows: dict[str, tuple], paper: dict[str, tuple] | None = None) -> str:
    header = "| | FP32 | INT8 |" + (" Paper FP32 | Paper INT8 |" if paper else "")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name, values in rows.items():
        cells = [_fmt(v) for v in values]
        if paper:
            cells += [_fmt(v) for v in paper.get(name, ("", ""))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(
    bench: dict, evaluate: dict, ood: dict, detector: str, sets: list[str], groups: dict[str, list[str]]
) -> str:
    env = bench["environment"]
    parts = [
        "#### Table 1: model cost (FP32 vs INT8)",
        "",
        markdown_table(table1(bench, evaluate), PAPER_TABLE1),
        "",
        f"CPU: {env['cpu']['model']}, {env['threads']} threads, batch 1 (latency, median of "
        f"{bench['settings']['runs']} runs) and batch {bench['settings']['throughput_batch_size']} "
        f"(throughput); torch {env['versions']['torch']}, onnxruntime {env['versions'].get('onnxruntime')}. "
        f"GPU: {env['gpu'] or 'none'}.",
    ]
    if "compute" in bench:
        compute, paths = bench["compute"], bench["cpu_paths"]
        peaks = compute["gemm_peak_gmacs"]
        parts += [
            "",
            f"FP32 column: the fastest FP32 path measured in this run ({bench['fp32']['path']}; all paths, batch-1 ms: "
            + ", ".join(f"{name} {p['latency_ms']:.3f}" for name, p in paths.items())
            + f"). INT8: {bench['int8']['path']} backend, {compute['int8_speedup_vs_fastest_fp32']:.2f}x faster at batch 1. "
            f"Compute floor ({compute['macs_per_sample'] / 1e6:.1f} M MACs per image / measured GEMM peak, FP32 "
            f"{peaks['fp32']['best']:.0f} and INT8 {peaks['int8']['best']:.0f} GMAC/s): FP32 runs at "
            f"{compute['latency_over_floor'][compute['fastest_fp32_path']]:.1f}x its floor, INT8 at "
            f"{compute['latency_over_floor']['int8']:.1f}x.",
        ]
    parts += [
        f"\nGPU latency, {model.upper()}: {bench[model]['gpu_latency_ms']}."
        for model in MODELS
        if isinstance(bench[model]["gpu_latency_ms"], str)
    ]
    for ood_set in [s for s in PAPER_SETS if s in sets]:
        counts = ood["fp32"][detector][ood_set]
        parts += [
            "",
            f"#### Table 2: {detector.upper()} OOD detection, CIFAR-10 vs {ood_set}",
            "",
            markdown_table(table2(ood, detector, ood_set), PAPER_TABLE2 if ood_set == "tin_crop" else None),
            "",
            f"{counts['id_samples']} ID test images, {counts['ood_samples']} OOD images; ID is the positive class. "
            f"ID images: {ID_SPLITS[ood['id_split']['name']]}.",
        ]
    group_text = "; ".join(f"mean_{g}: {', '.join(members)}" for g, members in groups.items())
    parts += [
        "",
        "#### Table 2 extended: AUROC (%) of every detector, FP32 → INT8 (change)",
        "",
        detector_table(ood, sets + [f"mean_{g}" for g in groups]),
        "",
        f"Groups: {group_text}. Sample counts per set in `metrics/ood.json`.",
    ]
    if "detector_cost_us" in bench:
        costs = ", ".join(f"{name} {us:.1f} µs" for name, us in bench["detector_cost_us"].items())
        parts += ["", f"Added cost per sample on top of the INT8 model (CPU, batch 1, median): {costs}."]
    settings = []
    for name, values in ood.get("hyperparameters", {}).get("int8", {}).items():
        numbers = ", ".join(f"{key} {value:.4g}" for key, value in values.items() if isinstance(value, (int, float)))
        if "validation" in values:
            numbers += f" (chosen on validation, AUROC {100 * values['validation']['validation_auroc']:.2f})"
        if numbers:
            settings.append(f"{name} {numbers}")
    if settings:
        parts += [
            "",
            f"Detector settings, INT8 model (grids in params `ood.search`, chosen by AUROC of ID validation "
            f"images vs the OOD validation set; others: the papers' defaults): {'; '.join(settings)}.",
        ]
    return "\n".join(parts) + "\n"


def detector_table(ood: dict, columns: list[str], key: str = "auroc") -> str:
    """Every detector x OOD set (or group mean): FP32 -> INT8 (change), in percent."""
    lines = ["| detector | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for detector in ood["fp32"]:
        cells = []
        for column in columns:
            fp32, int8 = (100 * ood[m][detector][column][key] for m in MODELS)
            cells.append(f"{fp32:.2f} → {int8:.2f} ({int8 - fp32:+.2f})")
        lines.append(f"| {detector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most PLOT_POINTS points along a curve, endpoints kept; for plotting only."""
    keep = np.unique(np.linspace(0, len(x) - 1, PLOT_POINTS).round().astype(int))
    return x[keep], y[keep]


def curves(scores: dict[str, dict[str, np.ndarray]], ood_set: str) -> dict[str, pd.DataFrame]:
    """ROC and PR (ID positive) curve points per model, thinned for plotting."""
    out = {}
    for model, s in scores.items():
        fpr, tpr = _thin(*roc_points(s["id"], s[ood_set]))
        labels = np.r_[np.ones(len(s["id"])), np.zeros(len(s[ood_set]))]
        precision, recall, _ = precision_recall_curve(labels, np.r_[s["id"], s[ood_set]])
        recall, precision = _thin(recall[::-1], precision[::-1])
        out[model] = pd.DataFrame({"fpr": fpr, "tpr": tpr}), pd.DataFrame({"recall": recall, "precision": precision})
    return out


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_ood(
    scores: dict[str, dict[str, np.ndarray]], ood_set: str, detector: str, csv_dir: Path, figure_dir: Path
) -> None:
    """ROC/PR curves as CSV (DVC plots) and PNG, and ID-vs-OOD score histograms, FP32 vs INT8."""
    fig, (roc_ax, pr_ax, *hist_axes) = plt.subplots(1, 2 + len(scores), figsize=(5 * (2 + len(scores)), 4))
    for model, (roc, pr) in curves(scores, ood_set).items():
        for name, frame in (("roc", roc), ("pr", pr)):
            with atomic_path(csv_dir / name / model / f"{detector}_{ood_set}.csv") as tmp:
                frame.to_csv(tmp, index=False)
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
    save_figure(fig, figure_dir / f"{detector}_{ood_set}.png")


def plot_training(live_metrics_dir: Path, path: Path) -> None:
    """Per-epoch loss and accuracy from dvclive's TSV files."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
            frame = pd.read_csv(live_metrics_dir / f"{split}_{metric}.tsv", sep="\t")
            ax.plot(frame["step"] + 1, frame[f"{split}_{metric}"], label=split)
            ax.set(xlabel="epoch", ylabel=metric)
            ax.legend()
            ax.grid(alpha=0.3)
    save_figure(fig, path)


# Issue 3's goal for an INT8 recipe, against its FP32 twin measured in the same run.
SWEEP_GOALS = {"size_ratio": 3.9, "top1_drop_points": 0.3, "auroc_drop_points": 0.5, "speedup": 1.8}
SPEED_NOISE = 0.05  # run-to-run spread of batch-1 latency here


def sweep_summary(results: dict[str, dict], sets: list[str]) -> dict[str, Any]:
    """One row per recipe (size, speed, accuracy, MSP AUROC per OOD set, which goals it meets) and the best recipe:
    the fastest of those that meet the size, accuracy and OOD goals, else the one losing the least AUROC."""
    rows = {}
    for name, r in results.items():
        fastest = r["fastest_fp32_path"]
        q = r["quality"]
        drops = {s: 100 * (q["fp32"]["msp_auroc"][s] - q["int8"]["msp_auroc"][s]) for s in sets}
        worst = max(drops, key=drops.get)
        row = {
            "backend": r["recipe"]["backend"],
            "recipe": r["recipe"],
            "size_mb": r["size_mb"]["int8"],
            "size_ratio": r["size_mb"]["fp32"] / r["size_mb"]["int8"],
            "latency_ms": r["cpu"]["int8"]["latency_ms"],
            "fastest_fp32_path": fastest,
            "fastest_fp32_latency_ms": r["cpu"][fastest]["latency_ms"],
            "speedup": r["int8_speedup_vs_fastest_fp32"],
            "latency_over_floor": r["latency_over_floor"]["int8"],
            "throughput_images_per_s": r["cpu"]["int8"]["throughput_images_per_s"],
            "top1": {m: 100 * q[m]["top1"] for m in MODELS},
            "top1_drop_points": 100 * (q["fp32"]["top1"] - q["int8"]["top1"]),
            "msp_auroc": {s: {m: 100 * q[m]["msp_auroc"][s] for m in MODELS} for s in sets},
            "max_auroc_drop_points": drops[worst],
            "worst_set": worst,
            "quantize_seconds": r["quantize_seconds"],
        }
        row["meets"] = {
            "size_ratio": row["size_ratio"] >= SWEEP_GOALS["size_ratio"],
            "top1_drop_points": row["top1_drop_points"] <= SWEEP_GOALS["top1_drop_points"],
            "auroc_drop_points": row["max_auroc_drop_points"] <= SWEEP_GOALS["auroc_drop_points"],
            "speedup": row["speedup"] >= SWEEP_GOALS["speedup"],
        }
        rows[name] = row
    quality = [n for n, row in rows.items() if all(row["meets"][k] for k in ("size_ratio", "top1_drop_points", "auroc_drop_points"))]
    if quality:
        # Speed-ups within SPEED_NOISE of the fastest are ties (the same FP32 path measures 0.61-0.70 ms
        # across runs here): among them, the recipe that loses the least AUROC.
        top = max(rows[n]["speedup"] for n in quality)
        tied = [n for n in quality if rows[n]["speedup"] >= (1 - SPEED_NOISE) * top]
        best = min(tied, key=lambda n: rows[n]["max_auroc_drop_points"])
        rule = (f"meets the size, top-1 and AUROC goals; among those within {SPEED_NOISE:.0%} of the best speed-up, "
                f"the smallest AUROC loss")
    else:
        best, rule = min(rows, key=lambda n: rows[n]["max_auroc_drop_points"]), "no recipe meets the quality goals: smallest AUROC loss"
    any_result = next(iter(results.values()))
    return {"goals": SWEEP_GOALS, "best": best, "best_rule": rule, "recipes": rows,
            "compute": {k: any_result[k] for k in ("macs_per_sample", "gemm_peak_gmacs")},
            "environment": any_result["environment"]}


def render_sweep(summary: dict[str, Any], sets: list[str]) -> str:
    goals, rows = summary["goals"], summary["recipes"]
    mark = lambda ok: "" if ok else " ✗"  # noqa: E731
    lines = [
        "#### Quantization recipes (MSP baseline, committed FP32 model)",
        "",
        "| recipe | backend | size MB (x smaller) | INT8 batch-1 ms | fastest FP32 ms (path) | speed-up | x compute floor "
        "| INT8 images/s | top-1 FP32 → INT8 | worst AUROC loss (set) |",
        "|---" * 10 + "|",
    ]
    for name, r in rows.items():
        m = r["meets"]
        lines.append(
            f"| {'**' + name + '**' if name == summary['best'] else name} | {r['backend']} "
            f"| {r['size_mb']:.2f} ({r['size_ratio']:.2f}x{mark(m['size_ratio'])}) | {r['latency_ms']:.3f} "
            f"| {r['fastest_fp32_latency_ms']:.3f} ({r['fastest_fp32_path'].removeprefix('fp32_')}) "
            f"| {r['speedup']:.2f}x{mark(m['speedup'])} | {r['latency_over_floor']:.1f} | {r['throughput_images_per_s']:.0f} "
            f"| {r['top1']['fp32']:.2f} → {r['top1']['int8']:.2f} ({-r['top1_drop_points']:+.2f}{mark(m['top1_drop_points'])}) "
            f"| {r['max_auroc_drop_points']:.2f} ({r['worst_set']}){mark(m['auroc_drop_points'])} |"
        )
    lines += [
        "",
        f"Goals (✗ = missed): ≥{goals['size_ratio']}x smaller, ≤{goals['top1_drop_points']} top-1 points and "
        f"≤{goals['auroc_drop_points']} AUROC points lost on every OOD set, ≥{goals['speedup']}x faster at batch 1 "
        f"than the fastest FP32 path measured in the same run. Best: **{summary['best']}** ({summary['best_rule']}).",
        "",
        "#### MSP AUROC (%) per OOD set, INT8 (change from FP32)",
        "",
        "| recipe | " + " | ".join(sets) + " |",
        "|---" * (1 + len(sets)) + "|",
    ]
    for name, r in rows.items():
        cells = [f"{a['int8']:.2f} ({a['int8'] - a['fp32']:+.2f})" for a in (r["msp_auroc"][s] for s in sets)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    env, compute = summary["environment"], summary["compute"]
    peaks = compute["gemm_peak_gmacs"]
    lines += [
        "",
        f"CPU: {env['cpu']['model']}, {env['threads']} threads. Compute floor = {compute['macs_per_sample'] / 1e6:.1f} M "
        f"MACs per image / GEMM peak (FP32 {peaks['fp32']['best']:.0f}, INT8 {peaks['int8']['best']:.0f} GMAC/s measured "
        f"here). Size is the deployable file on disk (TorchScript .pt, torch.export .pt2 or ONNX); FP32 size "
        f"is the TorchScript file.",
    ]
    return "\n".join(lines) + "\n"
