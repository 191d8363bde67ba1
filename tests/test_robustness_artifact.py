"""`edgeml predict` and EdgeModel under bad input: adversarial files written here, wrong arrays,
unusual folders, parallel decoding, and a machine without torch."""

import errno
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_deploy import make_artifact, png, run_cli

from edgeml.bench.loadtest import soak, write_mixed_files
from edgeml.runtime.artifact import EdgeModel, list_files
from edgeml.runtime.images import (
    PREPROCESSING,
    DataError,
    read_image,
    resize_image,
    resize_rgb,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def onnx_artifact(float_model_and_images, tmp_path_factory) -> Path:
    return make_artifact("onnxruntime", *float_model_and_images, tmp_path_factory.mktemp("artifact-onnx"))[0]


@pytest.fixture(scope="module")
def model(onnx_artifact) -> EdgeModel:
    return EdgeModel.load(onnx_artifact, threads=1)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: tens of KB for hundreds of megapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes((1 + (width + 7) // 8) * height)  # filter byte + packed bits per row, all zero
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def save(image: Image.Image, path: Path, fmt: str, **options) -> Path:
    image.save(path, format=fmt, **options)
    return path


def upright_red_over_blue() -> np.ndarray:
    """32 wide x 64 tall: red top half, blue bottom half."""
    return np.concatenate([np.full((32, 32, 3), RED, np.uint8), np.full((32, 32, 3), BLUE, np.uint8)])


def exif_rotated_jpeg(path: Path) -> Path:
    """The upright picture stored on its side, 64 x 32, with EXIF orientation 6 (display rotated 90° clockwise), as cameras write it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(upright_red_over_blue()).transpose(Image.Transpose.ROTATE_90)
    return save(stored, path, "JPEG", exif=exif, quality=95)


def animated(path: Path, fmt: str) -> Path:
    """Two frames, red then blue."""
    first, second = (Image.new("RGB", (32, 32), color) for color in (RED, BLUE))
    return save(first, path, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def refuse_open(monkeypatch, path: Path) -> None:
    """Make ``path`` unreadable: chmod 000, and where that does not stop this user (root), fail its open as it would."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = os.open

        def open_(file, flags, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_)


@pytest.fixture
def adversarial(tmp_path, monkeypatch) -> tuple[Path, dict[str, str | None]]:
    """A folder of hostile and unusual entries; name -> the expected error's words, None for a usable image."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (folder / "sub" / "good.png").write_bytes(png(rgb))
    (folder / "bomb_16000x16000.png").write_bytes(bilevel_png(16000, 16000))
    (folder / "warning_zone_10000x10000.png").write_bytes(bilevel_png(10000, 10000))
    (folder / "truncated.png").write_bytes(png(rgb)[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    with open(folder / "huge.png", "wb") as f:  # sparse: 60 MB on paper, nothing on disk
        f.truncate(60_000_000)
    exif_rotated_jpeg(folder / "exif_rotated.jpg")
    animated(folder / "first_frame.gif", "GIF")
    animated(folder / "first_frame.png", "PNG")
    save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), folder / "cmyk.jpg", "JPEG")
    (folder / "gray16.png").write_bytes(png(rgb[..., 0].astype(np.uint16) * 257))
    (folder / "one_pixel.png").write_bytes(png(rgb[:1, :1]))
    (folder / "wide_4000x10.png").write_bytes(png(rng.integers(0, 256, (10, 4000, 3), dtype=np.uint8)))
    (folder / "dangling_link.png").symlink_to(tmp_path / "gone.png")
    (folder / "link_to_folder").symlink_to(folder / "sub")
    os.mkfifo(folder / "fifo.png")
    (folder / "unreadable.png").write_bytes(png(rgb))
    refuse_open(monkeypatch, folder / "unreadable.png")
    expected = {
        "sub/good.png": None, "exif_rotated.jpg": None, "first_frame.gif": None, "first_frame.png": None,
        "cmyk.jpg": None, "gray16.png": None, "one_pixel.png": None, "wide_4000x10.png": None,
        "bomb_16000x16000.png": "decompression bomb",
        "warning_zone_10000x10000.png": "10000x10000 pixels (100 MP) is over the 40 MP limit",
        "truncated.png": "cannot decode image",
        "empty.png": "empty file",
        "notes.txt": "not an image file",
        "huge.png": "60 MB is over the 50 MB limit",
        "dangling_link.png": "dangling symbolic link",
        "link_to_folder": "a symbolic link to a folder (not followed)",
        "fifo.png": "a FIFO (named pipe), not an image file",
        "unreadable.png": "Permission denied",
    }
    return folder, expected


def check_records(records: list[dict], folder: Path, expected: dict[str, str | None]) -> None:
    """One record per entry, in list order; errors name the file and why, the others are predictions."""
    assert [r["file"] for r in records] == [str(p) for p in list_files([folder])]
    by_name = {Path(r["file"]).relative_to(folder).as_posix(): r for r in records}
    assert sorted(by_name) == sorted(expected)
    for name, words in expected.items():
        record = by_name[name]
        if words is None:
            assert "error" not in record and 0 < record["confidence"] <= 1, record
        else:
            assert record["error"].startswith(f"{folder / name}: ") and words in record["error"], record
            assert "class" not in record


def test_cli_gives_every_entry_one_line_and_goes_on(onnx_artifact, adversarial, capsys):
    folder, expected = adversarial
    # Pillow only warns between 89 and 179 MP; the command makes that an error record like the bomb's.
    expected["warning_zone_10000x10000.png"] = "decompression bomb"
    code, records, err = run_cli(capsys, str(folder), "--artifact", str(onnx_artifact), "--batch-size", "4", "--threads", "1")
    assert code == 1 and err == ""
    check_records(records, folder, expected)


def test_api_parallel_and_sequential_agree_on_adversarial_files(model, adversarial):
    folder, expected = adversarial
    files = list_files([folder])
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own, for the 100 MP file our 40 MP limit then refuses
        parallel = list(model.predict(files, batch_size=3, workers=3))
        sequential = list(model.predict(files, batch_size=3, workers=0))
    check_records(parallel, folder, expected)
    assert sequential == parallel


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(DataError, read_image, fifo).value), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "read_image blocked on a FIFO"
    assert "a FIFO (named pipe)" in str(outcome[0])


def test_preprocessing_of_unusual_images(tmp_path):
    out = read_image(exif_rotated_jpeg(tmp_path / "rotated.jpg"))  # upright: red over blue, not side by side
    assert out[:12, :, 0].min() > 200 and out[:12, :, 2].max() < 60
    assert out[-12:, :, 2].min() > 200 and out[-12:, :, 0].max() < 60
    for fmt in ("GIF", "PNG"):  # the first frame of an animation
        assert (read_image(animated(tmp_path / f"anim.{fmt.lower()}", fmt)) == RED).all()
    cmyk = save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG")
    np.testing.assert_array_equal(read_image(cmyk), resize_image(Image.open(cmyk).convert("RGB")))
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    (tmp_path / "gray16.png").write_bytes(png(gray * 257))
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png"), np.repeat(gray[..., None], 3, axis=2))
    (tmp_path / "one.png").write_bytes(png(np.array([[[10, 20, 30]]], np.uint8)))
    assert (read_image(tmp_path / "one.png") == (10, 20, 30)).all()
    rgba = np.dstack([np.full((32, 32, 3), 99, np.uint8), np.zeros((32, 32), np.uint8)])
    (tmp_path / "rgba.png").write_bytes(png(rgba))
    assert (read_image(tmp_path / "rgba.png") == 99).all()  # alpha dropped, colour kept


def _pipeline_resize_before_the_move(image: np.ndarray, size: int = 32) -> np.ndarray:
    """edgeml.data.resize_image as it was before it moved to edgeml.preprocess, verbatim: the reference."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    pil = Image.fromarray(image[top : top + side, left : left + side]).convert("RGB")
    method = Image.BOX if side >= size else Image.BILINEAR
    return np.asarray(pil.resize((size, size), method))


def test_one_preprocessing_for_the_pipeline_and_the_cli(tmp_path):
    """The pipeline's resized OOD sets are byte-identical to before, and a file the CLI reads gets the same pixels."""
    rng = np.random.default_rng(1)
    shapes = [(32, 32, 3), (28, 28), (64, 64, 3), (36, 36, 3), (47, 61, 3), (61, 47, 3), (10, 4000, 3), (1, 1, 3), (500, 375, 3)]
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    pipeline = resize_rgb(images)
    assert pipeline.tobytes() == np.stack([_pipeline_resize_before_the_move(image) for image in images]).tobytes()
    for i, image in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(png(image))
        np.testing.assert_array_equal(read_image(tmp_path / f"{i}.png"), pipeline[i], err_msg=str(image.shape))


def test_limits_are_configurable(model, tmp_path, onnx_artifact, capsys):
    image = tmp_path / "big.png"
    image.write_bytes(bilevel_png(3000, 2000))  # 6 MP in a few KB
    (record,) = model.predict([image], max_megapixels=5)
    assert record["error"] == f"{image}: 3000x2000 pixels (6 MP) is over the 5 MP limit (max_megapixels / --max-megapixels)"
    assert "class" in next(model.predict([image], max_megapixels=7))
    code, records, _ = run_cli(capsys, str(image), "--artifact", str(onnx_artifact), "--max-file-mb", "0.0001")
    assert code == 1 and "MB is over the 0.0001 MB limit (max_file_mb / --max-file-mb)" in records[0]["error"]
    with pytest.raises(SystemExit):
        run_cli(capsys, str(image), "--artifact", str(onnx_artifact), "--workers", "-1")


def test_folder_search_lists_what_it_cannot_read(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "locked" / "hidden.png").write_bytes(b"x")
    (folder / "a.png").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):  # a folder this user may not list (root may list anything)
        if Path(path) == folder / "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert list_files([folder, tmp_path / "missing.png"]) == [folder / "a.png", folder / "locked", tmp_path / "missing.png"]
    with pytest.raises(DataError, match="locked: a folder that cannot be listed .Permission denied., not an image file"):
        read_image(folder / "locked")
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")


def files_taken(model: EdgeModel, folder: Path, records: int) -> int:
    """How many files ``predict`` (batches of 4, 2 decoding workers) takes from an endless stream to give ``records``."""
    (folder / "x.png").write_bytes(png(np.zeros((32, 32, 3), np.uint8)))
    taken = 0

    def endless():
        nonlocal taken
        while True:
            taken += 1
            yield folder / "x.png"

    given = model.predict(endless(), batch_size=4, workers=2)
    for _ in range(records):
        next(given)
    given.close()
    return taken


def test_decoding_runs_ahead_by_a_bounded_number_of_batches(model, tmp_path):
    assert files_taken(model, tmp_path, 10) == 4 * (3 + 2)  # the three batches yielded from, and one decoding ahead per worker


def test_an_ir_artifact_keeps_a_bounded_number_of_batches_in_flight(ir_artifact, tmp_path):
    """OpenVINO IR pipelines its calls: besides the batches decoding ahead, at most one per throughput
    stream in flight and the one it looks ahead by, however long the stream of files."""
    model = EdgeModel.load(ir_artifact)
    taken = files_taken(model, tmp_path, 40)
    streams = model.runner.calls.throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    assert 4 * 10 < taken <= 4 * (10 + 2 + streams + 1)  # ten batches given out, two decoding ahead


@pytest.mark.parametrize(
    "images, words",
    [
        (np.zeros((2, 32, 32, 3), np.float32) + 0.5, "got dtype float32; if they are in [0, 1], pass (images * 255)"),
        (np.zeros((2, 3, 32, 32), np.uint8), "got shape (2, 3, 32, 32); this looks like NCHW: pass images.transpose(0, 2, 3, 1)"),
        (np.zeros((32, 32, 3), np.uint8), "got shape (32, 32, 3); for one image pass images[None]"),
        (np.zeros((2, 64, 64, 3), np.uint8), "got shape (2, 64, 64, 3); resize with edgeml.runtime.images.resize_image"),
        (np.full((1, 32, 32, 3), 300, np.int64), "got int64 values from 300 to 300"),
        ([[0]], "expected a numpy array of uint8 RGB images of shape (N, 32, 32, 3) (HWC, values 0-255), got list"),
    ],
)
def test_wrong_arrays_are_refused(model, images, words):
    with pytest.raises(ValueError) as error:
        model.predict_images(images)
    assert "expected" in str(error.value) and words in str(error.value)


def test_integer_arrays_in_range_are_converted(model):
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3))
    assert model.predict_images(images) == model.predict_images(images.astype(np.uint8))
    assert model.predict_images(np.zeros((0, 32, 32, 3), np.uint8)) == []


def test_artifact_documents_its_preprocessing(model):
    assert model.metadata["input"]["preprocessing"] == PREPROCESSING
    assert "EXIF" in PREPROCESSING and "first frame" in PREPROCESSING and "central square" in PREPROCESSING


# Everything the full install has that a device with a runtime extra (numpy, Pillow, onnxruntime or openvino) lacks.
NOT_IN_RUNTIME = ["torch", "torchvision", "torchao", "onnx", "pytorch_ood", "sklearn", "scipy", "pandas", "matplotlib", "dvc", "dvclive", "tqdm", "yaml"]
WITHOUT_TORCH = """
import importlib.abc, json, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked}:
            raise ImportError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
import numpy as np
from edgeml.cli import main
from edgeml.runtime.artifact import EdgeModel
code = main(sys.argv[1:])
records = EdgeModel.load(sys.argv[4]).predict_images(np.zeros((2, 32, 32, 3), np.uint8))
print(json.dumps({{"code": code, "api": records}}))
"""


@pytest.fixture(scope="module")
def ir_artifact(float_model_and_images, tmp_path_factory) -> Path:
    return make_artifact("openvino", *float_model_and_images, tmp_path_factory.mktemp("artifact-ir"))[0]


@pytest.mark.parametrize("kind, runtime", [("onnx", "onnxruntime"), ("ir", "openvino")])
def test_artifact_runs_without_torch(request, kind, runtime, tmp_path):
    """`edgeml predict` and EdgeModel with an ONNX or an OpenVINO IR artifact, where torch (and all else outside
    its runtime extra) cannot be imported, nor the other format's runtime."""
    artifact = request.getfixturevalue(f"{kind}_artifact")
    other = {"onnxruntime": "openvino", "openvino": "onnxruntime"}[runtime]
    (tmp_path / "a.png").write_bytes(png(np.zeros((32, 32, 3), np.uint8)))
    (tmp_path / "b.txt").write_text("no image")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH.format(blocked=[*NOT_IN_RUNTIME, other]), "predict", str(tmp_path), "--artifact", str(artifact)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.stderr == ""
    *lines, summary = result.stdout.splitlines()
    records, summary = [json.loads(line) for line in lines], json.loads(summary)
    assert summary["code"] == 1 and [Path(r["file"]).name for r in records] == ["a.png", "b.txt"]
    assert "class" in records[0] and "not an image file" in records[1]["error"]
    assert [r["class"] for r in summary["api"]] == [records[0]["class"]] * 2


def test_soak_gives_every_file_one_record_and_reads_peak_memory_from_the_kernel(onnx_artifact, tmp_path):
    """The bench stage's soak: the command in its own process on a folder of the mixed files."""
    folder = tmp_path / "mixed"
    write_mixed_files(folder, 60, seed=1)
    names = sorted(p.name for p in folder.iterdir())
    unusable = [n for n in names if (folder / n).suffix == ".png" and not _is_image(folder / n)]
    assert len(names) == 60 and {Path(n).suffix for n in names} == {".png", ".jpg"} and unusable
    ballast = np.ones(800_000_000, np.uint8)  # 800 MB resident here: a forked child inherits it on paper
    for workers in (0, 2):
        result = soak(onnx_artifact, folder, batch_size=8, workers=workers, threads=1)
        assert (result["files"], result["records"], result["errors"]) == (60, 60, len(unusable))
        assert result["exit_code"] == 1 and result["stderr"] == "" and result["workers"] == workers
        # the command's own memory (numpy, Pillow, onnxruntime, a small model): tens of MB, not the ballast
        assert 20 < result["peak_rss_mb"] < 500 and result["images_per_s_steady"] > 0
    assert ballast.sum() == ballast.size


def _is_image(path: Path) -> bool:
    try:
        read_image(path)
    except DataError:
        return False
    return True
