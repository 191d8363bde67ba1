"""Typed, validated view of params.yaml.

Every stage loads its section through :func:`load`, so a typo or a bad value stops the
pipeline before any work starts, with a message naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ParamsError(ValueError):
    """A key or value in params.yaml that the pipeline cannot use."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one dataset comes from: an official URL, or a local archive or folder."""

    source: str
    sha256: Optional[str] = None  # None: known checksum of the official file, or a SHA256SUMS file beside it
    md5: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class FetchParams:
    cifar10: Source
    tinyimagenet: Source
    # Optional sources, needed only by the OOD sets that name them:
    # ODIN's released OOD sets ("Imagenet" = crop, "Imagenet_resize"), already 32x32;
    odin_imagenet_crop: Optional[Source] = None
    odin_imagenet_resize: Optional[Source] = None
    # MNIST / Fashion-MNIST test images (t10k-images-idx3-ubyte.gz);
    mnist: Optional[Source] = None
    fashion_mnist: Optional[Source] = None
    # OpenOOD image lists (`<path> <label>` lines) selecting Tiny ImageNet images: its near-OOD
    # test split, and its OOD validation split (hyperparameters are chosen on it, never on test);
    openood_tin_list: Optional[Source] = None
    openood_tin_val_list: Optional[Source] = None
    # ... and its ID test / validation split of the CIFAR-10 test set (ood.id_split: openood);
    openood_cifar10_test_list: Optional[Source] = None
    openood_cifar10_val_list: Optional[Source] = None
    # more OOD sets, in their official formats: SVHN test_32x32.mat, CIFAR-100 python tarball,
    # Textures (DTD) tarball, Places365 val_256.tar, and ODIN's LSUN (crop), LSUN (resize), iSUN.
    svhn: Optional[Source] = None
    cifar100: Optional[Source] = None
    textures: Optional[Source] = None
    places365: Optional[Source] = None
    odin_lsun_crop: Optional[Source] = None
    odin_lsun_resize: Optional[Source] = None
    odin_isun: Optional[Source] = None
    retries: int = 3

    def sources(self) -> dict[str, Source]:
        """The datasets to fetch, by name."""
        return {
            field.name: source
            for field in dataclasses.fields(self)
            if isinstance(source := getattr(self, field.name), Source)
        }


NOISE = ("gaussian_noise", "uniform_noise")  # generated, not fetched


@dataclasses.dataclass(frozen=True)
class OODSetSpec:
    """An OOD set: images of a fetched dataset, made 32x32 RGB by ``transform`` (ODIN's random
    crop, the central crop, a resize of the central square, or none for sets released at 32x32),
    or synthetic noise as ODIN made it. Tiny ImageNet needs a ``split``; ``imglist`` names a
    fetched OpenOOD list that selects images; ``count``: how many noise images, or a seeded sample."""

    dataset: Literal["tinyimagenet", "mnist", "fashion_mnist", "svhn", "cifar100", "textures", "places365",
                     "odin_imagenet_crop", "odin_imagenet_resize", "odin_lsun_crop", "odin_lsun_resize",
                     "odin_isun", "gaussian_noise", "uniform_noise"]
    transform: Literal["crop", "center_crop", "resize", "none"]
    split: Optional[Literal["test", "val"]] = None
    imglist: Optional[Literal["openood_tin_list", "openood_tin_val_list"]] = None
    count: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    val_size: int
    seed: int
    ood_sets: dict[str, OODSetSpec]


@dataclasses.dataclass(frozen=True)
class ModelParams:
    stem: Literal["torchvision", "cifar", "conv3s2"]
    num_classes: int = 10


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    seed: int
    threads: int
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    """One quantization recipe. Which observers, activation types and QAT each backend offers
    is checked by :mod:`edgeml.quantization`; the defaults are the recipe a sweep entry starts from."""

    backend: Literal["fbgemm", "qnnpack", "pt2e_x86", "onnxruntime"] = "fbgemm"
    per_channel: bool = True
    observer: Literal["minmax", "moving_average_minmax", "histogram", "percentile", "entropy"] = "histogram"
    reduce_range: bool = True  # 7-bit activations: u8*s8 pairs cannot overflow int16 on CPUs without VNNI
    activations: Literal["uint8", "int8"] = "uint8"
    calibration_size: int = 1000
    calibration_split: Literal["val", "train"] = "val"  # never test
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning from the FP32 checkpoint first
    qat_images: int = 10000  # training images per QAT epoch
    qat_batch_size: int = 128
    qat_lr: float = 0.001
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SweepParams:
    """Quantization recipes compared side by side; each overrides :class:`QuantizeParams` defaults."""

    recipes: dict[str, QuantizeParams]


@dataclasses.dataclass(frozen=True)
class OODParams:
    detectors: list[Literal["msp", "maxlogit", "energy", "gen", "odin", "mahalanobis", "knn", "vim", "react", "ash"]]
    sets: list[str]
    groups: dict[str, list[str]]  # e.g. near / far OOD: each group's mean is reported
    fit_images: int  # training images the fitted detectors learn from (class means, neighbours, thresholds)
    batch_size: int
    threads: int
    seed: int = 0
    # Hyperparameters are chosen on validation only: ID validation images vs this OOD set, which
    # must not be a test set (not in ``sets``). ``search``: detector -> hyperparameter -> grid.
    validation_set: Optional[str] = None
    validation_images: int = 1000  # ID validation images (the first of the validation split)
    # ID test / validation: "odin" = all 10,000 CIFAR-10 test images / the held-out training split
    # (prepare.val_size); "openood" = OpenOOD's lists over the test set (9,000 test / 1,000 validation).
    id_split: Literal["odin", "openood"] = "odin"
    search: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PackageParams:
    """The deployable artifact: which detector it carries and where its threshold sits."""

    detector: Literal["msp", "maxlogit", "energy", "gen"]
    id_tpr: float  # threshold keeps this fraction of ID validation images


@dataclasses.dataclass(frozen=True)
class BenchParams:
    threads: int
    warmup: int
    runs: int
    throughput_batch_size: int
    throughput_runs: int
    artifact_images: int  # image files pushed through the whole `edgeml predict` path


@dataclasses.dataclass(frozen=True)
class Params:
    fetch: FetchParams
    prepare: PrepareParams
    model: ModelParams
    train: TrainParams
    quantize: QuantizeParams
    sweep: SweepParams
    ood: OODParams
    package: PackageParams
    bench: BenchParams

    def __post_init__(self) -> None:
        for name, spec in self.prepare.ood_sets.items():
            key = f"prepare.ood_sets.{name}"
            if spec.dataset == "tinyimagenet" and (spec.transform == "none" or spec.split is None):
                raise ParamsError(f"{key}: Tiny ImageNet sets need split (test | val) and transform (crop | resize)")
            if spec.dataset != "tinyimagenet" and (spec.split is not None or spec.imglist is not None):
                raise ParamsError(f"{key}: split and imglist apply to Tiny ImageNet only")
            if spec.dataset.startswith("odin_") and spec.transform not in ("none", "center_crop"):
                raise ParamsError(f"{key}: ODIN's archives are used as released: transform: none (or center_crop)")
            if spec.dataset in NOISE and (spec.transform != "none" or spec.count is None):
                raise ParamsError(f"{key}: noise sets need transform: none and a count")
            if spec.count is not None and spec.count <= 0:
                raise ParamsError(f"{key}.count: must be > 0, got {spec.count!r}")
            for source in (spec.dataset, spec.imglist):  # every other name is a fetch.<name> field
                if source and source not in NOISE and getattr(self.fetch, source) is None:
                    raise ParamsError(f"{key}: uses {source}, but fetch.{source} has no source")
        for name in self.ood.sets:
            if name not in self.prepare.ood_sets:
                raise ParamsError(
                    f"ood.sets: {name!r} is not built by prepare.ood_sets "
                    f"(defined: {sorted(self.prepare.ood_sets)})"
                )
        if self.ood.search and self.ood.validation_set is None:
            raise ParamsError("ood.search: choosing hyperparameters needs ood.validation_set (an OOD set for validation)")
        if self.ood.validation_set is not None:
            if self.ood.validation_set not in self.prepare.ood_sets:
                raise ParamsError(
                    f"ood.validation_set: {self.ood.validation_set!r} is not built by prepare.ood_sets "
                    f"(defined: {sorted(self.prepare.ood_sets)})"
                )
            if self.ood.validation_set in self.ood.sets:
                raise ParamsError(f"ood.validation_set: {self.ood.validation_set!r} is a test set (in ood.sets); choose on held-out data")
        if self.ood.id_split == "openood":
            for source in ("openood_cifar10_test_list", "openood_cifar10_val_list"):
                if getattr(self.fetch, source) is None:
                    raise ParamsError(f"ood.id_split: openood uses OpenOOD's CIFAR-10 lists, but fetch.{source} has no source")
        for group, members in self.ood.groups.items():
            for name in members:
                if name not in self.ood.sets:
                    raise ParamsError(f"ood.groups.{group}: {name!r} is not in ood.sets {self.ood.sets}")
        positive = {
            "prepare.val_size": self.prepare.val_size,
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "train.lr": self.train.lr,
            "train.threads": self.train.threads,
            "ood.batch_size": self.ood.batch_size,
            "ood.fit_images": self.ood.fit_images,
            "ood.validation_images": self.ood.validation_images,
            "ood.threads": self.ood.threads,
            "bench.threads": self.bench.threads,
            "bench.runs": self.bench.runs,
            "bench.throughput_batch_size": self.bench.throughput_batch_size,
            "bench.throughput_runs": self.bench.throughput_runs,
            "bench.artifact_images": self.bench.artifact_images,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ParamsError(f"{key}: must be > 0, got {value!r}")
        if "msp" not in self.ood.detectors:
            raise ParamsError(f"ood.detectors: must include 'msp', the paper's baseline (Table 2); got {self.ood.detectors}")
        for name in self.ood.search:
            if name not in self.ood.detectors:
                raise ParamsError(f"ood.search: {name!r} is not in ood.detectors {self.ood.detectors}")
        if self.package.detector not in self.ood.detectors:
            raise ParamsError(
                f"package.detector: {self.package.detector!r} must be one of ood.detectors {self.ood.detectors}, "
                f"so its OOD metrics are measured"
            )
        if not 0 < self.package.id_tpr <= 1:
            raise ParamsError(f"package.id_tpr: must be in (0, 1], got {self.package.id_tpr!r}")
        if not 0 <= self.train.label_smoothing < 1:
            raise ParamsError(f"train.label_smoothing: must be in [0, 1), got {self.train.label_smoothing!r}")
        self._check_recipe("quantize", self.quantize)
        for name, recipe in self.sweep.recipes.items():
            self._check_recipe(f"sweep.recipes.{name}", recipe)

    def _check_recipe(self, key: str, recipe: QuantizeParams) -> None:
        for name in ("calibration_size", "qat_images", "qat_batch_size", "qat_lr"):
            if getattr(recipe, name) <= 0:
                raise ParamsError(f"{key}.{name}: must be > 0, got {getattr(recipe, name)!r}")
        if recipe.qat_epochs < 0:
            raise ParamsError(f"{key}.qat_epochs: must be >= 0, got {recipe.qat_epochs!r}")
        if recipe.calibration_split == "val" and recipe.calibration_size > self.prepare.val_size:
            raise ParamsError(
                f"{key}.calibration_size: {recipe.calibration_size} exceeds prepare.val_size "
                f"({self.prepare.val_size}); lower it or calibrate on calibration_split: train"
            )


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``, recursing into dataclasses and containers."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        fields = {f.name: f for f in dataclasses.fields(hint)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ParamsError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
        hints = typing.get_type_hints(hint)
        kwargs = {}
        for name, field in fields.items():
            sub_key = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = _convert(value[name], hints[name], sub_key)
            elif field.default is dataclasses.MISSING:
                raise ParamsError(f"{sub_key}: missing")
        return hint(**kwargs)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {k: _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool) or not isinstance(value, hint) or (
        hint is int and isinstance(value, bool)
    ):
        raise ParamsError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def parse(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as read from params.yaml)."""
    try:
        return _convert(raw, Params, "")
    except ParamsError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a dataclass __post_init__ check
        raise ParamsError(str(exc)) from exc


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise :class:`ParamsError` naming the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found; run from the repository root") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse(raw)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from exc
