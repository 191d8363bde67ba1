"""The outlier rules of OOD fine-tuning (edgeml.model.outliers), enforced: only allowed families, no i.i.d.
noise, nothing from the far-validation generator, and every outlier JPEG re-encoded as the training images."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeml.data.ood_sets import noise_images, synthetic_shapes
from edgeml.model import outliers
from edgeml.model import pictures as generated
from conftest import write_tar

# The families the rules allow; a new generator is added here only after
# checking it against the rules (docs/model.md, "Outliers made in code"): made from training images, or procedural pictures, nothing test-like.
ALLOWED = {
    "jigsaw": "training images, patches permuted",
    "box_shuffle": "training images, pixels of a box shuffled",
    "salient_shuffle": "training images, salient pixels shuffled (ASCOOD)",
    "strong_pixmix": "training images mixed with generated pictures",
    "procedural": "fractals, gratings, 1/f fields",
    "fractal_sketch": "FractalDB-style IFS points on a plain ground",
    "achromatic": "generated pictures and sketches, colour removed",
}
SOURCES = [Path(outliers.__file__), Path(generated.__file__), Path(outliers.__file__).with_name("finetune.py")]


def smooth_images(count: int, seed: int = 0) -> torch.Tensor:
    """Stand-ins for CIFAR images: smooth colour fields with an object-like blob (neighbouring pixels correlate)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:32, 0:32] / 31
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 1, (3, 3))
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / r**2)[..., None]
        images.append((a + (b - a) * xs[..., None]) * (1 - blob) + c * blob)
    return torch.from_numpy(np.round(np.stack(images) * 255).astype(np.uint8)).permute(0, 3, 1, 2)


def neighbour_correlation(images: torch.Tensor) -> float:
    """Mean correlation of horizontally neighbouring pixel values: ~0 for i.i.d. per-pixel noise."""
    x = images.float()
    left, right = x[..., :-1].flatten(1), x[..., 1:].flatten(1)
    left, right = left - left.mean(1, keepdim=True), right - right.mean(1, keepdim=True)
    corr = (left * right).sum(1) / (left.norm(dim=1) * right.norm(dim=1)).clamp_min(1e-9)
    return corr.mean().item()


@pytest.fixture(scope="module")
def pictures() -> torch.Tensor:
    return generated.mixing_pictures(64, 0)


def test_only_allowed_families_are_registered():
    assert set(outliers.GENERATORS) == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(outliers.GENERATORS))
def test_each_generator_makes_structured_outliers_not_iid_noise(name, pictures):
    images = smooth_images(64)
    made = outliers.GENERATORS[name](images, pictures, torch.Generator().manual_seed(0))
    assert made.shape == images.shape and made.dtype == torch.uint8
    assert not torch.equal(made, images)  # an outlier differs from the image it came from
    # ODIN's gaussian / uniform test sets are i.i.d. per pixel: their neighbours do not correlate
    noise = torch.from_numpy(noise_images("uniform_noise", 64, 0)).permute(0, 3, 1, 2)
    assert neighbour_correlation(noise) < 0.05
    assert neighbour_correlation(made) > 0.3


def test_image_based_generators_keep_the_training_images_colours(pictures):
    """Shuffles permute pixels: each image's colour histogram is kept, only its structure destroyed."""
    images = smooth_images(16)
    for name in ("jigsaw", "box_shuffle", "salient_shuffle"):
        made = outliers.GENERATORS[name](images, pictures, torch.Generator().manual_seed(1))
        for i in range(len(images)):  # the same multiset of RGB pixels
            before = sorted(map(tuple, images[i].flatten(1).T.tolist()))
            after = sorted(map(tuple, made[i].flatten(1).T.tolist()))
            assert before == after, name


def test_jigsaw_never_returns_the_image_unchanged(pictures):
    images = smooth_images(200, seed=3)
    made = outliers.jigsaw(images, pictures, torch.Generator().manual_seed(0))
    assert all(not torch.equal(a, b) for a, b in zip(made, images))


def test_no_outlier_code_reaches_the_validation_or_test_generators():
    """The far-validation generator (synthetic_shapes) and ODIN's noise sets live in edgeml.data.ood_sets:
    the modules that make training outliers never import it, nor any OOD data reader."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not any(name and ("ood_sets" in name or name.endswith("detectors")) for name in imported), path
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | {
            node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert not names & {"synthetic_shapes", "noise_images", "normal"}, path


def test_no_training_outlier_looks_like_a_shapes_val_image(pictures):
    """shapes_val images are flat regions over a two-tone gradient: most neighbouring pixels are exactly
    equal, and the gradient gives them many colours. A training outlier is a sketch, flat but with exactly
    two colours (its ground and its figure), which almost no shapes_val image has, or else mostly not flat.
    A generator drifting towards that family fails here, in colour or in gray."""
    def flat_share(images: torch.Tensor) -> torch.Tensor:
        return (images[..., 1:] == images[..., :-1]).all(1).float().flatten(1).mean(1)

    def colours(images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([len(image.flatten(1).unique(dim=1).T) for image in images])

    shapes = torch.from_numpy(synthetic_shapes(256, 0)).permute(0, 3, 1, 2)
    assert flat_share(shapes).mean() > 0.6
    assert (colours(shapes) <= 2).float().mean() < 0.05
    images = smooth_images(256, seed=5)
    for name, generator in outliers.GENERATORS.items():
        made = generator(images, pictures, torch.Generator().manual_seed(0))
        sketch = colours(made) == 2
        assert sketch.all() if name == "fractal_sketch" else flat_share(made[~sketch]).mean() < 0.35, name


def test_sketches_are_a_figure_in_one_colour_on_a_plain_ground_with_contrast():
    sketches = generated.sketches(200, np.random.default_rng(0)).astype(float) / 255
    luma = sketches @ np.array([0.299, 0.587, 0.114])
    ground_share = []
    for image, lumas in zip(sketches.reshape(200, -1, 3), luma.reshape(200, -1)):
        counts = np.unique(image, axis=0, return_counts=True)[1]
        assert len(counts) == 2
        assert lumas.max() - lumas.min() >= 0.3 - 1 / 255
        ground_share.append(counts.max() / len(image))
    assert np.median(ground_share) > 0.6  # mostly ground: a figure, not a texture


def jpeg_folder(tmp_path: Path, fmt: str) -> Path:
    rng = np.random.default_rng(0)
    files = {}
    for i in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, fmt, **({"quality": 75} if fmt == "JPEG" else {}))
        files[f"cifar10-jpeg/train/airplane/{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"] = buffer.getvalue()
    return write_tar(tmp_path / f"cifar-{fmt}.tar.gz", files)


def test_achromatic_outliers_are_the_generated_pictures_and_sketches_in_gray(pictures):
    """Gray on all three channels, the luma of a procedural picture (one of ``pictures``) or of a sketch
    (two gray levels, the figure's contrast kept), both kinds present."""
    made = outliers.achromatic(smooth_images(200, seed=2), pictures, torch.Generator().manual_seed(0))
    assert (made == made[:, :1]).all()
    luma = (pictures.float() * outliers.LUMA.view(1, 3, 1, 1)).sum(1).round().clamp(0, 255).to(torch.uint8)
    from_pool = torch.tensor([any(torch.equal(image[0], p) for p in luma) for image in made])
    two_tone = torch.tensor([len(image[0].unique()) == 2 for image in made])
    assert (from_pool ^ two_tone).all() and 0.35 < from_pool.float().mean() < 0.65
    for image in made[two_tone]:
        low, high = image[0].unique().float() / 255
        assert high - low >= 0.3 - 2 / 255


def test_the_encoding_is_read_from_the_training_images_of_the_source_used(tmp_path):
    encoding = outliers.training_encoding(jpeg_folder(tmp_path, "JPEG"))
    reference = Image.open(io.BytesIO(_encode_q75()))
    assert encoding.subsampling == 2  # 4:2:0, Pillow's default at quality 75, as the mirror's
    assert encoding.qtables == tuple(tuple(reference.quantization[k]) for k in sorted(reference.quantization))
    assert outliers.training_encoding(jpeg_folder(tmp_path, "PNG")) is None  # raw pixels: nothing to follow


def _encode_q75() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def test_every_outlier_goes_through_the_training_images_jpeg_round_trip(pictures):
    encoding = outliers.JpegEncoding.of(_encode_q75())
    mix = {name: 1 for name in outliers.GENERATORS}
    images = smooth_images(32)
    raw = outliers.OutlierMaker(mix, pictures, None)(images, torch.Generator().manual_seed(7))
    made = outliers.OutlierMaker(mix, pictures, encoding)(images, torch.Generator().manual_seed(7))
    assert not torch.equal(made, raw)
    assert torch.equal(made, encoding.round_trip(raw))
    # and it is a real JPEG round trip: the same as Pillow's quality-75, 4:2:0 encode and decode
    buffer = io.BytesIO()
    Image.fromarray(raw[0].permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=75, subsampling=2)
    assert np.array_equal(np.asarray(Image.open(buffer).convert("RGB")), made[0].permute(1, 2, 0).numpy())


def test_an_unknown_or_empty_mix_is_refused(pictures):
    with pytest.raises(ValueError, match="unknown outlier generators"):
        outliers.OutlierMaker({"digits": 1}, pictures, None)
    with pytest.raises(ValueError, match="no generator"):
        outliers.OutlierMaker({"jigsaw": 0}, pictures, None)
