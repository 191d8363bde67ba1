"""Peak resident memory (RSS) of a process over a block of work, sampled from ``/proc`` (Linux).

``getrusage``'s ``ru_maxrss`` is the peak over the process's whole life, so it cannot tell one
phase of a benchmark from the one before; sampling the current RSS can.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb(pid: Optional[int] = None) -> Optional[float]:
    """Current RSS of ``pid`` (this process by default) in MB (10^6 bytes); None once it has exited or without /proc."""
    try:
        resident_pages = int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * PAGE_BYTES / 1e6


def high_water_mb(pid: int) -> Optional[float]:
    """The kernel's peak RSS of ``pid`` since it started its program (VmHWM) in MB; None once it has
    exited or without /proc. Unlike ``wait4``'s ``ru_maxrss``, which keeps the RSS a child inherits
    when it is forked (the whole parent's, however little the child's program then uses), this is the
    program's own."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    return kib[0] * 1024 / 1e6 if kib else None  # a zombie has no memory lines


class PeakRSS:
    """``with PeakRSS() as peak: ...``; then ``peak.start_mb`` and ``peak.peak_mb`` (None without /proc).
    Samples every ``interval_s`` on a background thread, so a peak shorter than that can be missed,
    except with ``high_water`` (for another process, whose whole life is the block), which samples the
    kernel's own peak instead: then only what happens after the last sample can be missed."""

    def __init__(self, pid: Optional[int] = None, interval_s: float = 0.005, high_water: bool = False):
        if high_water and pid is None:
            raise ValueError("high_water needs the pid of another process (this one's peak predates the block)")
        self.pid, self.interval_s = pid, interval_s
        self._read = (lambda: high_water_mb(pid)) if high_water else (lambda: rss_mb(pid))
        self.start_mb: Optional[float] = None
        self.peak_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            current = self._read()
            if current is not None:
                self.peak_mb = max(self.peak_mb or 0.0, current)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        final = self._read()
        if final is not None:
            self.peak_mb = max(self.peak_mb or 0.0, final)
