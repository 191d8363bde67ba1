import copy
import re
from pathlib import Path

import pytest
import yaml

from edgeml.params import ParamsError, load, parse

REPO_PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    raw = copy.deepcopy(REPO_PARAMS)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_committed_params_are_valid():
    params = parse(REPO_PARAMS)
    assert params.model.stem in ("torchvision", "cifar", "conv3s2")
    assert set(params.ood.sets) <= set(params.prepare.ood_sets)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("quantize.backend", "tensorrt", r"quantize.backend: 'tensorrt' is not one of \['fbgemm', 'qnnpack', 'pt2e_x86', 'onnxruntime'\]"),
        ("quantize.observr", "minmax", r"quantize: unknown key\(s\) \['observr'\]"),
        ("train.epochs", 0, r"train.epochs: must be > 0"),
        ("train.epochs", "ten", r"train.epochs: expected int"),
        ("train.lr", True, r"train.lr: expected float"),
        ("quantize.per_channel", "yes", r"quantize.per_channel: expected bool"),
        ("ood.sets", ["tin_crop", "svhn"], r"ood.sets: 'svhn' is not built by prepare.ood_sets"),
        ("model.stem", "resnet", r"model.stem: 'resnet' is not one of"),
        ("quantize.calibration_size", 10**6, r"quantize.calibration_size: 1000000 exceeds prepare.val_size"),
        ("ood.groups", {"near": ["nope"]}, r"ood.groups.near: 'nope' is not in ood.sets"),
        ("ood.detectors", ["energy"], r"ood.detectors: must include 'msp'"),
        ("prepare.ood_sets.gaussian.count", 0, r"prepare.ood_sets.gaussian.count: must be > 0"),
        ("prepare.ood_sets.gaussian.count", None, r"prepare.ood_sets.gaussian: noise sets need transform: none and a count"),
        ("fetch.openood_cifar10_val_list", None, r"ood.id_split: openood uses .* fetch.openood_cifar10_val_list has no source"),
        ("fetch.mnist", None, r"prepare.ood_sets.mnist: uses mnist, but fetch.mnist has no source"),
        ("ood.validation_set", "tin_crop", r"ood.validation_set: 'tin_crop' is a test set \(in ood.sets\)"),
        ("ood.validation_set", "nope", r"ood.validation_set: 'nope' is not built by prepare.ood_sets"),
        ("ood.validation_set", None, r"ood.search: choosing hyperparameters needs ood.validation_set"),
        ("ood.search", {"nope": {"k": [1]}}, r"ood.search: 'nope' is not in ood.detectors"),
        ("sweep.recipes", {"x": {"backend": "onnxruntime", "qat_epochs": -1}}, r"sweep.recipes.x.qat_epochs: must be >= 0"),
    ],
)
def test_bad_values_name_the_key(path, value, message):
    with pytest.raises(ParamsError, match=message):
        parse(with_change(path, value))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"dataset": "tinyimagenet", "transform": "none"}, "Tiny ImageNet sets need split"),
        ({"dataset": "odin_imagenet_crop", "transform": "crop"}, "used as released"),
        ({"dataset": "odin_imagenet_crop", "transform": "none"}, "fetch.odin_imagenet_crop has no source"),
    ],
)
def test_ood_set_specs_are_checked(spec, message):
    raw = with_change("prepare.ood_sets.extra", spec)
    with pytest.raises(ParamsError, match=f"prepare.ood_sets.extra: .*{message}"):
        parse(raw)


def test_odin_archive_set_with_its_source_is_accepted():
    raw = with_change("prepare.ood_sets.odin_crop", {"dataset": "odin_imagenet_crop", "transform": "none"})
    raw["fetch"]["odin_imagenet_crop"] = {"source": "https://www.dropbox.com/s/avgm2u562itwpkl/Imagenet.tar.gz"}
    assert "odin_imagenet_crop" in parse(raw).fetch.sources()


def test_missing_key_is_named():
    raw = copy.deepcopy(REPO_PARAMS)
    del raw["bench"]["runs"]
    with pytest.raises(ParamsError, match="bench.runs: missing"):
        parse(raw)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("fetch: [unclosed")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load(path)
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "absent.yaml")


def test_optional_ood_sets_in_params_parse_once_uncommented():
    """The commented-out sources and sets in params.yaml are valid as documented."""
    text = (Path(__file__).parents[1] / "params.yaml").read_text()
    enabled = re.sub(r"(?m)^(\s*)# (\w+: \{(?:source|dataset): )", r"\1\2", text)
    raw = yaml.safe_load(enabled)
    optional = {"cifar100", "svhn", "textures", "places365", "lsun_crop", "lsun_resize", "isun"}
    assert optional <= set(raw["prepare"]["ood_sets"])
    raw["ood"]["sets"] += sorted(optional)
    params = parse(raw)
    assert {"svhn", "cifar100", "textures", "places365", "odin_lsun_crop", "odin_lsun_resize", "odin_isun"} <= set(
        params.fetch.sources()
    )
