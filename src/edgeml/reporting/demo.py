"""README's `edgeml predict` example, made by running the CLI: a seeded random sample of every test set,
large enough that the share it refuses matches what the package stage measured on the whole set."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from edgeml.runtime import cli

EXAMPLE_LINES = 1  # output lines shown per set (README stays short)


def write_sample(images: np.ndarray, name: str, count: int, seed: int, folder: Path) -> list[Path]:
    """A seeded sample of ``count`` uint8 HWC ``images`` as lossless PNG files ``folder/<name>_<index>.png``."""
    picked = np.sort(np.random.default_rng([seed, *name.encode()]).choice(len(images), min(count, len(images)), replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in picked:
        path = folder / f"{name}_{index:05d}.png"
        Image.fromarray(images[index]).save(path)
        files.append(path)
    return files


def run_predict(artifact: Path, folder: Path) -> list[dict]:
    """`edgeml predict FOLDER --artifact ARTIFACT`, in its own process as a user runs it; its JSON lines."""
    command = [sys.executable, "-m", cli.__name__, "predict", str(folder), "--artifact", str(artifact)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"edgeml predict failed ({result.returncode}): {result.stderr.strip()}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def predict_demo(artifact: Path, sets: Mapping[str, np.ndarray], accepted: Mapping[str, float], count: int, seed: int,
                 folder: Path) -> str:
    """Markdown: for each set (``"id"`` first), the share of a ``count``-image sample the artifact accepts beside
    ``accepted`` (the package stage's rate on the whole set), and the first output lines."""
    records: dict[str, list[dict]] = {}
    for name, images in sets.items():
        write_sample(images, name, count, seed, folder / name)
        records[name] = run_predict(artifact, folder / name)
    rows, examples = [], []
    for name, lines in records.items():
        share = sum(bool(r.get("in_distribution")) for r in lines) / len(lines)
        rate = accepted[name]
        band = 2 * math.sqrt(max(rate * (1 - rate), 1e-12) / len(lines))  # two binomial standard errors of the sample
        label = "ID test images (CIFAR-10)" if name == "id" else f"`{name}`"
        rows.append(f"| {label} | {len(lines)} | {100 * share:.1f}% | {100 * rate:.1f}% ± {100 * band:.1f} |")
        for record in lines[:EXAMPLE_LINES]:
            examples.append(json.dumps({**record, "file": f"demo/{Path(record['file']).name}"}))
    return "\n".join([
        f"`edgeml predict demo --artifact models/artifact` on a seeded random sample of {count} images of each test set "
        "(PNG files of the prepared 32x32 images), run by the demo stage; the first lines of each set:",
        "",
        "```",
        *examples,
        "```",
        "",
        "| set | images | accepted as CIFAR-10 in the sample | accepted on the whole set (package stage) ± 2 s.e. |",
        "|---|---|---|---|",
        *rows,
    ]) + "\n"
