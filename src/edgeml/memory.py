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


class PeakRSS:
    """``with PeakRSS() as peak: ...``; then ``peak.start_mb`` and ``peak.peak_mb`` (None without /proc).
    Samples every ``interval_s`` on a background thread, so a peak shorter than that can be missed."""

    def __init__(self, pid: Optional[int] = None, interval_s: float = 0.005):
        self.pid, self.interval_s = pid, interval_s
        self.start_mb: Optional[float] = None
        self.peak_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            current = rss_mb(self.pid)
            if current is not None:
                self.peak_mb = max(self.peak_mb or 0.0, current)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakRSS":
        self.start_mb = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
