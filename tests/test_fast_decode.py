"""The fast decode path (pyspng, simplejpeg) gives Pillow's pixels bit for bit, and only takes the files it can."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from edgeml.runtime import images
from edgeml.runtime.images import DataError, read_image

pytest.importorskip("pyspng")
pytest.importorskip("simplejpeg")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with noise and edges: chroma subsampling and DCT rounding both show on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    base[height // 3 : height // 2, width // 4 :] = [220, 30, 40]
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif(orientation: int) -> Image.Exif:
    data = Image.Exif()
    data[0x0112] = orientation
    return data


RGB = Image.fromarray(photo(256, 192))
TEXT = PngImagePlugin.PngInfo()
TEXT.add_text("Comment", "made by a test")
# name -> (file bytes, whether the fast path takes it)
CORPUS = {
    "png rgb 32x32": (encoded(Image.fromarray(photo(32, 32)), "PNG"), True),
    "png rgb 256x192": (encoded(RGB, "PNG"), True),
    "png exif rotated": (encoded(RGB, "PNG", exif=exif(6)), False),
    "png text chunk": (encoded(RGB, "PNG", pnginfo=TEXT), False),
    "png grayscale": (encoded(RGB.convert("L"), "PNG"), False),
    "png palette": (encoded(RGB.convert("P"), "PNG"), False),
    "png rgba": (encoded(RGB.convert("RGBA"), "PNG"), False),
    "png 16-bit gray": (encoded(Image.fromarray((photo(64, 64)[..., 0].astype(np.uint16) * 257)), "PNG"), False),
    "jpeg 4:2:0": (encoded(RGB, "JPEG", quality=90, subsampling=2), True),
    "jpeg 4:2:2": (encoded(RGB, "JPEG", quality=75, subsampling=1), True),
    "jpeg 4:4:4": (encoded(RGB, "JPEG", quality=95, subsampling=0), True),
    "jpeg progressive": (encoded(RGB, "JPEG", quality=85, progressive=True), True),
    "jpeg optimized, restart markers": (encoded(RGB, "JPEG", quality=80, optimize=True, restart_marker_blocks=4), True),
    "jpeg icc profile, comment": (encoded(RGB, "JPEG", quality=90, icc_profile=b"\0" * 128, comment=b"hello"), True),
    "jpeg exif rotated": (encoded(RGB, "JPEG", quality=90, exif=exif(6)), False),
    "jpeg grayscale": (encoded(RGB.convert("L"), "JPEG", quality=90), False),
    "jpeg cmyk": (encoded(RGB.convert("CMYK"), "JPEG", quality=90), False),
}


@pytest.mark.parametrize("name", CORPUS)
def test_fast_path_gives_pillows_pixels_and_takes_only_plain_files(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data, fast = CORPUS[name]
    path = tmp_path / "image"
    path.write_bytes(data)
    assert (images.fast_decode(data, path, images.MAX_MEGAPIXELS) is not None) == fast
    decoded = read_image(path)
    monkeypatch.setattr(images, "fast_decode", lambda *args: None)  # Pillow alone
    np.testing.assert_array_equal(decoded, read_image(path))


def test_fast_path_keeps_the_megapixel_limit(tmp_path: Path):
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"large.{fmt.lower()}"
        path.write_bytes(encoded(RGB, fmt))
        with pytest.raises(DataError, match=r"256x192 pixels \(0 MP\) is over the 0.01 MP limit"):
            read_image(path, max_megapixels=0.01)


@pytest.mark.parametrize("name", ["png rgb 256x192", "jpeg 4:2:0", "jpeg progressive"])
def test_a_truncated_file_goes_to_pillow_which_names_it(name: str, tmp_path: Path):
    data = CORPUS[name][0]
    for keep in (0.3, 0.999):  # cut in the pixel data, or just before the end marker
        path = tmp_path / "cut"
        path.write_bytes(data[: int(len(data) * keep)])
        assert images.fast_decode(path.read_bytes(), path, images.MAX_MEGAPIXELS) is None
        with pytest.raises(DataError, match=r"cut: cannot decode image \(OSError: image file is truncated"):
            read_image(path)
