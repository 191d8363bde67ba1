"""The training loop: one-cycle SGD, cross-entropy or LogitNorm, optionally RotPred and PixMix (OOD
training without outlier data), bf16 on CUDA, DDP, resumable checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgeml.io import atomic_dir, atomic_path, write_json, write_text
from edgeml.model import augment as augment_module
from edgeml.model import inference, loop, pictures, pixmix, resnet, rotpred
from edgeml.model.inference import predict_logits
from edgeml.model.loop import classification_loss, train_epoch
from edgeml.params import ParamsError, TrainParams
from edgeml.runtime import images

# A checkpoint is written when this long has passed since the last one (so every epoch on a CPU,
# every minute or so on a GPU, where an epoch takes a second) and after the last epoch.
CHECKPOINT_SECONDS = 60.0


# The code a checkpoint was written by: a resumed run must not mix two versions of it.
CODE = (Path(__file__), *(Path(module.__file__) for module in (resnet, augment_module, inference, images, loop, pictures, pixmix, rotpred)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError("train.device: 'cuda' requested but no CUDA GPU is available; use 'auto' or 'cpu'")
        return torch.device("cuda", torch.cuda.current_device())  # torchrun: this rank's GPU
    return torch.device(name)


@contextlib.contextmanager
def distributed(device: str) -> Iterator[None]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on
    CPUs), one GPU per local rank; a plain run stays a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, metrics and plots."""
    return rank_and_world()[0] == 0


def validation_metrics(
    model: nn.Module, val_x: torch.Tensor, val_y: torch.Tensor, params: TrainParams, device: torch.device
) -> dict[str, float]:
    """Loss (``train.loss``, no label smoothing) and top-1 on the validation images."""
    logits = predict_logits(model, val_x, device=device)
    return {
        "val_loss": classification_loss(logits, val_y, params).item(),
        "val_acc": (logits.argmax(1) == val_y).float().mean().item(),
    }


def write_curves(history: list[dict[str, float]], live_dir: Path) -> None:
    """Per-epoch metrics in dvclive's layout (``plots/metrics/<name>.tsv`` with a ``step``
    column, ``metrics.json`` with the last step), rewritten whole from ``history``, so a resumed
    run's curves are complete without appending to files an earlier run left."""
    names = [name for name in history[0] if name != "seconds"]
    with atomic_dir(live_dir) as tmp:
        for name in names:
            rows = "".join(f"{step}\t{entry[name]}\n" for step, entry in enumerate(history))
            write_text(tmp / "plots" / "metrics" / f"{name}.tsv", f"step\t{name}\n{rows}")
        write_json(tmp / "metrics.json", {name: history[-1][name] for name in names} | {"step": len(history) - 1})


def code_digest() -> str:
    digest = hashlib.sha256()
    for path in CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def config_fingerprint(params: TrainParams, extra: dict[str, Any]) -> str:
    """Identifies a training configuration (params, the training code, the number of processes
    and whatever ``extra`` holds, e.g. the data's digest), so a stale checkpoint is never resumed."""
    blob = json.dumps(
        {"train": dataclasses.asdict(params), "code": code_digest(), "world_size": rank_and_world()[1], **extra},
        sort_keys=True,
    )
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
    rotation_head: nn.Module | None = None,
) -> dict[str, float]:
    """Train ``model`` (and ``rotation_head``, which ``train.rotpred`` needs: see
    :mod:`edgeml.model.rotpred`) in place; return final validation metrics and throughput.

    Under DistributedDataParallel every rank draws the same permutation and augmentation of
    each global batch of ``batch_size`` images and trains on its own slice of it, so the
    schedule and the data seen are those of a single-process run."""
    device = resolve_device(params.device)
    cuda = device.type == "cuda"
    rank, world = rank_and_world()
    if params.batch_size % world:
        raise ParamsError(f"train.batch_size: {params.batch_size} does not split evenly over {world} processes")
    steps_per_epoch = len(train_x) // params.batch_size  # drop the ragged last batch
    if steps_per_epoch == 0:
        raise ParamsError(f"train.batch_size: {params.batch_size} exceeds the {len(train_x)} training images")
    local = slice(rank * params.batch_size // world, (rank + 1) * params.batch_size // world)
    if params.rotpred != (rotation_head is not None):
        raise ValueError(f"train.rotpred is {params.rotpred}: pass a rotation head exactly when it is set")
    torch.set_num_threads(params.threads)
    torch.backends.cudnn.benchmark = cuda
    seed_everything(params.seed)
    model = model.to(device, memory_format=torch.channels_last)
    trainee = model if rotation_head is None else rotpred.RotPredNet(model, rotation_head.to(device))
    net = DistributedDataParallel(trainee, device_ids=[device.index] if cuda else None) if world > 1 else trainee
    forward = (lambda x: rotpred.rotpred_loss(net, x, params.rotpred_weight)) if params.rotpred else net
    mixer = pixmix.PixMix(pictures.mixing_pictures(pixmix.PICTURES, params.seed).to(device), params.pixmix_k,
                          params.pixmix_beta) if params.pixmix else None
    optimizer = torch.optim.SGD(
        trainee.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        nesterov=True,
        weight_decay=params.weight_decay,
        fused=True if cuda else None,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, epochs=params.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    generator = torch.Generator(device=device).manual_seed(params.seed)
    train_x, train_y = train_x.to(device), train_y.to(device)  # resident: no copy per batch
    history: list[dict[str, float]] = []
    log = print if rank == 0 else lambda message: None
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state["fingerprint"] == fingerprint:
            trainee.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            history = state["history"]
            log(f"resuming from {checkpoint_path} after epoch {len(history)}")
        else:
            log(f"ignoring {checkpoint_path}: it was written for another configuration or version of the code")
    saved = time.perf_counter()
    for epoch in range(len(history), params.epochs):
        net.train()
        t0 = time.perf_counter()
        totals = train_epoch(
            forward, train_x, train_y, params.batch_size, steps_per_epoch, optimizer, scheduler, generator,
            lambda logits, y: classification_loss(logits, y, params, params.label_smoothing),
            local=local, desc=f"epoch {epoch + 1}/{params.epochs}", bar=rank == 0, mix=mixer,
        )
        if world > 1:
            dist.all_reduce(totals)
            for buffer in trainee.buffers():  # batch-norm statistics: every rank keeps rank 0's
                dist.broadcast(buffer, 0)
        total, right, count = totals.tolist()  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        entry = {
            "train_loss": total / count,
            "train_acc": right / count,
            **validation_metrics(model, val_x, val_y, params, device),
            "seconds": seconds,
        }
        history.append(entry)
        log(f"epoch {epoch + 1}/{params.epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in entry.items()))
        if rank == 0 and (epoch + 1 == params.epochs or time.perf_counter() - saved >= CHECKPOINT_SECONDS):
            state = {"fingerprint": fingerprint, "history": history, "generator": generator.get_state()}
            state |= {"model": trainee.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            with atomic_path(checkpoint_path) as tmp:
                torch.save(state, tmp)
            saved = time.perf_counter()
    if rank == 0:
        write_curves(history, live_dir)
    trainee.to("cpu", memory_format=torch.contiguous_format)
    seconds = [entry["seconds"] for entry in history]
    return {
        **{k: v for k, v in history[-1].items() if k != "seconds"},
        "epochs": params.epochs,
        "train_seconds": sum(seconds),
        "seconds_per_epoch": sum(seconds) / params.epochs,
        "median_epoch_seconds": statistics.median(seconds),  # the first epoch also tunes cuDNN
        "train_images_per_second": params.epochs * steps_per_epoch * params.batch_size / max(sum(seconds), 1e-9),
        "device": device.type,
        "processes": world,
    }
