"""OOD detectors with one interface, after pytorch-ood: ``fit`` on ID training data, then ``score``.

A detector scores :class:`Evidence`: a set of images, the model that is being judged, and that
model's outputs on them (logits, pooled penultimate features, and the layer4 activation map
before pooling), computed once and shared by every detector. The FP32 and the INT8 model are
each judged with their own outputs and their own classifier head (:class:`ModelContext`), so the
INT8 column measures the INT8 model. A score is higher for inputs that look more
in-distribution. Scores come from pytorch-ood where it is correct (checked on synthetic cases in
the tests); its detectors return outlier scores (higher = more OOD), negated here.

Adding a detector: one class here and one line in :data:`DETECTORS`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_ood.detector import ASH as PoodASH
from pytorch_ood.detector import GEN as PoodGEN
from pytorch_ood.detector import KNN as PoodKNN
from pytorch_ood.detector import EnergyBased, MaxSoftmax
from pytorch_ood.detector import MaxLogit as PoodMaxLogit
from pytorch_ood.detector import ReAct as PoodReAct
from torch import nn

from edgeml.data.splits import load_arrays
from edgeml.io import write_npz
from edgeml.model.inference import forward_batches, normalize, to_tensor
from edgeml.params import ParamsError
from edgeml.runtime.images import CIFAR10_STD


@dataclasses.dataclass
class Outputs:
    """What a model gives for a set of images: logits, pooled penultimate features and the pre-pool map."""

    logits: torch.Tensor
    features: torch.Tensor
    maps: torch.Tensor

    def __getitem__(self, index: slice | torch.Tensor) -> "Outputs":
        return Outputs(self.logits[index], self.features[index], self.maps[index])

    def __len__(self) -> int:
        return len(self.logits)


def predict_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 500, desc: Optional[str] = None) -> Outputs:
    """Outputs of uint8 NCHW images; ``model`` returns (logits, features, map) as every deployable file does."""
    return Outputs(*forward_batches(model, images, batch_size, desc=desc))


@dataclasses.dataclass
class Evidence:
    """One set of images as one model sees it. ``key`` names the image set (e.g. ``test/tin_crop``):
    input-perturbation detectors cache per-set work under it across models and settings."""

    key: str
    images: torch.Tensor  # uint8 NCHW
    model: nn.Module  # normalised float NCHW in, (logits, features, map) out
    batch_size: int = 500

    @functools.cached_property
    def outputs(self) -> Outputs:
        return predict_outputs(self.model, self.images, self.batch_size, desc=self.key)

    def sample(self, count: Optional[int], seed: int) -> "Evidence":
        """A seeded sample of at most ``count`` images (all when ``count`` is None), outputs shared."""
        if count is None or count >= len(self.images):
            return self
        index = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(self.images), count, replace=False)))
        sampled = Evidence(f"{self.key}[{count}@{seed}]", self.images[index], self.model, self.batch_size)
        if "outputs" in self.__dict__:
            sampled.outputs = self.outputs[index]
        return sampled


class GradientSigns:
    """sign(-grad_x log S_y(x; T)) of the FP32 twin, per image set and temperature: ODIN's nudge
    direction does not depend on eps or on the model being judged, so one backward pass serves
    every eps of the grid and both the FP32 and the INT8 model, across stages through :meth:`save`
    and :meth:`load`."""

    def __init__(self, twin: nn.Module):
        self.twin = twin.eval()
        self._cache: dict[tuple[str, float], torch.Tensor] = {}

    def save(self, path: str | Path) -> None:
        """Every computed direction, as two bit planes (positive, non-zero): exact, and 1/4 of int8's size."""
        arrays: dict[str, np.ndarray] = {"keys": np.array(json.dumps([[key, t] for key, t in self._cache]))}
        for i, signs in enumerate(self._cache.values()):
            values = signs.numpy()
            arrays |= {f"positive_{i}": np.packbits(values > 0), f"nonzero_{i}": np.packbits(values != 0),
                       f"shape_{i}": np.array(values.shape)}
        write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, twin: nn.Module) -> "GradientSigns":
        """The directions :meth:`save` wrote; any other set or temperature is computed with ``twin``."""
        gradients = cls(twin)
        arrays = load_arrays(path)
        for i, (key, temperature) in enumerate(json.loads(str(arrays["keys"]))):
            shape = tuple(int(n) for n in arrays[f"shape_{i}"])
            count = int(np.prod(shape))
            positive = np.unpackbits(arrays[f"positive_{i}"], count=count).reshape(shape)
            nonzero = np.unpackbits(arrays[f"nonzero_{i}"], count=count).reshape(shape)
            signs = nonzero.astype(np.int8) * (2 * positive.astype(np.int8) - 1)
            gradients._cache[(key, temperature)] = torch.from_numpy(signs)
        return gradients

    def __call__(self, evidence: Evidence, temperature: float) -> torch.Tensor:
        key = (evidence.key, temperature)
        if key not in self._cache:
            signs = []
            for start in range(0, len(evidence.images), evidence.batch_size):
                x = normalize(evidence.images[start : start + evidence.batch_size]).requires_grad_()
                logits = self.twin(x) / temperature
                # ODIN (Liang et al. 2018, eq. 2): cross-entropy against the predicted class = -log S_y(x; T)
                F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum").backward()
                signs.append(torch.sign(x.grad).to(torch.int8))
            self._cache[key] = torch.cat(signs)
        return self._cache[key]


@dataclasses.dataclass
class ModelContext:
    """What a detector may use besides the evidence: the judged model's own classifier ``head``
    (for the INT8 model its dequantized INT8 layer), and the FP32 twin's gradients (ODIN)."""

    head: nn.Linear
    gradients: Optional[GradientSigns] = None


class Scorer(nn.Module):
    """A detector's score of a model's (logits, features), with what ``fit`` learned held as float32 buffers:
    the tail the deployable artifact computes inside its own graph (ONNX, OpenVINO IR, TorchScript or torch.export), so
    the edge runtime runs no detector code of its own."""

    def __init__(self, score: Callable[..., torch.Tensor], **constants: torch.Tensor):
        super().__init__()
        self.score, self.names = score, tuple(constants)
        for name, value in constants.items():
            self.register_buffer(name, value.detach().float())

    def forward(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.score(logits, features, **{name: getattr(self, name) for name in self.names})


class Detector(ABC):
    name: ClassVar[str]
    # True for detectors the artifact can carry: a function of the logits and pooled features (:meth:`scorer`)
    carriable: ClassVar[bool] = False
    # True for detectors that run the model themselves on changed inputs (their cost includes a forward pass)
    perturbs_inputs: ClassVar[bool] = False
    # hyperparameter -> (low, high, low inclusive): the values ``ood.search`` may try
    ranges: ClassVar[dict[str, tuple[float, float, bool]]] = {}

    def __init__(self, context: ModelContext):
        self.context = context

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "Detector":
        """Learn what the detector needs from ID training outputs and class labels; none by default."""
        return self

    @abstractmethod
    def score(self, evidence: Evidence) -> torch.Tensor:
        """One score per image; higher = more in-distribution."""

    def hyperparameters(self) -> dict[str, float]:
        """The values this detector ran with (written to the metrics)."""
        return {}

    def scorer(self) -> Scorer:
        """This fitted detector as the artifact's tail (for ``carriable`` detectors: the others need the layer4
        map, input gradients or a feature bank too large for an edge file)."""
        raise NotImplementedError(f"{self.name} cannot travel in the artifact")

    def head_constants(self) -> dict[str, torch.Tensor]:
        """The judged model's own classifier layer, for scorers that re-apply it to the features."""
        return {"weight": self.context.head.weight, "bias": self.context.head.bias}


class LogitDetector(Detector):
    """A function of the logits alone."""

    carriable = True

    def score(self, evidence: Evidence) -> torch.Tensor:
        return self.score_logits(evidence.outputs.logits)

    def scorer(self) -> Scorer:
        return Scorer(lambda logits, features: self.score_logits(logits))

    @abstractmethod
    def score_logits(self, logits: torch.Tensor) -> torch.Tensor: ...


class PytorchOODLogitDetector(LogitDetector):
    """A pytorch-ood logit score, sign-flipped to ID-positive."""

    outlier_score: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return -type(self).outlier_score(logits)


def _pytorch_ood_logit_detector(class_name: str, name: str, outlier_score: Callable[[torch.Tensor], torch.Tensor], doc: str) -> type:
    """A :class:`PytorchOODLogitDetector` subclass: these differ only in their name and pytorch-ood score."""
    return type(class_name, (PytorchOODLogitDetector,), {"name": name, "outlier_score": staticmethod(outlier_score), "__doc__": doc})


MSP = _pytorch_ood_logit_detector("MSP", "msp", MaxSoftmax.score, "Maximum softmax probability (Hendrycks & Gimpel 2017), ODIN's baseline.")
MaxLogit = _pytorch_ood_logit_detector(
    "MaxLogit", "maxlogit", PoodMaxLogit.score, "Largest logit (Hendrycks et al. 2022): keeps the magnitude that softmax normalises away.")
Energy = _pytorch_ood_logit_detector("Energy", "energy", EnergyBased.score, "Free energy logsumexp(logits) (Liu et al. 2020).")
GEN = _pytorch_ood_logit_detector(
    "GEN", "gen", PoodGEN.score, "Generalized entropy of the softmax, gamma 0.1 over all classes (Liu et al. 2023).")


class MDS(Detector):
    """Mahalanobis distance score, MDS: the distance to the closest class mean under a shared covariance
    (Lee et al. 2018) on the penultimate features, without the paper's input preprocessing or feature
    ensemble (OpenOOD's ``mds``). Written here rather than taken from pytorch-ood, whose matrix inverse
    fails when the covariance is singular (fewer samples than dimensions, or dead features); the
    pseudo-inverse is what OpenOOD's implementation uses (sklearn's precision)."""

    name = "mds"
    carriable = True

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "MDS":
        features = outputs.features.double()
        classes = labels.unique()
        self.means = torch.stack([features[labels == c].mean(0) for c in classes])
        centred = features - self.means[torch.searchsorted(classes, labels)]
        self.precision = torch.linalg.pinv(centred.T @ centred / len(features), hermitian=True)
        return self

    def score(self, evidence: Evidence) -> torch.Tensor:
        diff = evidence.outputs.features.double()[:, None, :] - self.means[None]  # samples x classes x dims
        distances = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return -distances.min(dim=1).values.float()

    def scorer(self) -> Scorer:
        # precision = L L^T (its eigenvectors scaled by the root eigenvalues): the distance is ||L^T x - L^T mean||^2,
        # one 512 x 512 product per image instead of one per class, and no cancellation in float32
        values, vectors = torch.linalg.eigh(self.precision)
        whiten = vectors * values.clamp_min(0).sqrt()
        return Scorer(_mds_score, whiten=whiten, whitened_means=self.means @ whiten)


class KNN(Detector):
    """Distance to the k-th nearest ID training feature, features L2-normalised (Sun et al. 2022)."""

    name = "knn"
    ranges = {"k": (1, float("inf"), True)}

    def __init__(self, context: ModelContext, k: int = 50):
        super().__init__(context)
        self.k = int(k)

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "KNN":
        # normalised here: F.normalize leaves an all-zero feature (dead ReLUs) at zero instead of NaN
        self._pood = PoodKNN(None, k=self.k, normalize=False).fit_features(F.normalize(outputs.features), labels)
        return self

    def score(self, evidence: Evidence) -> torch.Tensor:
        return -self._pood.predict_features(F.normalize(evidence.outputs.features))

    def hyperparameters(self) -> dict[str, float]:
        return {"k": self.k}


class EdgeKNN(KNN):
    """KNN (Sun et al. 2022) over a bank small enough to travel in an edge file: a seeded sample of ``bank``
    of the L2-normalised fit features (at most 1,024: 2 MB of float32 at 512 dimensions). The paper's own
    sampled variants (1% of ImageNet's training set) show the k-th distance keeps most of its power on a
    sample when k shrinks with it. The artifact computes cosine similarities to the bank in its graph:
    distance = sqrt(2 - 2 cos) on unit vectors, the k-th smallest of them."""

    name = "knn_edge"
    carriable = True
    MAX_BANK = 1024
    ranges = {"k": (1, float("inf"), True), "bank": (1, MAX_BANK + 1, True)}

    def __init__(self, context: ModelContext, k: int = 5, bank: int = MAX_BANK):
        super().__init__(context, k)
        self.bank = int(bank)

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "EdgeKNN":
        keep = min(self.bank, len(outputs))
        index = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(outputs), keep, replace=False)))
        self.features = F.normalize(outputs.features[index].double()).float()
        return super().fit(outputs[index], labels[index])

    def score(self, evidence: Evidence) -> torch.Tensor:
        return super().score(evidence).float()  # as the artifact computes it

    def scorer(self) -> Scorer:
        return Scorer(functools.partial(_knn_score, k=self.k), bank=self.features)

    def hyperparameters(self) -> dict[str, float]:
        return {"k": self.k, "bank": self.bank}


class ViM(Detector):
    """Virtual-logit matching (Wang et al. 2022), with the judged model's own head (W, b): features are
    centred at u = -pinv(W) b; the principal subspace is spanned by the ``dim`` leading eigenvectors of
    their covariance on ID training data; score = logsumexp(logits) - alpha * ||x projected off it||,
    alpha = mean max logit / mean residual norm on the fit data. pytorch-ood's ``ViM`` computes the same
    (tested) but in float32, where the eigensolver fails to converge on the rank-deficient covariance of
    few or quantized features; here it runs in float64."""

    name = "vim"
    carriable = True
    ranges = {"dim": (1, float("inf"), True)}

    def __init__(self, context: ModelContext, dim: int = 256):
        super().__init__(context)
        self.dim = int(dim)

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "ViM":
        if len(outputs.features) <= self.dim:
            # fewer samples than the principal subspace: no residual to scale by (division by zero)
            raise ParamsError(f"ood.search.vim: dim {self.dim} needs more than {self.dim} fit images (ood.fit_images: {len(outputs.features)})")
        w, b = self.context.head.weight.detach().double(), self.context.head.bias.detach().double()
        features = outputs.features.double()
        self.origin = -(torch.linalg.pinv(w) @ b)
        centred = features - self.origin
        _, vectors = torch.linalg.eigh(centred.T @ centred / len(centred))  # ascending eigenvalues
        self.residual_space = vectors[:, : vectors.shape[1] - self.dim]
        residual = (centred @ self.residual_space).norm(dim=1)
        self.alpha = ((features @ w.T + b).amax(dim=1).mean() / residual.mean()).item()
        return self

    def score(self, evidence: Evidence) -> torch.Tensor:
        features = evidence.outputs.features.double()
        head = self.context.head
        logits = features @ head.weight.detach().double().T + head.bias.detach().double()
        residual = ((features - self.origin) @ self.residual_space).norm(dim=1)
        return (torch.logsumexp(logits, dim=1) - self.alpha * residual).float()

    def scorer(self) -> Scorer:
        return Scorer(_vim_score, **self.head_constants(), origin=self.origin, residual_space=self.residual_space,
                      alpha=torch.tensor(self.alpha))

    def hyperparameters(self) -> dict[str, float]:
        return {"principal_dim": self.dim}


class ReAct(Detector):
    """Energy after clipping the pooled penultimate features at their ID percentile (Sun et al. 2021),
    with the judged model's own head."""

    name = "react"
    carriable = True
    ranges = {"percentile": (0.0, 1.0, False)}

    def __init__(self, context: ModelContext, percentile: float = 0.9):
        super().__init__(context)
        self.percentile = percentile

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "ReAct":
        head = self.context.head
        self._pood = PoodReAct(nn.Identity(), lambda maps: head(maps.flatten(1)), percentile=self.percentile, detector=EnergyBased.score)
        self._pood._set_threshold_from_activations(outputs.features.flatten())
        return self

    def score(self, evidence: Evidence) -> torch.Tensor:
        return -self._pood.predict_feature_maps(evidence.outputs.features[:, :, None, None])

    def scorer(self) -> Scorer:
        return Scorer(_react_score, **self.head_constants(), threshold=torch.as_tensor(float(self._pood.threshold)))

    def hyperparameters(self) -> dict[str, float]:
        return {"percentile": self.percentile, "threshold": float(self._pood.threshold)}


class ASH(Detector):
    """ASH-S (Djurisic et al. 2023) as published: on the pooled penultimate features (C x 1 x 1), keep the
    top ``1 - percentile`` activations per sample, scale them by exp(sum before / sum after), apply the
    judged model's own head and score Energy. The official code (andrijazz/ash) and OpenOOD apply it
    after ``avg_pool2d``; pytorch-ood's ``ASH`` computes the pruning."""

    name = "ash"
    ranges = {"percentile": (0.0, 1.0, False)}
    on_map: ClassVar[bool] = False  # prune the layer4 map before pooling instead (:class:`ASHMap`)

    def __init__(self, context: ModelContext, percentile: float = 0.9):
        super().__init__(context)
        self.percentile = percentile
        head = context.head
        self._pood = PoodASH(nn.Identity(), lambda maps: head(maps.mean(dim=(2, 3))), variant="ash-s",
                             percentile=percentile, detector=EnergyBased.score)

    def score(self, evidence: Evidence) -> torch.Tensor:
        outputs = evidence.outputs
        maps = outputs.maps if self.on_map else outputs.features[:, :, None, None]
        with torch.no_grad():
            scores = -self._pood.predict_feature_maps(maps)
            # an all-zero map (dead ReLUs) has nothing to prune or rescale (ASH's ratio is 0/0): its energy as is
            dead = maps.flatten(1).abs().sum(dim=1) == 0
            scores[dead] = torch.logsumexp(self.context.head(torch.zeros(int(dead.sum()), maps.shape[1])), dim=1)
        return scores

    def hyperparameters(self) -> dict[str, float]:
        return {"percentile": self.percentile}


class ASHMap(ASH):
    """ASH-S on the layer4 activation map before global pooling (C x H x W; 512 x 4 x 4 for the CIFAR stem):
    not the published method, kept under its own name for comparison."""

    name = "ash_map"
    on_map = True


class FDBD(Detector):
    """fDBD (Liu & Qin, ICML 2024): the feature's average distance to the decision boundaries between the
    predicted class y and every other class c, |l_y - l_c| / ||w_y - w_c||, divided by its distance to the
    mean ID training feature, with the judged model's own head (W, b). The regulariser makes a feature far
    from the training data look less ID however far from the boundaries it sits. As OpenOOD's ``fdbd``
    postprocessor (the summed distances; the 1 / (C - 1) factor does not change the ranking)."""

    name = "fdbd"
    carriable = True

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "FDBD":
        self.mean = outputs.features.double().mean(dim=0)
        return self

    def score(self, evidence: Evidence) -> torch.Tensor:
        head = self.context.head
        w, b = head.weight.detach().double(), head.bias.detach().double()
        features = evidence.outputs.features.double()
        logits = features @ w.T + b
        top, predicted = logits.max(dim=1)
        gaps = (w[:, None, :] - w[None]).norm(dim=2)  # classes x classes: ||w_y - w_c||
        gaps.fill_diagonal_(1.0)  # the predicted class itself: a zero gap over 1, no boundary
        boundary = ((top[:, None] - logits).abs() / gaps[predicted]).sum(dim=1)
        return (boundary / (features - self.mean).norm(dim=1).clamp_min(1e-12)).float()

    def scorer(self) -> Scorer:
        w = self.context.head.weight.detach().double()
        gaps = (w[:, None, :] - w[None]).norm(dim=2)
        gaps.fill_diagonal_(1.0)
        return Scorer(_fdbd_score, **self.head_constants(), gaps=gaps, mean=self.mean)


class ODIN(Detector):
    """Temperature-scaled MSP on inputs nudged to raise it (Liang et al. 2018):
    x' = x - eps * sign(-grad_x log S_y(x; T)) / std, score = max softmax(f(x') / T).
    INT8 kernels have no gradients: the nudge comes from the FP32 twin (the float network both
    models were exported from, :class:`GradientSigns`), and the judged model scores the nudged
    images with its own logits. Equal to pytorch-ood's ``odin_preprocessing`` (tested)."""

    name = "odin"
    perturbs_inputs = True
    ranges = {"temperature": (0.0, float("inf"), False), "eps": (0.0, float("inf"), True)}

    def __init__(self, context: ModelContext, temperature: float = 1000.0, eps: float = 0.0014):
        super().__init__(context)
        self.temperature, self.eps = float(temperature), float(eps)

    def score(self, evidence: Evidence) -> torch.Tensor:
        if not self.eps:  # no nudge: temperature-scaled MSP of the outputs already computed
            return (evidence.outputs.logits / self.temperature).softmax(dim=1).amax(dim=1)
        signs = self.context.gradients(evidence, self.temperature)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        scores = []
        with torch.no_grad():
            for start in range(0, len(evidence.images), evidence.batch_size):
                stop = start + evidence.batch_size
                x = normalize(evidence.images[start:stop]) - self.eps * signs[start:stop].float() / std
                logits = evidence.model(x.contiguous())[0].float()
                scores.append((logits / self.temperature).softmax(dim=1).amax(dim=1))
        return torch.cat(scores)

    def hyperparameters(self) -> dict[str, float]:
        return {"temperature": self.temperature, "eps": self.eps}


# The carriable detectors' scores in float32 torch ops that export to ONNX (which OpenVINO converts), TorchScript and torch.export
# (:meth:`Detector.scorer`); each equals its detector's ``score`` to within float32 rounding (tested).
def _mds_score(logits: torch.Tensor, features: torch.Tensor, whiten: torch.Tensor, whitened_means: torch.Tensor) -> torch.Tensor:
    return -((features @ whiten)[:, None, :] - whitened_means[None]).square().sum(dim=2).amin(dim=1)


def _knn_score(logits: torch.Tensor, features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    similarity = F.normalize(features) @ bank.T
    kth = similarity.topk(k, dim=1).values[:, -1]
    return -(2 - 2 * kth).clamp_min(0).sqrt()


def _vim_score(logits: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               origin: torch.Tensor, residual_space: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    own = features @ weight.T + bias
    return torch.logsumexp(own, dim=1) - alpha * ((features - origin) @ residual_space).norm(dim=1)


def _react_score(logits: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 threshold: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(torch.minimum(features, threshold) @ weight.T + bias, dim=1)


def _fdbd_score(logits: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                gaps: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    own = features @ weight.T + bias
    top, predicted = own.max(dim=1)
    boundary = ((top[:, None] - own).abs() / gaps[predicted]).sum(dim=1)
    return boundary / (features - mean).norm(dim=1).clamp_min(1e-12)


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (MSP, MaxLogit, Energy, GEN, ODIN, MDS, KNN, EdgeKNN, ViM, ReAct, ASH, ASHMap, FDBD)
}


def detector_class(name: str) -> type[Detector]:
    if name not in DETECTORS:
        raise ParamsError(f"ood.detectors: {name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name]


def hyperparameter_names(name: str) -> list[str]:
    """The keyword arguments a detector takes besides its context (what ``ood.search`` may set)."""
    return [p for p in inspect.signature(detector_class(name).__init__).parameters if p not in ("self", "context")]


def check_params(detectors: list[str], search: dict[str, dict[str, list[float]]]) -> None:
    """Refuse unknown detectors, and search grids naming unknown hyperparameters or values out of
    range, before any work (params.py cannot: it must load where pytorch-ood is not installed)."""
    for name in detectors:
        detector_class(name)
    for name, grid in search.items():
        allowed = hyperparameter_names(name)
        for key, values in grid.items():
            if key not in allowed:
                raise ParamsError(f"ood.search.{name}: unknown hyperparameter {key!r}; allowed: {allowed}")
            low, high, inclusive = DETECTORS[name].ranges.get(key, (float("-inf"), float("inf"), True))
            for value in values:
                if not (low <= value if inclusive else low < value) or value >= high:
                    bound = f"{'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high != float("inf") else "")
                    raise ParamsError(f"ood.search.{name}.{key}: {value!r} must be {bound}")


def make_detector(name: str, context: ModelContext, **hyperparameters: float) -> Detector:
    """A detector by its params name, for the model whose ``context`` it gets."""
    unknown = sorted(set(hyperparameters) - set(hyperparameter_names(name)))
    if unknown:
        raise ParamsError(f"ood.search.{name}: unknown hyperparameter(s) {unknown}; allowed: {hyperparameter_names(name)}")
    return detector_class(name)(context, **hyperparameters)


def fit_set(arrays: Mapping[str, np.ndarray], count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (uint8 NCHW) and labels detectors fit on: a seeded sample of ``count``, as
    OpenOOD fits on training data (never test, and not the validation split kept for choices)."""
    if count > len(arrays["train_x"]):
        raise ParamsError(f"ood.fit_images: {count} exceeds the {len(arrays['train_x'])} training images")
    index = np.sort(np.random.default_rng(seed).choice(len(arrays["train_x"]), count, replace=False))
    return to_tensor(arrays["train_x"][index]), torch.from_numpy(arrays["train_y"][index])
