"""End to end: `dvc repro` in a fresh git repo on tiny synthetic data, then a no-op second run."""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tinyimagenet_files, write_sha256sums, write_tar

from edgeml.runtime.artifact import EdgeModel

pytestmark = pytest.mark.e2e  # runs DVC itself: `pytest -m "not e2e"` leaves it out

REPO = Path(__file__).parents[1]


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def tiny_params(mirror: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["fetch"]["cifar10"]["source"] = str(mirror / "cifar10-jpeg.tar.gz")
    params["fetch"]["tinyimagenet"]["source"] = str(mirror / "tiny-imagenet-200-valtest.tar.gz")
    params["fetch"]["mnist"]["source"] = str(mirror / "mnist/t10k-images-idx3-ubyte.gz")
    params["fetch"]["fashion_mnist"]["source"] = str(mirror / "fashion-mnist/t10k-images-idx3-ubyte.gz")
    params["fetch"]["openood_tin_list"]["source"] = str(mirror / "openood-imglist/test_tin.txt")
    params["fetch"]["openood_tin_val_list"]["source"] = str(mirror / "openood-imglist/val_tin.txt")
    params["fetch"]["openood_cifar10_test_list"]["source"] = str(mirror / "openood-imglist/test_cifar10.txt")
    params["fetch"]["openood_cifar10_val_list"]["source"] = str(mirror / "openood-imglist/val_cifar10.txt")
    for generated in ("gaussian", "uniform", "shapes_val"):
        params["prepare"]["ood_sets"][generated]["count"] = 12
    params["prepare"]["val_size"] = 20
    params["model"]["stem"] = "torchvision"  # trains in seconds on tiny data; the published weights are CIFAR-stem
    # lr for batch 16 (0.4 is for 512): a diverged model's logits reach 1e6 and every score ties
    params["train"].update(epochs=1, batch_size=16, lr=0.01, threads=1, weights=None)
    params["finetune"].update(weights=None, search_steps=2, epochs=1, id_batch=8, outlier_batch=8, pictures=16, threads=1,
                              top1_tolerance=1.0)  # a 1-epoch model's top-1 is noise: every recipe is kept
    # the committed OE recipe, and an energy-margin one beside it (the other outlier loss)
    gray = params["finetune"]["recipes"]["oe_gray_distill"]
    params["finetune"]["recipes"] = {"oe_gray_distill": gray, "energy_mixed": gray | {"loss": "energy", "weight": 0.1, "distill": 0.0}}
    params["quantize"]["calibration_size"] = 16
    params["sweep"]["recipes"] = {  # one per deployable format
        "fbgemm_histogram": {"backend": "fbgemm", "calibration_size": 16},
        "onnxruntime_minmax": {"backend": "onnxruntime", "observer": "minmax", "calibration_size": 16},
    }
    params["ood"].update(batch_size=32, threads=1, fit_images=60, perturbation_images=20)
    params["ood"]["search"] = {"knn": {"k": [1, 5]}, "react": {"percentile": [0.8, 0.9]}, "vim": {"dim": [8, 16]}}
    params["bench"].update(threads=1, warmup=1, runs=3, throughput_batch_size=4, throughput_runs=2, artifact_images=8, soak_files=40)
    return params


@pytest.fixture
def project(tmp_path: Path, mirror: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "weights").mkdir()
    shutil.copy(REPO / "weights/finetune.json", root / "weights/finetune.json")
    for name in ("stages", "src", "runtime"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(mirror)))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    # A clone always has a commit (DVC experiments need a baseline revision).
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "init", cwd=root)
    return root


def test_dvc_repro_end_to_end(project: Path):
    sh("dvc", "repro", cwd=project)
    params = yaml.safe_load((project / "params.yaml").read_text())

    sources = json.loads((project / "data/sources.json").read_text())
    assert sources["cifar10"]["checked_against"].startswith("sha256:")
    assert json.loads((project / "metrics/prepare.json").read_text())["samples"] == {
        "train": 100, "val": 20, "test": 40, "tin_crop": 30, "tin_resize": 30, "tin_openood": 6,
        "mnist": 25, "fashion_mnist": 25, "gaussian": 12, "uniform": 12, "tin_val": 8, "shapes_val": 12,
        "openood_test": 30, "openood_val": 10,
    }
    finetuned = json.loads((project / "metrics/finetune.json").read_text())
    assert finetuned["origin"] == "fine-tuned" and set(finetuned["search"]["results"]) == {"oe_gray_distill", "energy_mixed"}
    assert finetuned["recipe"]["name"] in finetuned["search"]["results"] and len(finetuned["epochs"]) == 1
    assert finetuned["start"]["sha256"] == hashlib.sha256((project / "models/pretrained.pt").read_bytes()).hexdigest()
    assert finetuned["sha256"] == hashlib.sha256((project / "models/fp32.pt").read_bytes()).hexdigest()
    search_md = (project / "metrics/finetune_search.md").read_text()
    assert "| oe_gray_distill" in search_md and "oe + distill 1" in search_md and "| energy_mixed" in search_md and "**chosen**" in search_md
    evaluate = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluate["test_samples"] == 40 and abs(40 * evaluate["int8_top1"] - round(40 * evaluate["int8_top1"])) < 1e-4
    ood = json.loads((project / "metrics/ood.json").read_text())
    for model in ("fp32", "int8"):
        for detector in params["ood"]["detectors"]:
            for ood_set in ("tin_crop", "tin_resize"):
                m = ood[model][detector][ood_set]
                # OpenOOD's ID test list; ODIN scores a sample of ood.perturbation_images per set
                assert (m["id_samples"], m["ood_samples"]) == ((20, 20) if detector == "odin" else (30, 30))
            far = [ood[model][detector][s]["auroc"] for s in ("mnist", "fashion_mnist", "gaussian", "uniform")]
            assert ood[model][detector]["mean_far"]["auroc"] == pytest.approx(sum(far) / 4)
    bench = json.loads((project / "metrics/bench.json").read_text())
    assert bench["int8"]["size_mb"] < bench["fp32"]["size_mb"] / 3.5
    assert bench["fp32"]["parameters"] == 11_181_642
    package = json.loads((project / "metrics/package.json").read_text())
    assert package["val_tpr"] >= 0.95 and "tin_openood" in package["test_fpr"]
    artifact = EdgeModel.load(project / "models/artifact")
    assert artifact.sha256 == package["sha256"] and artifact.metadata["threshold"] == package["threshold"]
    assert bench["artifact"]["artifact_throughput_images_per_s"] > 0 and bench["artifact"]["model_only_images_per_s"] > 0
    for run in (bench["artifact"]["soak"][mode] for mode in ("sequential", "parallel")):  # `edgeml predict` in its own process
        assert run["files"] == run["records"] == 40 and run["exit_code"] == 1 and run["stderr"] == ""
    assert "Soak: `edgeml predict` run as its own process on 40 files" in (project / "metrics/predict_load.md").read_text()
    assert set(bench["detector_cost_us"]) == set(params["ood"]["detectors"]) >= {"msp", "mds", "knn", "vim", "react", "ash", "ash_map", "fdbd"}
    choices = json.loads((project / "metrics/detectors.json").read_text())
    knn = choices["int8"]["knn"]
    assert knn["hyperparameters"]["k"] == knn["chosen"]["k"] in (1, 5) and len(knn["tried"]) == 2
    assert ood["id_split"] == {"name": "openood", "test_images": 30, "validation_images": 10,
                              "validation_sets": {"near": "tin_val", "far": "shapes_val"}}
    # ODIN scores a seeded sample of ood.perturbation_images per set
    assert (ood["int8"]["odin"]["tin_crop"]["id_samples"], ood["int8"]["odin"]["tin_crop"]["ood_samples"]) == (20, 20)
    # the pure-quantization view: INT8 with the FP32 model's choices, for every detector
    assert set(ood["int8_fp32_settings"]) == set(params["ood"]["detectors"])
    carriable = {"msp", "maxlogit", "energy", "gen", "mds", "vim", "react", "fdbd", "knn_edge"}  # logits and pooled features
    assert package["detector"] in carriable and set(package["selection"]["validation_auroc"]) == carriable
    assert package["calibration_images"]["split"] == "train" and package["threshold_images"] == {"split": "val", "count": 20}
    summary = json.loads((project / "metrics/summary.json").read_text())
    timing = json.loads((project / "metrics/timing.json").read_text())
    assert len(summary) + len(timing) <= 40 and all(isinstance(v, (int, float)) or v is None for v in {**summary, **timing}.values())
    assert summary["top1_int8"] == pytest.approx(100 * evaluate["int8_top1"])
    assert "tin_val" not in ood["int8"]["msp"]  # validation data is never reported as a test set
    near = [ood["int8"]["energy"][s]["openood_fpr95_ood_positive"] for s in ("tin_crop", "tin_resize", "tin_openood")]
    assert ood["int8"]["energy"]["mean_near"]["openood_fpr95_ood_positive"] == pytest.approx(sum(near) / 3)
    report = (project / "metrics/report.md").read_text()
    assert "Table 1" in report and "Table 2: MSP OOD detection, CIFAR-10 vs tin_crop" in report
    figures = {"msp_tin_crop.png", f"{package['detector']}_tin_crop.png", "auroc_change.png", "training.png", "acceptance.png"}
    assert set(package["fp32_twin"]["test_fpr"]) == set(package["test_fpr"]) == set(params["ood"]["sets"])
    assert "What the artifact accepts at its threshold" in report
    assert {p.name for p in (project / "plots/figures").iterdir()} == figures  # a handful, not one per curve
    for figure in figures:
        assert (project / "plots/figures" / figure).stat().st_size > 1000
    assert (project / "plots/ood/roc/int8/msp_tin_crop.csv").read_text().startswith("fpr,tpr")
    assert bench["compute"]["fastest_fp32_path"] in bench["cpu_paths"] and bench["compute"]["macs_per_sample"] > 3e7
    sweep = json.loads((project / "metrics/quant_sweep.json").read_text())
    assert set(sweep["recipes"]) == {"fbgemm_histogram", "onnxruntime_minmax"} and sweep["best"] in sweep["recipes"]
    shown = json.loads((project / "metrics/sweep/onnxruntime_minmax.json").read_text())["validation"]
    assert set(shown["auroc"]) == {"msp", "maxlogit", "energy", "gen"}  # the detectors the artifact can carry
    assert sweep["recipes"]["onnxruntime_minmax"]["size_ratio"] > 3.5
    assert "onnxruntime_minmax" in (project / "metrics/quant_sweep.md").read_text()
    profiles = (project / "metrics/backend_profiles.md").read_text()  # each backend's time, by its own profiler
    assert "| fbgemm (fbgemm_histogram) |" in profiles and "| onnxruntime (onnxruntime_minmax) |" in profiles
    assert "not profiled:" not in profiles

    # A second run changes nothing and runs nothing.
    second = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", cwd=project)

    # Every backend runs as an experiment, re-running only what depends on the recipe.
    # One flag each: activations and reduce_range are auto, resolved to each backend's best (metrics/quantize.json).
    for backend in ("fbgemm", "qnnpack", "pt2e_x86", "onnxruntime"):
        variant = sh("dvc", "exp", "run", "-S", f"quantize.backend={backend}", cwd=project)
        assert json.loads((project / "metrics/quantize.json").read_text())["recipe"]["activations"] in ("uint8", "int8")
        assert "Running stage 'quantize'" in variant and "Running stage 'package'" in variant
        assert "Running stage 'train'" not in variant and "Running stage 'sweep" not in variant
        assert "Running stage 'finetune'" not in variant and "Running stage 'ood_fp32'" not in variant  # the FP32 half is kept
        assert "Running stage 'ood'" in variant
        assert EdgeModel.load(project / "models/artifact").metadata["backend"] == backend
        assert json.loads((project / "metrics/bench.json").read_text())["int8"]["path"] == backend
        # judged on its own validation numbers, sweep recipe or not: the review measures every goal
        judged = json.loads((project / "metrics/evaluate.json").read_text())["validation"]
        assert {"top1_drop_points", "max_auroc_drop_points", "size_ratio"} <= set(judged)
        review_md = project.parent / f"review-{backend}.md"
        sh("edgeml", "review", "--base", "HEAD", "--out", str(review_md), cwd=project)
        goals = review_md.read_text()
        assert "head from `metrics/evaluate.json` and `metrics/bench.json`" in goals and "not measured on head" not in goals

    # README's compact `dvc exp show` fits a 200-column terminal with these experiments
    line = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("dvc exp show --no-pager"))
    shown = subprocess.run(shlex.split(line), cwd=project, capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert max(len(row) for row in shown.stdout.splitlines()) <= 200, shown.stdout
    assert all(backend in shown.stdout for backend in ("fbgemm", "qnnpack", "pt2e_x86", "onnxruntime"))
    experiments = sh("dvc", "exp", "list", "--name-only", cwd=project).split()
    assert "Experiment" in shown.stdout and len(experiments) == 4
    assert all(name in shown.stdout for name in experiments)  # the name column: two rows can be told apart


def test_bad_params_stop_before_any_work(project: Path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["quantize"]["backend"] = "tensorrt"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(["dvc", "repro", "fetch"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    assert "quantize.backend: 'tensorrt' is not one of ['fbgemm', 'qnnpack', 'pt2e_x86', 'onnxruntime'" in result.stderr + result.stdout
    assert not (project / "data/raw").exists()


def test_failed_stage_leaves_no_partial_output(project: Path, mirror: Path):
    # CIFAR-10 decodes fine, then one Tiny ImageNet image is corrupt: nothing may be left behind.
    files = tinyimagenet_files(count=30)
    files["tiny-imagenet-200/test/images/test_7.JPEG"] = b"\xff\xd8\xff not a jpeg"
    write_tar(mirror / "tiny-imagenet-200-valtest.tar.gz", files)
    write_sha256sums(mirror)
    result = subprocess.run(["dvc", "repro", "prepare"], cwd=project, capture_output=True, text=True)
    assert result.returncode != 0
    assert "test_7.JPEG: cannot decode image" in result.stderr + result.stdout
    assert not (project / "data/prepared").exists()
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw", "sources.json"]


def test_sweep_chooses_without_test_data(project: Path):
    """The recipe choice reads validation data only: with every test array gone from the prepared data,
    each recipe's quality numbers (what the rule chooses on, besides timings) come out identical."""
    sh("dvc", "repro", "sweep_report", cwd=project)
    recipes = yaml.safe_load((project / "params.yaml").read_text())["sweep"]["recipes"]
    before = {r: json.loads((project / f"metrics/sweep/{r}.json").read_text())["validation"] for r in recipes}
    prepared = project / "data/prepared"
    with np.load(prepared / "cifar10.npz") as data:
        kept = {k: data[k] for k in data.files if not k.startswith("test")}
    (prepared / "cifar10.npz").unlink()
    np.savez(prepared / "cifar10.npz", **kept)
    for test_set in yaml.safe_load((project / "params.yaml").read_text())["ood"]["sets"]:
        (prepared / "ood" / f"{test_set}.npz").unlink()
    (prepared / "openood_cifar10.npz").unlink()
    for recipe in recipes:
        sh("python", "stages/sweep.py", recipe, cwd=project)
    sh("python", "stages/sweep_reference.py", cwd=project)
    sh("python", "stages/sweep_timing.py", cwd=project)
    sh("python", "stages/sweep_report.py", cwd=project)
    after = {r: json.loads((project / f"metrics/sweep/{r}.json").read_text())["validation"] for r in recipes}
    assert after == before
