"""Tables 1 and 2 in the paper's layout and the headline metrics (figures: edgeml.reporting.figures; the sweep: edgeml.sweep).

Every number comes from the metrics files the pipeline wrote; the paper's values appear only
in clearly labelled reference columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeml.reporting.markdown import cpu_label, table

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
    "AUPR-In (%)": "aupr_in_ap",  # ODIN's calMetric step sum, as the paper's ODIN baseline
    "AUPR-Out (%)": "aupr_out_ap",
    "AUPR-In, OpenOOD trapezoid (%)": "aupr_in_trapz",
    "AUPR-Out, OpenOOD trapezoid (%)": "aupr_out_trapz",
    "OpenOOD FPR95, OOD positive (%)": "openood_fpr95_ood_positive",
}


TABLE2_NOTE = (
    "AUPR-In/Out: ODIN's definition (its calMetric.py step sum, precision from TPR and FPR, i.e. both "
    "classes weighted equally), which the paper's column follows; OpenOOD's trapezoid AUPR (precision by "
    "counts) below it."
)


PURE = "int8_fp32_settings"  # the INT8 model scored with the FP32 model's validation choices


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
    """Table 1 or 2 (FP32, INT8), with the paper's values beside where given (blank where it has none)."""
    header = ["", "FP32", "INT8"] + (["Paper FP32", "Paper INT8"] if paper else [])
    return table(header, [[name, *map(_fmt, (*values, *(paper.get(name, ("", "")) if paper else ())))]
                          for name, values in rows.items()])


def validation_chosen(choices: dict, model: str = "int8") -> str:
    """The detector with the best validation AUROC for ``model`` (metrics/detectors.json): the honest
    "best detector", since an argmax over test AUROCs would choose on test data."""
    return max(choices[model], key=lambda d: choices[model][d]["validation_auroc"])


def summary_lines(bench: dict, evaluate: dict, ood: dict, choices: dict, package: dict, headline_set: str) -> list[str]:
    """The run in a few sentences, every number from the metrics (the paper's from PAPER_TABLE*)."""
    msp = {m: 100 * ood[m]["msp"][headline_set]["auroc"] for m in MODELS}
    sets = [s for s in ood["fp32"]["msp"] if not s.startswith("mean_")]
    drops = {(d, s): 100 * (ood["fp32"][d][s]["auroc"] - ood["int8"][d][s]["auroc"]) for d in ood["fp32"] for s in sets}
    worst = max(drops, key=drops.get)
    best = validation_chosen(choices)
    best_result = ood["int8"][best][headline_set]
    carriable = package["selection"].get("validation_auroc", {})
    travels = ""
    if carriable and best not in carriable:
        travels = f" ({best.upper()} cannot travel in the artifact: it needs more than the logits and pooled features"
        if "auroc_ci95" in best_result:
            low, high = best_result["auroc_ci95"]
            travels += f"; 95% interval of its AUROC on a {best_result['ood_samples']}-image sample: {100 * low:.2f}-{100 * high:.2f}"
        travels += ")"
    paper_loss = PAPER_TABLE2["AUROC (%)"][0] - PAPER_TABLE2["AUROC (%)"][1]
    return [
        "#### Summary",
        "",
        f"- Top-1 on the CIFAR-10 test set: FP32 {100 * evaluate['fp32_top1']:.2f}%, INT8 {100 * evaluate['int8_top1']:.2f}%; "
        f"INT8 file {bench['fp32']['size_mb'] / bench['int8']['size_mb']:.2f}x smaller, "
        f"{bench['fp32']['cpu_latency_ms'] / bench['int8']['cpu_latency_ms']:.2f}x faster at batch 1 than the fastest FP32 "
        f"path on this CPU ({bench['fp32']['path']}; medians, each in its own process)"
        + (f"; INT8 runs at {bench['compute']['int8_over_roofline']:.2f}x its per-layer roofline floor "
           f"({bench['compute']['roofline']['floor_ms']:.3f} ms, docs/performance.md)"
           if "roofline" in bench.get("compute", {}) else "") + ".",
        f"- MSP vs `{headline_set}`, AUROC: FP32 {msp['fp32']:.2f} → INT8 {msp['int8']:.2f} "
        f"({msp['int8'] - msp['fp32']:+.2f} points; the paper lost {paper_loss:.1f}).",
        f"- Across {len(drops) // len(sets)} detectors x {len(sets)} OOD sets, the largest AUROC loss from quantization is "
        f"{drops[worst]:.2f} points ({worst[0]} on {worst[1]}).",
        f"- The INT8 detector with the best validation AUROC is {best.upper()}{travels}; on `{headline_set}`: AUROC "
        f"{100 * best_result['auroc']:.2f}, detection error {100 * best_result['detection_error']:.2f}% (the paper's FP32 "
        f"MSP: {PAPER_TABLE2['AUROC (%)'][0]}, {PAPER_TABLE2['Detection error (%)'][0]}%).",
        f"- The artifact carries {package['detector'].upper()} ({package['selection']['rule']}); at its threshold it keeps "
        f"{100 * package['test_tpr']:.1f}% of ID test images and accepts {100 * package['test_fpr'][headline_set]:.1f}% of "
        f"`{headline_set}`.",
    ]


def table2_section(ood: dict, detector: str, ood_set: str, paper: bool) -> list[str]:
    counts = ood["fp32"][detector][ood_set]
    return [
        "",
        f"#### Table 2: {detector.upper()} OOD detection, CIFAR-10 vs {ood_set}",
        "",
        markdown_table(table2(ood, detector, ood_set), PAPER_TABLE2 if paper else None),
        "",
        f"{counts['id_samples']} ID test images, {counts['ood_samples']} OOD images; ID is the positive class. "
        f"ID images: {ID_SPLITS[ood['id_split']['name']]}. {TABLE2_NOTE}",
    ]


def acceptance_section(package: dict, sets: list[str]) -> list[str]:
    """What a user gets: the share of each test set the artifact takes as in-distribution at its threshold,
    beside the FP32 model under the same rule (its own settings and threshold)."""
    twin = package["fp32_twin"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [["ID test images kept", pct(twin["test_tpr"]), pct(package["test_tpr"])]]
    rows += [[f"`{s}` accepted as ID", pct(twin["test_fpr"][s]), pct(package["test_fpr"][s])] for s in sets]
    return [
        "",
        f"#### What the artifact accepts at its threshold ({package['detector'].upper()}, test data)",
        "",
        table(["", "FP32, same rule", "INT8 artifact"], rows),
        "",
        f"Threshold: keeps {100 * package['val_tpr']:.0f}% of the ID validation images (the held-out training split); "
        f"every other share is on test data, shown, never used to choose. FP32: the same detector with the artifact's "
        f"settings ({_setting(twin.get('setting', {}))}), fitted on the FP32 model, with its own threshold by the same rule: "
        f"the difference between the columns is quantization's alone.",
    ]


def _setting(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in setting.items()) or "no hyperparameters"


# Detectors that reduce to Energy at one end of their grid: (hyperparameter, the end where they change nothing, what it does)
NO_CHANGE_ENDS = {"react": ("percentile", max, "clipping"), "ash": ("percentile", min, "pruning"), "ash_map": ("percentile", min, "pruning")}


def no_gain_note(choices: dict, model: str = "int8", tolerance_points: float = 0.1) -> list[str]:
    """A plain sentence for ReAct and ASH when they give nothing: the validation choice sits at the grid's
    "no change" end and its validation AUROC equals Energy's (within ``tolerance_points``)."""
    if "energy" not in choices[model]:
        return []
    energy = 100 * choices[model]["energy"]["validation_auroc"]
    idle = []
    for name, (key, end, action) in NO_CHANGE_ENDS.items():
        record = choices[model].get(name)
        if record is None or key not in record["chosen"]:
            continue
        grid = [setting[key] for setting, _ in record["tried"]]
        auroc = 100 * record["validation_auroc"]
        if record["chosen"][key] == end(grid) and abs(auroc - energy) <= tolerance_points:
            idle.append(f"{name} ({key} {record['chosen'][key]:g}, the grid's no-{action} end: validation AUROC {auroc:.2f} vs Energy's {energy:.2f})")
    if not idle:
        return []
    return ["", f"{' and '.join(n.split(' ')[0] for n in idle)} give nothing here: their validation choices sit at the "
            f"\"no change\" end of their grids, where they equal Energy: " + "; ".join(idle) + "."]


# What the OOD fine-tune is for (the "I don't know" goals): test numbers, reported, never used to choose.
# Each: (label, value in percent from the metrics, comparison, goal).
def goal_rows(evaluate: dict, ood: dict, package: dict, finetune: dict, near: list[str]) -> list[tuple[str, float, str, float]]:
    pct = lambda x: 100 * x  # noqa: E731
    detector = package["detector"]
    drops = [pct(ood["fp32"][detector][s]["auroc"] - ood["int8"][detector][s]["auroc"]) for s in package["test_fpr"]]
    rows = [("ID test images kept by the artifact", pct(package["test_tpr"]), ">=", 94.0)]
    rows += [(f"`{s}` accepted by the artifact", pct(rate), "<=", 25.0 if s in near else (5.0 if s in ("gaussian", "uniform") else 20.0))
             for s, rate in package["test_fpr"].items()]
    for model in MODELS:
        msp = ood[model]["msp"]["tin_crop"]
        rows += [(f"MSP AUROC vs `tin_crop`, {model.upper()}", pct(msp["auroc"]), ">=", PAPER_TABLE2["AUROC (%)"][0]),
                 (f"MSP detection error vs `tin_crop`, {model.upper()}", pct(msp["detection_error"]), "<=", PAPER_TABLE2["Detection error (%)"][0])]
    rows += [("Top-1 on the test set, FP32", pct(evaluate["fp32_top1"]), ">=", 90.5),
             ("INT8 top-1 loss (points)", pct(evaluate["fp32_top1"] - evaluate["int8_top1"]), "<=", 0.3),
             (f"INT8 AUROC loss of {detector.upper()}, worst set (points)", max(drops), "<=", 0.5)]
    if "wall_seconds" in finetune:
        rows.append((f"Final fine-tune, minutes on {finetune['threads']} threads of the CPU that made it", finetune["wall_seconds"] / 60, "<=", 60.0))
    return rows


def goals_section(evaluate: dict, ood: dict, package: dict, finetune: dict, near: list[str]) -> list[str]:
    """The goals with the measured value, met or short by how much (the recipes tried: metrics/finetune_search.md)."""
    rows = []
    for label, value, op, goal in goal_rows(evaluate, ood, package, finetune, near):
        met = value >= goal if op == ">=" else value <= goal
        rows.append([label, f"{value:.2f}", f"{op.replace('>=', '≥').replace('<=', '≤')} {goal:g}",
                     "✓" if met else f"✗ short by {abs(value - goal):.2f}"])
    origin = finetune.get("recipe", {})
    return [
        "",
        "#### Saying \"I don't know\": goals (test data, reported, never used to choose)",
        "",
        table(["", "measured", "goal", ""], rows),
        "",
        f"Model: the cross-entropy weights fine-tuned with outliers made in code, recipe `{origin.get('name')}` "
        f"({origin.get('rule', '')}); made on {cpu_label(finetune['cpu'])}; every recipe tried, with its validation numbers: `metrics/finetune_search.md`.",
    ]


def render_headline(bench: dict, evaluate: dict, ood: dict, choices: dict, package: dict, finetune: dict, sets: list[str],
                    groups: dict[str, list[str]], headline_set: str) -> str:
    """README's results: the summary, Table 1, the paper's Table 2, what the artifact accepts, and the goals."""
    parts = summary_lines(bench, evaluate, ood, choices, package, headline_set)
    parts += ["", "#### Table 1: model cost (FP32 vs INT8)", "", markdown_table(table1(bench, evaluate), PAPER_TABLE1)]
    parts += table2_section(ood, "msp", "tin_crop" if "tin_crop" in sets else headline_set, paper="tin_crop" in sets)
    parts += acceptance_section(package, sets)
    parts += goals_section(evaluate, ood, package, finetune, groups.get("near", []))
    return "\n".join(parts) + "\n"


def render_markdown(
    bench: dict, evaluate: dict, ood: dict, choices: dict, package: dict, sets: list[str], groups: dict[str, list[str]],
    headline_set: str,
) -> str:
    env = bench["environment"]
    parts = summary_lines(bench, evaluate, ood, choices, package, headline_set) + [
        "",
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
            f"{compute['latency_over_floor']['int8']:.1f}x."
            + (f" Per-layer roofline floor (the floor that applies at batch 1, metrics/roofline.md): "
               f"{compute['roofline']['floor_ms']:.3f} ms; INT8 runs at {compute['int8_over_roofline']:.2f}x it." if "roofline" in compute else ""),
        ]
    gpu_rows = {n: r for n, r in bench.get("gpu_paths", {}).items() if isinstance(r, dict)}
    if gpu_rows:
        size = bench["settings"]["throughput_batch_size"]
        parts += ["", f"GPU column: {env['gpu']} (CUDA {env.get('cuda')}), CUDA events, ms per batch at batch 1 / {size}: "
                  + ", ".join(f"{n} {r['batch1_ms']:.3f} / {r[f'batch{size}_ms']:.3f}" for n, r in gpu_rows.items())
                  + f". FP32 cell: {bench['fp32']['gpu_path']}"
                  + ("; FP32 convolutions on TF32 tensor cores (PyTorch's default)" if env.get("fp32_convolutions_allow_tf32") else "") + "."]
    parts += [
        f"\nGPU latency, {model.upper()}: {bench[model]['gpu_latency_ms']}."
        for model in MODELS
        if isinstance(bench[model]["gpu_latency_ms"], str)
    ]
    for ood_set in [s for s in PAPER_SETS if s in sets]:  # the paper's baseline, as the paper reports it
        parts += table2_section(ood, "msp", ood_set, paper=ood_set == "tin_crop")
    packaged = package["detector"]
    if packaged != "msp":
        parts += table2_section(ood, packaged, headline_set, paper=False)
        parts += ["", f"{packaged.upper()} is the detector the deployable artifact carries: {package['selection']['rule']}."]
    parts += acceptance_section(package, sets)
    group_text = "; ".join(f"mean_{g}: {', '.join(members)}" for g, members in groups.items())
    parts += [
        "",
        "#### Table 2 extended: AUROC (%) of every detector, FP32 → INT8 (change) [change with the FP32 model's settings]",
        "",
        detector_table(ood, sets + [f"mean_{g}" for g in groups]),
        "",
        f"Groups: {group_text}. Each model uses its own outputs and its own classifier head (INT8: its dequantized "
        f"INT8 layer) and its own validation-chosen settings; a bracket shows the INT8 change when it reuses the FP32 "
        f"model's settings instead, where those differ (the pure quantization effect). Input-perturbation detectors "
        f"(ODIN) score a seeded sample of {ood['perturbation_images'] or 'all'} images per set; INT8 ODIN's input "
        f"gradient comes from its FP32 twin (INT8 kernels have none), so ODIN cannot travel in the artifact. MDS is "
        f"the Mahalanobis distance without input preprocessing; ASH prunes the pooled features as published, "
        f"ash_map the layer4 map. Sample counts per set in `metrics/ood.json`.",
    ]
    parts += no_gain_note(choices)
    parts += sampled_intervals(ood, sets)
    if "detector_cost_us" in bench:
        costs = ", ".join(f"{name} {us:.1f} µs" for name, us in bench["detector_cost_us"].items())
        parts += ["", f"Added cost per sample on top of the INT8 model (CPU, batch 1, median): {costs}."]
    settings = []
    for name, record in choices["int8"].items():
        numbers = ", ".join(f"{k} {v:.4g}" for k, v in record["hyperparameters"].items())
        reference = choices["fp32"][name]["hyperparameters"]
        if reference != record["hyperparameters"]:
            numbers += " (FP32: " + ", ".join(f"{k} {v:.4g}" for k, v in reference.items()) + ")"
        auroc = f"validation AUROC {100 * record['validation_auroc']:.2f}"
        by_group = record.get("validation_auroc_by_group")
        if by_group:
            auroc += " (" + ", ".join(f"{group} {100 * value:.2f}" for group, value in by_group.items()) + ")"
        settings.append(f"{name} {numbers}, {auroc}" if numbers else f"{name}: {auroc}")
    validation_sets = " and ".join(f"{group} `{name}`" for group, name in ood["id_split"]["validation_sets"].items())
    parts += [
        "",
        f"Detector settings, INT8 model (grids in params `ood.search`, chosen by the mean AUROC of ID validation images "
        f"vs the OOD validation sets {validation_sets}; the rest are the papers' defaults): {'; '.join(settings)}.",
    ]
    return "\n".join(parts) + "\n"


def sampled_intervals(ood: dict, sets: list[str]) -> list[str]:
    """Lines giving each sampled detector's (ODIN's) INT8 AUROC per set with its 95% bootstrap interval."""
    lines = []
    for name, per_set in ood["int8"].items():
        intervals = {s: per_set[s]["auroc_ci95"] for s in sets if "auroc_ci95" in per_set.get(s, {})}
        if intervals:
            cells = ", ".join(f"{s} {100 * per_set[s]['auroc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for s, (lo, hi) in intervals.items())
            lines += ["", f"{name} AUROC (%) of the INT8 model, scored on a sample of each set, with its 95% bootstrap interval: {cells}."]
    return lines


def predict_load_markdown(bench: dict) -> str:
    """`edgeml predict` on image files: throughput against the model alone, decoding cost, memory, and
    the soak of the command on many mixed files (README's Robustness section shows it)."""
    artifact, env, settings = bench["artifact"], bench["environment"], bench["settings"]
    workers = artifact["decode_workers"]
    header = ["files", "decoding, 1 thread (µs/file)", "decoding in the calling thread (images/s)",
              f"`edgeml predict`: {workers} decoding thread{'s' if workers > 1 else ''} (images/s)", "bound (images/s)",
              "share of the bound", "RSS growth (MB)"]
    rows = [
        [_file_kind(kind), f"{row['decode_us_per_file']:.0f}", f"{row['sequential']['images_per_s']:.0f}",
         f"{row['parallel']['images_per_s']:.0f}", f"{row['bound_images_per_s']:.0f}",
         f"{100 * row['parallel']['share_of_bound']:.0f}%", _fmt(row["parallel"]["rss_growth_mb"], 1)]
        for kind, row in artifact["throughput"].items()
    ]
    scaling = artifact.get("model_only_images_per_s_by_threads", {})
    schedules = [mode for mode in next(iter(artifact["throughput"].values())) if mode.startswith("model ")]
    lines = [
        f"#### `edgeml predict` on image files ({cpu_label(env['cpu'])}, {env['threads']} threads, "
        f"batch {settings['throughput_batch_size']})",
        "",
        table(header, rows),
        "",
        f"{settings['artifact_images']} CIFAR-10 test images, saved as files. The artifact's model alone, on the same "
        f"images decoded beforehand: " + ", ".join(f"{v:.0f} images/s at {n} thread{'s' if n != '1' else ''}" for n, v in scaling.items())
        + ". Bound: the most `edgeml predict` can reach while decoding and the model share the "
        f"{env['threads']} cores, from those measurements: each image costs the model's core time at its most "
        "efficient thread count plus its decoding time, spread over the cores (`edgeml.bench.artifact.predict_bound`). "
        "RSS growth: the peak while decoding ahead, over the RSS before.",
    ]
    if schedules:
        lines += ["", "Other schedules tried (images/s, share of the bound): " + "; ".join(
            f"{_file_kind(kind)}: " + ", ".join(f"{mode} {row[mode]['images_per_s']:.0f} ({100 * row[mode]['share_of_bound']:.0f}%)"
                                              for mode in schedules)
            for kind, row in artifact["throughput"].items()) + "."]
    soak = artifact.get("soak")
    if soak:
        header = ["decoding", "records", "error records", "exit code", "stderr", "images/s", "CPU µs/image", "peak RSS (MB)"]
        rows = [
            [_workers_label(run["workers"]), f"{run['records']:,}", f"{run['errors']:,}", str(run["exit_code"]),
             "not empty" if run["stderr"] else "empty", _fmt(run["images_per_s_steady"], 0),
             f"{run['cpu_us_per_image']:.0f}", f"{run['peak_rss_mb']:.0f}"]
            for run in (soak["sequential"], soak["parallel"])
        ]
        lines += [
            "",
            f"Soak: `edgeml predict` run as its own process on {soak['sequential']['files']:,} files ({soak['mix']}).",
            "",
            table(header, rows),
            "",
            "images/s: from the first output line to the last; peak RSS: the command's own, the kernel's high-water mark (VmHWM).",
        ]
    return "\n".join(lines) + "\n"


def ort_profile_markdown(bench: dict) -> str:
    """Where ONNX Runtime's batch-1 time goes for each ONNX file the bench timed (``bench["ort_profile"]``):
    kernel time per op type of the graph ORT runs, the time outside kernels, and the compute floor
    (README's benchmark section shows it)."""
    env, floor = bench["environment"], bench["compute"]["floor_ms"]
    profiles = dict(sorted(bench["ort_profile"].items(), key=lambda item: item[0] != "int8"))  # INT8 first
    labels = {name: "INT8" if name == "int8" else "FP32" for name in profiles}
    ops = sorted(  # by INT8 time, then FP32's
        {op for p in profiles.values() for op in p["kernel_ms"]}, key=lambda op: tuple(-p["kernel_ms"].get(op, 0) for p in profiles.values())
    )

    def cells(p: dict, ms: float | None, nodes: str = "") -> list[str]:
        return ["", nodes] if ms is None else [_share(ms, p["wall_ms"]), nodes]

    rows = [
        [f"`{op}`"] + [c for p in profiles.values() for c in cells(p, p["kernel_ms"].get(op), str(p["nodes"]["optimized"].get(op, "")))]
        for op in ops
    ]
    rows += [[label] + [c for p in profiles.values() for c in cells(p, p[key])] for label, key in (
        ("**kernels, total**", "kernels_ms"), ("between kernels (executor, per node)", "between_kernels_ms"),
        ("outside the executor (run set-up, inputs, outputs)", "outside_executor_ms"), ("**run, profiled**", "wall_ms"),
    )]
    rows.append(["run, not profiled (median)"] + [c for p in profiles.values() for c in [f"{p['unprofiled_ms']:.3f}", ""]])
    rows.append(["compute floor"] + [c for name in profiles for c in [f"{floor['int8' if name == 'int8' else 'fp32']:.3f}", ""]])
    header = [""] + [c for name in profiles for c in (f"{labels[name]} ms (share of run)", f"{labels[name]} nodes")]
    first = next(iter(profiles.values()))
    graphs = "; ".join(
        f"{labels[name]} file: {_counts(p['nodes']['file'])}; run as: {_counts(p['nodes']['optimized'])}"
        for name, p in profiles.items()
    )
    return "\n".join([
        f"#### Where ONNX Runtime's batch-1 time goes ({env['cpu']['model']}, {first['threads']} threads, ORT's profiler)",
        "",
        table(header, rows),
        "",
        f"Mean per run over the middle half (by wall time) of {first['runs']} profiled runs, so the parts add up to the run; "
        "the plain session's median, timed in turns with it, shows what profiling itself adds (it records every node, "
        "so the time between kernels is an upper bound). Nodes: the graph ORT runs after its optimizations "
        f"(QuantizeLinear/DequantizeLinear left unfused show here). {graphs}.",
    ]) + "\n"


def openvino_profile_markdown(bench: dict) -> str:
    """Where OpenVINO's batch-1 time goes for each OpenVINO IR file the bench timed (``bench["openvino_profile"]``):
    time per op type of the nodes the CPU plugin ran, with their kernel implementations, the time outside
    them, and the compute floor (README's benchmark section shows it)."""
    env, floor, profiles = bench["environment"], bench["compute"]["floor_ms"], bench.get("openvino_profile", {})
    title = "#### Where OpenVINO's batch-1 time goes"
    if not profiles:
        return f"{title}\n\nNot measured: no file the bench timed is OpenVINO IR (params `quantize.backend` is not openvino).\n"
    lines = [f"{title} ({env['cpu']['model']}, {next(iter(profiles.values()))['threads']} threads, the CPU plugin's performance counters)"]
    for name, p in profiles.items():
        label, wall = ("INT8" if name == "int8" else "FP32"), p["wall_ms"]
        rows = [
            [f"`{op}`", _share(ms, wall), str(p["nodes"]["optimized"][op]), ", ".join(f"{kind} ×{n}" for kind, n in p["kernels"][op].items())]
            for op, ms in p["kernel_ms"].items()
        ]
        rows += [[part, _share(p[key], wall), "", ""] for part, key in (
            ("**nodes, total**", "kernels_ms"), ("outside the nodes (scheduling, inputs, outputs, the call)", "outside_kernels_ms"),
            ("**run, profiled**", "wall_ms"),
        )]
        rows += [["run, not profiled (median)", f"{p['unprofiled_ms']:.3f}", "", ""],
                 ["compute floor", f"{floor['int8' if name == 'int8' else 'fp32']:.3f}", "", ""]]
        lines += [
            "", table(["", f"{label} ms (share of run)", "nodes run", "kernel implementations"], rows), "",
            f"{label}: mean per run over the middle half (by wall time) of {p['runs']} profiled runs, so the parts add up to "
            "the run; the plain model's median, timed in turns with it, shows what the counters add. "
            f"File: {_counts(p['nodes']['file'])}; run as: {_counts(p['nodes']['optimized'])} (the plugin folds "
            "FakeQuantize, scales, ReLU and residual Adds into the INT8 kernels). The counters keep whole "
            "microseconds per node; what that rounding drops or adds shows in the time outside the nodes.",
        ]
    return "\n".join(lines) + "\n"


def roofline_markdown(bench: dict) -> str:
    """The INT8 model's per-layer roofline floor beside the GEMM floor, per layer shape and summed, with what it is
    made of and the runtime's own per-layer times against it (``bench["compute"]["roofline"]``), and how far the
    packaged model, as `edgeml predict` calls it, is from the same file called bare."""
    compute, env = bench["compute"], bench["environment"]
    title = "#### The INT8 model against its per-layer roofline"
    if "roofline" not in compute:
        return f"{title}\n\nNot measured: this bench.json predates the per-layer roofline; run `dvc repro bench`.\n"
    roof, called = compute["roofline"], compute["artifact_model"]
    measured = roof["measured_layers_us"] is not None or any(row.get("measured_us") for row in roof["layers"])
    header = ["layer (batch 1)", "count", "M MACs", "INT8 weights KB", "GEMM floor µs", f"own GEMM µs: best of {roof['layers'][0]['gemm_rounds']} rounds (library; slowest round)", "weight reads µs",
              "roofline µs", "bound by"] + ([f"{roof['runtime']} µs", "× roofline"] if measured else [])
    rows = [
        [row["layer"], str(row["count"]), f"{row['macs'] / 1e6:.1f}", f"{row['weight_bytes'] / 1e3:.0f}", f"{row['gemm_floor_us']:.1f}",
         f"{row['compute_us']:.1f} ({row['gemm_library']}; {row['compute_slowest_round_us']:.1f})", f"{row['weight_read_us']:.1f}", f"**{row['roofline_us']:.1f}**", row["bound"]]
        + ([_rounded_text(row.get("measured_us"), 0), _rounded_text(row.get("measured_over_roofline"), 2, "x")] if measured else [])
        for row in roof["layers"]
    ]
    total_measured = roof["measured_layers_us"]
    rows.append(["**all layers**", "", f"{sum(r['macs'] for r in roof['layers']) / 1e6:.1f}", f"{roof['weight_bytes'] / 1e3:.0f}",
                 f"{1e3 * roof['gemm_floor_ms']:.1f}", "", "", f"**{roof['layers_roofline_us']:.1f}**", ""]
                + ([_rounded_text(total_measured, 0), _rounded_text(total_measured and total_measured / roof["layers_roofline_us"], 2, "x")] if measured else []))
    bandwidth = ", ".join(f"{n} thread{'s' if n != '1' else ''} {gbs:.1f} GB/s" for n, gbs in roof["read_bandwidth_gbs"].items())
    calls = ", ".join(f"{runtime} {us:.1f} µs" for runtime, us in roof["call_us_by_runtime"].items())
    bare = called["bare_ms"]

    def processes(stats: dict[str, Any]) -> str:  # the median process's, and the range of every process's median
        medians = stats.get("process_medians", [])
        return f" (the median of {len(medians)} processes: {min(medians):.3f}-{max(medians):.3f})" if len(medians) > 1 else ""

    artifact_line = (
        f"The packaged model as `edgeml predict` calls it (`EdgeModel.predict_images`, uint8 NHWC, batch 1): median "
        f"{called['as_called_ms']['median']:.3f} ms{processes(called['as_called_ms'])} ({called['as_called_over_roofline']:.2f}x "
        f"the floor; {called['as_called_speedup_vs_fastest_fp32']:.2f}x faster than the fastest FP32 path, median over median)"
        + (f"; the same IR called bare (static, zero-copy, no outputs read): {bare['median']:.3f} ms{processes(bare)}, so the "
           f"artifact's calls cost {100 * (called['as_called_over_bare'] - 1):+.1f}%." if isinstance(bare, dict) else f"; {bare}.")
    )
    settings = called.get("bare_settings_ms", {})
    if len(settings) > 1:
        artifact_line += (" OpenVINO settings tried on the bare call (median ms, each in its own process): "
                          + ", ".join(f"{name} {stats['median']:.3f}" for name, stats in settings.items())
                          + "; the artifact runs with the defaults (the bench's threads, OpenVINO's pinning).")
    return "\n".join([
        f"{title} ({env['cpu']['model']}, {bench['settings']['threads']} threads)",
        "",
        table(header, rows),
        "",
        f"Floor of the whole model: the layers' roofline, {roof['layers_roofline_us']:.1f} µs, plus one call of "
        f"{roof['runtime']} ({roof['call_us']:.1f} µs) = **{roof['floor_ms']:.3f} ms**; the GEMM floor (all MACs at one large "
        f"GEMM's peak) is {roof['gemm_floor_ms']:.3f} ms. The INT8 file (median, its own process) runs at "
        f"**{compute['int8_over_roofline']:.2f}x** the roofline floor. Measured here, this run: each layer shape's INT8 GEMM "
        f"(the fastest of {' and '.join(roof['gemm_libraries'].values())}, each less its own time at "
        f"{'x'.join(map(str, roof['gemm_call_shape']))}, its cost of a call; never below the GEMM floor; each library in a "
        f"process of its own, the two taking turns, round after round: the floor takes each shape's best round, and the "
        f"slowest round shows how much that GEMM's time moved while it was timed); read bandwidth of a {roof['weight_bytes'] / 1e6:.1f} MB buffer: {bandwidth}; the cost of one call "
        f"(a one-ReLU model, in its own process): {calls}. Per-layer times: {roof['layer_times']} (median per node, "
        "whole microseconds).",
        "",
        artifact_line,
    ]) + "\n"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _rounded_text(value: float | None, digits: int, unit: str = "") -> str:
    return "" if value is None else f"{value:.{digits}f}{unit}"


def _share(ms: float, wall_ms: float) -> str:
    """``1.425 (90.7%)``: milliseconds and their share of the run."""
    return f"{ms:.3f} ({100 * ms / wall_ms:.1f}%)"


def _counts(nodes: dict[str, int]) -> str:
    """Node counts per op type as a phrase: "20 Conv, 8 Add"."""
    return ", ".join(f"{count} {op}" for op, count in nodes.items())


def _workers_label(workers: int) -> str:
    """How the soak decoded, as the command's option reads."""
    return "in the calling thread (`--workers 0`)" if workers == 0 else f"{workers} thread{'s' if workers > 1 else ''} (`--workers {workers}`)"


def _file_kind(kind: str) -> str:
    """``png_32`` -> ``32x32 PNG``."""
    fmt, size = kind.split("_")
    return f"{size}x{size} {fmt.upper()}"


def headline(
    bench: dict, evaluate: dict, ood: dict, choices: dict, package: dict, groups: dict[str, list[str]], headline_set: str
) -> tuple[dict, dict]:
    """The few numbers a reviewer reads (``dvc metrics show/diff``), flat and numeric: quality and size,
    then the noisy timings apart. Percentages in points; the full detail stays in the other JSON files.
    Test numbers only: every detector here was chosen on validation data."""
    pct = lambda x: round(100 * x, 4)  # noqa: E731
    packaged = package["detector"]
    quality = {
        "top1_fp32": pct(evaluate["fp32_top1"]),
        "top1_int8": pct(evaluate["int8_top1"]),
        "top1_drop": pct(evaluate["fp32_top1"] - evaluate["int8_top1"]),
        "size_mb_int8": round(bench["int8"]["size_mb"], 3),
        "size_ratio": round(bench["fp32"]["size_mb"] / bench["int8"]["size_mb"], 3),
    }
    for detector, prefix in (("msp", "msp"), (packaged, "packaged")):  # the paper's baseline, then what ships
        for key, metric in (("auroc", "auroc"), ("det_err", "detection_error"))[: 2 if prefix == "msp" else 1]:
            for model in MODELS:
                quality[f"{prefix}_{key}_{headline_set}_{model}"] = pct(ood[model][detector][headline_set][metric])
        for group in groups:
            for model in MODELS:
                quality[f"{prefix}_auroc_{group}_{model}"] = pct(ood[model][detector][f"mean_{group}"]["auroc"])
    chosen = validation_chosen(choices)
    quality[f"val_chosen_auroc_{headline_set}_int8"] = pct(ood["int8"][chosen][headline_set]["auroc"])
    sets = [s for s in ood["fp32"]["msp"] if not s.startswith("mean_")]
    for model, key in (("int8", "worst_auroc_drop"), (PURE, "worst_auroc_drop_fp32_settings")):
        quality[key] = max(pct(ood["fp32"][d][s]["auroc"] - ood[model][d][s]["auroc"]) for d in ood["fp32"] for s in sets)
    quality["packaged_id_accept"] = pct(package["test_tpr"])
    quality[f"packaged_ood_accept_{headline_set}"] = pct(package["test_fpr"][headline_set])
    quality["packaged_ood_accept_mean"] = pct(float(np.mean(list(package["test_fpr"].values()))))
    timing = {
        "cpu_ms_fp32": round(bench["fp32"]["cpu_latency_ms"], 4),
        "cpu_ms_int8": round(bench["int8"]["cpu_latency_ms"], 4),
        "cpu_speedup_batch1": round(bench["fp32"]["cpu_latency_ms"] / bench["int8"]["cpu_latency_ms"], 3),
        "cpu_images_per_s_fp32": round(bench["fp32"]["cpu_throughput_images_per_s"], 1),
        "cpu_images_per_s_int8": round(bench["int8"]["cpu_throughput_images_per_s"], 1),
        "cpu_speedup_batch64": round(
            bench["int8"]["cpu_throughput_images_per_s"] / bench["fp32"]["cpu_throughput_images_per_s"], 3
        ),
        **({"int8_over_roofline": round(bench["compute"]["int8_over_roofline"], 3),
            "artifact_model_over_bare": _rounded(bench["compute"]["artifact_model"]["as_called_over_bare"], 3),
            "artifact_model_over_roofline": round(bench["compute"]["artifact_model"]["as_called_over_roofline"], 3),
            "artifact_model_speedup_vs_fastest_fp32": round(bench["compute"]["artifact_model"]["as_called_speedup_vs_fastest_fp32"], 3)}
           if "roofline" in bench["compute"] else {}),
        "gpu_ms_fp32": bench["fp32"]["gpu_latency_ms"] if isinstance(bench["fp32"]["gpu_latency_ms"], float) else None,
        "artifact_ms_per_image": round(bench["artifact"]["artifact_latency_ms"], 4),
    }
    if "soak" in bench["artifact"]:  # `edgeml predict` on many files, as its own process
        parallel = bench["artifact"]["soak"]["parallel"]
        steady = parallel["images_per_s_steady"]
        timing["predict_images_per_s"] = None if steady is None else round(steady, 1)
        timing["predict_peak_rss_mb"] = round(parallel["peak_rss_mb"], 1)
    return quality, timing


def detector_table(ood: dict, columns: list[str], key: str = "auroc") -> str:
    """Every detector x OOD set (or group mean): FP32 -> INT8 with its own validation choices (change),
    and in brackets the change with the FP32 model's choices where those differ (pure quantization effect)."""
    rows = []
    for detector in ood["fp32"]:
        cells = [detector]
        for column in columns:
            fp32, int8, pure = (100 * ood[m][detector][column][key] for m in (*MODELS, PURE))
            cell = f"{fp32:.2f} → {int8:.2f} ({int8 - fp32:+.2f})"
            cells.append(cell + (f" [{pure - fp32:+.2f}]" if pure != int8 else ""))
        rows.append(cells)
    return table(["detector", *columns], rows)
