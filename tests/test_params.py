import copy
import dataclasses
import functools
import operator
import re
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeml import params as P
from edgeml.data.sources import OFFICIAL_MD5
from edgeml.params import RANGES, ParamsError, load, parse

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
        ("quantize.backend", "tensorrt", r"quantize.backend: 'tensorrt' is not one of \['fbgemm', 'qnnpack', 'pt2e_x86', 'onnxruntime', 'openvino', 'executorch'\]"),
        ("quantize.observr", "minmax", r"quantize: unknown key\(s\) \['observr'\]"),
        ("train.epochs", 0, r"train.epochs: must be > 0"),
        ("train.epochs", "ten", r"train.epochs: expected int"),
        ("train.lr", True, r"train.lr: expected float"),
        ("quantize.per_channel", "yes", r"quantize.per_channel: expected bool"),
        ("ood.sets", ["tin_crop", "svhn"], r"ood.sets: 'svhn' is not built by prepare.ood_sets"),
        ("model.stem", "resnet", r"model.stem: 'resnet' is not one of"),
        ("sweep.recipes", {"x": {"calibration_split": "val"}},
         r"sweep.recipes.x.calibration_split: val holds the images the package threshold"),
        ("quantize.calibration_split", "val", r"quantize.calibration_split: val holds the images"),
        ("ood.groups", {"near": ["nope"]}, r"ood.groups.near: 'nope' is not in ood.sets"),
        ("ood.detectors", ["energy"], r"ood.detectors: must include 'msp'"),
        ("prepare.ood_sets.gaussian.count", 0, r"prepare.ood_sets.gaussian.count: must be > 0"),
        ("prepare.ood_sets.gaussian.count", None, r"prepare.ood_sets.gaussian: generated sets \(gaussian_noise, uniform_noise, synthetic_shapes\) need transform: none and a count"),
        ("fetch.openood_cifar10_val_list", None, r"ood.id_split: openood uses .* fetch.openood_cifar10_val_list has no source"),
        ("fetch.mnist", None, r"prepare.ood_sets.mnist: uses mnist, but fetch.mnist has no source"),
        ("ood.validation_sets.far", "tin_crop", r"ood.validation_sets.far: 'tin_crop' is a test set \(in ood.sets\)"),
        ("ood.validation_sets.near", "nope", r"ood.validation_sets.near: 'nope' is not built by prepare.ood_sets"),
        ("ood.validation_sets.near", None, r"ood.validation_sets.near: expected str, got None"),
        ("ood.validation_sets.far", "tin_val", r"ood.validation_sets: near and far are both 'tin_val'"),
        ("ood.validation_sets", {"near": "tin_val"}, r"ood.validation_sets.far: missing"),
        ("ood.search", {"nope": {"k": [1]}}, r"ood.search: 'nope' is not in ood.detectors"),
        ("sweep.recipes", {"x": {"backend": "onnxruntime", "qat_epochs": -1}}, r"sweep.recipes.x.qat_epochs: must be >= 0"),
        ("report.headline_set", "tin_val", r"report.headline_set: 'tin_val' is not an OOD test set \(ood.sets: "),
        ("report.headline_set", 3, r"report.headline_set: expected str, got 3"),
        ("report.headline_sets", "tin_crop", r"report: unknown key\(s\) \['headline_sets'\]"),
        # dropping the headline set from the test sets is refused before any work, not a traceback in the report stage
        ("ood.sets", ["tin_resize", "mnist"], r"report.headline_set: 'tin_crop' is not an OOD test set"),
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


def test_committed_sources_list_the_mirror_then_a_known_official_url():
    """Every dataset with an official URL falls back to it when the mirror is absent; its checksum is
    known, so the list needs none. A plain entry takes the checksum beside the list, a mapping its own."""
    fetch = parse(REPO_PARAMS).fetch
    for name in ("cifar10", "tinyimagenet", "mnist", "fashion_mnist"):
        mirror, official = getattr(fetch, name).source
        assert mirror.startswith("../shared/datasets/") and official in OFFICIAL_MD5, name
    assert fetch.openood_tin_list.candidates() == [fetch.openood_tin_list]  # no official URL: the mirror only
    spec = P.Source(["a.tar.gz", P.Source("b.tar.gz", sha256="b" * 64)], sha256="a" * 64)
    assert spec.candidates() == [P.Source("a.tar.gz", sha256="a" * 64), P.Source("b.tar.gz", sha256="b" * 64)]


def test_optional_ood_sets_in_params_parse_once_uncommented():
    """The commented-out sources and sets in params.yaml are valid as documented."""
    text = (Path(__file__).parents[1] / "params.yaml").read_text()
    enabled = re.sub(r"(?m)^(\s*)# (\w+: \{(?:source|dataset): )", r"\1\2", text)
    with pytest.raises(ParamsError, match=r"fetch.odin_imagenet_crop.sha256: expected 64 hex digits, got '...'"):
        parse(yaml.safe_load(enabled))  # ODIN's sets need the sha256 of the copy the user trusts
    raw = yaml.safe_load(enabled.replace("sha256: ...", "sha256: " + "ab" * 32))
    optional = {"cifar100", "svhn", "textures", "places365", "lsun_crop", "lsun_resize", "isun"}
    assert optional <= set(raw["prepare"]["ood_sets"])
    raw["ood"]["sets"] += sorted(optional)
    params = parse(raw)
    assert {"svhn", "cifar100", "textures", "places365", "odin_lsun_crop", "odin_lsun_resize", "odin_isun"} <= set(
        params.fetch.sources()
    )


# Where each params class sits in params.yaml (one example when it repeats, e.g. an OOD set).
CLASS_PATHS = {
    "FetchParams": "fetch", "PrepareParams": "prepare", "OODSetSpec": "prepare.ood_sets.gaussian",
    "ModelParams": "model", "TrainParams": "train", "QuantizeParams": "quantize", "OODParams": "ood",
    "PackageParams": "package", "BenchParams": "bench", "SweepParams": "sweep", "ReportParams": "report",
    "FinetuneParams": "finetune", "FinetuneRecipe": "finetune.recipes.oe_gray_distill",
}


def numeric_fields() -> dict[str, type]:
    """"Class.field" -> int or float, for every numeric (or optional numeric) field reachable from Params."""
    found, todo, seen = {}, [P.Params], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, hint in typing.get_type_hints(cls).items():
            arms = [a for a in typing.get_args(hint) if a is not type(None)] if type(None) in typing.get_args(hint) else [hint]
            if len(arms) == 1 and arms[0] in (int, float):
                found[f"{cls.__name__}.{name}"] = arms[0]
            stack = [hint]
            while stack:  # nested classes inside Optional / list / dict
                t = stack.pop()
                todo += [t] if dataclasses.is_dataclass(t) else []
                stack += typing.get_args(t)
    return found


def test_every_numeric_key_has_a_range():
    fields = numeric_fields()
    assert "BenchParams.warmup" in fields and "OODSetSpec.count" in fields  # the walk reaches nested classes
    missing = sorted(set(fields) - set(RANGES))
    assert not missing, f"add these to edgeml.params.RANGES: {missing}"
    assert sorted(set(RANGES) - set(fields)) == []  # no stale or misspelt entry


def range_cases(outside: bool) -> list:
    """(key, value) just outside (or exactly on an inclusive) bound of every range in RANGES."""
    cases = []
    for name, bounds in RANGES.items():
        cls, field = name.split(".")
        kind = numeric_fields()[name]
        key = f"{CLASS_PATHS[cls]}.{field}"
        step = 1 if kind is int else 0.5
        for bound, inclusive, direction in ((bounds.low, bounds.low_inclusive, -1), (bounds.high, bounds.high_inclusive, 1)):
            if bound is None:
                continue
            if outside:
                cases.append((key, kind(bound + direction * step) if inclusive else kind(bound)))
            elif inclusive:
                cases.append((key, kind(bound)))
    return cases


@pytest.mark.parametrize("key, value", range_cases(outside=True))
def test_out_of_range_numbers_name_the_key(key, value):
    with pytest.raises(ParamsError, match=rf"^{re.escape(key)}: must be .*, got {re.escape(repr(value))}$"):
        parse(with_change(key, value))


@pytest.mark.parametrize("key, value", range_cases(outside=False))
def test_inclusive_bounds_are_accepted(key, value):
    assert parse(with_change(key, value)) is not None


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("bench.warmup", -1, r"bench.warmup: must be >= 0, got -1"),
        ("package.id_tpr", 0.0, r"package.id_tpr: must be in \(0, 1\], got 0.0"),
        ("package.id_tpr", 1.5, r"package.id_tpr: must be in \(0, 1\], got 1.5"),
        ("train.seed", -1, r"train.seed: must be in \[0, 4294967295\], got -1"),
        ("train.momentum", 1, r"train.momentum: must be in \[0, 1\), got 1.0"),
        ("train.lr", float("inf"), r"train.lr: must be a finite number, got inf"),
        ("train.lr", float("nan"), r"train.lr: must be a finite number, got nan"),
        ("train.lr", 10**400, r"train.lr: 1000+ is too large"),
        ("train.threads", 0, r"train.threads: must be in \[1, 1024\], got 0"),
        ("quantize.qat_images", 100, r"quantize.qat_images: 100 is less than one batch \(quantize.qat_batch_size: 128\)"),
        ("sweep.recipes", {"x": {"qat_images": 8, "qat_batch_size": 16}}, r"sweep.recipes.x.qat_images: 8 is less than one batch"),
        ("prepare.val_size", 4995, r"prepare.val_size: must be a multiple of CIFAR-10's 10 classes"),
        ("prepare.val_size", 50000, r"prepare.val_size: must be in \(0, 50000\), got 50000"),
        ("model.num_classes", 100, r"model.num_classes: must be 10, got 100"),
        ("fetch.cifar10.sha256", "abc", r"fetch.cifar10.sha256: expected 64 hex digits, got 'abc'"),
        ("fetch.cifar10.md5", "z" * 32, r"fetch.cifar10.md5: expected 32 hex digits"),
        ("fetch.cifar10.source", " ", r"fetch.cifar10.source: empty"),
        ("fetch.cifar10.source", 5, r"fetch.cifar10.source: expected str, got 5"),
        ("fetch.cifar10.source", [], r"fetch.cifar10.source: an empty list; give one or more local paths or URLs"),
        ("fetch.cifar10.source", ["a.tar.gz", " "], r"fetch.cifar10.source\[1\]: empty"),
        ("fetch.cifar10.source", ["a.tar.gz", 5], r"fetch.cifar10.source\[1\]: expected str, got 5"),
        ("fetch.cifar10.source", [{"source": "a.tar.gz", "sha256": "abc"}], r"fetch.cifar10.source\[0\].sha256: expected 64 hex digits"),
        ("fetch.cifar10.source", [{"source": "a.tar.gz", "sha": "abc"}], r"fetch.cifar10.source\[0\]: unknown key\(s\) \['sha'\]"),
        ("fetch.cifar10.source", [{"source": ["a.tar.gz"]}], r"fetch.cifar10.source\[0\].source: one location per entry"),
        ("fetch.cifar10.source", [{"md5": "0" * 32}], r"fetch.cifar10.source\[0\].source: missing"),
        ("ood.sets", [], r"ood.sets: must not be empty"),
        ("ood.detectors", ["msp", "energy", "msp"], r"ood.detectors: \['msp'\] listed more than once"),
        ("ood.groups.near", [], r"ood.groups.near: must not be empty"),
        ("ood.search.knn.k", [], r"ood.search.knn.k: expected a list of finite numbers"),
        ("ood.search.knn.k", [1, float("nan")], r"ood.search.knn.k: expected a list of finite numbers"),
        ("ood.groups", {1: ["mnist"]}, r"ood.groups: names must be strings, got 1"),
        ("quantize", {"backend": "fbgemm", 3: 1, "zz": 2}, r"quantize: unknown key\(s\) \[3, 'zz'\]"),
    ],
)
def test_more_bad_values_name_the_key(path, value, message):
    with pytest.raises(ParamsError, match=message):
        parse(with_change(path, value))


@pytest.mark.parametrize("raw", [None, [], "params", 3])
def test_top_level_must_be_a_mapping(raw):
    with pytest.raises(ParamsError, match="top level: expected a mapping"):
        parse(raw)


def key_paths(node, prefix=()) -> list[tuple]:
    """Every key / list-index path in a params mapping."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    paths = []
    for k, v in items:
        paths.append(prefix + (k,))
        paths += key_paths(v, prefix + (k,))
    return paths


def render(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) and text else (f".{part}" if text else f"{part}")
    return text or "top level"


PATHS = key_paths(REPO_PARAMS)
MAPPINGS = [()] + [p for p in PATHS if isinstance(functools.reduce(operator.getitem, p, REPO_PARAMS), dict)]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from(["msp", "tin_crop", "tin_val", "mnist", "fbgemm", "val", "none", "", "0xff"]),
)
SOURCE_ENTRIES = st.fixed_dictionaries({"source": SCALARS}, optional={"sha256": SCALARS, "md5": SCALARS})
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2),
    st.lists(st.one_of(SCALARS, SOURCE_ENTRIES), max_size=3),  # fetch.<dataset>.source lists
)


def test_the_fuzz_reaches_every_committed_key():
    for key in (("report", "headline_set"), ("sweep", "timing_rounds"), ("fetch", "cifar10", "source", 1)):
        assert key in PATHS


@pytest.mark.parametrize("key, value, message", [
    ("finetune.weights.sha256", "", r"^finetune\.weights\.sha256: expected 64 hex digits, got ''"),
    ("train.weights.sha256", "abc", r"^train\.weights\.sha256: expected 64 hex digits, got 'abc'"),
    ("train.logitnorm_tau", 0, r"^train\.logitnorm_tau: must be > 0"),
    ("finetune.recipes.oe_gray_distill.energy_percentiles", [99, 50], r"^finetune\.recipes\.oe_gray_distill\.energy_percentiles: expected"),
])
def test_a_dataclass_own_check_is_named_by_the_key_where_it_sits(key, value, message):
    """Found by the fuzz test below with random examples: Weights once named its digest train.weights.sha256
    wherever it sat."""
    with pytest.raises(ParamsError, match=message):
        parse(with_change(key, value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_params_fail_only_with_a_params_error_naming_the_key(data):
    """Wrong types, missing keys, unknown keys, out-of-range numbers: parse either accepts the file
    or raises ParamsError naming the changed key (or the section around it), never anything else."""
    raw = copy.deepcopy(REPO_PARAMS)
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "add":
        path = data.draw(st.sampled_from(MAPPINGS)) + (data.draw(st.one_of(st.text(max_size=8), st.integers(0, 3))),)
    else:
        path = data.draw(st.sampled_from(PATHS))
    *parents, last = path
    node = raw
    for part in parents:
        node = node[part]
    if action == "delete":
        del node[last]
    else:
        node[last] = data.draw(VALUES)
    try:
        parse(raw)
    except ParamsError as exc:
        message = str(exc)
        names = {render(path[:k]) for k in range(min(2, len(path)), len(path) + 1)}
        if action == "add":
            names.add(render(tuple(parents)))
        assert any(name in message for name in names), f"{action} {render(path)}: {message}"


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_fuzzed_params_file_fails_with_a_params_error_naming_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_bytes(text)
    with pytest.raises(ParamsError, match=re.escape(str(path))):
        load(path)


def test_the_names_params_accept_are_the_registries_names():
    """params keeps its own Literals (narrow stage deps, see edgeml.params), so they must equal the registries."""
    from edgeml.data.ood_sets import DATASETS
    from edgeml.model.resnet import STEMS
    from edgeml.quantization import BACKENDS

    literal = lambda cls, field: list(typing.get_args(typing.get_type_hints(cls)[field]))  # noqa: E731
    assert literal(P.QuantizeParams, "backend") == list(BACKENDS)
    assert literal(P.ModelParams, "stem") == list(STEMS)
    assert literal(P.OODSetSpec, "dataset") == list(DATASETS)
