"""The edge install by name: `pip install ./runtime[openvino]` or `./runtime[onnxruntime]` in a fresh virtual
environment, then `edgeml predict` on an artifact the package stage's code built, with torch absent there."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from test_deploy import make_artifact

pytestmark = pytest.mark.e2e  # installs from the package registry: minutes

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_sizes", ROOT / "scripts/install_sizes.py")
install_sizes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_sizes)


@pytest.mark.parametrize("extra, backend", [("openvino", "openvino"), ("onnxruntime", "onnxruntime")])
def test_the_runtime_alone_runs_edgeml_predict_without_torch(extra, backend, float_model_and_images, tmp_path):
    artifact, _, threshold = make_artifact(backend, *float_model_and_images, tmp_path / "artifact")
    python = install_sizes.install_runtime(extra, tmp_path / "install")
    absent = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert absent.returncode != 0 and "No module named 'torch'" in absent.stderr
    packages = {name.lower() for name in install_sizes.installed(python)}
    assert {"edgeml-runtime", "numpy", "pillow", extra} <= packages and "torch" not in packages
    image = tmp_path / "cat.png"
    Image.fromarray(float_model_and_images[1][0].permute(1, 2, 0).numpy()).save(image)
    (tmp_path / "notes.txt").write_text("not an image")
    edgeml = python.parent / "edgeml"
    result = subprocess.run([str(edgeml), "predict", str(image), str(tmp_path / "notes.txt"), "--artifact", str(artifact)],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # one file was not an image
    cat, notes = (json.loads(line) for line in result.stdout.splitlines())
    assert cat["class"] and 0 < cat["confidence"] <= 1 and cat["in_distribution"] == (cat["ood_score"] >= threshold)
    assert "not an image" in notes["error"]
    review = subprocess.run([str(edgeml), "review"], capture_output=True, text=True)
    assert review.returncode == 2 and "invalid choice: 'review'" in review.stderr  # the pipeline's command is not here
