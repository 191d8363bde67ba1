"""Where the pipeline's files live: the paths dvc.yaml declares, written once for the code (relative to the
repository root, where DVC runs every stage). tests/test_dvc_yaml.py checks each against dvc.yaml."""

from __future__ import annotations

from pathlib import Path

SOURCES = Path("data/sources.json")  # which source and sha256 each fetched dataset came from
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CIFAR10 = PREPARED / "cifar10.npz"  # train / val / test arrays
OPENOOD_CIFAR10 = PREPARED / "openood_cifar10.npz"  # OpenOOD's ID test / validation positions in the test set
SCORES = Path("data/scores")  # the ood stage's: the INT8 model's scores, and its FP32 twin's with INT8's settings
FP32_OOD = Path("data/ood_fp32")  # the ood_fp32 stage's: FP32 scores, detector choices, metrics, ODIN's gradients
FP32_OOD_CHOICES, FP32_OOD_METRICS = FP32_OOD / "choices.json", FP32_OOD / "metrics.json"
ODIN_GRADIENTS = FP32_OOD / "odin_gradients.npz"  # the FP32 twin's nudge directions, which both models' ODIN use
PRETRAINED = Path("models/pretrained.pt")  # the train stage's model: the fine-tune's starting point
FP32 = Path("models/fp32.pt")  # the finetune stage's model: what every later stage quantizes and measures
FINETUNE_RECORD = Path("weights/finetune.json")  # how the published fine-tuned weights were made (metrics/finetune.json of that run)
DEPLOY = Path("models/deploy")
SWEEP = Path("models/sweep")
ARTIFACT = Path("models/artifact")
METRICS = Path("metrics")
PLOTS = Path("plots")
# Not a pipeline output (git-ignored): the train stage's resume point after an interruption.
CHECKPOINT = Path("models/checkpoints/train.pt")
FINETUNE_WORK = Path("models/checkpoints/finetune")  # ... and the finetune stage's (search results, per-epoch checkpoints)


def ood_set(name: str) -> Path:
    """A prepared OOD set (test or validation)."""
    return PREPARED / "ood" / f"{name}.npz"


def scores(model: str, detector: str) -> Path:
    """One model's scores of every image set with one detector (the FP32 model's from the ood_fp32 stage)."""
    return (FP32_OOD if model == "fp32" else SCORES) / f"{model}_{detector}.npz"


def metrics(name: str) -> Path:
    """A stage's metrics file, ``metrics/<name>.json``."""
    return METRICS / f"{name}.json"
