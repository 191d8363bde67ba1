"""OOD detectors with one interface, after pytorch-ood: ``fit`` on ID data, then ``score``.

A score is higher for inputs that look more in-distribution. Detectors take the model as an
argument rather than owning it, so the same detector runs on the FP32 model and on its INT8
twin (each scored with its own logits). Logit-based scores come from pytorch-ood, whose
detectors return outlier scores (higher = more OOD): they are negated here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from pytorch_ood.detector import GEN as PoodGEN
from pytorch_ood.detector import EnergyBased, MaxLogit as PoodMaxLogit, MaxSoftmax
from torch import nn

from edgeml.params import ParamsError
from edgeml.training import predict_logits


class Detector(ABC):
    name: ClassVar[str]

    def fit(self, model: nn.Module, id_images: torch.Tensor) -> "Detector":
        """Learn what the detector needs from ID (training/validation) images; none by default."""
        return self

    @abstractmethod
    def score(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        """One score per uint8 NCHW image; higher = more in-distribution."""


class LogitDetector(Detector):
    """A detector that is a function of the logits alone."""

    def __init__(self, batch_size: int = 500):
        self.batch_size = batch_size

    def score(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        return self.score_logits(predict_logits(model, images, self.batch_size)).numpy()

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


DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in (MSP, MaxLogit, Energy, GEN)}


def make_detector(name: str, **options: object) -> Detector:
    if name not in DETECTORS:
        raise ParamsError(f"ood.detectors: {name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name](**options)
