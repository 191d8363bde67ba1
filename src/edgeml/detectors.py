"""OOD detectors with one interface, after pytorch-ood: ``fit`` on ID data, then ``score``.

A detector works on a model's outputs (:class:`Outputs`: logits and penultimate features),
so the same detector runs on the FP32 model and on its INT8 twin, each with its own outputs,
and the outputs of a data set are computed once for every detector. A score is higher for
inputs that look more in-distribution. Scores come from pytorch-ood where it is correct
(checked on synthetic cases in the tests); its detectors return outlier scores (higher =
more OOD), negated here.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar, Optional

import numpy as np
import torch
from pytorch_ood.detector import ASH as PoodASH
from pytorch_ood.detector import GEN as PoodGEN
from pytorch_ood.detector import KNN as PoodKNN
from pytorch_ood.detector import EnergyBased, MaxLogit as PoodMaxLogit, MaxSoftmax
from pytorch_ood.detector import ReAct as PoodReAct
from pytorch_ood.detector import ViM as PoodViM
from pytorch_ood.detector.odin import odin_preprocessing
import torch.nn.functional as F
from torch import nn

from edgeml.metrics import ood_metrics
from edgeml.params import ParamsError
from edgeml.preprocess import CIFAR10_STD, normalize, to_tensor


@dataclasses.dataclass
class Outputs:
    """What a model gives for a set of images: logits, and the penultimate (pooled) features."""

    logits: torch.Tensor
    features: torch.Tensor

    def __getitem__(self, index: slice | torch.Tensor) -> "Outputs":
        return Outputs(self.logits[index], self.features[index])


@torch.no_grad()
def predict_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> Outputs:
    """Logits and features of uint8 NCHW images, batched; ``model`` returns both (``load_deployable(..., features=True)``)."""
    model.eval()
    logits, features = zip(*(model(normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)))
    return Outputs(torch.cat(logits).float(), torch.cat(features).float())


def fit_set(arrays: Mapping[str, np.ndarray], count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (uint8 NCHW) and labels detectors fit on: a seeded sample of ``count``, as
    OpenOOD fits on training data (never test, and not the validation split kept for choices)."""
    if count > len(arrays["train_x"]):
        raise ParamsError(f"ood.fit_images: {count} exceeds the {len(arrays['train_x'])} training images")
    index = np.sort(np.random.default_rng(seed).choice(len(arrays["train_x"]), count, replace=False))
    return to_tensor(arrays["train_x"][index]), torch.from_numpy(arrays["train_y"][index])


class Detector(ABC):
    name: ClassVar[str]

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "Detector":
        """Learn what the detector needs from ID training data (outputs and class labels); none by default."""
        return self

    @abstractmethod
    def score(self, outputs: Outputs) -> torch.Tensor:
        """One score per input; higher = more in-distribution."""

    def hyperparameters(self) -> dict[str, float]:
        """The values this detector ran with (written to the metrics)."""
        return {}


class LogitDetector(Detector):
    """A function of the logits alone: it can travel inside the deployable artifact."""

    def score(self, outputs: Outputs) -> torch.Tensor:
        return self.score_logits(outputs.logits)

    @abstractmethod
    def score_logits(self, logits: torch.Tensor) -> torch.Tensor: ...


class PytorchOODLogitDetector(LogitDetector):
    """A pytorch-ood logit score, sign-flipped to ID-positive."""

    outlier_score: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return -type(self).outlier_score(logits)


class MSP(PytorchOODLogitDetector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017), ODIN's baseline."""

    name = "msp"
    outlier_score = staticmethod(MaxSoftmax.score)


class MaxLogit(PytorchOODLogitDetector):
    """Largest logit (Hendrycks et al. 2022): keeps the magnitude that softmax normalises away."""

    name = "maxlogit"
    outlier_score = staticmethod(PoodMaxLogit.score)


class Energy(PytorchOODLogitDetector):
    """Free energy logsumexp(logits) (Liu et al. 2020)."""

    name = "energy"
    outlier_score = staticmethod(EnergyBased.score)


class GEN(PytorchOODLogitDetector):
    """Generalized entropy of the softmax, gamma 0.1 over all classes (Liu et al. 2023)."""

    name = "gen"
    outlier_score = staticmethod(PoodGEN.score)


class FeatureDetector(Detector):
    """A detector on penultimate features; ``head`` is the model's final linear layer, for those that re-apply it."""

    def __init__(self, head: Optional[nn.Linear] = None):
        self.head = head


class Mahalanobis(FeatureDetector):
    """Distance to the closest class mean under a shared covariance (Lee et al. 2018), features only
    (no input perturbation). Written here rather than taken from pytorch-ood, whose matrix inverse
    fails when the covariance is singular (fewer samples than dimensions, or dead features); the
    pseudo-inverse is what OpenOOD's implementation uses (sklearn's precision)."""

    name = "mahalanobis"

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "Mahalanobis":
        features = outputs.features.double()
        classes = labels.unique()
        self.means = torch.stack([features[labels == c].mean(0) for c in classes])
        centred = features - self.means[torch.searchsorted(classes, labels)]
        self.precision = torch.linalg.pinv(centred.T @ centred / len(features), hermitian=True)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        diff = outputs.features.double()[:, None, :] - self.means[None]  # samples x classes x dims
        distances = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return -distances.min(dim=1).values.float()


class KNN(FeatureDetector):
    """Distance to the k-th nearest ID training feature, features L2-normalised (Sun et al. 2022)."""

    name = "knn"

    def __init__(self, head: Optional[nn.Linear] = None, k: int = 50):
        super().__init__(head)
        self.k = int(k)

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "KNN":
        # normalised here: F.normalize leaves an all-zero feature (dead ReLUs) at zero instead of NaN
        self._pood = PoodKNN(None, k=self.k, normalize=False).fit_features(F.normalize(outputs.features), labels)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        return -self._pood.predict_features(F.normalize(outputs.features))

    def hyperparameters(self) -> dict[str, float]:
        return {"k": self.k}


class ViM(FeatureDetector):
    """Virtual-logit matching (Wang et al. 2022): the feature's norm off the principal ID subspace vs the energy."""

    name = "vim"

    def __init__(self, head: Optional[nn.Linear] = None, dim: int = 256):
        super().__init__(head)
        self.dim = int(dim)

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "ViM":
        if len(outputs.features) <= self.dim:
            # fewer samples than the principal subspace: no residual to scale by (division by zero)
            raise ParamsError(f"vim dim {self.dim} needs more than {self.dim} fit images (ood.fit_images: {len(outputs.features)})")
        w, b = self.head.weight.detach(), self.head.bias.detach()
        self._pood = PoodViM(None, d=self.dim, w=w, b=b).fit_features(outputs.features, labels)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        return -self._pood.predict_features(outputs.features)

    def hyperparameters(self) -> dict[str, float]:
        return {"principal_dim": self.dim}


class _PooledMapDetector(FeatureDetector):
    """Shared by ReAct and ASH: pytorch-ood's versions act on feature maps, then re-apply the head and
    score with Energy. At 32x32 the torchvision-stem ResNet18's last map is 1x1, so the pooled
    features are that map."""

    percentile: float

    def _head(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(maps.flatten(1))

    def score(self, outputs: Outputs) -> torch.Tensor:
        with torch.no_grad():
            scores = -self._pood.predict_feature_maps(outputs.features[:, :, None, None])
            # an all-zero feature (dead ReLUs) has nothing to prune or rescale (ASH's ratio is 0/0)
            dead = outputs.features.abs().sum(dim=1) == 0
            scores[dead] = torch.logsumexp(self.head(torch.zeros_like(outputs.features[dead])), dim=1)
            return scores

    def hyperparameters(self) -> dict[str, float]:
        return {"percentile": self.percentile}


class ReAct(_PooledMapDetector):
    """Energy after clipping features at their ID percentile (Sun et al. 2021)."""

    name = "react"

    def __init__(self, head: Optional[nn.Linear] = None, percentile: float = 0.9):
        super().__init__(head)
        self.percentile = percentile

    def fit(self, outputs: Outputs, labels: torch.Tensor) -> "ReAct":
        self._pood = PoodReAct(nn.Identity(), self._head, percentile=self.percentile, detector=EnergyBased.score)
        self._pood._set_threshold_from_activations(outputs.features.flatten())
        return self

    def hyperparameters(self) -> dict[str, float]:
        return {"percentile": self.percentile, "threshold": float(self._pood.threshold)}


class ASH(_PooledMapDetector):
    """ASH-S (Djurisic et al. 2023): prune all but the top activations per sample, rescale by exp(sum ratio), Energy."""

    name = "ash"

    def __init__(self, head: Optional[nn.Linear] = None, percentile: float = 0.9):
        super().__init__(head)
        self.percentile = percentile
        self._pood = PoodASH(nn.Identity(), self._head, variant="ash-s", percentile=percentile, detector=EnergyBased.score)


class ODIN(Detector):
    """Temperature-scaled MSP on inputs nudged to raise it (Liang et al. 2018), via pytorch-ood's
    ``odin_preprocessing``. INT8 kernels have no gradients: the nudge comes from the FP32 twin
    (the float network both models were exported from), and each model scores the nudged
    inputs with its own logits."""

    name = "odin"

    def __init__(self, twin: Optional[nn.Module] = None, temperature: float = 1000.0, eps: float = 0.0014):
        self.twin, self.temperature, self.eps = twin, float(temperature), float(eps)

    def score(self, outputs: Outputs) -> torch.Tensor:
        raise TypeError("ODIN perturbs its inputs: score images with score_images")

    def score_images(self, model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Scores of uint8 NCHW images; ``model`` returns logits (the deployed FP32 or INT8 model)."""
        scores = []
        model.eval()
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size])
            if self.eps:
                x = odin_preprocessing(self.twin.eval(), x, eps=self.eps, temperature=self.temperature, norm_std=list(CIFAR10_STD))
            with torch.no_grad():
                scores.append((model(x.detach().contiguous()).float() / self.temperature).softmax(dim=1).amax(dim=1))
        return torch.cat(scores)

    def hyperparameters(self) -> dict[str, float]:
        return {"temperature": self.temperature, "eps": self.eps}


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (MSP, MaxLogit, Energy, GEN, ODIN, Mahalanobis, KNN, ViM, ReAct, ASH)
}


def make_detector(
    name: str, head: Optional[nn.Linear] = None, twin: Optional[nn.Module] = None, **hyperparameters: float
) -> Detector:
    """A detector by its params name; feature detectors that re-apply the classifier get ``head``,
    ODIN gets the FP32 ``twin`` for its input gradients."""
    if name not in DETECTORS:
        raise ParamsError(f"ood.detectors: {name!r} is not one of {sorted(DETECTORS)}")
    cls = DETECTORS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "head", "twin")]
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ParamsError(f"ood.search.{name}: unknown hyperparameter(s) {unknown}; allowed: {allowed}")
    if issubclass(cls, FeatureDetector):
        return cls(head, **hyperparameters)
    return cls(twin, **hyperparameters) if cls is ODIN else cls()


def choose(
    grid: dict[str, list[float]],
    build: Callable[..., Detector],
    validation_scores: Callable[[Detector], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[Detector, dict[str, object]]:
    """Grid search on validation data only (as OpenOOD does): ``build(**setting)`` makes a fitted
    detector, ``validation_scores`` scores ID and OOD validation data with it; the setting with the
    highest AUROC wins. Returns that detector and the search record."""
    tried = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        detector = build(**setting)
        id_scores, ood_scores = validation_scores(detector)
        tried.append((ood_metrics(id_scores.numpy(), ood_scores.numpy())["auroc"], setting, detector))
    auroc, setting, detector = max(tried, key=lambda t: t[0])
    return detector, {"chosen": setting, "validation_auroc": auroc, "tried": [[s, a] for a, s, _ in tried]}
