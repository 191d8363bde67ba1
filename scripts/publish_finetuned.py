"""Publish the finetune stage's model as the project's default weights, after `dvc exp run -S finetune.weights=null`
(or `python stages/finetune.py` with finetune.weights: null) has fine-tuned it:

    python scripts/publish_finetuned.py

copies models/fp32.pt to weights/resnet18-cifar-finetuned.pt and metrics/finetune.json (how it was made) to
weights/finetune.json, writes weights/SHA256SUMS, and points params.yaml's finetune.weights at the copy with its
sha256, so the next `dvc repro` installs it instead of fine-tuning again. It refuses a model the stage did not
fine-tune (an installed one), or one whose digest differs from its record.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, RECORD = ROOT / "models/fp32.pt", ROOT / "metrics/finetune.json"
WEIGHTS, PUBLISHED_RECORD = ROOT / "weights/resnet18-cifar-finetuned.pt", ROOT / "weights/finetune.json"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def point_params_at(params: str, source: str, digest: str) -> str:
    """params.yaml with finetune.weights set to ``source`` and ``digest`` (comments kept)."""
    section = re.search(r"^finetune:\n(?:^(?: .*|)\n)*", params, re.M)
    if section is None:
        raise SystemExit("params.yaml has no finetune section")
    body = re.sub(r"^  weights:.*\n(?:^    .*\n)*", f"  weights:\n    source: {source}\n    sha256: {digest}\n", section.group(0), count=1, flags=re.M)
    return params[: section.start()] + body + params[section.end():]


def main() -> int:
    record = json.loads(RECORD.read_text())
    if record.get("origin") != "fine-tuned":
        print(f"error: {RECORD.relative_to(ROOT)} is from an installed model (origin {record.get('origin')!r}); "
              "fine-tune first: dvc exp run -S finetune.weights=null", file=sys.stderr)
        return 1
    digest = sha256(MODEL)
    if digest != record["sha256"]:
        print(f"error: {MODEL.relative_to(ROOT)} (sha256 {digest[:12]}...) is not the model {RECORD.relative_to(ROOT)} "
              f"describes ({record['sha256'][:12]}...); re-run the finetune stage", file=sys.stderr)
        return 1
    shutil.copyfile(MODEL, WEIGHTS)
    PUBLISHED_RECORD.write_text(json.dumps(record, indent=2) + "\n")
    (ROOT / "weights/SHA256SUMS").write_text(f"{digest}  {WEIGHTS.name}\n")
    params = ROOT / "params.yaml"
    params.write_text(point_params_at(params.read_text(), WEIGHTS.relative_to(ROOT).as_posix(), digest))
    print(f"published {WEIGHTS.relative_to(ROOT)} (sha256 {digest}); params.yaml finetune.weights points at it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
