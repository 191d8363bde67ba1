"""Soak `edgeml predict` on a folder of many mixed files: images/s and the command's peak RSS.

    python scripts/soak_predict.py --artifact models/artifact --files 20000 [--workers 0] [--pythonpath OTHER/src]

Writes (once, reused after) a folder of ``--files`` files: 80% 32x32 PNGs, 15% 256x256 JPEGs,
5% unusable (truncated, empty, text). Runs the command as users do, in its own process, and prints
one JSON line: records (must equal files), errors, wall seconds, images/s from the first record to
the last (steady state, without start-up and model load) and over the whole run, CPU time per
image (all threads; on a loaded machine a steadier figure than images/s), and peak RSS (the
kernel's maximum resident set of that process, from wait4). ``--pythonpath`` runs the command
from another source tree, e.g. ``git archive HEAD src | tar -x -C /tmp/base`` for the code before a change.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_files(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        kind = rng.random()
        # smooth, CIFAR-like content: a random 8x8 image enlarged (pure noise would be an unusually hard PNG/JPEG)
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        if kind < 0.80:
            image.save(folder / f"{i:06d}.png")
        elif kind < 0.95:
            image.resize((256, 256), Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            bad = (buffer.getvalue()[:50], b"", b"not an image\n")[i % 3]
            (folder / f"{i:06d}.png").write_bytes(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--folder", type=Path, help="where the files are written (default: /tmp/edgeml-soak-N)")
    parser.add_argument("--workers", type=int, help="the command's --workers (default: its own default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--pythonpath", type=Path, help="run the command from this source tree")
    args = parser.parse_args()
    folder = args.folder or Path(f"/tmp/edgeml-soak-{args.files}")
    if not folder.exists():
        write_files(folder, args.files)
    command = [sys.executable, "-m", "edgeml.cli", "predict", str(folder), "--artifact", args.artifact, "--batch-size", str(args.batch_size)]
    command += ["--workers", str(args.workers)] if args.workers is not None else []
    command += ["--threads", str(args.threads)] if args.threads is not None else []
    env = {**os.environ, "PYTHONPATH": str(args.pythonpath)} if args.pythonpath else None
    with tempfile.TemporaryFile() as stderr_file:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, env=env)
        records = errors = 0
        first = last = start
        for line in process.stdout:
            last = time.perf_counter()
            if records == 0:
                first = last
            records += 1
            errors += b'"error"' in line
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    print(json.dumps({
        "files": args.files,
        "records": records,
        "errors": errors,
        "exit_code": os.waitstatus_to_exitcode(status),
        "workers": args.workers,
        "wall_s": round(wall, 2),
        "images_per_s_steady": round((records - 1) / (last - first), 1) if records > 1 else None,
        "images_per_s_overall": round(records / wall, 1),
        "cpu_us_per_image": round(1e6 * (usage.ru_utime + usage.ru_stime) / max(records, 1), 1),  # all threads, start-up included
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1),  # Linux reports KiB
        "stderr": stderr[-500:],
    }))


if __name__ == "__main__":
    main()
