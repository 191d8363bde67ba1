"""Soak `edgeml predict` as users run it: its own process, one folder of many mixed files.

A separate process is what makes the memory figure honest: peak RSS is the kernel's high-water mark
of the command's own memory (VmHWM), start-up and model load included, whatever the memory of the
process that measures it. Images/s is counted from the first output line to the last, so
start-up and model load are left out of it (the bench stage times model load apart).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from edgeml.bench.memory import PeakRSS
from edgeml.runtime import cli  # the edge command, run in its own process; imported so the pipeline tracks its code
from edgeml.runtime.artifact import list_files

MIX = "80% 32x32 PNG, 15% 256x256 JPEG (quality 90), 5% unusable (truncated PNG, empty, text)"


def write_mixed_files(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` files in the proportions of :data:`MIX` into the new folder ``folder``. Content is a
    random 8x8 image enlarged bicubically: smooth like a photo (pure noise would be an unusually
    hard PNG/JPEG to decode)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in tqdm(range(count), desc="soak files", leave=False):
        kind = rng.random()
        image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        if kind < 0.80:
            image.save(folder / f"{i:06d}.png")
        elif kind < 0.95:
            image.resize((256, 256), Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            (folder / f"{i:06d}.png").write_bytes((buffer.getvalue()[:50], b"", b"not an image\n")[i % 3])


def soak(
    artifact: str | Path,
    folder: str | Path,
    batch_size: int,
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    pythonpath: Optional[str | Path] = None,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Run ``edgeml predict FOLDER`` once and report: files found, records printed (they must be
    equal), error records, exit code, images/s in steady state and overall, CPU time per image (all
    threads, start-up included: steadier than images/s on a loaded machine), peak RSS in MB (None
    without /proc) and the end of stderr. ``pythonpath`` runs the command from another source tree,
    e.g. the code before a change (``git archive REV src | tar -x -C /tmp/before``), for a comparison
    in the same run; with ``workers`` None the command decodes as it does by default (as code from before ``--workers`` must).
    A command still running after ``timeout_s`` is killed, and its exit code says so."""
    files = len(list_files([folder]))  # what the command itself will find there
    command = [sys.executable, "-m", cli.__name__, "predict", str(folder), "--artifact", str(artifact),
               "--batch-size", str(batch_size)]
    command += ["--workers", str(workers)] if workers is not None else []  # None: the command's default
    command += ["--threads", str(threads)] if threads is not None else []
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    records = errors = 0
    with tempfile.TemporaryFile() as stderr_file:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr_file, env=env)
        watchdog = threading.Timer(timeout_s, process.kill)
        watchdog.start()
        first = last = start
        with process.stdout, PeakRSS(process.pid, interval_s=0.02, high_water=True) as rss:
            for line in process.stdout:
                last = time.perf_counter()
                if records == 0:
                    first = last
                records += 1
                errors += b'"error"' in line
        _, status, usage = os.wait4(process.pid, 0)  # not process.wait(): wait4 also gives its CPU time
        watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")
    return {
        "files": files,
        "records": records,
        "errors": errors,
        "exit_code": process.returncode,
        "workers": workers,
        "wall_s": wall,
        "images_per_s_steady": (records - 1) / (last - first) if records > 1 and last > first else None,
        "images_per_s_overall": records / wall,
        "cpu_us_per_image": 1e6 * (usage.ru_utime + usage.ru_stime) / max(records, 1),
        "peak_rss_mb": rss.peak_mb,
        "stderr": stderr[-500:],
    }
