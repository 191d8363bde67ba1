"""A lean, resumable training loop (airbench-style: data stays in memory as uint8 tensors).

Augmentation (random crop with 4-pixel padding, horizontal flip) runs on whole batches, so
there is no DataLoader overhead on a 2-core machine. The schedule is one-cycle. A checkpoint
is written after every epoch; a run that finds a checkpoint with the same configuration
fingerprint resumes from it after an interruption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from torch import nn
from tqdm import tqdm

from edgeml.preprocess import normalize
from edgeml.io import atomic_path
from edgeml.params import TrainParams

PAD = 4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: 'cuda' requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(name)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop from the zero-padded image and random horizontal flip, per image."""
    n, c, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    cols = torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w)) + dx
    rows = torch.arange(h) + dy
    return padded[
        torch.arange(n).view(n, 1, 1, 1),
        torch.arange(c).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500, device: Optional[torch.device] = None) -> torch.Tensor:
    """Logits for uint8 NCHW images, batched, in eval mode."""
    device = device or torch.device("cpu")
    model.eval()
    out = [model(normalize(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def config_fingerprint(params: TrainParams, extra: dict[str, Any]) -> str:
    """Identifies a training configuration, so a stale checkpoint is never resumed."""
    blob = json.dumps({"train": dataclasses.asdict(params), **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    params: TrainParams,
    checkpoint_path: Path,
    live_dir: Path,
    fingerprint: str,
) -> dict[str, float]:
    """Train ``model`` in place; return final validation metrics and throughput."""
    device = resolve_device(params.device)
    torch.set_num_threads(params.threads)
    seed_everything(params.seed)
    model = model.to(device, memory_format=torch.channels_last)
    steps_per_epoch = len(train_x) // params.batch_size  # drop the ragged last batch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, nesterov=True, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, epochs=params.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    generator = torch.Generator().manual_seed(params.seed)
    start_epoch, elapsed = 0, 0.0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            start_epoch, elapsed = state["epoch"], state["elapsed"]
            print(f"resuming from {checkpoint_path} after epoch {start_epoch}")
        else:
            print(f"ignoring {checkpoint_path}: it was written for another configuration")
    live = Live(str(live_dir), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, params.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train_x), generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{params.epochs}", leave=False)
        for step in bar:
            idx = order[step * params.batch_size : (step + 1) * params.batch_size]
            x = normalize(augment(train_x[idx], generator)).to(device)
            y = train_y[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=params.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        elapsed += time.perf_counter() - t0
        val_logits = predict_logits(model, val_x, device=device)
        metrics = {
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_loss": F.cross_entropy(val_logits, val_y).item(),
            "val_acc": (val_logits.argmax(1) == val_y).float().mean().item(),
        }
        for name, value in metrics.items():
            live.log_metric(name, value)
        live.next_step()
        print(f"epoch {epoch + 1}/{params.epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        with atomic_path(checkpoint_path) as tmp:
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "elapsed": elapsed,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                },
                tmp,
            )
    live.end()
    model.to("cpu", memory_format=torch.contiguous_format)
    return {
        **metrics,
        "epochs": params.epochs,
        "train_seconds": elapsed,
        "train_images_per_second": params.epochs * steps_per_epoch * params.batch_size / max(elapsed, 1e-9),
        "device": device.type,
    }
