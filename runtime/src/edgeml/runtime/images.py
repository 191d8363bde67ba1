"""Image files to the model's input, as at training time: decode, convert to RGB, centre square, resize to 32x32.

Torch-free: the edge runtime and the pipeline share it, so an image is preprocessed the same way in both.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeml.errors import EdgeMLError


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


CIFAR10_STD = (0.2470, 0.2435, 0.2616)


IMAGE_SIZE = 32


MAX_FILE_MB = 50.0  # files over this are refused before being read


MAX_MEGAPIXELS = 40.0  # images over this are refused before being decoded (a 40 MP RGB image is 120 MB)


PREPROCESSING = (
    "first frame of an animated image; EXIF orientation applied; 16-bit gray keeps its top 8 bits; "
    f"grayscale, palette, RGBA (alpha dropped) and CMYK converted to RGB; the central square, box-filtered "
    f"down (bilinear up) to {IMAGE_SIZE}x{IMAGE_SIZE}; uint8 RGB, normalised inside the artifact"
)


class DataError(EdgeMLError, RuntimeError):
    """An archive or image that cannot be decoded; the message names the file."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode to RGB as at training time (grayscale, palette and RGBA converted); name the file on failure."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: cannot decode image ({exc})") from exc
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the top 8 bits, as 8-bit tools would
        array = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_image(image: np.ndarray | Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image to ``size`` x ``size`` RGB: its central square, area-averaged when shrinking (ODIN's
    resize) or bilinear when enlarging (OpenOOD's for MNIST); grayscale is copied to three channels.
    Square images are not cropped, so Tiny ImageNet and MNIST are resized whole. Takes an HWC array
    (the pipeline's OOD sets) or a decoded Pillow image (``edgeml predict``), with the same result."""
    if isinstance(image, np.ndarray):
        if image.shape == (size, size, 3):
            return image
        image = Image.fromarray(image)
    width, height = image.size
    side = min(height, width)
    if width != height:
        top, left = (height - side) // 2, (width - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if side != size:
        image = image.resize((size, size), Image.BOX if side >= size else Image.BILINEAR)
    return np.asarray(image)


def resize_rgb(images: Iterable[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """:func:`resize_image` over a set of images."""
    return np.stack([resize_image(image, size) for image in images])


def read_image(path: str | Path, max_file_mb: float = MAX_FILE_MB, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """An image file as the models' input (uint8 32x32 RGB, by :data:`PREPROCESSING`); a file that is
    not a usable image raises DataError naming it and why. Never blocks on a FIFO or device, and
    never reads more than ``max_file_mb`` or decodes more than ``max_megapixels``."""
    data = _read_regular_file(Path(path), max_file_mb)
    try:
        pixels = fast_decode(data, path, max_megapixels)
        if pixels is not None:
            return resize_image(pixels)
        image = Image.open(io.BytesIO(data))  # reads the header only
        _check_megapixels(path, image.width, image.height, max_megapixels)
        image.load()  # the first frame of an animated GIF/PNG/WebP
        ImageOps.exif_transpose(image, in_place=True)
        return resize_image(_to_rgb(image))
    except DataError:
        raise
    except UnidentifiedImageError as exc:  # its message names an in-memory buffer
        raise DataError(f"{path}: not an image file (no known image format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, where made an error
        raise DataError(f"{path}: refused as a decompression bomb ({exc})") from exc
    except Exception as exc:  # decoders of untrusted bytes raise anything (struct.error, IndexError, ...)
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


# PNG chunks and JPEG segments that leave Pillow's pixels as the file's plain RGB: a file with any other (EXIF or
# XMP orientation, transparency, animation, Adobe colour transforms, ...) is decoded by Pillow.
PLAIN_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"pHYs", b"sBIT", b"tIME"}
PLAIN_JPEG_MARKERS = {0xE0, 0xE2, 0xDB, 0xC4, 0xC0, 0xC1, 0xC2, 0xDD, 0xFE}  # JFIF, ICC, tables, baseline/progressive frames, restart, comment


def fast_decode(data: bytes, path: str | Path, max_megapixels: float) -> np.ndarray | None:
    """The pixels Pillow would give, decoded faster, for the commonest files: 8-bit RGB PNGs (pyspng) and
    YCbCr JPEGs (simplejpeg, with libjpeg-turbo's exact integer DCT and fancy upsampling, as Pillow decodes
    them), holding nothing but :data:`PLAIN_PNG_CHUNKS` / :data:`PLAIN_JPEG_MARKERS`. None for any other file,
    or where pyspng / simplejpeg is not installed: Pillow decodes it (tests check the two agree bit for bit)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _fast_png(data, path, max_megapixels)
        if data.startswith(b"\xff\xd8"):
            return _fast_jpeg(data, path, max_megapixels)
    except DataError:  # over the megapixel limit
        raise
    except Exception:  # not installed, or a file they cannot read: Pillow decodes it, or names what is wrong
        pass
    return None


def _fast_png(data: bytes, path: str | Path, max_megapixels: float) -> np.ndarray | None:
    import pyspng

    width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if (depth, color, interlace) != (8, 2, 0):  # 8-bit RGB, not interlaced
        return None
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind not in PLAIN_PNG_CHUNKS:
            return None
        position += 12 + length
        if kind == b"IEND":
            break
    _check_megapixels(path, width, height, max_megapixels)
    return pyspng.load(data)


def _fast_jpeg(data: bytes, path: str | Path, max_megapixels: float) -> np.ndarray | None:
    import simplejpeg

    position = 2
    while position + 4 <= len(data):  # the segments up to the first scan
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan
            break
        if marker not in PLAIN_JPEG_MARKERS:
            return None
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    else:
        return None
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace != "YCbCr":
        return None
    _check_megapixels(path, width, height, max_megapixels)
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)


def _check_megapixels(path: str | Path, width: int, height: int, max_megapixels: float) -> None:
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise DataError(
            f"{path}: {width}x{height} pixels ({megapixels:.0f} MP) is over the "
            f"{max_megapixels:g} MP limit (max_megapixels / --max-megapixels)"
        )


def _read_regular_file(path: Path, max_file_mb: float) -> bytes:
    """The bytes of a regular file of at most ``max_file_mb``. The type and size are checked before
    opening (a FIFO, device or folder is never opened) and again on the open descriptor, in case the
    path was swapped in between; the open itself does not wait for a FIFO's writer."""
    limit = int(max_file_mb * 1e6)
    try:
        _check_regular(path, os.stat(path), limit, max_file_mb)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: {'dangling symbolic link' if path.is_symlink() else 'no such file'}") from None
    except OSError as exc:  # permission denied, a symbolic link loop, ...
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    except ValueError as exc:  # a name no file can have (an embedded NUL)
        raise DataError(f"{str(path)!r}: {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        size = _check_regular(path, os.fstat(fd), limit, max_file_mb)
        try:
            data = f.read(size + 1)  # one byte more tells a file that grew since
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > size:
        raise DataError(f"{path}: changed while being read")
    if not data:
        raise DataError(f"{path}: empty file")
    return data


def _check_regular(path: Path, info: os.stat_result, limit: int, max_file_mb: float) -> int:
    """``info``'s size, if it is a regular file within ``limit`` bytes."""
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: {_kind(info.st_mode, path)}, not an image file")
    if info.st_size > limit:
        raise DataError(f"{path}: {info.st_size / 1e6:.3g} MB is over the {max_file_mb:g} MB limit (max_file_mb / --max-file-mb)")
    return info.st_size


def _kind(mode: int, path: Path) -> str:
    if stat.S_ISDIR(mode):  # found as a link while searching, or a folder that could not be searched
        if path.is_symlink():
            return "a symbolic link to a folder (not followed)"
        try:
            os.scandir(path).close()
        except OSError as exc:
            return f"a folder that cannot be listed ({exc.strerror or exc})"
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
