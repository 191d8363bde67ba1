"""RotPred: a rotation-prediction head trained beside the classifier, and its OOD score.

Hendrycks, Mazeika, Kadavath and Song, "Using Self-Supervised Learning Can Improve Model Robustness
and Uncertainty", NeurIPS 2019, as OpenOOD v1.5 runs it (github.com/Jingkang50/OpenOOD, commit
3c35632: openood/networks/rot_net.py, openood/trainers/rotpred_trainer.py,
openood/postprocessors/rotpred_postprocessor.py):

- the batch is its four rotations by 0/90/180/270 degrees, concatenated (one forward pass, so
  batch-norm sees all four); a ``Linear(512, 4)`` head on the pooled penultimate features predicts
  which; loss = ``CE(class logits of the unrotated quarter, y) + weight * CE(rotation logits, r)``,
  weight 1 in OpenOOD;
- score (higher = more in-distribution) = ``KL(U || softmax(f(x))) - 1/4 sum_r KL(onehot(r) || softmax(g(rot_r x)))``
  in bits, i.e. ``-log2 C - mean_c log2 p_c + 1/4 sum_r log2 q_r(rot_r x)``.

The head is saved in models/fp32.pt under its own key (``rotation_head``), which every loader of
the classifier ignores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgeml.model.inference import normalize

ROTATIONS = 4
FEATURES = 512  # ResNet18's pooled penultimate features
CHECKPOINT_KEY = "rotation_head"


def rotation_head(seed: int) -> nn.Linear:
    """``Linear(512, 4)``, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(FEATURES, ROTATIONS)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The NCHW batch rotated by 0, 90, 180 and 270 degrees, concatenated in that order, and the
    rotation labels 0..3 (as OpenOOD's trainer builds them)."""
    rotated = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return rotated.contiguous(memory_format=torch.channels_last), labels


class RotPredNet(nn.Module):
    """A classifier with an ``fc`` layer plus the rotation head on ``fc``'s input (OpenOOD's RotNet):
    ``forward`` returns (class logits, rotation logits). One module, so DDP syncs both."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features: list[torch.Tensor] = []
        handle = self.backbone.fc.register_forward_pre_hook(lambda module, args: features.append(args[0]))
        try:
            logits = self.backbone(x)
        finally:
            handle.remove()
        return logits, self.head(features[0])


def rotpred_loss(net: nn.Module, x: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The unrotated images' class logits and ``weight * CE(rotation)`` over all four rotations of
    the normalised batch ``x`` (``net``: a :class:`RotPredNet`, or DDP around one)."""
    rotated, labels = rotations(x)
    logits, rot_logits = net(rotated)
    return logits[: len(x)], weight * F.cross_entropy(rot_logits, labels)


@torch.no_grad()
def rotpred_score(model: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """RotPred's published OOD score of uint8 NCHW ``images`` (higher = more in-distribution), in
    bits as OpenOOD's ``kl_div`` computes it: KL(uniform || class softmax) of the unrotated image
    minus the mean over the four rotations of KL(onehot(r) || rotation softmax) = -log2 q_r."""
    net = RotPredNet(model, head).eval()
    rotated, labels = rotations(normalize(images))
    logits, rot_logits = net(rotated)
    class_log_p = F.log_softmax(logits[: len(images)].float(), dim=1)
    kl_uniform = -math.log(class_log_p.shape[1]) - class_log_p.mean(1)
    rot_log_q = F.log_softmax(rot_logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
    rot_kl = -rot_log_q.view(ROTATIONS, len(images)).mean(0)
    return (kl_uniform - rot_kl) / math.log(2)


def load_rotation_head(path: str | Path) -> Optional[nn.Linear]:
    """The rotation head saved beside the classifier in a models/fp32.pt checkpoint, or None."""
    state = torch.load(path, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY)
    if state is None:
        return None
    head = nn.Linear(FEATURES, ROTATIONS)
    head.load_state_dict(state)
    return head.eval()
