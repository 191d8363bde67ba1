"""What the stage scripts call: the experiment loop, the artifact and its check, Table 1's rows, a sweep
recipe, the sweep timing, prepare and the report; on a tiny ResNet18, its INT8 twin and tiny data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cifar_python_files, write_tar

from edgeml import params as P
from edgeml.bench.cpu import file_size_mb
from edgeml.bench.roofline import floor_ms
from edgeml.bench.suite import table1_rows, time_sweep
from edgeml.data.prepare import prepare
from edgeml.data.splits import load_arrays
from edgeml.io import write_npz
from edgeml.model.inference import predict_logits
from edgeml.model.resnet import load_checkpoint, save_checkpoint
from edgeml.ood import protocol
from edgeml.ood.experiment import REFERENCE, ImageSets, ModelEvidence, score_quantized, score_reference
from edgeml.ood.detectors import GradientSigns, detector_class
from edgeml.package import check_artifact, choose_detector, fp32_acceptance, package_int8
from edgeml.params import (
    OODParams,
    OODSetSpec,
    ParamsError,
    PrepareParams,
    QuantizeParams,
    ValidationSets,
)
from edgeml.quantization import (
    WithFeatureMap,
    deployed_paths,
    int8_path,
    load_deployable,
    make_quantizer,
)
from edgeml.quantization.eager import export_torchscript
from edgeml.quantization.recipe import sweep_quantizer, sweep_recipe
from edgeml.reporting import tables
from edgeml.reporting.report import INPUTS, write_report
from edgeml.runtime.artifact import sha256_file

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "fbgemm"
OOD = OODParams(
    detectors=["msp", "energy", "knn"],
    sets=["noise", "dark"],
    groups={"far": ["noise", "dark"]},
    fit_images=40,
    batch_size=16,
    threads=1,
    validation_sets=ValidationSets(near="val_noise", far="val_flat"),
    validation_images=16,
    search={"knn": {"k": [1, 5]}},
)


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def deployed(float_model_and_images, tmp_path_factory) -> dict[str, Path]:
    """The FP32 checkpoint, and the deployable FP32 and INT8 files as the quantize stage writes them."""
    model, images = float_model_and_images
    folder = tmp_path_factory.mktemp("deploy")
    save_checkpoint(model, "torchvision", 10, folder / "checkpoint.pt")
    models = deployed_paths(BACKEND, folder)
    export_torchscript(WithFeatureMap(model), models["fp32"])
    make_quantizer(QuantizeParams(backend=BACKEND, calibration_size=64)).run(model, images[:64], models["int8"])
    return {"checkpoint": folder / "checkpoint.pt", **models}


@pytest.fixture(scope="module")
def arrays(float_model_and_images) -> dict[str, np.ndarray]:
    """CIFAR-10-like arrays: 48 training, 24 validation and 24 test images."""
    images = nhwc(float_model_and_images[1])
    labels = np.random.default_rng(0).integers(0, 10, len(images))
    return {"train_x": images[:48], "train_y": labels[:48], "val_x": images[48:72], "val_y": labels[48:72],
            "test_x": images[72:], "test_y": labels[72:]}


def ood_images(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (36, 32, 32, 3), dtype=np.uint8)
    flat = np.repeat(rng.integers(0, 256, (12, 1, 1, 3), dtype=np.uint8), 32, axis=1).repeat(32, axis=2)
    return {"noise": noise[:20], "dark": noise[20:] // 4, "val_noise": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
            "val_flat": flat}


def experiment(deployed, arrays, sets, out: Path, ood: OODParams = OOD, gradients_file: Path | None = None) -> tuple[dict, dict]:
    """The ood_fp32 stage's work, then the ood stage's (ODIN's directions handed over through ``gradients_file``)."""
    images = ImageSets.build(ood, arrays, sets, (np.arange(24), arrays["val_x"]))
    out.mkdir()
    gradients = GradientSigns(load_checkpoint(deployed["checkpoint"]))
    fp32_choices, fp32_metrics = score_reference(ood, deployed["fp32"], gradients, images, out)
    if gradients_file is not None:
        gradients.save(gradients_file)
        gradients = GradientSigns.load(gradients_file, NoBackward())
    choices, views = score_quantized(ood, deployed["int8"], BACKEND, fp32_choices, out, gradients, images, out)
    return ({"fp32": fp32_choices, "int8": choices},
            {"id_split": images.split_record(ood), "perturbation_images": ood.perturbation_images, "fp32": fp32_metrics} | views)


class NoBackward(torch.nn.Module):
    """A twin that must never run: every ODIN direction the INT8 model needs was computed for FP32."""

    def forward(self, x):
        raise AssertionError("the ood stage recomputed an ODIN direction the ood_fp32 stage had kept")


def test_odin_directions_pass_between_the_two_ood_stages_exactly(deployed, arrays, tmp_path):
    odin = dataclasses.replace(OOD, detectors=["odin"], search={"odin": {"temperature": [1, 1000], "eps": [0, 0.004]}})
    handed, _ = experiment(deployed, arrays, ood_images(0), tmp_path / "handed", odin, tmp_path / "odin_gradients.npz")
    shared, _ = experiment(deployed, arrays, ood_images(0), tmp_path / "shared", odin)  # one process, one cache
    assert handed == shared
    for name in ("fp32_odin.npz", "int8_odin.npz"):
        a, b = load_arrays(tmp_path / "handed" / name), load_arrays(tmp_path / "shared" / name)
        assert all(np.array_equal(a[key], b[key]) for key in a), name


def test_the_fp32_twin_is_scored_with_the_int8_models_choice_of_a_grid(deployed, arrays, tmp_path):
    """The ood_fp32 stage scores every setting a carriable detector tried; the ood stage hands on the one the
    INT8 model chose, which must equal the FP32 model fitted and scored with that setting afresh."""
    react = dataclasses.replace(OOD, detectors=["react"], search={"react": {"percentile": [0.5, 0.7, 0.9]}})
    choices, _ = experiment(deployed, arrays, ood_images(0), tmp_path / "scores", react)
    chosen = choices["int8"]["react"]["chosen"]
    images = ImageSets.build(react, arrays, ood_images(0), (np.arange(24), arrays["val_x"]))
    fp32 = ModelEvidence.of(react, deployed["fp32"], GradientSigns(NoBackward()), images)
    fresh = protocol.score_sets(protocol.fitted("react", chosen, fp32.context, fp32.fit, images.fit_labels), "react", fp32.test, None, 0)
    twin = load_arrays(tmp_path / "scores" / "fp32_int8_settings_react.npz")
    assert set(twin) == set(fresh) and all(np.array_equal(twin[key], fresh[key]) for key in fresh)
    assert len(list((tmp_path / "scores" / "by_setting").glob("fp32_react_*.npz"))) == 3


def test_gradient_signs_round_trip_with_their_zeros(tmp_path):
    gradients = GradientSigns(NoBackward())
    signs = torch.tensor([[-1, 0, 1], [1, 1, 0]], dtype=torch.int8).reshape(2, 3, 1, 1)
    gradients._cache[("test/x[5@0]", 1000.0)] = signs
    gradients.save(tmp_path / "g.npz")
    loaded = GradientSigns.load(tmp_path / "g.npz", NoBackward())
    assert list(loaded._cache) == [("test/x[5@0]", 1000.0)]
    assert torch.equal(loaded._cache[("test/x[5@0]", 1000.0)], signs)


def test_the_experiment_scores_every_model_detector_and_set_with_validation_choices(deployed, arrays, tmp_path):
    choices, metrics = experiment(deployed, arrays, ood_images(0), tmp_path / "scores")
    assert set(choices) == {"fp32", "int8"}
    for model in choices:
        assert set(choices[model]) == set(OOD.detectors)
        knn = choices[model]["knn"]
        assert [setting for setting, _ in knn["tried"]] == [{"k": 1}, {"k": 5}]
        assert knn["validation_auroc"] == max(auroc for _, auroc in knn["tried"])
        assert knn["validation_auroc"] == pytest.approx(sum(knn["validation_auroc_by_group"].values()) / 2, abs=1e-12)
        assert knn["hyperparameters"] == knn["chosen"]
        assert choices[model]["msp"]["chosen"] == {}  # no grid: the defaults alone
    assert metrics["id_split"] == {"name": "odin", "test_images": 24, "validation_images": 16,
                                  "validation_sets": {"near": "val_noise", "far": "val_flat"}}
    assert metrics["perturbation_images"] is None
    assert set(metrics) == {"id_split", "perturbation_images", "fp32", "int8", f"int8_{REFERENCE}_settings"}
    for view in ("fp32", "int8", f"int8_{REFERENCE}_settings"):
        assert set(metrics[view]) == set(OOD.detectors)
        for detector in OOD.detectors:
            assert set(metrics[view][detector]) == {"noise", "dark", "mean_far"}
            assert 0.0 <= metrics[view][detector]["noise"]["auroc"] <= 1.0
    for model in ("fp32", "int8"):
        for detector in OOD.detectors:
            scores = load_arrays(tmp_path / "scores" / f"{model}_{detector}.npz")
            assert {key: len(s) for key, s in scores.items()} == {"id": 24, "noise": 20, "dark": 16}
    # the reference view of a detector without a grid is the model's own
    assert metrics[f"int8_{REFERENCE}_settings"]["msp"] == metrics["int8"]["msp"]
    # the FP32 twin of each carriable detector, scored with the INT8 model's choice (what the artifact runs)
    carriable = [d for d in OOD.detectors if detector_class(d).carriable]
    for detector in carriable:
        twin = load_arrays(tmp_path / "scores" / f"fp32_int8_settings_{detector}.npz")
        assert {key: len(s) for key, s in twin.items()} == {"id": 24, "noise": 20, "dark": 16}
    assert not (tmp_path / "scores" / "fp32_int8_settings_knn.npz").exists()  # knn does not travel
    assert np.array_equal(load_arrays(tmp_path / "scores" / "fp32_int8_settings_msp.npz")["noise"],
                          load_arrays(tmp_path / "scores" / "fp32_msp.npz")["noise"])  # no grid: the FP32 model's own


def test_the_experiment_never_chooses_on_test_data(deployed, arrays, tmp_path):
    sets = ood_images(0)
    other = ood_images(1) | {key: sets[key] for key in ("val_noise", "val_flat")}  # other test sets, the same validation sets
    choices, metrics = experiment(deployed, arrays, sets, tmp_path / "a")
    other_choices, other_metrics = experiment(deployed, arrays, other, tmp_path / "b")
    assert other_choices == choices
    assert other_metrics["int8"]["msp"]["noise"] != metrics["int8"]["msp"]["noise"]


def params_with(**package) -> P.Params:
    params = P.load(ROOT / "params.yaml")
    return dataclasses.replace(
        params,
        quantize=dataclasses.replace(params.quantize, backend=BACKEND),
        ood=dataclasses.replace(params.ood, detectors=OOD.detectors, search=OOD.search, batch_size=16, fit_images=OOD.fit_images),
        package=dataclasses.replace(params.package, **package),
        bench=dataclasses.replace(params.bench, runs=3),
    )


def test_auto_packages_the_best_cheap_detector_with_a_threshold_the_artifact_keeps(deployed, arrays, tmp_path):
    write_npz(tmp_path / "cifar10.npz", **arrays)
    auroc = {"msp": 0.7, "energy": 0.8, "fdbd": 0.9, "knn": 0.99}
    choices = {name: {"validation_auroc": a, "chosen": {"k": 1} if name == "knn" else {}} for name, a in auroc.items()}
    out = tmp_path / "artifact"
    out.mkdir()
    params = dataclasses.replace(params_with(detector="auto", max_added_us=1e9, id_tpr=0.75), ood=dataclasses.replace(
        params_with().ood, detectors=["msp", "energy", "fdbd", "knn"], fit_images=OOD.fit_images))
    packaged = package_int8(params, deployed["int8"], choices, tmp_path / "cifar10.npz", out)
    assert packaged.detector == "fdbd"  # a feature detector travels in the artifact; knn's bank does not
    assert set(packaged.selection["added_us"]) == {"msp", "energy", "fdbd"}
    assert packaged.flipped == 0 and len(packaged.val_scores) == 24
    (artifact,) = [p for p in out.iterdir() if p.suffix == ".pt"]
    assert packaged.sha256 == sha256_file(artifact)
    below, *others = params.ood.sets
    test_scores = {"id": packaged.val_scores, below: np.full(5, packaged.threshold - 1)}
    metrics = packaged.metrics(params, test_scores | {s: np.full(5, packaged.threshold) for s in others})
    assert metrics["val_tpr"] == metrics["test_tpr"] == 0.75
    assert metrics["test_fpr"] == {below: 0.0} | {s: 1.0 for s in others}
    assert metrics["threshold_images"] == {"split": "val", "count": 24}
    # the FP32 model under the same rule: the artifact's settings, its own fit and threshold, on its own test scores
    twin = fp32_acceptance(params, deployed["fp32"], "fdbd", {}, arrays, test_scores | {s: np.full(5, -1e9) for s in others})
    assert twin["setting"] == {} and set(twin["test_fpr"]) == set(params.ood.sets) and twin["test_fpr"][others[0]] == 0.0
    assert twin["test_tpr"] == float((packaged.val_scores >= twin["threshold"]).mean())
    # an artifact that decides differently from the pipeline's scores is refused
    images = torch.from_numpy(arrays["val_x"]).permute(0, 3, 1, 2)
    boundary = float(np.sort(packaged.val_scores)[12])
    with pytest.raises(AssertionError, match="decides differently"):
        check_artifact(out, images, packaged.val_scores - 1e-4, boundary)
    with pytest.raises(AssertionError):
        check_artifact(out, images, packaged.val_scores + 1.0, packaged.threshold)


def test_a_detector_the_artifact_cannot_carry_is_refused(deployed, arrays):
    choices = {name: {"validation_auroc": 0.5, "chosen": {}} for name in OOD.detectors}
    assert choose_detector(params_with(detector="msp"), deployed["int8"], choices, arrays)[0] == "msp"
    with pytest.raises(ParamsError, match="package.detector: 'knn' needs more than the logits and pooled features"):
        choose_detector(params_with(detector="knn"), deployed["int8"], choices, arrays)


def test_table1_rows_come_from_the_bench_numbers(deployed):
    cpu = {"fp32_torchscript": {"latency_ms": 2.0, "throughput_images_per_s": 900.0},
           "fp32_onnxruntime": {"latency_ms": 1.5, "throughput_images_per_s": 1000.0},
           "int8": {"latency_ms": 0.5, "throughput_images_per_s": 3000.0}}
    gpu_cells = {"fp32": {"path": "fp32_fp16_graph", "latency_ms": 0.2}, "int8": {"path": None, "latency_ms": "not measured"}}
    files = {"fp32_onnxruntime": deployed["fp32"], "int8": deployed["int8"]}
    rows = table1_rows({"fp32": "fp32_onnxruntime", "int8": "int8"}, BACKEND, 123, files, cpu, gpu_cells)
    assert rows["fp32"] == {"path": "onnxruntime", "parameters": 123, "size_mb": file_size_mb(deployed["fp32"]),
                            "cpu_latency_ms": 1.5, "cpu_throughput_images_per_s": 1000.0,
                            "gpu_latency_ms": 0.2, "gpu_path": "fp32_fp16_graph"}
    assert rows["int8"] == {"path": BACKEND, "parameters": 123, "size_mb": file_size_mb(deployed["int8"]),
                            "cpu_latency_ms": 0.5, "cpu_throughput_images_per_s": 3000.0,
                            "gpu_latency_ms": "not measured", "gpu_path": None}
    assert rows["int8"]["size_mb"] < rows["fp32"]["size_mb"]


def test_a_sweep_recipe_is_judged_on_validation_data_only(float_model_and_images, arrays, tmp_path):
    params = params_with()
    params = dataclasses.replace(params, sweep=dataclasses.replace(params.sweep, recipes={"tiny": QuantizeParams(backend=BACKEND, calibration_size=32)}))
    with pytest.raises(ParamsError, match="sweep.recipes: no recipe 'nope'"):
        sweep_quantizer(params, "nope")
    ood = dataclasses.replace(OOD, validation_images=8)
    validation_ood = {group: ood_images(0)[name] for group, name in OOD.validation_sets.items()}
    record = sweep_recipe(sweep_quantizer(params, "tiny"), float_model_and_images[0], arrays, validation_ood, ood, tmp_path)
    assert record["recipe"]["calibration_size"] == 32
    assert record["size_mb"]["int8"] < record["size_mb"]["fp32"]
    assert record["quantize_seconds"] > 0
    assert (tmp_path / record["file"]) == int8_path(BACKEND, tmp_path)  # sweep_report reads its format from here
    assert set(record["validation"]["auroc"]) == {"msp", "energy"}  # the detectors the artifact can carry
    model = load_deployable(int8_path(BACKEND, tmp_path), BACKEND)
    logits = predict_logits(model, torch.from_numpy(arrays["val_x"]).permute(0, 3, 1, 2))
    assert record["validation"]["top1"] == (logits.argmax(1) == torch.from_numpy(arrays["val_y"])).float().mean().item()


def test_time_sweep_times_every_recipe_against_both_fp32_paths(deployed):
    params = params_with()
    params = dataclasses.replace(
        params,
        sweep=dataclasses.replace(params.sweep, recipes={"tiny": QuantizeParams(backend=BACKEND)}, timing_rounds=2),
        bench=dataclasses.replace(params.bench, warmup=1, runs=4, throughput_batch_size=2, throughput_runs=2),
    )
    timing = time_sweep(params, deployed["checkpoint"], {"tiny": deployed["int8"]})
    assert set(timing["recipes"]) == {"tiny"}
    assert timing["fastest_fp32_path"] in {"fp32_torchscript", "fp32_onnxruntime"}
    assert timing["floor_ms"] == floor_ms(timing["macs_per_sample"], timing["gemm_peak_gmacs"])
    assert timing["timed"] == "each model in its own process, taking turns"
    for path in [*timing["fp32"].values(), *timing["recipes"].values()]:
        stats = path["latency_stats_ms"]
        assert 0 < stats["min"] <= stats["p10"] <= stats["median"] == path["latency_ms"] <= stats["p90"]


def test_prepare_writes_every_split_and_set(tmp_path):
    archive = write_tar(tmp_path / "cifar-10-python.tar.gz", cifar_python_files(2, 2))
    specs = {"gaussian": OODSetSpec(dataset="gaussian_noise", transform="none", count=5),
             "uniform": OODSetSpec(dataset="uniform_noise", transform="none", count=4)}
    out = tmp_path / "prepared"
    counts = prepare(PrepareParams(val_size=10, seed=0, ood_sets=specs), ["uniform"], {"cifar10": {"path": str(archive)}}, out)
    assert counts == {"train": 90, "val": 10, "test": 20, "gaussian": 5, "uniform": 4}
    arrays = load_arrays(out / "cifar10.npz")
    assert len(arrays["train_x"]) == 90 and len(arrays["val_x"]) == 10
    assert load_arrays(out / "ood" / "gaussian.npz")["x"].shape == (5, 32, 32, 3)
    assert not (out / "openood_cifar10.npz").exists()  # no OpenOOD lists among the sources


def test_the_report_is_written_from_the_metrics(tmp_path):
    metrics = {name: json.loads((ROOT / "metrics" / f"{name}.json").read_text()) for name in INPUTS}
    packaged = metrics["package"]["detector"]
    params = P.load(ROOT / "params.yaml")
    params = dataclasses.replace(params, ood=dataclasses.replace(params.ood, detectors=sorted({"msp", packaged}), search={}))
    rng = np.random.default_rng(0)
    for model in ("fp32", "int8"):
        for detector in params.ood.detectors:
            write_npz(tmp_path / "scores" / f"{model}_{detector}.npz",
                      **{key: rng.normal(size=20) for key in ["id", *params.ood.sets]})
    write_report(params, metrics, tmp_path / "metrics", lambda m, d: tmp_path / "scores" / f"{m}_{d}.npz", tmp_path / "plots")
    tables_json = json.loads((tmp_path / "metrics" / "tables.json").read_text())
    assert tables_json["table1"] == {row: dict(zip(tables.MODELS, v)) for row, v in tables.table1(metrics["bench"], metrics["evaluate"]).items()}
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    warned = (tmp_path / "metrics" / "report.md").read_text().startswith("> **")
    assert summary["quantize_is_sweep_best"] == int(not warned)
    assert (tmp_path / "plots" / "figures" / f"msp_{params.report.headline_set}.png").exists()
    assert (tmp_path / "plots" / "figures" / "auroc_change.png").exists()
    assert (tmp_path / "plots" / "figures" / "acceptance.png").exists()
    report = (tmp_path / "metrics" / "report.md").read_text()
    twin = metrics["package"]["fp32_twin"]["test_fpr"][params.ood.sets[0]]
    assert f"| `{params.ood.sets[0]}` accepted as ID | {100 * twin:.1f}% |" in report  # FP32 under the artifact's rule
    headline = (tmp_path / "metrics" / "headline.md").read_text()  # README's results: the short version of the report
    assert headline.startswith("#### Summary") and "#### Table 1" in headline and "#### Saying \"I don't know\"" in headline
    assert f"| `{params.ood.sets[0]}` accepted as ID | {100 * twin:.1f}% |" in headline
