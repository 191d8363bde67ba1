"""Typed, validated view of params.yaml.

Every stage loads its section through :func:`load`, so a typo or a bad value stops the
pipeline before any work starts, with a message naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from edgeml.errors import EdgeMLError


class ParamsError(EdgeMLError, ValueError):
    """A key or value in params.yaml that the pipeline cannot use."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one dataset comes from: an official URL, or a local archive or folder; or a list of
    these tried in order (e.g. the local mirror, then the official URL), so one params file serves
    machines with and without the mirror. A list entry is a string, which takes ``sha256`` / ``md5``
    from beside the list, or a mapping with its own (the mirror's file and the official one differ)."""

    # str last: a scalar of the wrong type is reported against it ("expected str")
    source: Union[list[Union[Source, str]], str]
    sha256: Optional[str] = None  # None: known checksum of the official file, or a SHA256SUMS file beside it
    md5: Optional[str] = None

    def candidates(self) -> list[Source]:
        """The sources to try, in order, each naming one location with the checksum it must match."""
        if isinstance(self.source, str):
            return [self]
        return [e if isinstance(e, Source) else Source(e, self.sha256, self.md5) for e in self.source]


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


# The names params accept for backends, stems and datasets are Literals here, not read from the registries:
# params validation is a dependency of every stage, and reading edgeml.quantization's registry would make
# every stage depend on every backend module. tests/test_params.py checks each Literal equals its registry.
GENERATED = ("gaussian_noise", "uniform_noise", "synthetic_shapes")  # generated in code, not fetched


@dataclasses.dataclass(frozen=True)
class OODSetSpec:
    """An OOD set: images of a fetched dataset, made 32x32 RGB by ``transform`` (ODIN's random
    crop, the central crop, a resize of the central square, or none for sets released at 32x32),
    or generated in code (ODIN's noise, or synthetic shapes). Tiny ImageNet needs a ``split``; ``imglist`` names a
    fetched OpenOOD list that selects images; ``count``: how many generated images, or a seeded sample."""

    dataset: Literal["tinyimagenet", "mnist", "fashion_mnist", "svhn", "cifar100", "textures", "places365",
                     "odin_imagenet_crop", "odin_imagenet_resize", "odin_lsun_crop", "odin_lsun_resize",
                     "odin_isun", "gaussian_noise", "uniform_noise", "synthetic_shapes"]
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
class Weights:
    """A published FP32 checkpoint in ``models/fp32.pt``'s format: a URL or a local file (a relative
    path is relative to the repository root), verified against ``sha256`` before it is loaded."""

    source: Union[list[str], str]  # a list: tried in order (a local mirror, then a URL), as fetch.* sources
    sha256: str

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256):
            raise ParamsError(f"sha256: expected 64 hex digits, got {self.sha256!r}")


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
    weights: Optional[Weights] = None  # set: install these weights as models/fp32.pt instead of training
    loss: Literal["ce", "logitnorm"] = "ce"  # logitnorm: Wei et al. 2022, see edgeml.model.loop.logitnorm_loss
    logitnorm_tau: float = 0.04
    # OOD training without outlier data (combinable with each other and with loss: logitnorm):
    rotpred: bool = False  # Hendrycks et al. 2019 rotation head, see edgeml.model.rotpred
    rotpred_weight: float = 1.0  # loss = class loss + rotpred_weight * CE(rotation); OpenOOD uses 1
    pixmix: bool = False  # Hendrycks et al. 2022 with generated mixing pictures, see edgeml.model.pixmix
    pixmix_k: int = 4  # at most this many mixing rounds per image (official default)
    pixmix_beta: float = 3.0  # mixing severity (official default)

    def __post_init__(self) -> None:
        if self.logitnorm_tau <= 0:
            raise ParamsError(f"logitnorm_tau: must be > 0, got {self.logitnorm_tau!r}")


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """One OOD fine-tuning recipe (see :mod:`edgeml.model.finetune`): the outlier term, its weight, the
    ID loss and the outlier mix (generator name -> share, :data:`edgeml.model.outliers.GENERATORS`)."""

    outliers: dict[str, float]
    loss: Literal["oe", "energy"] = "oe"  # oe: uniform-target (Hendrycks et al. 2019); energy: margins (Liu et al. 2020)
    weight: float = 0.5  # the outlier term's weight (OE's lambda)
    id_loss: Literal["ce", "logitnorm"] = "ce"
    logitnorm_tau: float = 0.04
    energy_percentiles: list[float] = dataclasses.field(default_factory=lambda: [50.0, 99.0])  # m_in, m_out: of the start model's ID energies
    distill: float = 0.0  # weight of KL(start model || model) on the ID half: keeps what the start model knew
    normalized_features: bool = False  # T2FNorm: the losses see logits over the feature norm; the deployed model, raw ones

    def __post_init__(self) -> None:
        if len(self.energy_percentiles) != 2 or not 0 <= self.energy_percentiles[0] < self.energy_percentiles[1] <= 100:
            raise ParamsError(f"energy_percentiles: expected [m_in, m_out] with 0 <= m_in < m_out <= 100, got {self.energy_percentiles}")


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    """The finetune stage: published fine-tuned weights, or a recipe search on validation and a full run."""

    recipes: dict[str, FinetuneRecipe]
    weights: Optional[Weights] = None  # set: install these (made by this stage) instead of fine-tuning
    recipe: str = "auto"  # auto: the search's choice on validation; or a name in recipes (no search)
    search_steps: int = 300  # steps of each recipe's short run in the search
    epochs: int = 6  # the chosen recipe's full run, in passes over the training images
    id_batch: int = 128
    outlier_batch: int = 128
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    freeze: Literal["none", "stem", "layer1"] = "layer1"
    bf16: Literal["auto", "on", "off"] = "auto"  # autocast; auto: where the CPU has bf16 units
    pictures: int = 1024  # generated pictures (fractals, gratings, 1/f) the outliers draw on
    top1_tolerance: float = 0.005  # recipes keep validation top-1 within this of the start model's
    seed: int = 0
    threads: int = 2


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    """One quantization recipe. Which observers, activation types and QAT each backend offers
    is checked by :mod:`edgeml.quantization`; the defaults are the recipe a sweep entry starts from."""

    backend: Literal["fbgemm", "qnnpack", "pt2e_x86", "onnxruntime", "openvino", "executorch"] = "openvino"
    per_channel: bool = True
    observer: Literal["minmax", "moving_average_minmax", "histogram", "percentile", "entropy"] = "minmax"  # every backend has it
    # auto: the backend's best on this CPU (edgeml.quantization.base.Quantizer.resolve), recorded resolved.
    # reduce_range: 7-bit activations (torch backends) or weights (onnxruntime, openvino), for CPUs without VNNI
    reduce_range: Union[bool, Literal["auto"]] = "auto"
    activations: Literal["auto", "uint8", "int8"] = "auto"
    calibration_size: int = 1000
    calibration_split: Literal["train", "val"] = "train"  # never test; val is refused: it sets the package threshold
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning from the FP32 checkpoint first
    qat_images: int = 10000  # training images per QAT epoch
    qat_batch_size: int = 128
    qat_lr: float = 0.001
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SweepParams:
    """Quantization recipes compared side by side; each overrides :class:`QuantizeParams` defaults."""

    recipes: dict[str, QuantizeParams]
    # The sweep_timing stage times every recipe, each in its own process, taking turns this many rounds; the spread
    # of a recipe's speed-up across rounds sets the band within which speed-ups count as ties.
    timing_rounds: int = 10


@dataclasses.dataclass(frozen=True)
class ValidationSets:
    """The OOD validation sets every choice is made on, one near and one far from the ID data: a choice
    made on near-OOD alone can favour a detector that accepts noise (GEN once did, 84% of gaussian)."""

    near: str
    far: str

    def items(self) -> list[tuple[str, str]]:
        """(group, set name) pairs, near first."""
        return [("near", self.near), ("far", self.far)]


@dataclasses.dataclass(frozen=True)
class OODParams:
    detectors: list[str]  # names in edgeml.ood.detectors.DETECTORS
    sets: list[str]
    groups: dict[str, list[str]]  # e.g. near / far OOD: each group's mean is reported
    fit_images: int  # training images the fitted detectors learn from (class means, neighbours, thresholds)
    batch_size: int
    threads: int
    # Hyperparameters are chosen on validation only: by the mean AUROC of ID validation images vs the
    # near and the far OOD validation set, neither a test set (in ``sets``). ``search``: detector ->
    # hyperparameter -> grid.
    validation_sets: ValidationSets
    seed: int = 0
    validation_images: int = 1000  # ID validation images (the first of the validation split)
    # ID test / validation: "odin" = all 10,000 CIFAR-10 test images / the held-out training split
    # (prepare.val_size); "openood" = OpenOOD's lists over the test set (9,000 test / 1,000 validation).
    id_split: Literal["odin", "openood"] = "odin"
    search: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    # Input-perturbation detectors (ODIN: an FP32 backward pass per image) score a seeded sample of at
    # most this many images per test set; None = every image.
    perturbation_images: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class PackageParams:
    """The deployable artifact: which detector it carries and where its threshold sits."""

    # "auto": the logit detector with the best INT8 validation AUROC among those adding at most
    # max_added_us per image on the INT8 model; or a detector name to force one.
    detector: str
    id_tpr: float  # threshold keeps this fraction of ID validation images
    max_added_us: float = 100.0


@dataclasses.dataclass(frozen=True)
class BenchParams:
    threads: int
    warmup: int
    runs: int
    throughput_batch_size: int
    throughput_runs: int
    artifact_images: int  # image files pushed through the whole `edgeml predict` path
    soak_files: int  # mixed files of the `edgeml predict` soak, run as its own process


@dataclasses.dataclass(frozen=True)
class ReportParams:
    headline_set: str = "tin_crop"  # the OOD test set of the headline metrics and README figures (in ood.sets)
    demo_images: int = 200  # README's `edgeml predict` example: a sample this large of each test set
    demo_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Params:
    fetch: FetchParams
    prepare: PrepareParams
    model: ModelParams
    train: TrainParams
    finetune: FinetuneParams
    quantize: QuantizeParams
    sweep: SweepParams
    ood: OODParams
    package: PackageParams
    bench: BenchParams
    report: ReportParams = dataclasses.field(default_factory=ReportParams)

    def __post_init__(self) -> None:
        # Numbers were range-checked by _convert (RANGES); what follows relates keys to each other.
        for name, source in self.fetch.sources().items():
            _check_source(f"fetch.{name}", source)
        if self.prepare.val_size % CIFAR10_CLASSES:
            raise ParamsError(
                f"prepare.val_size: must be a multiple of CIFAR-10's {CIFAR10_CLASSES} classes (the split is "
                f"stratified), got {self.prepare.val_size}"
            )
        for key, names in [("ood.detectors", self.ood.detectors), ("ood.sets", self.ood.sets)] + [
            (f"ood.groups.{group}", members) for group, members in self.ood.groups.items()
        ]:
            if not names:
                raise ParamsError(f"{key}: must not be empty")
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ParamsError(f"{key}: {repeated} listed more than once")
        for detector, grid in self.ood.search.items():
            for name, values in grid.items():
                if not values or not all(math.isfinite(v) for v in values):
                    raise ParamsError(f"ood.search.{detector}.{name}: expected a list of finite numbers, got {values!r}")
        for name, spec in self.prepare.ood_sets.items():
            key = f"prepare.ood_sets.{name}"
            if spec.dataset == "tinyimagenet" and (spec.transform == "none" or spec.split is None):
                raise ParamsError(f"{key}: Tiny ImageNet sets need split (test | val) and transform (crop | resize)")
            if spec.dataset != "tinyimagenet" and (spec.split is not None or spec.imglist is not None):
                raise ParamsError(f"{key}: split and imglist apply to Tiny ImageNet only")
            if spec.dataset.startswith("odin_") and spec.transform not in ("none", "center_crop"):
                raise ParamsError(f"{key}: ODIN's archives are used as released: transform: none (or center_crop)")
            if spec.dataset in GENERATED and (spec.transform != "none" or spec.count is None):
                raise ParamsError(f"{key}: generated sets ({', '.join(GENERATED)}) need transform: none and a count")
            for source in (spec.dataset, spec.imglist):  # every other name is a fetch.<name> field
                if source and source not in GENERATED and getattr(self.fetch, source) is None:
                    raise ParamsError(f"{key}: uses {source}, but fetch.{source} has no source")
        for name in self.ood.sets:
            if name not in self.prepare.ood_sets:
                raise ParamsError(
                    f"ood.sets: {name!r} is not built by prepare.ood_sets "
                    f"(defined: {sorted(self.prepare.ood_sets)})"
                )
        if self.report.headline_set not in self.ood.sets:
            raise ParamsError(
                f"report.headline_set: {self.report.headline_set!r} is not an OOD test set (ood.sets: {self.ood.sets})"
            )
        for group, name in self.ood.validation_sets.items():
            key = f"ood.validation_sets.{group}"
            if name not in self.prepare.ood_sets:
                raise ParamsError(f"{key}: {name!r} is not built by prepare.ood_sets (defined: {sorted(self.prepare.ood_sets)})")
            if name in self.ood.sets:
                raise ParamsError(f"{key}: {name!r} is a test set (in ood.sets); choose on held-out data")
        if self.ood.validation_sets.near == self.ood.validation_sets.far:
            raise ParamsError(f"ood.validation_sets: near and far are both {self.ood.validation_sets.near!r}; give two different sets")
        if self.ood.id_split == "openood":
            for source in ("openood_cifar10_test_list", "openood_cifar10_val_list"):
                if getattr(self.fetch, source) is None:
                    raise ParamsError(f"ood.id_split: openood uses OpenOOD's CIFAR-10 lists, but fetch.{source} has no source")
        for group, members in self.ood.groups.items():
            for name in members:
                if name not in self.ood.sets:
                    raise ParamsError(f"ood.groups.{group}: {name!r} is not in ood.sets {self.ood.sets}")
        if "msp" not in self.ood.detectors:
            raise ParamsError(f"ood.detectors: must include 'msp', the paper's baseline (Table 2); got {self.ood.detectors}")
        for name in self.ood.search:
            if name not in self.ood.detectors:
                raise ParamsError(f"ood.search: {name!r} is not in ood.detectors {self.ood.detectors}")
        if self.package.detector != "auto" and self.package.detector not in self.ood.detectors:
            raise ParamsError(
                f"package.detector: {self.package.detector!r} must be one of ood.detectors {self.ood.detectors}, "
                f"so its OOD metrics are measured"
            )
        if self.finetune.recipe != "auto" and self.finetune.recipe not in self.finetune.recipes:
            raise ParamsError(f"finetune.recipe: {self.finetune.recipe!r} is not 'auto' or one of finetune.recipes {sorted(self.finetune.recipes)}")
        if not self.finetune.recipes:
            raise ParamsError("finetune.recipes: must not be empty")
        for name, recipe in self.finetune.recipes.items():
            if not recipe.outliers or any(not (math.isfinite(w) and w >= 0) for w in recipe.outliers.values()) or not any(recipe.outliers.values()):
                raise ParamsError(f"finetune.recipes.{name}.outliers: expected generator: share (>= 0, one > 0), got {recipe.outliers!r}")
        self._check_recipe("quantize", self.quantize)
        for name, recipe in self.sweep.recipes.items():
            self._check_recipe(f"sweep.recipes.{name}", recipe)

    def _check_recipe(self, key: str, recipe: QuantizeParams) -> None:
        if recipe.qat_images < recipe.qat_batch_size:
            raise ParamsError(
                f"{key}.qat_images: {recipe.qat_images} is less than one batch ({key}.qat_batch_size: "
                f"{recipe.qat_batch_size}); raise it or lower the batch size"
            )
        if recipe.calibration_split == "val":
            raise ParamsError(
                f"{key}.calibration_split: val holds the images the package threshold and the sweep's choice "
                f"are made on; calibrate on train so the image sets stay disjoint"
            )


def _check_source(key: str, spec: Source) -> None:
    """Checksums are hex digests; a location is not blank; a list has entries, each one location."""
    for algo, digits in (("sha256", 64), ("md5", 32)):
        digest = getattr(spec, algo)
        if digest is not None and not is_hex_digest(digest, digits):
            raise ParamsError(f"{key}.{algo}: expected {digits} hex digits, got {digest!r}")
    if isinstance(spec.source, str):
        if not spec.source.strip():
            raise ParamsError(f"{key}.source: empty; give the official URL or a local path")
        return
    if not spec.source:
        raise ParamsError(f"{key}.source: an empty list; give one or more local paths or URLs, tried in order")
    for i, entry in enumerate(spec.source):
        if isinstance(entry, str):
            if not entry.strip():
                raise ParamsError(f"{key}.source[{i}]: empty; give the official URL or a local path")
        elif not isinstance(entry.source, str):
            raise ParamsError(f"{key}.source[{i}].source: one location per entry, not a list; list the entries in {key}.source")
        else:
            _check_source(f"{key}.source[{i}]", entry)


def is_hex_digest(text: str, digits: int) -> bool:
    return len(text) == digits and all(c in "0123456789abcdefABCDEF" for c in text)


CIFAR10_CLASSES = 10  # edgeml.data cannot be imported here (it imports this module)
CIFAR10_TRAIN_IMAGES = 50_000


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key; ``high`` None is open-ended. NaN and infinity never pass."""

    low: float
    high: Optional[float] = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def check(self, value: float, key: str) -> None:
        if not math.isfinite(value):
            raise ParamsError(f"{key}: must be a finite number, got {value!r}")
        below = value < self.low or (value == self.low and not self.low_inclusive)
        above = self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive))
        if below or above:
            raise ParamsError(f"{key}: must be {self}, got {value!r}")

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low}"
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low}"
        return f"in {'[' if self.low_inclusive else '('}{self.low}, {self.high}{']' if self.high_inclusive else ')'}"


POSITIVE = Range(0, low_inclusive=False)
NON_NEGATIVE = Range(0)
SEED = Range(0, 2**32 - 1)  # what numpy's and torch's seeding accept everywhere
THREADS = Range(1, 1024)
FRACTION = Range(0, 1, high_inclusive=False)

# Every numeric field of every params class, by "Class.field" (tests check that none is missing).
RANGES: dict[str, Range] = {
    "FetchParams.retries": Range(1, 100),
    "PrepareParams.val_size": Range(0, CIFAR10_TRAIN_IMAGES, low_inclusive=False, high_inclusive=False),
    "PrepareParams.seed": SEED,
    "OODSetSpec.count": POSITIVE,
    "ModelParams.num_classes": Range(CIFAR10_CLASSES, CIFAR10_CLASSES),
    "TrainParams.epochs": POSITIVE,
    "TrainParams.batch_size": POSITIVE,
    "TrainParams.lr": POSITIVE,
    "TrainParams.momentum": FRACTION,
    "TrainParams.weight_decay": NON_NEGATIVE,
    "TrainParams.label_smoothing": FRACTION,
    "TrainParams.seed": SEED,
    "TrainParams.threads": THREADS,
    "TrainParams.logitnorm_tau": POSITIVE,
    "TrainParams.rotpred_weight": POSITIVE,
    "TrainParams.pixmix_k": Range(0, 16),
    "TrainParams.pixmix_beta": POSITIVE,
    "FinetuneRecipe.weight": POSITIVE,
    "FinetuneRecipe.logitnorm_tau": POSITIVE,
    "FinetuneRecipe.distill": NON_NEGATIVE,
    "FinetuneParams.search_steps": POSITIVE,
    "FinetuneParams.epochs": POSITIVE,
    "FinetuneParams.id_batch": POSITIVE,
    "FinetuneParams.outlier_batch": POSITIVE,
    "FinetuneParams.lr": POSITIVE,
    "FinetuneParams.momentum": FRACTION,
    "FinetuneParams.weight_decay": NON_NEGATIVE,
    "FinetuneParams.pictures": POSITIVE,
    "FinetuneParams.top1_tolerance": Range(0, 1),
    "FinetuneParams.seed": SEED,
    "FinetuneParams.threads": THREADS,
    "QuantizeParams.calibration_size": POSITIVE,
    "QuantizeParams.qat_epochs": NON_NEGATIVE,
    "QuantizeParams.qat_images": POSITIVE,
    "QuantizeParams.qat_batch_size": POSITIVE,
    "QuantizeParams.qat_lr": POSITIVE,
    "QuantizeParams.seed": SEED,
    "OODParams.fit_images": POSITIVE,
    "OODParams.batch_size": POSITIVE,
    "OODParams.threads": THREADS,
    "OODParams.seed": SEED,
    "OODParams.validation_images": POSITIVE,
    "OODParams.perturbation_images": POSITIVE,
    "PackageParams.id_tpr": Range(0, 1, low_inclusive=False),
    "PackageParams.max_added_us": POSITIVE,
    "BenchParams.threads": THREADS,
    "BenchParams.warmup": NON_NEGATIVE,
    "BenchParams.runs": POSITIVE,
    "BenchParams.throughput_batch_size": POSITIVE,
    "BenchParams.throughput_runs": POSITIVE,
    "BenchParams.artifact_images": POSITIVE,
    "BenchParams.soak_files": POSITIVE,
    "SweepParams.timing_rounds": Range(2, 1000),
    "ReportParams.demo_images": POSITIVE,
    "ReportParams.demo_seed": SEED,
}


_type_hints = functools.cache(typing.get_type_hints)  # resolving the string annotations is most of parse's time


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` (and a number against its range in RANGES),
    recursing into dataclasses and containers; any mismatch is a ParamsError naming the key."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        where = key or "top level"
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        fields = {f.name: f for f in dataclasses.fields(hint)}
        unknown = sorted(set(value) - set(fields), key=str)
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
        hints = _type_hints(hint)
        kwargs = {}
        for name, field in fields.items():
            sub_key = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = _convert(value[name], hints[name], sub_key)
                bounds = RANGES.get(f"{hint.__name__}.{name}")
                if bounds is not None and kwargs[name] is not None:
                    bounds.check(kwargs[name], sub_key)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{sub_key}: missing")
        try:
            return hint(**kwargs)
        except ParamsError as error:  # a dataclass's own check names its field; the key says where it sits
            raise ParamsError(f"{key}.{error}" if key else str(error)) from None
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        inner.sort(key=lambda arm: _same_shape(value, arm))  # the arm of a list's or mapping's shape names its error
        for arm in inner[:-1]:  # the first arm that accepts the value; the last one names the error
            try:
                return _convert(value, arm, key)
            except ParamsError:
                pass
        return _convert(value, inner[-1], key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        for k in value:
            if not isinstance(k, str):
                raise ParamsError(f"{key}: names must be strings, got {k!r}")
        return {k: _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**53:  # beyond this an int is not a float exactly (and 10**400 is no float at all)
            raise ParamsError(f"{key}: {value} is too large")
        return float(value)
    if hint is bool and not isinstance(value, bool) or not isinstance(value, hint) or (
        hint is int and isinstance(value, bool)
    ):
        raise ParamsError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _same_shape(value: Any, hint: Any) -> bool:
    """Whether ``value`` is a list (mapping) and ``hint`` a list (mapping or dataclass) type."""
    origin = typing.get_origin(hint)
    if isinstance(value, list):
        return origin is list
    return isinstance(value, dict) and (origin is dict or dataclasses.is_dataclass(hint))


def parse(raw: Any) -> Params:
    """Validate a params mapping (as read from params.yaml). Every failure is a ParamsError naming
    the key; any other exception is a bug in this module."""
    return _convert(raw, Params, "")


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise :class:`ParamsError` naming the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: not found; run from the repository root") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read it as text ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse(raw)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from exc
