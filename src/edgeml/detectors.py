"""OOD detectors with one interface, after pytorch-ood: ``fit`` on ID data, then ``score``.

A score is higher for inputs that look more in-distribution. Detectors take the model as an
argument rather than owning it, so the same detector runs on the FP32 model and on its INT8
twin (each scored with its own logits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
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


class MSP(LogitDetector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017), ODIN's baseline."""

    name = "msp"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1).amax(dim=1)


DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in (MSP,)}


def make_detector(name: str, **options: object) -> Detector:
    if name not in DETECTORS:
        raise ParamsError(f"ood.detectors: {name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name](**options)
