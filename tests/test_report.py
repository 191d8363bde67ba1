"""Tables and headline metrics, on hand-made metrics whose answers are known."""

import pytest

from edgeml.reporting import markdown, tables


def metrics(auroc_fp32: float, auroc_int8: float, auroc_pure: float) -> dict:
    def entry(auroc: float) -> dict:
        return {"auroc": auroc, "detection_error": 1 - auroc, "fpr_at_95_tpr": 0.5, "aupr_in_ap": 0.9,
                "aupr_out_ap": 0.8, "aupr_in_trapz": 0.89, "aupr_out_trapz": 0.79,
                "openood_fpr95_ood_positive": 0.4, "id_samples": 9000, "ood_samples": 10000}

    def per_model(auroc: float) -> dict:
        return {d: {s: entry(auroc) for s in ("tin_crop", "mnist", "mean_near", "mean_far")} for d in ("msp", "energy")}

    return {"fp32": per_model(auroc_fp32), "int8": per_model(auroc_int8), "int8_fp32_settings": per_model(auroc_pure),
            "id_split": {"name": "openood", "validation_sets": {"near": "tin_val", "far": "shapes_val"}}, "perturbation_images": 1000}


def test_table2_rows_are_the_metrics_in_percent():
    ood = metrics(0.90, 0.895, 0.893)
    rows = tables.table2(ood, "msp", "tin_crop")
    assert rows["AUROC (%)"] == pytest.approx((90.0, 89.5))
    assert rows["Detection error (%)"] == pytest.approx((10.0, 10.5))
    assert rows["AUPR-In (%)"] == pytest.approx((90.0, 90.0))  # ODIN's definition
    assert rows["AUPR-In, OpenOOD trapezoid (%)"] == pytest.approx((89.0, 89.0))


def test_extended_table_shows_both_int8_views():
    text = tables.detector_table(metrics(0.90, 0.895, 0.893), ["tin_crop"])
    assert "| msp | 90.00 → 89.50 (-0.50) [-0.70] |" in text


def test_sampled_detectors_show_their_auroc_interval():
    ood = metrics(0.90, 0.895, 0.893)
    assert tables.sampled_intervals(ood, ["tin_crop", "mnist"]) == []  # no sampled detector: nothing to say
    ood["int8"]["energy"]["tin_crop"]["auroc_ci95"] = [0.871, 0.917]
    lines = tables.sampled_intervals(ood, ["tin_crop", "mnist"])
    assert lines[-1].startswith("energy AUROC (%) of the INT8 model, scored on a sample") and lines[-1].endswith(
        ": tin_crop 89.5 [87.1, 91.7].")


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
    # msp wins on validation, energy on test (89.9 vs 89.5): the headline follows validation
    ood["int8"]["energy"]["tin_crop"] = {**ood["int8"]["energy"]["tin_crop"], "auroc": 0.899}
    choices = {"int8": {"msp": {"validation_auroc": 0.85}, "energy": {"validation_auroc": 0.80}}}
    groups = {"near": ["tin_crop"], "far": ["mnist"]}
    quality, timing = tables.headline(bench, evaluate, ood, choices, package, groups, "tin_crop")
    assert len(quality) + len(timing) <= 40
    assert quality["top1_drop"] == pytest.approx(0.15) and quality["size_ratio"] == 4.0
    assert quality["msp_auroc_tin_crop_int8"] == pytest.approx(89.5)
    assert quality["val_chosen_auroc_tin_crop_int8"] == pytest.approx(89.5)
    assert quality["packaged_ood_accept_tin_crop"] == pytest.approx(40.0)
    other, _ = tables.headline(bench, evaluate, ood, choices, package, groups, "mnist")  # report.headline_set
    assert other["msp_auroc_mnist_int8"] == pytest.approx(89.5) and other["packaged_ood_accept_mnist"] == pytest.approx(20.0)
    assert not any("tin_crop" in key for key in other)
    assert quality["worst_auroc_drop"] == pytest.approx(0.5) and quality["worst_auroc_drop_fp32_settings"] == pytest.approx(0.7)
    assert quality["packaged_ood_accept_mean"] == pytest.approx(30.0)
    assert timing["cpu_speedup_batch1"] == 3.0 and timing["cpu_speedup_batch64"] == 4.0 and timing["gpu_ms_fp32"] is None
    assert (timing["predict_images_per_s"], timing["predict_peak_rss_mb"]) == (612.3, 130.1)  # the soak, decoding in parallel
    msp_packaged, _ = tables.headline(bench, evaluate, ood, choices, package | {"detector": "msp"}, groups, "tin_crop")
    assert msp_packaged.keys() == quality.keys()  # whichever detector ships, `dvc metrics diff` compares the same keys
    assert msp_packaged["packaged_auroc_tin_crop_int8"] == quality["msp_auroc_tin_crop_int8"]


def load_bench(soak: bool) -> dict:
    def mode(images_per_s: float, workers: int) -> dict:
        return {"files": 20000, "records": 20000, "errors": 1030, "exit_code": 1, "workers": workers, "stderr": "",
                "images_per_s_steady": images_per_s, "cpu_us_per_image": 3001.0, "peak_rss_mb": 131.2}

    def kind(decode_us: float, sequential: float, parallel: float, bound: float) -> dict:
        schedule = {"images_per_s": 500.0, "share_of_bound": 500.0 / bound}
        return {"decode_us_per_file": decode_us, "bound_images_per_s": bound, "sequential": {"images_per_s": sequential},
                "parallel": {"images_per_s": parallel, "share_of_bound": parallel / bound, "rss_growth_mb": 1.63},
                "model 1 thread, 1 decoding": schedule}

    artifact = {"decode_workers": 1, "model_only_images_per_s": 700.0, "model_only_images_per_s_by_threads": {"1": 400.0, "2": 700.0},
                "throughput": {"png_32": kind(52.4, 560.0, 665.0, 700.0), "jpeg_256": kind(480.0, 450.0, 602.0, 640.0)}}
    if soak:
        artifact["soak"] = {"mix": "80% PNG", "sequential": mode(528.4, 0), "parallel": mode(658.7, 2)}
    return {"artifact": artifact, "settings": {"throughput_batch_size": 64, "artifact_images": 256},
            "environment": {"threads": 2, "cpu": {"model": "AMD EPYC", "isa": {"avx2": True, "avx512_vnni": True, "amx_int8": False}}}}


def test_predict_load_table_shows_each_file_kind_against_its_bound():
    text = tables.predict_load_markdown(load_bench(soak=True))
    assert "AMD EPYC (avx2, avx512_vnni), 2 threads, batch 64" in text and "amx" not in text
    assert "| 32x32 PNG | 52 | 560 | 665 | 700 | 95% | 1.6 |" in text
    assert "| 256x256 JPEG | 480 | 450 | 602 | 640 | 94% | 1.6 |" in text
    assert "decoded beforehand: 400 images/s at 1 thread, 700 images/s at 2 threads." in text
    assert "32x32 PNG: model 1 thread, 1 decoding 500 (71%)" in text
    assert "| in the calling thread (`--workers 0`) | 20,000 | 1,030 | 1 | empty | 528 | 3001 | 131 |" in text
    assert "| 2 threads (`--workers 2`) | 20,000 | 1,030 | 1 | empty | 659 | 3001 | 131 |" in text
    assert "Soak" not in tables.predict_load_markdown(load_bench(soak=False))


def test_the_predict_bound_spends_the_cores_at_the_models_most_efficient_thread_count():
    from edgeml.bench.artifact import predict_bound

    # 2 threads give 1.6x, not 2x: a 1-thread model (2.5 ms of one core per image) wastes less core time than
    # 2 threads (2 x 1.5625 ms); with 0.5 ms of decoding per file, 2 cores finish 2 / 3.0 ms = 667 images/s
    assert predict_bound({1: 400.0, 2: 640.0}, 0.5e-3, 2) == pytest.approx(2 / 3.0e-3)
    # perfect scaling: either count costs the same core time
    assert predict_bound({1: 400.0, 2: 800.0}, 0.0, 2) == pytest.approx(800.0)
    assert predict_bound({1: 400.0, 2: 900.0}, 0.5e-3, 2) == pytest.approx(2 / (2 / 900.0 + 0.5e-3))


def test_markdown_table_layout_and_row_cap():
    assert markdown.table(["", "FP32", "INT8"], [["size", "", "2.00"]]) == "| | FP32 | INT8 |\n|---|---|---|\n| size |  | 2.00 |"
    text = markdown.table(["k", "v"], [[str(i), "x"] for i in range(5)], max_rows=3)
    assert text.splitlines()[-3:] == ["| 2 | x |", "", "… 2 more rows not shown."]
    assert markdown.table(["k"], [["a"]], max_rows=1) == "| k |\n|---|\n| a |"


def test_table1_beside_the_paper_leaves_its_missing_cells_blank():
    text = tables.markdown_table({"Model size (MB)": (44.8, 11.3), "Top-1 accuracy (%)": (91.0, 90.9)}, tables.PAPER_TABLE1)
    assert text.splitlines() == [
        "| | FP32 | INT8 | Paper FP32 | Paper INT8 |",
        "|---|---|---|---|---|",
        "| Model size (MB) | 44.80 | 11.30 | 44.80 | 12.40 |",
        "| Top-1 accuracy (%) | 91.00 | 90.90 |  |  |",
    ]


def test_react_and_ash_are_called_idle_only_at_their_no_change_ends_and_equal_to_energy():
    def record(chosen: float, grid: list[float], auroc: float) -> dict:
        return {"chosen": {"percentile": chosen}, "validation_auroc": auroc,
                "tried": [[{"percentile": p}, auroc] for p in grid]}

    choices = {"int8": {"energy": {"chosen": {}, "validation_auroc": 0.8653, "tried": [[{}, 0.8653]]},
                        "react": record(0.9999, [0.9, 0.99, 0.9999], 0.8653),
                        "ash": record(0.02, [0.02, 0.1, 0.9], 0.8652)}}
    (line,) = [line for line in tables.no_gain_note(choices) if line]
    assert line.startswith('react and ash give nothing here') and "percentile 0.9999, the grid's no-clipping end" in line
    choices["int8"]["react"] = record(0.99, [0.9, 0.99, 0.9999], 0.87)  # clipping chosen, and it helps
    (line,) = [line for line in tables.no_gain_note(choices) if line]
    assert line.startswith("ash give nothing") and "react" not in line
    choices["int8"]["ash"] = record(0.02, [0.02, 0.1, 0.9], 0.88)  # at the end but better than Energy: not idle
    assert tables.no_gain_note(choices) == []


def test_the_summary_names_the_best_detector_and_says_when_it_cannot_travel():
    ood = metrics(0.90, 0.895, 0.893)
    ood["fp32"]["odin"] = ood["fp32"]["msp"]
    ood["int8"]["odin"] = {s: dict(v) for s, v in ood["int8"]["msp"].items()}
    ood["int8"]["odin"]["tin_crop"].update(auroc_ci95=[0.871, 0.917], ood_samples=1000)
    bench = {"fp32": {"size_mb": 44.8, "cpu_latency_ms": 6.0, "path": "onnxruntime"}, "int8": {"size_mb": 11.2, "cpu_latency_ms": 2.0}}
    evaluate = {"fp32_top1": 0.91, "int8_top1": 0.9085}
    choices = {"int8": {"msp": {"validation_auroc": 0.85}, "energy": {"validation_auroc": 0.80}, "odin": {"validation_auroc": 0.9}}}
    package = {"detector": "energy", "selection": {"rule": "r", "validation_auroc": {"msp": 0.85, "energy": 0.8}},
               "test_tpr": 0.95, "test_fpr": {"tin_crop": 0.4}}
    text = "\n".join(tables.summary_lines(bench, evaluate, ood, choices, package, "tin_crop"))
    assert "best validation AUROC is ODIN (ODIN cannot travel in the artifact" in text
    assert "95% interval of its AUROC on a 1000-image sample: 87.10-91.70" in text
    choices["int8"]["odin"]["validation_auroc"] = 0.1  # MSP best: it travels, nothing to add
    text = "\n".join(tables.summary_lines(bench, evaluate, ood, choices, package, "tin_crop"))
    assert "best validation AUROC is MSP; on `tin_crop`" in text


def test_the_goals_say_met_or_by_how_much_they_fall_short():
    ood = metrics(0.96, 0.955, 0.955)
    package = {"detector": "energy", "test_tpr": 0.95, "test_fpr": {"tin_crop": 0.30, "mnist": 0.1}}
    evaluate = {"fp32_top1": 0.91, "int8_top1": 0.9085}
    finetune = {"wall_seconds": 3000, "threads": 2, "recipe": {"name": "oe"},
                "cpu": {"model": "Some CPU", "isa": {"avx2": True, "amx_int8": False, "avx512_vnni": True}}}
    text = "\n".join(tables.goals_section(evaluate, ood, package, finetune, ["tin_crop"]))
    assert "| `tin_crop` accepted by the artifact | 30.00 | ≤ 25 | ✗ short by 5.00 |" in text
    assert "| `mnist` accepted by the artifact | 10.00 | ≤ 20 | ✓ |" in text
    assert "| MSP AUROC vs `tin_crop`, INT8 | 95.50 | ≥ 95.3 | ✓ |" in text
    assert "| INT8 top-1 loss (points) | 0.15 | ≤ 0.3 | ✓ |" in text
    assert "| Final fine-tune, minutes on 2 threads of the CPU that made it | 50.00 | ≤ 60 | ✓ |" in text
    assert "recipe `oe` (); made on Some CPU (avx2, avx512_vnni);" in text  # the machine that made it, not the one reading


def roofline_bench(bare: bool) -> dict:
    from edgeml.bench.roofline import Layer, layer_roofline

    layers = [Layer("layer1.0.conv1", 1024, 576, 64, 36_864, (64, 32, 32, 64, 3)),
              Layer("layer4.1.conv2", 16, 4608, 512, 2_359_296, (512, 4, 4, 512, 3))]
    gemm_us = {(1024, 576, 64): {"onnxruntime": [30.0, 36.0], "torch": [45.0, 45.0]}, (16, 4608, 512): {"onnxruntime": [40.0, 40.0], "torch": [25.0, 26.5]}}
    roof = layer_roofline(layers, gemm_us, 50.0, 20.0, 2000.0, {(64, 32, 32, 64, 3): [60.0], (512, 4, 4, 512, 3): [94.0]})
    roof |= {"runtime": "openvino", "layer_times": "OpenVINO's per-node counters", "weight_bytes": 2_396_160,
             "gemm_libraries": {"onnxruntime": "ORT's MatMulInteger", "torch": "torch's _int_mm"}, "gemm_call_shape": [1, 8, 8],
             "read_bandwidth_gbs": {"1": 26.0, "2": 50.0}, "call_us_by_runtime": {"openvino": 20.0, "onnxruntime": 5.0}}
    stats = {"min": 0.30, "p10": 0.31, "median": 0.33, "p90": 0.36}
    called = {"as_called_ms": {**stats, "process_medians": [0.34, 0.325, 0.331]}, "as_called_over_roofline": 0.33 / roof["floor_ms"],
              "as_called_speedup_vs_fastest_fp32": 4.6,
              "bare_ms": {**stats, "median": 0.30} if bare else "not measured: the bare call is measured for OpenVINO IR artifacts",
              "as_called_over_bare": 1.1 if bare else None,
              "bare_settings_ms": {"default": {**stats, "median": 0.30}, "1 thread": {**stats, "median": 0.41}} if bare else {}}
    return {"compute": {"roofline": roof, "int8_over_roofline": 0.32 / roof["floor_ms"], "artifact_model": called},
            "environment": {"cpu": {"model": "Xeon"}}, "settings": {"threads": 2}}


def test_the_roofline_table_shows_each_layer_shape_against_its_floor_and_the_artifacts_calls():
    bench = roofline_bench(bare=True)
    text = tables.roofline_markdown(bench)
    floor = bench["compute"]["roofline"]["floor_ms"]  # (30 + 47.2 + 20) µs
    # each shape's own GEMM is its fastest library's best round, that library's slowest round beside it
    assert "| own GEMM µs: best of 2 rounds (library; slowest round) |" in text
    assert "| 3x3 conv 64→64 @32x32 | 1 | 37.7 | 37 | 18.9 | 30.0 (onnxruntime; 36.0) | 0.7 | **30.0** | compute | 60 | 2.00x |" in text
    assert "| 3x3 conv 512→512 @4x4 | 1 | 37.7 | 2359 | 18.9 | 25.0 (torch; 26.5) | 47.2 | **47.2** | weight reads | 94 | 1.99x |" in text
    assert "(the fastest of ORT's MatMulInteger and torch's _int_mm, each less its own time at 1x8x8, its cost of a call;" in text
    assert f"= **{floor:.3f} ms**" in text and f"runs at **{0.32 / floor:.2f}x** the roofline floor" in text
    assert "2 threads 50.0 GB/s" in text and "1 thread 26.0 GB/s" in text
    assert "the artifact's calls cost +10.0%" in text
    assert (f"median 0.330 ms (the median of 3 processes: 0.325-0.340) ({0.33 / floor:.2f}x the floor; 4.60x faster than the "
            "fastest FP32 path, median over median); the same IR called bare (static, zero-copy, no outputs read): 0.300 ms, so") in text
    assert "median ms, each in its own process): default 0.300, 1 thread 0.410;" in text
    assert "not measured: the bare call" in tables.roofline_markdown(roofline_bench(bare=False))
