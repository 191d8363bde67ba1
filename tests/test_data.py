import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    cifar_imagefolder_files,
    cifar_python_files,
    encode,
    idx_images_gz,
    openood_cifar10_list,
    openood_tin_list,
    tinyimagenet_files,
    write_tar,
)
from PIL import Image

from edgeml.data.ood_sets import build_ood_set, check_disjoint, noise_images, odin_crop, synthetic_shapes
from edgeml.data.readers import (
    load_cifar10,
    load_cifar100_test,
    load_idx_images,
    load_svhn,
    load_tinyimagenet,
    read_openood_tin_list,
)
from edgeml.data.splits import id_split, openood_id_split, split_validation
from edgeml.io import write_npz
from edgeml.params import OODSetSpec
from edgeml.runtime.images import DataError, decode_image, resize_rgb


def check_cifar(arrays, train_per_class, test_per_class):
    assert arrays["train_x"].shape == (10 * train_per_class, 32, 32, 3)
    assert arrays["train_x"].dtype == np.uint8
    assert np.bincount(arrays["train_y"]).tolist() == [train_per_class] * 10
    assert arrays["test_x"].shape == (10 * test_per_class, 32, 32, 3)
    # per-class index: 0..n-1 within each class, as OpenOOD's file names count
    for label in range(10):
        assert sorted(arrays["test_index"][arrays["test_y"] == label]) == list(range(test_per_class))


def test_cifar_official_python_tarball(tmp_path):
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", cifar_python_files(3, 2))
    arrays = load_cifar10(path)
    check_cifar(arrays, 15, 2)
    # the class-dependent colour survives the CHW -> HWC conversion
    red_by_class = [arrays["train_x"][arrays["train_y"] == c][..., 0].mean() for c in range(10)]
    assert red_by_class[0] < red_by_class[5] < red_by_class[9]


def test_cifar_imagefolder_archive_and_folder(tmp_path):
    files = cifar_imagefolder_files(3, 2)
    archive = load_cifar10(write_tar(tmp_path / "cifar10-jpeg.tar.gz", files))
    check_cifar(archive, 3, 2)
    for name, data in files.items():
        (tmp_path / "extracted" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "extracted" / name).write_bytes(data)
    folder = load_cifar10(tmp_path / "extracted")
    for key in archive:
        np.testing.assert_array_equal(archive[key], folder[key])


def test_tinyimagenet_official_zip(tmp_path):
    path = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in tinyimagenet_files(12).items():
            archive.writestr(name, data)
        archive.writestr("tiny-imagenet-200/wnids.txt", "n01443537\n")
    images = load_tinyimagenet(path, "test")
    assert list(images) == list(range(12))  # by file number, in order
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in images.values())  # gray -> RGB


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = write_tar(tmp_path / "cifar10-jpeg.tar.gz", cifar_imagefolder_files(3, 2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cifar10-jpeg.tar.gz: archive is truncated or corrupt"):
        load_cifar10(path)


def test_corrupt_image_names_the_file(tmp_path):
    files = cifar_imagefolder_files(2, 1)
    files["cifar10-jpeg/train/cat/0001.png"] = b"\x89PNG\r\n\x1a\n garbage"
    with pytest.raises(DataError, match="train/cat/0001.png: cannot decode image"):
        load_cifar10(write_tar(tmp_path / "c.tar.gz", files))


def test_empty_archive_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="found no CIFAR-10 images"):
        load_cifar10(write_tar(tmp_path / "c.tar.gz", {"readme.txt": b"hi"}))


def test_image_modes_are_converted_as_at_training_time():
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, format="PNG")
    converted = np.asarray(decode_image(buffer.getvalue(), "g16.png"))
    assert converted.shape == (64, 64, 3)
    assert converted[..., 0].max() == round(gray16.max() / 257)
    rgba = np.zeros((8, 8, 4), np.uint8)
    assert np.asarray(decode_image(encode(rgba), "a.png")).shape == (8, 8, 3)


def test_odin_sets_are_deterministic():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    crops = odin_crop(images, seed=3)
    assert crops.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(crops, odin_crop(images, seed=3))
    # each crop is a window of its source image
    top_left = crops[0][0, 0]
    assert (images[0] == top_left).all(axis=2).any()
    resized = resize_rgb(images)
    assert resized.shape == (5, 32, 32, 3)
    expected = images[0][:2, :2].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(resized[0][0, 0], expected, atol=1)


def test_validation_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    train, val = split_validation(labels, 100, seed=0)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 500
    assert np.bincount(labels[val]).tolist() == [10] * 10
    with pytest.raises(ValueError, match="prepare.val_size"):
        split_validation(labels, 15, seed=0)


def test_odin_released_archive(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    files = {f"Imagenet/test/{i}.png": encode(image) for i, image in enumerate(images)}
    np.testing.assert_array_equal(build("odin_imagenet_crop", "none", write_tar(tmp_path / "Imagenet.tar.gz", files)), images)
    files["Imagenet/test/9.png"] = encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="bad.tar.gz: transform none needs 32x32 images, got 64x64"):
        build("odin_imagenet_crop", "none", write_tar(tmp_path / "bad.tar.gz", files))


def test_idx_images_and_their_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (tmp_path / "ok.gz").write_bytes(idx_images_gz(images))
    np.testing.assert_array_equal(load_idx_images(tmp_path / "ok.gz"), images)
    data = idx_images_gz(images)
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.gz: cannot read idx file"):
        load_idx_images(tmp_path / "cut.gz")
    (tmp_path / "labels.gz").write_bytes(gzip.compress((2049).to_bytes(4, "big") + bytes(12)))
    with pytest.raises(DataError, match="bad magic number"):
        load_idx_images(tmp_path / "labels.gz")


def test_grayscale_digits_become_32x32_rgb():
    digits = np.zeros((2, 28, 28), np.uint8)
    digits[:, 10:18, 10:18] = 255
    rgb = resize_rgb(digits)
    assert rgb.shape == (2, 32, 32, 3)
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.max() == 255 and rgb[0, 0, 0, 0] == 0


def test_noise_sets_follow_odin():
    gaussian = noise_images("gaussian_noise", 200, seed=0)
    uniform = noise_images("uniform_noise", 200, seed=0)
    assert gaussian.shape == uniform.shape == (200, 32, 32, 3)
    # N(0.5, 1) clipped: about 31% of pixels at each bound; U(0, 1): none piled up at the bounds
    assert 0.28 < (gaussian == 0).mean() < 0.34 and 0.28 < (gaussian == 255).mean() < 0.34
    assert (uniform == 0).mean() < 0.01 and abs(uniform.mean() - 127.5) < 2
    np.testing.assert_array_equal(gaussian, noise_images("gaussian_noise", 200, seed=0))


def test_synthetic_shapes_are_flat_regions_in_colour_and_in_gray_unlike_noise():
    shapes = synthetic_shapes(300, seed=0)
    noise = noise_images("uniform_noise", 300, seed=0)
    assert shapes.shape == (300, 32, 32, 3) and shapes.dtype == np.uint8

    def step(images: np.ndarray) -> float:  # mean absolute difference between horizontal neighbours
        return float(np.abs(np.diff(images.astype(np.int16), axis=2)).mean())

    # flat regions and gradients: neighbours differ by a few levels, i.i.d. noise by ~85
    assert step(shapes) < 10 < 60 < step(noise)
    coloured, gray = shapes[0::2], shapes[1::2]
    assert (coloured[..., 0] != coloured[..., 1]).mean() > 0.9  # even images in colour ...
    assert (gray == gray[..., :1]).all()  # ... odd ones in gray levels only
    assert gray.std(axis=(1, 2, 3)).mean() > 0.5 * coloured.std(axis=(1, 2, 3)).mean()  # as much structure
    assert (gray < 16).mean() < 0.15  # gray levels drawn uniformly: not figures on a black ground
    assert shapes.std(axis=(1, 2, 3)).min() > 0  # every image has some structure
    np.testing.assert_array_equal(synthetic_shapes(40, seed=0), shapes[:40])  # the first k of any count agree
    assert not np.array_equal(synthetic_shapes(40, seed=1), shapes[:40])
    x, names = build_ood_set(OODSetSpec(dataset="synthetic_shapes", transform="none", count=5), {}, 0, {})
    np.testing.assert_array_equal(x, shapes[:5])
    assert names[3] == "synthetic_shapes/seed0/3"


def test_openood_list_selects_tinyimagenet_images(tmp_path):
    files = tinyimagenet_files(count=10)
    archive = write_tar(tmp_path / "tin.tar.gz", files)
    (tmp_path / "list.txt").write_text(openood_tin_list([7, 2, 9]))
    assert read_openood_tin_list(tmp_path / "list.txt", "val") == [7, 2, 9]
    sources = {"tinyimagenet": {"path": archive}, "openood_tin_list": {"path": tmp_path / "list.txt"}}
    spec = OODSetSpec(dataset="tinyimagenet", transform="resize", split="val", imglist="openood_tin_list")
    selected, names = build_ood_set(spec, sources, seed=0, tinyimagenet={})
    all_val = load_tinyimagenet(archive, "val")
    np.testing.assert_array_equal(selected, resize_rgb([all_val[7], all_val[2], all_val[9]]))
    assert list(names) == ["tinyimagenet/val/7", "tinyimagenet/val/2", "tinyimagenet/val/9"]
    (tmp_path / "list.txt").write_text(openood_tin_list([3, 42]))
    with pytest.raises(DataError, match="1 images named by openood_tin_list are missing, e.g. val_42"):
        build_ood_set(spec, sources, seed=0, tinyimagenet={})
    (tmp_path / "list.txt").write_text("cifar10/test/cat/0001.png 3\n")
    with pytest.raises(DataError, match="list.txt:1: expected"):
        read_openood_tin_list(tmp_path / "list.txt", "val")


def build(dataset: str, transform: str, path: Path, **spec) -> np.ndarray:
    return build_ood_set(OODSetSpec(dataset=dataset, transform=transform, **spec), {dataset: {"path": path}}, 0, {})[0]


def test_an_ood_validation_set_sharing_an_image_with_a_test_set_is_refused(tmp_path):
    """tin_val vs tin_openood: two lists over the same Tiny ImageNet split must not name the same image,
    whatever the transforms; noise sets of one seed share their first images; disjoint sets pass."""
    archive = write_tar(tmp_path / "tin.tar.gz", tinyimagenet_files(count=10))
    (tmp_path / "test.txt").write_text(openood_tin_list([1, 2, 3]))
    (tmp_path / "val.txt").write_text(openood_tin_list([4, 5]))
    sources = {"tinyimagenet": {"path": archive}, "test_list": {"path": tmp_path / "test.txt"},
               "val_list": {"path": tmp_path / "val.txt"}}
    cache: dict = {}

    def names(imglist: str, transform: str = "resize") -> np.ndarray:
        spec = OODSetSpec(dataset="tinyimagenet", transform=transform, split="val", imglist=imglist)
        return build_ood_set(spec, sources, 0, cache)[1]

    noise = lambda count, seed=0: build_ood_set(  # noqa: E731
        OODSetSpec(dataset="gaussian_noise", transform="none", count=count), {}, seed, {})[1]
    check_disjoint({"tin_openood": names("test_list"), "tin_val": names("val_list"), "noise": noise(5)}, ["tin_val"])
    (tmp_path / "val.txt").write_text(openood_tin_list([4, 3]))
    with pytest.raises(DataError, match=r"'tin_val' and set 'tin_openood' share 1 source images \(e.g. tinyimagenet/val/3\)"):
        check_disjoint({"tin_openood": names("test_list"), "tin_val": names("val_list", "crop")}, ["tin_val"])
    with pytest.raises(DataError, match="'noise_val' and set 'noise' share 3 source images"):
        check_disjoint({"noise": noise(10), "noise_val": noise(3)}, ["noise_val"])
    check_disjoint({"noise": noise(10), "noise_val": noise(3, seed=1)}, ["noise_val"])
    # the near and the far validation set must not share images either
    with pytest.raises(DataError, match="'near' and set 'far' share 2 source images"):
        check_disjoint({"near": noise(2, seed=1), "far": noise(4, seed=1)}, ["near", "far"])


def test_svhn_official_mat_file(tmp_path):
    from scipy.io import savemat

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    # the official layout: X is 32x32x3xN, y is Nx1 with 10 for the digit 0
    savemat(tmp_path / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": np.array([[1], [10], [3], [4]])})
    np.testing.assert_array_equal(load_svhn(tmp_path / "test_32x32.mat"), images)
    np.testing.assert_array_equal(build("svhn", "none", tmp_path / "test_32x32.mat"), images)
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 nonsense")
    with pytest.raises(DataError, match="bad.mat: not SVHN's test_32x32.mat"):
        load_svhn(tmp_path / "bad.mat")


def test_cifar100_official_python_tarball(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    test = {b"data": images.transpose(0, 3, 1, 2).reshape(5, -1), b"fine_labels": [0, 1, 2, 3, 4], b"coarse_labels": [0] * 5}
    train = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}
    files = {
        "cifar-100-python/train": pickle.dumps(train),
        "cifar-100-python/test": pickle.dumps(test),
        "cifar-100-python/meta": pickle.dumps({b"fine_label_names": []}),
    }
    archive = write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    np.testing.assert_array_equal(build("cifar100", "none", archive), images)  # the test split only, HWC
    with pytest.raises(DataError, match="expected one cifar-100-python/test, found 0"):
        load_cifar100_test(write_tar(tmp_path / "empty.tar.gz", {"cifar-100-python/meta": b""}))


def test_textures_dtd_tarball_resizes_the_central_square(tmp_path):
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, 32:96] = 200  # the central 64x64 square is bright, the sides dark
    files = {
        "dtd/images/banded/banded_0001.jpg": encode(wide, "PNG"),
        "dtd/images/zigzagged/zigzagged_0002.jpg": encode(np.full((100, 80, 3), 50, np.uint8), "PNG"),
        "dtd/labels/test1.txt": b"banded/banded_0001.jpg\n",
        "dtd/imdb/readme.jpg.txt": b"not an image",
    }
    x = build("textures", "resize", write_tar(tmp_path / "dtd-r1.0.1.tar.gz", files))
    assert x.shape == (2, 32, 32, 3)
    assert (x[0] == 200).all()  # only the central square, shrunk by area average
    assert (x[1] == 50).all()


def test_places365_val_256_with_seeded_sample(tmp_path):
    rng = np.random.default_rng(0)
    files = {f"val_256/Places365_val_{i:08d}.jpg": encode(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for i in range(1, 7)}
    archive = write_tar(tmp_path / "val_256.tar", files)
    every = build("places365", "resize", archive)
    sample = build("places365", "resize", archive, count=4)
    assert every.shape == (6, 32, 32, 3) and sample.shape == (4, 32, 32, 3)
    assert all((every == image).all(axis=(1, 2, 3)).any() for image in sample)  # a subset of the set
    np.testing.assert_array_equal(sample, build("places365", "resize", archive, count=4))  # seeded
    with pytest.raises(DataError, match="count 9 exceeds the 6 images there"):
        build("places365", "resize", archive, count=9)


def test_odin_lsun_and_isun_releases(tmp_path):
    rng = np.random.default_rng(0)
    padded = rng.integers(0, 256, (3, 36, 36, 3), dtype=np.uint8)
    lsun = write_tar(tmp_path / "LSUN.tar.gz", {f"LSUN/test/{i}.jpg": encode(im) for i, im in enumerate(padded)})
    np.testing.assert_array_equal(build("odin_lsun_crop", "center_crop", lsun), padded[:, 2:34, 2:34])
    with pytest.raises(DataError, match="LSUN.tar.gz: transform none needs 32x32 images, got 36x36; use transform center_crop"):
        build("odin_lsun_crop", "none", lsun)
    small = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for dataset, folder in (("odin_lsun_resize", "LSUN_resize/LSUN_resize"), ("odin_isun", "iSUN/iSUN_patches")):
        archive = write_tar(tmp_path / f"{dataset}.tar.gz", {f"{folder}/{i}.jpeg": encode(im) for i, im in enumerate(small)})
        np.testing.assert_array_equal(build(dataset, "none", archive), small)
    tiny = write_tar(tmp_path / "tiny.tar.gz", {"x/0.png": encode(small[0][:20, :20])})
    with pytest.raises(DataError, match="tiny.tar.gz: a 20x20 image is smaller than the 32x32 crop"):
        build("odin_isun", "center_crop", tiny)


def test_openood_cifar10_split_finds_the_listed_test_images(tmp_path):
    arrays = load_cifar10(write_tar(tmp_path / "c.tar.gz", cifar_imagefolder_files(1, 4)))
    (tmp_path / "test.txt").write_text(openood_cifar10_list([0, 2, 3]))
    (tmp_path / "val.txt").write_text(openood_cifar10_list([1]))
    sources = {"openood_cifar10_test_list": {"path": tmp_path / "test.txt"}, "openood_cifar10_val_list": {"path": tmp_path / "val.txt"}}
    split = openood_id_split(sources, arrays["test_y"], arrays["test_index"])
    assert len(split["test"]) == 30 and len(split["val"]) == 10
    assert (arrays["test_index"][split["val"]] == 1).all()
    assert arrays["test_y"][split["test"]].tolist() == [label for label in range(10) for _ in range(3)]  # list order
    (tmp_path / "val.txt").write_text(openood_cifar10_list([1, 2]))
    with pytest.raises(DataError, match="test and val lists share 10 images"):
        openood_id_split(sources, arrays["test_y"], arrays["test_index"])
    (tmp_path / "val.txt").write_text("cifar10/test/cat/0001.png 5\n")
    with pytest.raises(DataError, match="class 'cat' does not match label 5"):
        openood_id_split(sources, arrays["test_y"], arrays["test_index"])
    for name in ("0005.png", "0000.png"):  # per-class indices 0-3 are files 0001-0004
        (tmp_path / "val.txt").write_text(f"cifar10/test/cat/{name} 3\n")
        with pytest.raises(DataError, match="is not in the CIFAR-10 test set"):
            openood_id_split(sources, arrays["test_y"], arrays["test_index"])


def test_id_split_never_hands_test_images_to_validation(tmp_path):
    arrays = {"test_x": np.arange(6)[:, None] * np.ones((6, 2), np.uint8), "val_x": np.full((3, 2), 99, np.uint8)}
    positions, validation = id_split(arrays, "odin", tmp_path)
    assert positions.tolist() == list(range(6)) and (validation == 99).all()  # ODIN: held-out training images
    write_npz(tmp_path / "openood_cifar10.npz", test=np.array([0, 2, 3, 5]), val=np.array([1, 4]))
    positions, validation = id_split(arrays, "openood", tmp_path)
    assert positions.tolist() == [0, 2, 3, 5] and validation[:, 0].tolist() == [1, 4]
