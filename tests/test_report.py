"""Tables, headline metrics and the sweep's selection rule, on hand-made metrics whose answers are known."""

import pytest

from edgeml import report


def row(speedup: float, auroc_drop: float, size_ratio: float = 4.0, top1_drop: float = 0.1) -> dict:
    meets = {
        "size_ratio": size_ratio >= 3.9, "top1_drop_points": top1_drop <= 0.3,
        "auroc_drop_points": auroc_drop <= 0.5, "speedup": speedup >= 3.0,
    }
    return {"speedup": speedup, "max_auroc_drop_points": auroc_drop, "meets": meets}


def test_fastest_recipe_meeting_the_quality_goals_wins():
    rows = {"slow": row(2.0, 0.1), "fast": row(3.4, 0.3), "fast_but_lossy": row(4.0, 0.9)}
    assert report.best_recipe(rows)[0] == "fast"  # the lossy one misses the AUROC goal


def test_speed_ties_within_the_noise_go_to_the_smaller_auroc_loss():
    rows = {"a": row(3.40, 0.40), "b": row(3.30, 0.05), "c": row(3.00, 0.00)}
    # b is within 5% of a (3.23 <= 3.30), c is not (3.00 < 3.23)
    assert report.best_recipe(rows)[0] == "b"


def test_without_a_recipe_meeting_the_quality_goals_the_smallest_auroc_loss_wins():
    rows = {"a": row(3.4, 0.9, size_ratio=3.0), "b": row(1.0, 0.6)}
    best, rule = report.best_recipe(rows)
    assert best == "b" and "no recipe meets" in rule


def test_sweep_row_compares_validation_quality_with_the_fp32_reference():
    result = {
        "recipe": {"backend": "fbgemm"}, "size_mb": {"fp32": 44.0, "int8": 11.0},
        "cpu": {"fp32_onnxruntime": {"latency_ms": 6.0, "throughput_images_per_s": 100.0},
                "int8": {"latency_ms": 2.0, "throughput_images_per_s": 400.0}},
        "fastest_fp32_path": "fp32_onnxruntime", "int8_speedup_vs_fastest_fp32": 3.0,
        "latency_over_floor": {"int8": 1.5}, "quantize_seconds": 1.0,
        "validation": {"top1": 0.905, "auroc": {"msp": 0.85, "energy": 0.88}},
    }
    reference = {"top1": 0.91, "auroc": {"msp": 0.86, "energy": 0.881}}
    r = report.sweep_row(result, reference)
    assert r["size_ratio"] == 4.0 and r["top1_drop_points"] == pytest.approx(0.5)
    assert r["max_auroc_drop_points"] == pytest.approx(1.0) and r["worst_detector"] == "msp"
    assert r["meets"] == {"size_ratio": True, "top1_drop_points": False, "auroc_drop_points": False, "speedup": True}


def metrics(auroc_fp32: float, auroc_int8: float, auroc_pure: float) -> dict:
    def entry(auroc: float) -> dict:
        return {"auroc": auroc, "detection_error": 1 - auroc, "fpr_at_95_tpr": 0.5, "aupr_in_ap": 0.9,
                "aupr_out_ap": 0.8, "aupr_in_trapz": 0.89, "aupr_out_trapz": 0.79,
                "openood_fpr95_ood_positive": 0.4, "id_samples": 9000, "ood_samples": 10000}

    def per_model(auroc: float) -> dict:
        return {d: {s: entry(auroc) for s in ("tin_crop", "mnist", "mean_near", "mean_far")} for d in ("msp", "energy")}

    return {"fp32": per_model(auroc_fp32), "int8": per_model(auroc_int8), "int8_fp32_settings": per_model(auroc_pure),
            "id_split": {"name": "openood", "validation_set": "tin_val"}, "perturbation_images": 1000}


def test_table2_rows_are_the_metrics_in_percent():
    ood = metrics(0.90, 0.895, 0.893)
    rows = report.table2(ood, "msp", "tin_crop")
    assert rows["AUROC (%)"] == pytest.approx((90.0, 89.5))
    assert rows["Detection error (%)"] == pytest.approx((10.0, 10.5))
    assert rows["AUPR-In (%)"] == pytest.approx((90.0, 90.0))  # ODIN's definition
    assert rows["AUPR-In, OpenOOD trapezoid (%)"] == pytest.approx((89.0, 89.0))


def test_extended_table_shows_both_int8_views():
    text = report.detector_table(metrics(0.90, 0.895, 0.893), ["tin_crop"])
    assert "| msp | 90.00 → 89.50 (-0.50) [-0.70] |" in text


def test_headline_metrics_are_few_flat_and_numeric():
    ood = metrics(0.90, 0.895, 0.893)
    bench = {
        "fp32": {"size_mb": 44.8, "cpu_latency_ms": 6.0, "cpu_throughput_images_per_s": 150.0, "gpu_latency_ms": "not measured: no GPU"},
        "int8": {"size_mb": 11.2, "cpu_latency_ms": 2.0, "cpu_throughput_images_per_s": 600.0},
        "compute": {"latency_over_floor": {"int8": 1.8}},
        "artifact": {"artifact_latency_ms": 2.5, "soak": {"parallel": {"images_per_s_steady": 612.34, "peak_rss_mb": 130.06}}},
    }
    evaluate = {"fp32_top1": 0.91, "int8_top1": 0.9085}
    package = {"detector": "energy", "test_tpr": 0.95, "test_fpr": {"tin_crop": 0.4, "mnist": 0.2}}
    quality, timing = report.headline(bench, evaluate, ood, package, {"near": ["tin_crop"], "far": ["mnist"]})
    assert len(quality) + len(timing) <= 40
    assert quality["top1_drop"] == pytest.approx(0.15) and quality["size_ratio"] == 4.0
    assert quality["msp_auroc_tin_crop_int8"] == pytest.approx(89.5)
    assert quality["worst_auroc_drop"] == pytest.approx(0.5) and quality["worst_auroc_drop_fp32_settings"] == pytest.approx(0.7)
    assert quality["packaged_ood_accept_mean"] == pytest.approx(30.0)
    assert timing["cpu_speedup_batch1"] == 3.0 and timing["cpu_speedup_batch64"] == 4.0 and timing["gpu_ms_fp32"] is None
    assert (timing["predict_images_per_s"], timing["predict_peak_rss_mb"]) == (612.3, 130.1)  # the soak, decoding in parallel


def load_bench(soak: bool) -> dict:
    def mode(images_per_s: float, workers: int) -> dict:
        return {"files": 20000, "records": 20000, "errors": 1030, "exit_code": 1, "workers": workers, "stderr": "",
                "images_per_s_steady": images_per_s, "cpu_us_per_image": 3001.0, "peak_rss_mb": 131.2}

    def kind(decode_us: float, sequential: float, parallel: float) -> dict:
        return {"decode_us_per_file": decode_us, "sequential": {"images_per_s": sequential},
                "parallel": {"images_per_s": parallel, "share_of_model_only": parallel / 700.0, "rss_growth_mb": 1.63}}

    artifact = {"decode_workers": 2, "model_only_images_per_s": 700.0,
                "throughput": {"png_32": kind(52.4, 560.0, 665.0), "jpeg_256": kind(480.0, 450.0, 602.0)}}
    if soak:
        artifact["soak"] = {"mix": "80% PNG", "sequential": mode(528.4, 0), "parallel": mode(658.7, 2)}
    return {"artifact": artifact, "settings": {"throughput_batch_size": 64, "artifact_images": 256},
            "environment": {"threads": 2, "cpu": {"model": "AMD EPYC", "isa": {"avx2": True, "avx512_vnni": True, "amx_int8": False}}}}


def test_predict_load_table_shows_each_file_kind_against_the_model_alone():
    text = report.predict_load_markdown(load_bench(soak=True))
    assert "AMD EPYC, avx2, avx512_vnni; 2 threads, batch 64" in text and "amx" not in text
    assert "| 32x32 PNG | 52 | 560 | 665 | 95% | 1.6 |" in text
    assert "| 256x256 JPEG | 480 | 450 | 602 | 86% | 1.6 |" in text
    assert "model alone, on the same images decoded beforehand: 700 images/s" in text
    assert "| in turn (`--workers 0`) | 20,000 | 1,030 | 1 | empty | 528 | 3001 | 131 |" in text
    assert "| 2 threads (`--workers 2`) | 20,000 | 1,030 | 1 | empty | 659 | 3001 | 131 |" in text
    assert "Soak" not in report.predict_load_markdown(load_bench(soak=False))
