"""What every trainer here shares, and nothing of PixMix or RotPred: the class losses (cross-entropy,
LogitNorm) and one epoch of SGD steps. The train stage's loop (:mod:`edgeml.model.train`) and eager
quantization-aware training (:mod:`edgeml.quantization.eager`) run on it, so an edit to PixMix or RotPred
re-runs the train stage alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgeml.model.augment import augment
from edgeml.model.inference import normalize
from edgeml.params import TrainParams


def logitnorm_loss(logits: torch.Tensor, targets: torch.Tensor, tau: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """LogitNorm (Wei et al., "Mitigating Neural Network Overconfidence with Logit Normalization",
    ICML 2022): cross-entropy of the logits scaled to norm 1/tau,
    ``CE(f / (tau * (||f||_2 + 1e-7)), y)``, so training cannot lower the loss by growing the logits'
    norm, which keeps softmax confidence lower on inputs unlike the training data."""
    norms = torch.linalg.vector_norm(logits, dim=1, keepdim=True) + 1e-7
    return F.cross_entropy(logits / (norms * tau), targets, label_smoothing=label_smoothing)


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, params: TrainParams, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The loss ``train.loss`` names (mean over the batch)."""
    if params.loss == "logitnorm":
        return logitnorm_loss(logits, targets, params.logitnorm_tau, label_smoothing)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    local: slice = slice(None),
    desc: str = "train",
    bar: bool = True,
    mix: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One epoch of SGD steps on ``steps`` batches of a fresh permutation of the uint8 ``images``
    (augmented, normalised; ``local``: this process's slice of each batch), the scheduler stepped per
    batch, bf16 autocast on CUDA; ``forward`` maps a batch to logits, or to (logits, an auxiliary
    loss added to ``loss_fn``'s); ``mix`` (PixMix) turns each cropped, flipped uint8 batch into the
    float 0..255 batch trained on. Returns the loss sum, the
    number right and the number seen as one float64 tensor on the images' device, so the caller
    syncs once (or all-reduces across processes)."""
    device = images.device
    order = torch.randperm(len(images), generator=generator, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    # no bar where output is not a terminal (disable=None), nor where the caller asks for none
    for step in tqdm(range(steps), desc=desc, leave=False, disable=None if bar else True):
        idx = order[step * batch_size : (step + 1) * batch_size]
        batch = augment(images[idx], generator)
        if mix is not None:
            batch = mix(batch, generator)
        x = normalize(batch[local])
        y = labels[idx][local]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = forward(x)
            logits, auxiliary = output if isinstance(output, tuple) else (output, None)
            loss = loss_fn(logits, y)
            if auxiliary is not None:
                loss = loss + auxiliary
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return torch.stack([total_loss, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
