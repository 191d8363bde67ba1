"""The deployable artifact and `edgeml predict`: round trip, bad inputs, tampering."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeml.bench.isolated import Load, Workers
from edgeml.cli import main
from edgeml.data.readers import CIFAR10_CLASSES
from edgeml.model.inference import predict_logits
from edgeml.ood.detectors import DETECTORS, ModelContext, Scorer, detector_class, make_detector, predict_outputs
from edgeml.package import artifact_path, build_artifact, threshold_at_tpr
from edgeml.params import QuantizeParams
from edgeml.quantization import int8_path, load_deployable, load_head, make_quantizer
from edgeml.runtime.artifact import (
    FORMAT,
    METADATA,
    ArtifactError,
    EdgeModel,
    input_metadata,
    sha256_file,
)

BACKENDS = ["fbgemm", "onnxruntime", "pt2e_x86", "openvino"]  # the four artifact formats: .pt, .onnx, .pt2, .xml


def msp(logits: torch.Tensor) -> torch.Tensor:
    """The maximum softmax probability: a logit detector's score, as the artifact carries one."""
    return logits.softmax(dim=1).amax(dim=1)


def make_artifact(backend: str, model: torch.nn.Module, images: torch.Tensor, folder: Path) -> tuple[Path, Path, float]:
    """(artifact path, in-pipeline INT8 model path, threshold) of ``backend`` built from ``model``, as the package stage does."""
    observer = "minmax" if backend == "onnxruntime" else "histogram"
    quantizer = make_quantizer(QuantizeParams(backend=backend, observer=observer, calibration_size=64))
    quantizer.run(model, images[:64], int8_path(backend, folder))
    threshold = threshold_at_tpr(msp(predict_logits(load_deployable(int8_path(backend, folder), backend), images)).numpy(), 0.95)
    metadata = {"classes": list(CIFAR10_CLASSES), "input": input_metadata(), "detector": "msp", "threshold": threshold}
    path = artifact_path(backend, folder)
    build_artifact(int8_path(backend, folder), backend, Scorer(lambda logits, features: msp(logits)), metadata, path)
    return path, int8_path(backend, folder), threshold


@pytest.fixture(scope="module", params=BACKENDS)
def artifact(request, float_model_and_images, tmp_path_factory):
    """(artifact path, in-pipeline INT8 model path, threshold) built from a small calibrated ResNet18."""
    return make_artifact(request.param, *float_model_and_images, tmp_path_factory.mktemp(f"artifact-{request.param}"))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def run_cli(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_threshold_keeps_the_requested_fraction():
    scores = np.random.default_rng(0).permutation(np.arange(100) / 100)
    threshold = threshold_at_tpr(scores, 0.95)
    assert threshold == pytest.approx(0.045) and (scores >= threshold).mean() == 0.95  # between 0.04 and 0.05
    assert threshold_at_tpr(scores, 0.955) == pytest.approx(0.035)  # at least the fraction asked for
    assert threshold_at_tpr(scores, 1.0) == 0.0


def test_artifact_round_trips(artifact, float_model_and_images):
    path, int8_path, threshold = artifact
    _, images = float_model_and_images
    loaded = EdgeModel.load(path.parent)  # the folder, as the package stage writes it
    assert loaded.metadata["threshold"] == threshold and loaded.metadata["classes"][0] == "airplane"
    int8 = load_deployable(int8_path, loaded.metadata["backend"])
    with torch.no_grad():
        probs, scores = loaded.module(images)
    np.testing.assert_allclose(scores.numpy(), msp(predict_logits(int8, images)).numpy(), rtol=1e-5, atol=1e-6)
    records = loaded.predict_images(images.permute(0, 2, 3, 1).numpy())
    assert [r["class"] for r in records] == [CIFAR10_CLASSES[k] for k in probs.argmax(1)]
    assert [r["in_distribution"] for r in records] == (scores >= threshold).tolist()


def test_records_decide_at_the_scores_precision_and_name_the_first_of_tied_classes(openvino_artifact):
    """A record's decision is the one the pipeline's metrics count (NumPy compares float32 scores with the
    threshold rounded to float32): a score equal to the rounded threshold is in distribution, even where the
    exact threshold lies above it; the next float below is not. Tied probabilities name the first class."""
    loaded = EdgeModel.load(openvino_artifact[0].parent)
    loaded.metadata["threshold"] = 0.5 + 2**-30  # rounds down to 0.5 in float32
    scores = np.array([0.5, np.nextafter(np.float32(0.5), np.float32(0)), 0.75], np.float32)
    probabilities = np.tile(np.array([0.1, 0.45, 0.45] + [0.0] * 7, np.float32), (3, 1))
    records = loaded._records(probabilities, scores)
    assert [r["in_distribution"] for r in records] == (scores >= loaded.metadata["threshold"]).tolist() == [True, False, True]
    assert [r["class"] for r in records] == [CIFAR10_CLASSES[1]] * 3
    assert [r["confidence"] for r in records] == [0.45] * 3 and records[2]["ood_score"] == 0.75


def test_single_images_give_what_a_batch_gives(artifact, float_model_and_images):
    """Batch-1 calls run a separately compiled graph (OpenVINO: static, on arrays bound to its request once, so
    each call's outputs must be copies; pt2e: static, C++ wrapper)."""
    path, _, _ = artifact
    loaded = EdgeModel.load(path.parent)
    nhwc = float_model_and_images[1].permute(0, 2, 3, 1).numpy()[:8]  # a strided view, as callers may pass
    batched = loaded.runner(nhwc)
    singles = [loaded.runner(nhwc[i : i + 1]) for i in range(len(nhwc))]
    for output, name in ((0, "probabilities"), (1, "scores")):
        np.testing.assert_allclose(np.concatenate([s[output] for s in singles]), batched[output], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_batch_1_array_of_another_dtype_is_refused_not_cast(openvino_artifact):
    """The batch-1 call copies into an array bound to its request: a float image must raise, as OpenVINO does
    for a batch, not be cast to uint8 silently (0.5 would become 0)."""
    runner = EdgeModel.load(openvino_artifact[0].parent).runner
    image = np.full((1, 32, 32, 3), 128, np.uint8)
    assert runner(image)[0].shape == (1, 10)
    with pytest.raises(TypeError):
        runner(image.astype(np.float32) / 255)


def test_a_stream_of_batches_gives_what_single_calls_give_in_order(artifact, float_model_and_images):
    """OpenVINO IR runs a stream of batches several at a time (an AsyncInferQueue on its throughput streams);
    every runner's outputs come back in order, each batch's as one call gives it, however the stream ends."""
    path, _, _ = artifact
    loaded = EdgeModel.load(path.parent)
    nhwc = float_model_and_images[1].permute(0, 2, 3, 1).numpy()
    batches = [nhwc[i : i + size] for i, size in ((0, 5), (5, 1), (6, 8), (14, 3), (17, 5), (22, 2))]
    expected = [loaded.runner(batch) for batch in batches]
    for stream in (batches, batches[:1], []):
        got = list(loaded.runner.pipelined(iter(stream)))
        assert len(got) == len(stream)
        for (probabilities, scores), (want_probabilities, want_scores) in zip(got, expected):
            np.testing.assert_allclose(probabilities, want_probabilities, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    abandoned = loaded.runner.pipelined(iter(batches))
    next(abandoned)
    abandoned.close()  # calls still in flight finish before their inputs are freed: no crash, and the runner goes on
    np.testing.assert_allclose(loaded.runner(batches[0])[1], expected[0][1], rtol=1e-5, atol=1e-6)


def test_predict_pairs_each_file_with_its_own_record_when_whole_batches_are_unreadable(artifact, float_model_and_images, tmp_path):
    path, _, _ = artifact
    loaded = EdgeModel.load(path.parent)
    nhwc = float_model_and_images[1].permute(0, 2, 3, 1).numpy()[:7]
    files = []
    for i, image in enumerate(nhwc):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(image))
        if i in (1, 4):  # with batches of 2: one batch all unreadable, one half
            for j in range(2 if i == 1 else 1):
                files.append(tmp_path / f"{i}-bad{j}.png")
                files[-1].write_text("no image")
    files.append(tmp_path / "last-bad.png")
    files[-1].write_text("no image")
    expected = {str(tmp_path / f"{i}.png"): record for i, record in enumerate(loaded.predict_images(nhwc))}
    for workers in (0, 1, 2):
        records = list(loaded.predict(files, batch_size=2, workers=workers))
        assert [r["file"] for r in records] == [str(f) for f in files]
        for record in records:
            if "bad" in record["file"]:
                assert "error" in record
            else:
                want = expected[record["file"]]
                assert record["class"] == want["class"] and record["in_distribution"] == want["in_distribution"]
                assert record["ood_score"] == pytest.approx(want["ood_score"], rel=1e-5, abs=1e-6)


def test_the_bench_times_the_artifact_as_called_and_bare(artifact):
    """The bench's two timing workers for the packaged model load and run it (the bare call for OpenVINO IR only)."""
    path, _, _ = artifact
    loads = {"artifact": Load("edgeml.bench.isolated:artifact", {"path": str(path), "threads": 1})}
    if path.suffix == ".xml":
        loads["bare"] = Load("edgeml.bench.isolated:bare_openvino", {"path": str(path), "threads": 1})
    with Workers(loads) as workers:
        for worker in workers.values():
            assert all(s > 0 for s in worker.samples(batch=1, settle=1, runs=2) + worker.samples(batch=4, settle=0, runs=1))


def test_cli_on_a_mixed_folder(artifact, tmp_path, capsys):
    path, _, _ = artifact
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(png(rgb))
    (folder / "b_corrupt.png").write_bytes(png(rgb)[:40])
    (folder / "c_notes.txt").write_text("not an image")
    (folder / "d_gray.png").write_bytes(png(rgb[..., 0]))
    (folder / "e_rgba.png").write_bytes(png(np.dstack([rgb, np.full((32, 32), 255, np.uint8)])))
    (folder / "f_gray16.png").write_bytes(png((rgb[..., 0].astype(np.uint16) * 257)))
    (folder / "g_odd_size.png").write_bytes(png(rng.integers(0, 256, (47, 61, 3), dtype=np.uint8)))

    code, records, _ = run_cli(capsys, str(folder), "--artifact", str(path), "--batch-size", "3", "--threads", "1")
    assert code == 1  # some files failed
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in records}
    assert list(by_name) == sorted(by_name)  # one record per file, in order
    for bad in ("b_corrupt.png", "c_notes.txt"):
        assert bad in by_name[bad]["error"] and "class" not in by_name[bad]
    for good in ("a_good.png", "d_gray.png", "e_rgba.png", "f_gray16.png", "g_odd_size.png"):
        record = by_name[good]
        assert record["class"] in CIFAR10_CLASSES and 0 < record["confidence"] <= 1
        assert isinstance(record["in_distribution"], bool) and "error" not in record
    # RGBA with an opaque alpha is the same picture as RGB; 16-bit gray matches its 8-bit version
    assert by_name["e_rgba.png"]["ood_score"] == by_name["a_good.png"]["ood_score"]
    assert by_name["f_gray16.png"]["ood_score"] == by_name["d_gray.png"]["ood_score"]

    code, records, _ = run_cli(capsys, str(folder / "a_good.png"), "--artifact", str(path))
    assert code == 0 and len(records) == 1


def test_tampered_or_missing_artifact_is_refused(artifact, tmp_path, capsys):
    path, _, _ = artifact
    tampered = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    sidecar = tmp_path / f"{path.name}.sha256"
    sidecar.write_text(path.with_name(path.name + ".sha256").read_text())
    code, records, err = run_cli(capsys, str(tmp_path), "--artifact", str(tampered))
    assert code == 2 and records == [] and "sha256 is" in err and "modified" in err
    code, _, err = run_cli(capsys, str(tmp_path), "--artifact", str(tmp_path / "absent.pt"))
    assert code == 2 and "artifact not found" in err
    sidecar.write_text("\n")
    code, _, err = run_cli(capsys, str(tmp_path), "--artifact", str(tampered))  # one error line, no traceback
    assert code == 2 and "sha256: empty" in err and "Traceback" not in err
    sidecar.unlink()
    with pytest.raises(ArtifactError, match="checksum file not found"):
        EdgeModel.load(tampered)


@pytest.fixture(scope="module")
def openvino_artifact(float_model_and_images, tmp_path_factory) -> tuple[Path, Path, float]:
    return make_artifact("openvino", *float_model_and_images, tmp_path_factory.mktemp("artifact-ir"))


def test_an_ir_artifacts_weights_are_verified_before_openvino_reads_them(openvino_artifact, tmp_path, monkeypatch):
    """An OpenVINO IR artifact is two files; its graph (the .xml, which the .sha256 covers) records the
    .bin's digest, so a changed or missing .bin is refused, naming it, before OpenVINO reads either."""
    import openvino

    artifact, _, _ = openvino_artifact
    copy = tmp_path / artifact.name
    for source in (artifact, artifact.with_suffix(".bin"), Path(f"{artifact}.sha256")):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    assert EdgeModel.load(copy).metadata["backend"] == "openvino"  # the copy is whole

    def forbidden(*args, **kwargs):
        pytest.fail("OpenVINO read the model before its weights were verified")

    monkeypatch.setattr(openvino.Core, "read_model", forbidden)
    monkeypatch.setattr(openvino.Core, "compile_model", forbidden)
    weights = copy.with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{weights.name}: sha256 is [0-9a-f]{{64}}, expected [0-9a-f]{{64}} \(recorded in {copy.name}\); the file is corrupt or was modified"):
        EdgeModel.load(copy)
    weights.unlink()
    with pytest.raises(ArtifactError, match=rf"{weights.name}: not found; an OpenVINO IR artifact is {copy.name} with {weights.name} beside it"):
        EdgeModel.load(tmp_path)  # the folder: the .bin is not mistaken for a second artifact either


def test_a_plain_model_file_is_not_an_artifact(artifact):
    _, int8_path, _ = artifact
    with pytest.raises(ArtifactError, match="not an EdgeML artifact"):
        EdgeModel.load(int8_path, sha256=sha256_file(int8_path))


def test_installed_command(artifact, tmp_path):
    """The command as users run it: a record on stdout, nothing on stderr (torch's C++ deprecation
    notice for quantized tensors, printed when a TorchScript INT8 model loads, is dropped)."""
    path, _, _ = artifact
    image = tmp_path / "x.png"
    image.write_bytes(png(np.zeros((32, 32, 3), np.uint8)))
    result = subprocess.run(
        [sys.executable, "-m", "edgeml.cli", "predict", str(image), "--artifact", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file"] == str(image)
    assert result.stderr == ""


def test_a_torch_artifact_whose_metadata_names_no_backend_is_refused(tmp_path):
    path = tmp_path / "artifact.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path), _extra_files={METADATA: json.dumps({"format": FORMAT})})
    with pytest.raises(ArtifactError, match="names no quantization backend"):
        EdgeModel.load(path, sha256=sha256_file(path))


@pytest.mark.parametrize("name", ["mds", "fdbd"])
def test_a_feature_detector_travels_in_the_artifact(artifact, float_model_and_images, tmp_path, name):
    """The artifact computes a feature detector's score in its own graph (ONNX, OpenVINO IR, TorchScript or torch.export):
    what EdgeModel returns is the detector's score of the INT8 file's own features."""
    _, int8, _ = artifact
    backend = {".pt": "fbgemm", ".onnx": "onnxruntime", ".pt2": "pt2e_x86", ".xml": "openvino"}[int8.suffix]
    images = float_model_and_images[1]
    model = load_deployable(int8, backend, features=True)
    fit = predict_outputs(model, images[:48])
    detector = make_detector(name, ModelContext(load_head(int8, backend))).fit(fit, torch.arange(48) % 10)
    held_out = predict_outputs(model, images[48:])
    with torch.no_grad():
        expected = detector.scorer()(held_out.logits, held_out.features).numpy()
    path = artifact_path(backend, tmp_path)
    metadata = {"classes": list(CIFAR10_CLASSES), "input": input_metadata(), "detector": name, "threshold": 0.0}
    build_artifact(int8, backend, detector.scorer(), metadata, path)
    with torch.no_grad():
        _, scores = EdgeModel.load(path).module(images[48:])
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", [n for n in DETECTORS if detector_class(n).carriable])
def test_every_carriable_detector_scores_the_same_in_an_openvino_artifact(openvino_artifact, float_model_and_images, tmp_path, name):
    """OpenVINO converts the artifact's ends itself, so each carriable detector's score is checked there (its
    ONNX frontend once reduced Energy's logsumexp over the batch too)."""
    _, int8, _ = openvino_artifact
    images = float_model_and_images[1]
    model = load_deployable(int8, "openvino", features=True)
    settings = {"vim": {"dim": 16}}.get(name, {})  # ViM's subspace must be smaller than the 48 fit images
    detector = make_detector(name, ModelContext(load_head(int8, "openvino")), **settings).fit(predict_outputs(model, images[:48]), torch.arange(48) % 10)
    with torch.no_grad():
        held_out = predict_outputs(model, images[48:])
        expected = detector.scorer()(held_out.logits, held_out.features).numpy()
    path = artifact_path("openvino", tmp_path)
    build_artifact(int8, "openvino", detector.scorer(), {"classes": list(CIFAR10_CLASSES), "input": input_metadata(), "detector": name, "threshold": 0.0}, path)
    with torch.no_grad():
        _, scores = EdgeModel.load(path).module(images[48:])
    np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-4, atol=1e-5)


def test_the_readme_demo_runs_the_cli_on_a_seeded_sample_of_each_set(openvino_artifact, float_model_and_images, tmp_path):
    from edgeml.reporting.demo import predict_demo

    path, _, _ = openvino_artifact
    images = float_model_and_images[1][:40].permute(0, 2, 3, 1).numpy()
    sets = {"id": images, "dark": np.zeros((30, 32, 32, 3), np.uint8)}
    text = predict_demo(path, sets, {"id": 0.95, "dark": 0.5}, count=8, seed=0, folder=tmp_path / "a")
    rows = [line for line in text.splitlines() if line.startswith("| ID test") or line.startswith("| `dark`")]
    assert rows[0].startswith("| ID test images (CIFAR-10) | 8 |") and rows[1].startswith("| `dark` | 8 |")
    assert rows[1].split(" | ")[2] in ("0.0%", "100.0%")  # eight identical black images: one decision for all
    assert rows[1].endswith("| 50.0% ± 35.4 |")  # two standard errors of 8 draws at 50%
    lines = [json.loads(line) for line in text.split("```")[1].strip().splitlines()]
    assert len(lines) == 2 and all(line["file"].startswith("demo/") and "in_distribution" in line for line in lines)
    again = predict_demo(path, sets, {"id": 0.95, "dark": 0.5}, count=8, seed=0, folder=tmp_path / "b")
    assert again == text  # seeded: the same sample, the same lines
