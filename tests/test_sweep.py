"""The sweep's decision: timings of every recipe from one process, the selection rule on validation numbers,
and the warning when params `quantize` is not the sweep's choice."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from edgeml import sweep
from edgeml.bench import cpu as cpu_timing
from edgeml.bench.isolated import InProcess
from edgeml.params import QuantizeParams


def row(speedup: float, auroc_drop: float, size_ratio: float = 4.0, top1_drop: float = 0.1, spread: float = 0.0) -> dict:
    meets = {
        "size_ratio": size_ratio >= 3.9, "top1_drop_points": top1_drop <= 0.3,
        "auroc_drop_points": auroc_drop <= 0.5, "speedup": speedup >= 3.0,
    }
    return {"speedup": speedup, "speedup_spread": spread, "max_auroc_drop_points": auroc_drop, "meets": meets,
            "packaged": True}


def test_fastest_recipe_meeting_the_quality_goals_wins():
    rows = {"slow": row(2.0, 0.1), "fast": row(3.4, 0.3), "fast_but_lossy": row(4.0, 0.9)}
    assert sweep.best_recipe(rows)[0] == "fast"  # the lossy one misses the AUROC goal


def test_speed_ties_within_the_minimum_band_go_to_the_smaller_auroc_loss():
    rows = {"a": row(3.40, 0.40), "b": row(3.30, 0.05), "c": row(3.00, 0.00)}
    # b is within 5% of a (3.23 <= 3.30), c is not (3.00 < 3.23)
    assert sweep.best_recipe(rows)[0] == "b"


def test_a_measured_spread_wider_than_the_minimum_widens_the_tie_band():
    rows = {"a": row(3.40, 0.40, spread=0.15), "b": row(3.30, 0.05), "c": row(3.00, 0.00)}
    # 15% spread: c (3.00 >= 0.85 * 3.40 = 2.89) ties too, and loses least
    best, rule, band = sweep.best_recipe(rows)
    assert best == "c" and "15.0%" in rule and band == pytest.approx(0.15)
    assert sweep.tie_band({"noisy": row(3.0, 0.1, spread=3.0)}) == sweep.MAX_TIE_BAND  # 4x slower never ties
    lossy = {**rows, "d": row(3.0, 0.9, spread=0.5)}  # misses the AUROC goal: its spread does not count
    assert sweep.tie_band({n: r for n, r in lossy.items() if r["meets"]["auroc_drop_points"]}) == pytest.approx(0.15)
    assert sweep.best_recipe(lossy)[0] == "c"


def test_equal_losses_are_broken_by_name_not_by_order():
    rows = {"z": row(3.4, 0.1), "a": row(3.3, 0.1)}
    assert sweep.best_recipe(rows)[0] == sweep.best_recipe(dict(reversed(rows.items())))[0] == "a"


def test_only_recipes_the_artifact_can_be_built_from_compete_and_the_fastest_other_stays_in_sight():
    rows = {"ort": row(3.2, 0.1), "pte": {**row(3.6, 0.0), "packaged": False}}
    assert sweep.best_recipe(rows)[0] == "ort"
    assert sweep.best_recipe(rows, packaged_only=False)[0] == "pte"


def test_a_sweep_without_a_packageable_recipe_says_which_param_to_change():
    rows = {"pte": {**row(3.6, 0.0), "packaged": False}}
    with pytest.raises(sweep.SweepError, match="sweep.recipes"):
        sweep.best_recipe(rows)


def test_without_a_recipe_meeting_the_quality_goals_the_smallest_auroc_loss_wins():
    rows = {"a": row(3.4, 0.9, size_ratio=3.0), "b": row(1.0, 0.6)}
    best, rule, band = sweep.best_recipe(rows)
    assert best == "b" and "no recipe meets" in rule and band is None


def test_sweep_row_takes_speed_from_the_shared_timing_and_quality_from_validation():
    result = {
        "name": "r", "recipe": {"backend": "fbgemm"}, "size_mb": {"fp32": 44.0, "int8": 11.0}, "quantize_seconds": 1.0,
        "validation": {"top1": 0.905, "auroc": {"msp": 0.85, "energy": 0.88}},
    }
    timing = {"fastest_fp32_path": "fp32_onnxruntime", "fp32": {"fp32_onnxruntime": {"latency_ms": 6.0}},
              "recipes": {"r": {"latency_ms": 2.0, "throughput_images_per_s": 400.0, "speedup": 3.0, "speedup_spread": 0.04}}}
    reference = {"top1": 0.91, "auroc": {"msp": 0.86, "energy": 0.881}}
    r = sweep.sweep_row(result, timing, reference, floor_ms=1.0, packaged=False)
    assert r["size_ratio"] == 4.0 and r["top1_drop_points"] == pytest.approx(0.5)
    assert r["max_auroc_drop_points"] == pytest.approx(1.0) and r["worst_detector"] == "msp"
    assert r["latency_over_floor"] == 2.0 and r["speedup_spread"] == 0.04 and r["packaged"] is False
    assert r["meets"] == {"size_ratio": True, "top1_drop_points": False, "auroc_drop_points": False, "speedup": True}


def test_the_summary_states_the_tie_band_its_choice_used_not_one_widened_by_unpackaged_recipes():
    def result(name: str) -> dict:
        return {"recipe": {"backend": name}, "size_mb": {"fp32": 44.0, "int8": 11.0}, "quantize_seconds": 1.0,
                "validation": {"top1": 0.91, "auroc": {"msp": 0.86}}}
    spreads = {"ort": 0.06, "pte": 0.40}  # the unpackaged recipe's noisy rounds must not widen the packaged band
    timing = {"fastest_fp32_path": "fp32", "fp32": {"fp32": {"latency_ms": 6.0}}, "floor_ms": {"int8": 1.0},
              "recipes": {n: {"latency_ms": 2.0, "throughput_images_per_s": 500.0, "speedup": 3.0, "speedup_spread": s}
                          for n, s in spreads.items()},
              "macs_per_sample": 1, "gemm_peak_gmacs": 1, "rounds": 6, "environment": {}}
    summary = sweep.sweep_summary({n: result(n) for n in spreads}, timing, {"top1": 0.91, "auroc": {"msp": 0.86}}, {"ort"}, {})
    assert summary["best"] == "ort" and summary["tie_band"] == pytest.approx(0.06)
    assert "6.0%" in summary["best_rule"]


class SimulatedMachine:
    """A clock and models that cost simulated seconds: each call advances the clock by the model's cost
    times seeded noise (per call, and a per-round load factor hitting whichever model runs then), so the
    sweep's decision is tested on timings with known truth and no wall clock."""

    def __init__(self, seed: int, noise: float = 0.3):
        self.now, self.rng, self.noise = 0.0, random.Random(seed), noise

    def clock(self) -> float:
        return self.now

    def model(self, cost_s: float) -> InProcess:
        def run(x: torch.Tensor) -> None:
            self.now += cost_s * len(x) * self.rng.uniform(1 - self.noise, 1 + self.noise)
        return InProcess(run, lambda batch: torch.zeros(batch, 3, 32, 32), self.clock)


def test_two_sweeps_on_the_same_machine_choose_the_same_recipe():
    """Two recipes of one graph (`twin_a`, `twin_b`: the minmax/percentile case) must tie on speed, whatever the
    noise of the moment, so validation quality decides between them; a much slower recipe never ties."""
    quality = {"twin_a": 0.30, "twin_b": 0.10, "slow": 0.0}  # validation AUROC loss: slow would win any tie
    choices = []
    for seed in range(4):  # four machines' worth of noise (±30% per call)
        machine = SimulatedMachine(seed)
        fp32 = {"fp32_wide": machine.model(16e-3)}
        int8 = {"twin_a": machine.model(1e-3), "twin_b": machine.model(1e-3), "slow": machine.model(2e-3)}
        timing = cpu_timing.time_recipes(fp32, int8, warmup=3, rounds=8, block=10, batch_size=4, batch_runs=2)
        assert len(timing["recipes"]["twin_a"]["speedup_rounds"]) == 8
        assert timing["recipes"]["slow"]["speedup"] == pytest.approx(8.0, rel=0.2)  # the simulated truth is measured
        rows = {n: {**row(t["speedup"], quality[n]), "speedup_spread": t["speedup_spread"]}
                for n, t in timing["recipes"].items()}
        choices.append(sweep.best_recipe(rows)[0])
    assert choices == ["twin_b"] * 4


def test_render_sweep_marks_the_best_recipe_and_missed_goals():
    def recipe(speedup: float, auroc_drop: float) -> dict:
        return {**row(speedup, auroc_drop, spread=0.1), "backend": "fbgemm", "size_mb": 11.3, "size_ratio": 4.0,
                "latency_ms": 1.5, "fastest_fp32_latency_ms": 5.0, "fastest_fp32_path": "fp32_torchscript",
                "latency_over_floor": 1.8, "throughput_images_per_s": 700.0, "val_top1": {"fp32": 91.7, "int8": 91.6},
                "top1_drop_points": 0.1, "worst_detector": "energy",
                "val_auroc": {"msp": {"fp32": 90.0, "int8": 89.9}, "energy": {"fp32": 91.0, "int8": 90.5}}}

    summary = {"goals": sweep.SWEEP_GOALS, "best": "fast", "best_rule": "fastest", "best_measured": "slow",
               "timing_rounds": 6, "recipes": {"fast": recipe(3.3, 0.5), "slow": {**recipe(2.0, 0.5), "packaged": False}}, "arm_notes": {},
               "environment": {"threads": 2, "cpu": {"model": "EPYC", "isa": {"avx2": True, "amx_int8": False}}},
               "compute": {"macs_per_sample": 5.6e8, "gemm_peak_gmacs": {"fp32": {"best": 90.0}, "int8": {"best": 300.0}}}}
    lines = sweep.render_sweep(summary).splitlines()
    assert "| **fast** | fbgemm | 11.30 (4.00x) | 1.500 | 5.000 (torchscript) | 3.30x (±5%) | 1.8 | 700 " \
           "| 91.70 → 91.60 (-0.10) | 0.50 (energy) |" in lines
    assert "| slow ‡ | fbgemm | 11.30 (4.00x) | 1.500 | 5.000 (torchscript) | 2.00x ✗ (±5%) | 1.8 | 700 " \
           "| 91.70 → 91.60 (-0.10) | 0.50 (energy) |" in lines
    assert lines[lines.index("| recipe | msp | energy |") + 1:][:3] == ["|---|---|---|", "| fast | 89.90 (-0.10) | 90.50 (-0.50) |",
                                                                      "| slow | 89.90 (-0.10) | 90.50 (-0.50) |"]
    assert any(line.startswith("CPU: EPYC (avx2), 2 threads. Compute floor") for line in lines)  # the flags it has, only
    note = next(line for line in lines if line.startswith("Goals"))
    assert "‡ The package stage cannot build the artifact" in note and "‡ included, the best is slow" in note
    # an ARM-oriented backend (Quantizer.arm_note) is marked in its rows and explained once
    lines = sweep.render_sweep({**summary, "arm_notes": {"fbgemm": "tuned for NEON"}}).splitlines()
    assert sum(line.startswith("| **fast** | fbgemm † |") or line.startswith("| slow ‡ | fbgemm † |") for line in lines) == 2
    assert lines.count("† tuned for NEON.") == 1

def test_disagreement_is_loud_when_params_quantize_is_not_the_best():
    chosen, other = QuantizeParams(backend="onnxruntime", observer="minmax"), QuantizeParams(backend="fbgemm")
    summary = {"best": "ort", "recipes": {"ort": {"recipe": dataclasses.asdict(chosen)},
                                          "fb": {"recipe": dataclasses.asdict(other)}}}
    assert sweep.disagreement(dataclasses.asdict(chosen), summary) is None
    assert "params.yaml `quantize` is sweep recipe 'fb', but the sweep's best is 'ort'" in sweep.disagreement(dataclasses.asdict(other), summary)
    assert "is no sweep recipe" in sweep.disagreement(dataclasses.asdict(QuantizeParams(backend="qnnpack")), summary)
