"""OOD fine-tuning on the CPU: the installed FP32 weights learn to be unsure on outliers made in code.

Outlier Exposure's fine-tuning recipe (Hendrycks, Mazeika and Dietterich, ICLR 2019;
hendrycks/outlier-exposure ``CIFAR/oe_tune.py``): start from a trained classifier, train on batches
of ID images plus outliers with cross-entropy on the ID half and an outlier term on the other, SGD
with Nesterov momentum, lr 1e-3 annealed by a cosine. The outliers here come from
:mod:`edgeml.model.outliers`, never from an image set. Outlier terms (``finetune.recipes.*.loss``):

- ``oe``: ``logsumexp(z) - mean(z)`` on outliers (cross-entropy to the uniform distribution up to a constant);
- ``energy``: Liu, Wang, Owens and Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020:
  ``relu(E_in - m_in)^2 + relu(m_out - E_out)^2`` with ``E = -logsumexp(z)``; the margins are
  percentiles of this model's own ID training energies (``energy_percentiles``), not WRN's -25/-7;
- either with ``id_loss: logitnorm`` (Wei et al., ICML 2022) instead of cross-entropy on the ID half;
- plus, with ``distill > 0``, KL(start model || model) on the ID half: Learning without Forgetting's
  term (Li and Hoiem, ECCV 2016; Hinton et al. 2015 at temperature 1), with the start weights as the
  frozen teacher, so that the outlier term does not buy its AUROC with top-1; the teacher is seen through the
  same forward pass as the model (with T2FNorm, the normalised one), so the term starts at zero.
- with ``normalized_features``, T2FNorm (Regmi et al., "T2FNorm: Train-time Feature Normalization for
  OOD Detection in Image Classification", CVPRW 2024; OpenOOD's ``T2FNormNet``): every loss sees logits of
  L2-normalised penultimate features, while the deployed model, unchanged, scores the raw ones, whose
  norm the losses no longer reward and which shrinks on inputs unlike the training images. Here the
  logits ``W h + b`` are divided by ``|h|`` (the paper's network has no bias, where the two agree), so the
  training forward pass predicts exactly the class the deployed one does; they are multiplied by the
  start model's mean feature norm, so the fine-tune starts from logits of the size the start model had
  (the paper's 1/tau, for a model trained from scratch, is 10).

What makes it fit 2 cores: bf16 autocast where the CPU has bf16 units, channels-last, the stem and
layer1 frozen (no weight gradients, and no input gradients below layer2), and every batch-norm layer
kept in eval mode, so outliers never enter the running statistics the deployed model normalises with.

A run is checkpointed after every epoch (and every search recipe), and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeml.io import atomic_path
from edgeml.model import outliers as outliers_module
from edgeml.model import pictures
from edgeml.model.augment import augment
from edgeml.model.inference import normalize
from edgeml.model.loop import logitnorm_loss
from edgeml.params import FinetuneParams, FinetuneRecipe, ParamsError

FROZEN = {"none": (), "stem": ("conv1", "bn1"), "layer1": ("conv1", "bn1", "layer1")}
CODE = (Path(__file__), Path(outliers_module.__file__), Path(pictures.__file__))
LOG_SECONDS = 30.0  # a progress line at most this often (logs of background runs stay readable)


def bf16_available() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast speeds training up."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_bf16(setting: str) -> bool:
    return bf16_available() if setting == "auto" else setting == "on"


def fingerprint(*parts: Any) -> str:
    """Identifies a run (params, start weights, the code): a stale checkpoint is never resumed."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---- losses ----

def energy(logits: torch.Tensor) -> torch.Tensor:
    """Free energy ``-logsumexp(z)``: lower for inputs the model knows."""
    return -torch.logsumexp(logits, dim=1)


def start_pass(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched no-grad pass of the start model over uint8 NCHW images: its logits, and the L2 norms of its
    penultimate features (the ``fc`` layer's input), which the energy margins and T2FNorm's scale are taken from."""
    norms: list[torch.Tensor] = []
    hook = model.fc.register_forward_pre_hook(lambda _module, args: norms.append(args[0].float().norm(dim=1)))
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(normalize(images[i : i + batch_size])).float() for i in range(0, len(images), batch_size)])
    finally:
        hook.remove()
    return logits, torch.cat(norms)


def energy_margins(logits: torch.Tensor, percentiles: Sequence[float]) -> tuple[float, float]:
    """(m_in, m_out): the given percentiles of the energies of ID training images' logits."""
    low, high = np.percentile(energy(logits).numpy(), percentiles)
    return float(low), float(high)


@contextlib.contextmanager
def normalized_features(model: nn.Module, scale: float) -> Iterator[None]:
    """Within: the logits are the ``fc`` layer's, times ``scale`` over the norm of its input (T2FNorm's training
    forward pass, bias included); after: the model as it was."""
    hook = model.fc.register_forward_hook(lambda _module, args, out: out * (scale / args[0].norm(dim=1, keepdim=True).clamp_min(1e-6)))
    try:
        yield
    finally:
        hook.remove()


def id_loss(recipe: FinetuneRecipe, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if recipe.id_loss == "logitnorm":
        return logitnorm_loss(logits, labels, recipe.logitnorm_tau)
    return F.cross_entropy(logits, labels)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) of the two softmax outputs, averaged over the batch."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1), log_target=True, reduction="batchmean")


def outlier_loss(recipe: FinetuneRecipe, id_logits: torch.Tensor, out_logits: torch.Tensor, margins: tuple[float, float]) -> torch.Tensor:
    if recipe.loss == "energy":
        m_in, m_out = margins
        return F.relu(energy(id_logits) - m_in).square().mean() + F.relu(m_out - energy(out_logits)).square().mean()
    return (torch.logsumexp(out_logits, dim=1) - out_logits.mean(1)).mean()


# ---- the loop ----

def freeze(model: nn.Module, frozen: str) -> list[nn.Parameter]:
    """Freeze the named leading layers; return the parameters left to train."""
    names = FROZEN[frozen]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(tuple(f"{n}." for n in names)))
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module) -> None:
    """Dropout-free ResNet: train mode except batch norm, whose statistics stay the start model's."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class Progress:
    """Images/s and time left, as a tqdm bar on a terminal and a line every LOG_SECONDS in a log."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        from tqdm import tqdm

        self.total, self.done, self.desc = total, done, desc
        self.start, self.logged, self.start_done = time.perf_counter(), time.perf_counter(), done
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="img", unit_scale=True, leave=False, disable=None)

    def update(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        now = time.perf_counter()
        if self.bar.disable and now - self.logged >= LOG_SECONDS:
            rate = (self.done - self.start_done) / (now - self.start)
            left = (self.total - self.done) / max(rate, 1e-9)
            print(f"{self.desc}: {self.done}/{self.total} images, {rate:.0f} images/s, {left / 60:.1f} min left", file=sys.stderr, flush=True)
            self.logged = now

    def close(self) -> None:
        self.bar.close()


@dataclasses.dataclass
class Data:
    """What a fine-tune trains on: uint8 NCHW training images and labels, the outlier maker."""

    images: torch.Tensor
    labels: torch.Tensor
    maker: outliers_module.OutlierMaker


def run(
    model: nn.Module,
    data: Data,
    recipe: FinetuneRecipe,
    params: FinetuneParams,
    epochs: int,
    steps_per_epoch: int,
    checkpoint: Path,
    run_id: str,
    evaluate: Callable[[nn.Module], dict[str, Any]],
    desc: str,
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place for ``epochs`` x ``steps_per_epoch`` steps of ``params.id_batch``
    training images plus ``params.outlier_batch`` outliers; ``evaluate`` (validation only) after every
    epoch. Resumes from ``checkpoint`` when it was written by the same ``run_id``. Returns the history
    (per epoch: train losses, seconds, images/s, and what ``evaluate`` returned)."""
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    bf16 = use_bf16(params.bf16)
    trainable = freeze(model, params.freeze)
    optimizer = torch.optim.SGD(trainable, lr=params.lr, momentum=params.momentum, nesterov=True, weight_decay=params.weight_decay)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    margins, scale = (0.0, 0.0), 0.0
    history: list[dict[str, Any]] = []
    teacher = copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=torch.channels_last) if recipe.distill > 0 else None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.exists() else None
    if state is not None and state["run_id"] == run_id:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history, margins, scale = state["history"], tuple(state["margins"]), state["feature_scale"]
        print(f"{desc}: resuming from {checkpoint} after epoch {len(history)}/{epochs}", file=sys.stderr)
    elif recipe.loss == "energy" or recipe.normalized_features:
        start_logits, start_norms = start_pass(model, data.images[torch.randperm(len(data.images), generator=generator)[:2000]])
        if recipe.loss == "energy":
            margins = energy_margins(start_logits, recipe.energy_percentiles)
        if recipe.normalized_features:
            scale = start_norms.mean().item()

    def training_forward(network: nn.Module) -> contextlib.AbstractContextManager[None]:
        """The losses' forward pass, for the model and for its teacher alike (T2FNorm's, or the plain one)."""
        return normalized_features(network, scale) if recipe.normalized_features else contextlib.nullcontext()

    model.to(memory_format=torch.channels_last)
    batch = params.id_batch + params.outlier_batch
    progress = Progress(total_steps * batch, len(history) * steps_per_epoch * batch, desc)
    for epoch in range(len(history), epochs):
        train_mode(model)
        start, sums = time.perf_counter(), torch.zeros(3, dtype=torch.float64)
        order = torch.randperm(len(data.images), generator=generator)  # each training image once per epoch
        for step in range(steps_per_epoch):
            id_index = order[(step * params.id_batch) % len(order) :][: params.id_batch]
            source_index = torch.randint(len(data.images), (params.outlier_batch,), generator=generator)
            made = data.maker(data.images[source_index], generator)
            x = normalize(augment(torch.cat([data.images[id_index], made]), generator))
            labels = data.labels[id_index]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), training_forward(model):
                logits = model(x).float()
            in_logits, out_logits = logits[: params.id_batch], logits[params.id_batch :]
            classification = id_loss(recipe, in_logits, labels)
            if teacher is not None:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), training_forward(teacher):
                    teacher_logits = teacher(x[: params.id_batch]).float()
                classification = classification + recipe.distill * distillation_loss(in_logits, teacher_logits)
            exposure = outlier_loss(recipe, in_logits, out_logits, margins)
            loss = classification + recipe.weight * exposure
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += torch.tensor([classification.item(), exposure.item(), (in_logits.argmax(1) == labels).float().mean().item()], dtype=torch.float64)
            progress.update(batch)
        seconds = time.perf_counter() - start
        entry = {
            "epoch": epoch + 1,
            "id_loss": sums[0].item() / steps_per_epoch,
            "outlier_loss": sums[1].item() / steps_per_epoch,
            "train_top1": sums[2].item() / steps_per_epoch,
            "seconds": seconds,
            "images_per_second": steps_per_epoch * batch / seconds,
        }
        model.eval()
        eval_start = time.perf_counter()
        entry |= evaluate(model)
        entry["validation_seconds"] = time.perf_counter() - eval_start
        history.append(entry)
        print(f"{desc}: epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, (int, float))), file=sys.stderr, flush=True)
        with atomic_path(checkpoint) as tmp:
            torch.save({"run_id": run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "history": history,
                        "margins": list(margins), "feature_scale": scale}, tmp)
    progress.close()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.to(memory_format=torch.contiguous_format).eval()
    if recipe.loss == "energy":
        history[-1]["energy_margins"] = list(margins)
    if recipe.normalized_features:
        history[-1]["feature_scale"] = scale
    return history


# ---- the search and the rule ----

def choose_recipe(results: Mapping[str, Mapping[str, Any]], start_top1: float, tolerance: float) -> tuple[str, str]:
    """The rule: among recipes whose validation top-1 is within ``tolerance`` of the start model's, the
    best mean validation AUROC (near and far sets) of the detector the artifact would carry. Returns
    (recipe name, the rule in words)."""
    rule = (f"validation top-1 within {tolerance * 100:.2g} points of the start model's ({start_top1 * 100:.2f}%); "
            "among those, the best mean validation AUROC (near, far) of the best carriable detector")
    kept = {name: r for name, r in results.items() if r["top1"] >= start_top1 - tolerance}
    if not kept:
        raise ParamsError(
            f"finetune.recipes: no recipe kept validation top-1 within {tolerance * 100:.2g} points of the start "
            f"model's {start_top1 * 100:.2f}% (best: {max(r['top1'] for r in results.values()) * 100:.2f}%); "
            "lower finetune.lr or the recipes' weight, or widen finetune.top1_tolerance"
        )
    return max(kept, key=lambda name: kept[name]["auroc"]), rule


def make_maker(recipe: FinetuneRecipe, params: FinetuneParams, encoding: Optional[outliers_module.JpegEncoding]) -> outliers_module.OutlierMaker:
    return outliers_module.OutlierMaker(recipe.outliers, pictures.mixing_pictures(params.pictures, params.seed), encoding)
