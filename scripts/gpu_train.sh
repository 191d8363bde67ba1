#!/usr/bin/env bash
# One run of the train stage on a lent GPU machine (issue 10): no DVC, dvclive or internet there.
# Prepares CIFAR-10 from the mirror archive exactly as the prepare stage does, then trains the
# CIFAR-stem ResNet18 twice with stages/train.py, (a) cross-entropy and (b) LogitNorm, each in
# its own folder with a params.yaml that overrides the committed one. Into $OUT/<recipe>/ go
# train.json, the curves, the log (one line per epoch, with its seconds), the params used, test
# top-1 (recorded only: the settings are chosen on validation accuracy), and models/fp32.pt in
# 15 MiB parts (`cat fp32.pt.part-* > fp32.pt`, then check fp32.pt.sha256); $OUT/summary.json
# compares them. Each recipe is copied out as soon as it ends.
#
#   mkdir -p .gpu_data && cp ../shared/datasets/{cifar10-jpeg.tar.gz,SHA256SUMS} .gpu_data/
#   OUT=/tmp/out scripts/gpu_train.sh
#
# Smoke test on a CPU: OUT=/tmp/out DEVICE=cpu THREADS=2 STEM=torchvision EPOCHS=2 BATCH=64 SUBSET=512 \
#   ARCHIVE=../shared/datasets/cifar10-jpeg.tar.gz scripts/gpu_train.sh
set -euo pipefail
: "${OUT:?set OUT to the folder that receives the results}"
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$REPO/.gpu_run}  # git-ignored
ARCHIVE=$(realpath "${ARCHIVE:-$REPO/.gpu_data/cifar10-jpeg.tar.gz}")  # SHA256SUMS beside it
EPOCHS=${EPOCHS:-100} BATCH=${BATCH:-512} LR=${LR:-0.4} TAU=${TAU:-0.04}
DEVICE=${DEVICE:-cuda} THREADS=${THREADS:-16} STEM=${STEM:-cifar}
SUBSET=${SUBSET:-0}  # > 0: train on the first SUBSET training images only (smoke tests)
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export OUT REPO WORK ARCHIVE EPOCHS BATCH LR TAU DEVICE THREADS STEM SUBSET

HELPER=$(cat <<'PY'
import dataclasses, hashlib, json, os, platform, sys
from pathlib import Path

import torch
import yaml

from edgeml import data, params as P
from edgeml.fetch import fetch
from edgeml.io import write_json, write_npz
from edgeml.models import load_checkpoint
from edgeml.params import Source
from edgeml.preprocess import to_tensor
from edgeml.training import predict_logits, resolve_device

env = os.environ
work, repo = Path(env["WORK"]), Path(env["REPO"])
prepared = work / "prepared" / "cifar10.npz"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prepare():
    """stages/fetch.py and stages/prepare.py for CIFAR-10 only (same arrays, same split)."""
    settings = P.load(repo / "params.yaml").prepare
    record = fetch("cifar10", Source(env["ARCHIVE"]), work / "raw")
    cifar = data.load_cifar10(record.path)
    arrays = data.split_cifar10(cifar, settings.val_size, settings.seed)
    if subset := int(env["SUBSET"]):  # spread over the whole set (its files are sorted by class)
        for key in ("train_x", "train_y"):
            arrays[key] = arrays[key][:: len(arrays[key]) // subset][:subset]
    write_npz(prepared, **arrays)
    write_json(work / "prepared.json", {"archive_sha256": record.sha256, "cifar10_npz_sha256": sha256(prepared)})


def params(recipe):
    """The committed params.yaml with this run's model and train settings."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["model"]["stem"] = env["STEM"]
    raw["train"].update(
        epochs=int(env["EPOCHS"]), batch_size=int(env["BATCH"]), lr=float(env["LR"]), threads=int(env["THREADS"]),
        device=env["DEVICE"], weights=None, loss=recipe, logitnorm_tau=float(env["TAU"]),
    )
    P.parse(raw)
    folder = work / recipe
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    link = folder / "data" / "prepared"
    if not link.is_symlink():
        link.symlink_to(prepared.parent)


def test(recipe):
    """Test top-1 of the trained model, recorded next to its validation numbers (chosen on neither)."""
    folder = work / recipe
    arrays = data.load_arrays(prepared)
    device = resolve_device(env["DEVICE"])
    model = load_checkpoint(folder / "models" / "fp32.pt").to(device, memory_format=torch.channels_last)
    logits = predict_logits(model, to_tensor(arrays["test_x"]), device=device)
    top1 = (logits.argmax(1) == torch.from_numpy(arrays["test_y"])).float().mean().item()
    write_json(folder / "test.json", {"test_top1": top1, "test_images": len(logits)})


def summary():
    rows = {}
    for recipe in ("ce", "logitnorm"):
        folder = Path(env["OUT"]) / recipe
        if (folder / "test.json").exists():
            train = json.loads((folder / "train.json").read_text())
            rows[recipe] = {key: train[key] for key in ("val_acc", "val_loss", "epochs", "seconds_per_epoch", "median_epoch_seconds", "train_seconds")}
            rows[recipe] |= json.loads((folder / "test.json").read_text())
    write_json(Path(env["OUT"]) / "summary.json", {
        "recipes": rows,
        "settings": {key: env[key] for key in ("STEM", "EPOCHS", "BATCH", "LR", "TAU", "DEVICE", "THREADS", "SUBSET")},
        "data": json.loads((work / "prepared.json").read_text()),
        "environment": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
        },
    })
    print(json.dumps(rows, indent=2))


globals()[sys.argv[1]](*sys.argv[2:])
PY
)
helper() { python -c "$HELPER" "$@"; }

helper prepare
for recipe in ce logitnorm; do
  helper params "$recipe"
  echo "== $recipe: $STEM stem, $EPOCHS epochs, batch $BATCH, lr $LR, $DEVICE" >&2
  (cd "$WORK/$recipe" && python "$REPO/stages/train.py") 2>&1 | tee "$WORK/$recipe/train.log"
  helper test "$recipe"
  dest=$OUT/$recipe
  rm -rf "$dest" && mkdir -p "$dest/curves"
  cp "$WORK/$recipe"/{params.yaml,train.log,test.json} "$WORK/$recipe/metrics/train.json" "$dest/"
  cp "$WORK/$recipe"/plots/train/metrics.json "$WORK/$recipe"/plots/train/plots/metrics/*.tsv "$dest/curves/"
  (cd "$WORK/$recipe/models" && sha256sum fp32.pt > "$dest/fp32.pt.sha256" && split -b 15M fp32.pt "$dest/fp32.pt.part-")
done
helper summary
