"""Atomic file output: a failed or killed stage never leaves a half-written file or folder behind.

Output is written to a hidden temporary beside its destination (``.<name>.tmp``), flushed to
disk, then renamed into place, so the destination holds either its previous complete content
or the new complete content, even after SIGKILL or a power cut. A temporary left by a killed run
is removed by the next run that writes the same output; ``.dvcignore`` and ``.gitignore`` keep
DVC and git from ever seeing one. One writer per output: concurrent writers of the same path
would share its temporary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# What a write fails with when the disk (or quota, or file size limit) is full: retrying cannot help.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temporary(path: Path, role: str = "tmp") -> Path:
    """The hidden sibling that stands in for ``path`` while it is written (``role`` "tmp") or
    replaced (``role`` "old")."""
    return path.with_name(f".{path.name}.{role}")


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a rename is durable once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    _remove(tmp)  # left by a killed run
    tmp.touch()
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only on success,
    so a failed stage leaves neither a half-filled folder nor files from an earlier run.

    The old folder is renamed aside before the new one is renamed in and only then deleted, so
    a kill at any moment leaves ``path`` complete (old or new) or absent, never half-deleted."""
    path = Path(path)
    tmp, old = temporary(path), temporary(path, "old")
    for leftover in (tmp, old):  # from a killed run
        _remove(leftover)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for entry in [*tmp.rglob("*"), tmp]:
            if not entry.is_symlink():
                _fsync(entry)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
        _remove(old)
    finally:
        _remove(tmp)
