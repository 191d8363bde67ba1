"""The quantization sweep's decision: one selection rule on validation numbers and on the timings of
every recipe timed in one run, each in its own process, (:func:`edgeml.bench.cpu.time_recipes`), rendered as
metrics/quant_sweep.{md,json}.

Recipes timed in separate stages minutes apart let machine drift decide between recipes that build
the same graph; timed together, taking turns, the spread of each recipe's speed-up across rounds sets
how close two speed-ups must be to count as a tie.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from edgeml.errors import EdgeMLError
from edgeml.reporting.markdown import cpu_label, table

# A recipe's goals, each against its FP32 twin: size and speed measured in the same run (speed-up over the
# fastest FP32 path, batch 1), quality on validation data (top-1 on the held-out training split, AUROC
# of ID validation vs the near and far OOD validation sets, their mean, for every logit detector).
SWEEP_GOALS = {"size_ratio": 3.9, "top1_drop_points": 0.3, "auroc_drop_points": 0.5, "speedup": 3.0}
QUALITY_GOALS = ("size_ratio", "top1_drop_points", "auroc_drop_points")
MIN_TIE_BAND = 0.05  # speed-ups within 5% are ties even when the rounds agree more closely than that
MAX_TIE_BAND = 0.15  # however noisy the rounds, a recipe 15% slower than the best never ties with it
# A convolution as each runtime names it: ONNX Runtime (Conv, QLinearConv, FusedConv, ConvInteger), OpenVINO
# (Convolution, GroupConvolution), XNNPACK (Convolution), TorchScript (quantized::conv2d, quantized::conv2d_relu).
CONVOLUTION = re.compile(r"(?i)(?:\w+::)?(?:qlinear|fused|group)?conv(?:olution|integer|2d)?(?:_relu)?")


def judged_quality(int8: dict, fp32: dict, size_mb: dict) -> dict[str, Any]:
    """An INT8 file's size and validation quality (``int8``: :func:`edgeml.ood.protocol.validation_quality`)
    against the FP32 model's (``fp32``: the sweep_reference stage's) and its file size (``size_mb``: fp32,
    int8): the numbers a recipe is judged on besides speed, by the sweep and for the quantize stage's recipe."""
    drops = {name: 100 * (fp32["auroc"][name] - auroc) for name, auroc in int8["auroc"].items()}
    worst = max(drops, key=drops.get)
    return {
        "size_mb": size_mb["int8"],
        "size_ratio": size_mb["fp32"] / size_mb["int8"],
        "val_top1": {"fp32": 100 * fp32["top1"], "int8": 100 * int8["top1"]},
        "top1_drop_points": 100 * (fp32["top1"] - int8["top1"]),
        "val_auroc": {name: {"fp32": 100 * fp32["auroc"][name], "int8": 100 * a} for name, a in int8["auroc"].items()},
        "max_auroc_drop_points": drops[worst],
        "worst_detector": worst,
    }


def sweep_row(result: dict, timing: dict, reference: dict, floor_ms: float, packaged: bool) -> dict[str, Any]:
    """One recipe's row: size and validation quality from its sweep stage (``result``) against the FP32
    ``reference``, speed from the shared timing run (``timing``: :func:`edgeml.bench.cpu.time_recipes`);
    ``packaged``: whether the package stage can build the artifact from the recipe's file."""
    fastest = timing["fastest_fp32_path"]
    own = timing["recipes"][result["name"]]
    row = {
        "backend": result["recipe"]["backend"],
        "recipe": result["recipe"],
        **judged_quality(result["validation"], reference, result["size_mb"]),
        "latency_ms": own["latency_ms"],
        "fastest_fp32_path": fastest,
        "fastest_fp32_latency_ms": timing["fp32"][fastest]["latency_ms"],
        "speedup": own["speedup"],
        "speedup_spread": own["speedup_spread"],
        "latency_over_floor": own["latency_ms"] / floor_ms,
        "throughput_images_per_s": own["throughput_images_per_s"],
        "quantize_seconds": result["quantize_seconds"],
        "packaged": packaged,
    }
    row["meets"] = {
        "size_ratio": row["size_ratio"] >= SWEEP_GOALS["size_ratio"],
        "top1_drop_points": row["top1_drop_points"] <= SWEEP_GOALS["top1_drop_points"],
        "auroc_drop_points": row["max_auroc_drop_points"] <= SWEEP_GOALS["auroc_drop_points"],
        "speedup": row["speedup"] >= SWEEP_GOALS["speedup"],
    }
    return row


def tie_band(rows: dict[str, dict]) -> float:
    """How far below the best speed-up a recipe still ties: the largest spread measured among ``rows``
    across timing rounds, within [MIN_TIE_BAND, MAX_TIE_BAND]."""
    return min(MAX_TIE_BAND, max([MIN_TIE_BAND, *(row["speedup_spread"] for row in rows.values())]))


class SweepError(EdgeMLError, ValueError):
    """The sweep's recipes cannot produce a decision (e.g. none can be packaged)."""


class Choice(NamedTuple):
    """What :func:`best_recipe` chose, by which rule, and the tie band that rule used (None when no
    recipe met the quality goals and speed did not count)."""

    name: str
    rule: str
    tie_band: float | None


def best_recipe(rows: dict[str, dict], packaged_only: bool = True) -> Choice:
    """The selection rule, on validation numbers and timings only: among recipes meeting the size, top-1 and
    AUROC goals, speed-ups within :func:`tie_band` of the best are ties, broken by the smallest AUROC loss
    (then the name, so equal losses cannot flip); if no recipe meets them, the smallest AUROC loss.
    ``packaged_only``: only recipes the artifact can be built from compete, since params ``quantize`` (the
    best) is what the package stage ships."""
    if packaged_only:
        rows = {n: row for n, row in rows.items() if row["packaged"]}
        if not rows:
            raise SweepError(
                "sweep.recipes: no recipe writes a file the package stage can build the artifact from (the formats "
                "in edgeml.runtime.artifact.PACKAGED_SUFFIXES); add one, e.g. onnxruntime_percentile"
            )
    by_loss = lambda n: (rows[n]["max_auroc_drop_points"], n)  # noqa: E731
    quality = {n: row for n, row in rows.items() if all(row["meets"][k] for k in QUALITY_GOALS)}
    if not quality:
        return Choice(min(rows, key=by_loss), "no recipe meets the quality goals: smallest AUROC loss", None)
    band = tie_band(quality)
    top = max(row["speedup"] for row in quality.values())
    tied = [n for n, row in quality.items() if row["speedup"] >= (1 - band) * top]
    return Choice(min(tied, key=by_loss), (
        f"meets the size, top-1 and AUROC goals; among those within {band:.1%} of the best speed-up (the largest "
        f"round-to-round spread measured, within {MIN_TIE_BAND:.0%}-{MAX_TIE_BAND:.0%}), the smallest AUROC loss"
    ), band)


def sweep_summary(results: dict[str, dict], timing: dict, reference: dict, packaged: set[str],
                  arm_notes: dict[str, str]) -> dict[str, Any]:
    """Every recipe's row and the best recipe, chosen by :func:`best_recipe` (no test data involved), among
    the recipes named in ``packaged`` (those whose file the package stage can build an artifact from); and
    the best of all recipes measured, packaged or not, so that a faster runtime the artifact cannot carry yet
    stays in sight. ``arm_notes``: backend -> why its speed on this x86 machine is not ARM's (``Quantizer.arm_note``)."""
    floor_ms = timing["floor_ms"]["int8"]
    rows = {name: sweep_row({**result, "name": name}, timing, reference, floor_ms, name in packaged)
            for name, result in results.items()}
    choice = best_recipe(rows)
    return {"goals": SWEEP_GOALS, "best": choice.name, "best_rule": choice.rule,
            "best_measured": best_recipe(rows, packaged_only=False).name, "tie_band": choice.tie_band,
            "recipes": rows, "arm_notes": arm_notes, "compute": {k: timing[k] for k in ("macs_per_sample", "gemm_peak_gmacs")},
            "timing_rounds": timing["rounds"], "environment": timing["environment"]}


def params_recipe(quantize: dict[str, Any], summary: dict) -> str | None:
    """The sweep recipe that params ``quantize`` (every field, as a mapping) is, or None when it is none of them."""
    return next((name for name, row in summary["recipes"].items() if row["recipe"] == quantize), None)


def disagreement(quantize: dict[str, Any], summary: dict) -> str | None:
    """A loud one-line warning when the recipe the quantize stage ran (``quantize``: metrics/quantize.json's
    recipe, ``auto`` values resolved as the sweep's records are) is not the sweep's best; None when it is."""
    chosen = params_recipe(quantize, summary)
    if chosen == summary["best"]:
        return None
    what = f"sweep recipe {chosen!r}" if chosen else "no sweep recipe"
    return (
        f"WARNING: params.yaml `quantize` is {what}, but the sweep's best is {summary['best']!r} "
        f"(metrics/quant_sweep.md); set `quantize` to that recipe, or say why not"
    )


def render_sweep(summary: dict[str, Any]) -> str:
    goals, rows, arm_notes = summary["goals"], summary["recipes"], summary["arm_notes"]
    mark = lambda ok: "" if ok else " ✗"  # noqa: E731
    header = ["recipe", "backend", "size MB (x smaller)", "INT8 batch-1 ms", "fastest FP32 ms (path)",
              "speed-up (spread)", "x compute floor", "INT8 images/s", "val top-1 FP32 → INT8",
              "worst val AUROC loss (detector)"]
    recipe_rows = []
    for name, r in rows.items():
        m = r["meets"]
        recipe_rows.append([
            (f"**{name}**" if name == summary["best"] else name) + ("" if r["packaged"] else " ‡"),
            f"{r['backend']} †" if r["backend"] in arm_notes else r["backend"],
            f"{r['size_mb']:.2f} ({r['size_ratio']:.2f}x{mark(m['size_ratio'])})",
            f"{r['latency_ms']:.3f}",
            f"{r['fastest_fp32_latency_ms']:.3f} ({r['fastest_fp32_path'].removeprefix('fp32_')})",
            f"{r['speedup']:.2f}x{mark(m['speedup'])} (±{r['speedup_spread'] / 2:.0%})",
            f"{r['latency_over_floor']:.1f}",
            f"{r['throughput_images_per_s']:.0f}",
            (f"{r['val_top1']['fp32']:.2f} → {r['val_top1']['int8']:.2f} "
             f"({-r['top1_drop_points']:+.2f}{mark(m['top1_drop_points'])})"),
            f"{r['max_auroc_drop_points']:.2f} ({r['worst_detector']}){mark(m['auroc_drop_points'])}",
        ])
    detectors = list(next(iter(rows.values()))["val_auroc"])
    auroc = [[name, *(f"{a['int8']:.2f} ({a['int8'] - a['fp32']:+.2f})" for a in map(r["val_auroc"].get, detectors))]
             for name, r in rows.items()]
    unpackaged = ""
    if any(not r["packaged"] for r in rows.values()):
        unpackaged = "‡ The package stage cannot build the artifact from this recipe's file format. "
        if summary["best_measured"] != summary["best"]:
            unpackaged += f"By the same rule over every recipe, ‡ included, the best is {summary['best_measured']}. "
    lines = [
        "#### Quantization recipes (chosen on validation data; committed FP32 model)",
        "",
        table(header, recipe_rows),
        "",
        *(f"† {note}.\n" for note in arm_notes.values()),
        f"Goals (✗ = missed): ≥{goals['size_ratio']}x smaller, ≤{goals['top1_drop_points']} validation top-1 points and "
        f"≤{goals['auroc_drop_points']} validation AUROC points lost for every logit detector, "
        f"≥{goals['speedup']}x faster at batch 1 than the fastest FP32 path. Every recipe and FP32 path was timed in "
        f"its own process, taking turns over {summary['timing_rounds']} rounds; spread: ± half the interquartile "
        f"range of a recipe's per-round speed-ups. Best: **{summary['best']}** ({summary['best_rule']}; among the "
        f"recipes the artifact can be built from). {unpackaged}Every quality number here is on "
        f"validation data (top-1: the held-out training split; AUROC: its first images vs the near and far OOD validation sets, their mean); "
        f"test data is reported only by the main stages, for the recipe in params `quantize`.",
        "",
        "#### Validation AUROC (%) per detector, INT8 (change from FP32)",
        "",
        table(["recipe", *detectors], auroc),
    ]
    env, compute = summary["environment"], summary["compute"]
    peaks = compute["gemm_peak_gmacs"]
    lines += [
        "",
        f"CPU: {cpu_label(env['cpu'])}, {env['threads']} threads. Compute floor = "
        f"{compute['macs_per_sample'] / 1e6:.1f} M MACs per image / GEMM peak (FP32 {peaks['fp32']['best']:.0f}, "
        f"INT8 {peaks['int8']['best']:.0f} GMAC/s measured here). Size is the deployable file on disk (TorchScript "
        f".pt, torch.export .pt2, ONNX, OpenVINO IR or ExecuTorch .pte); FP32 size is the TorchScript file.",
    ]
    return "\n".join(lines) + "\n"


def per_layer_table(profiles: dict[str, Any]) -> list[str]:
    """Markdown lines: each layer shape's roofline floor and the per-layer times of every backend whose runtime
    reports them (:func:`edgeml.bench.roofline.measured_layers`); none when no backend does."""
    measured = {backend: p["roofline"] for backend, p in profiles.items()
                if "roofline" in p and any(row.get("measured_us") for row in p["roofline"]["layers"])}
    if not measured:
        return []
    first = next(iter(measured.values()))
    header = ["layer (batch 1)", "count", "roofline µs", "bound by"] + [f"{backend} µs (x roofline)" for backend in measured]
    rows = []
    for i, row in enumerate(first["layers"]):
        cells = []
        for roof in measured.values():
            own = roof["layers"][i]
            cells.append(f"{own['measured_us']:.0f} ({own['measured_over_roofline']:.1f}x)" if own.get("measured_us") else "")
        rows.append([row["layer"], str(row["count"]), f"{row['roofline_us']:.1f}", row["bound"], *cells])
    rows.append(["**all layers**", "", f"{first['layers_roofline_us']:.1f}", "",
                 *(f"{roof['measured_layers_us']:.0f} ({roof['measured_layers_us'] / roof['layers_roofline_us']:.1f}x)"
                   if roof["measured_layers_us"] else "" for roof in measured.values())])
    sources = "; ".join(f"{backend}: {roof['layer_times']}" for backend, roof in measured.items())
    return [table(header, rows), "",
            f"Per layer shape: the roofline floor (the larger of the layer's own INT8 GEMM time and its weight reads, "
            f"measured here; docs/performance.md) and each backend's per-layer time ({sources}).", ""]


def render_backend_profiles(timing: dict[str, Any], arm_notes: dict[str, str]) -> str:
    """Where each backend's batch-1 time goes (``timing["profiles"]``, from
    :func:`edgeml.bench.suite.profile_backends`): its fastest recipe's time against the INT8 compute floor, and
    the profiled run's shares: convolution kernels, other kernels, the time outside them; with the convolutions' kernels."""
    floor, env = timing["floor_ms"]["int8"], timing["environment"]
    header = ["backend (fastest recipe)", "batch-1 ms (x GEMM floor)", "x roofline floor", "profiled run ms (not profiled)",
              "convolutions", "other kernels", "outside the kernels", "convolution kernels"]
    rows = []
    for backend, p in timing["profiles"].items():
        latency = timing["recipes"][p["recipe"]]["latency_ms"]
        row = [f"{backend}{' †' if backend in arm_notes else ''} ({p['recipe']})", f"{latency:.3f} ({latency / floor:.1f}x)",
               f"{latency / p['roofline']['floor_ms']:.2f}x" if "roofline" in p else ""]
        if not p["profiler"]:
            rows.append(row + [f"not profiled: no profiler for its {p['file'].rsplit('.', 1)[-1]} file here", "", "", "", ""])
            continue
        convolutions = {op: ms for op, ms in p["kernel_ms"].items() if CONVOLUTION.fullmatch(op)}
        conv_ms = sum(convolutions.values())
        implementations = [
            f"{kind} ×{n}" for op in convolutions for kind, n in p.get("kernels", {}).get(op, {op: p["nodes"]["optimized"].get(op, 0)}).items()
        ]
        share = lambda ms: f"{100 * ms / p['wall_ms']:.0f}%"  # noqa: E731
        rows.append(row + [f"{p['wall_ms']:.3f} ({p['unprofiled_ms']:.3f})", share(conv_ms), share(p["kernels_ms"] - conv_ms),
                           share(p["outside_kernels_ms"]), ", ".join(implementations)])
    return "\n".join([
        f"#### Where each backend's batch-1 time goes ({env['cpu']['model']}, {env['threads']} threads)",
        "",
        table(header, rows),
        "",
        *per_layer_table(timing["profiles"]),
        *(f"† {note}.\n" for backend, note in arm_notes.items() if backend in timing["profiles"]),
        f"Each backend's fastest recipe in the sweep's timing run: its batch-1 latency there, and its multiple of the INT8 "
        f"compute floor ({floor:.3f} ms). Then, after the timing, its own profiler: ONNX Runtime's profiler, OpenVINO's "
        "performance counters, ExecuTorch's ETDump (XNNPACK's operators), torch.profiler for TorchScript. Shares are of "
        "the profiled run (mean over the middle half of the profiled runs); the same model's median without the "
        "profiler, timed in turns with it, shows what profiling adds. Outside the kernels: the runtime between them "
        "(executor, delegate calls, TorchScript's interpreter) and the call itself (inputs, outputs, Python).",
    ]) + "\n"
