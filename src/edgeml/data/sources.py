"""Obtain dataset archives from their official URLs or from a local mirror, checksum-verified.

A source is either a URL (downloaded with retries and a progress bar) or a local archive
or folder (copied, or for a folder, hashed file by file), or a list of these tried in order:
an absent local copy or an unreachable URL falls through to the next, a corrupt one stops.
Nothing lands at the destination unless its checksum matched; the returned :class:`FetchRecord`
says which source was used so that results from different sources are never mixed silently.
A relative local source is relative to the repository root, wherever the stage runs (see
:func:`repository_root`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO, Optional

from tqdm import tqdm

from edgeml.errors import EdgeMLError
from edgeml.io import DISK_FULL, atomic_dir, atomic_path
from edgeml.params import Source

# Checksums of the official files, so an official URL needs no checksum in params.yaml.
OFFICIAL_MD5 = {
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de",
    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz": (
        "bef4ecab320f06d8554ea6380940ec79"
    ),
    # further OOD sets (the checksums torchvision's dataset classes verify)
    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz": "fff73e5086ae6bdbea199a49dfb8a4c1",
    "http://data.csail.mit.edu/places/places365/val_256.tar": "e27b17d8d44f4af9a78502beb927f808",
}


CHUNK = 1 << 20


class FetchError(EdgeMLError):
    """A source that could not be obtained or failed its checksum."""


class SourceUnavailable(FetchError):
    """A local source that does not exist, or one that could not be read after the retries (a URL
    that is unreachable): absent rather than corrupt, so a list of sources moves on to the next."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the message without the dataset's name, for the list's summary


@dataclasses.dataclass(frozen=True)
class FetchRecord:
    """What was fetched, from where, and its checksum: written to data/sources.json."""

    name: str
    source: str
    path: str
    sha256: str
    bytes: int
    checked_against: str
    # sources listed before ``source`` that were absent or unreachable, in order (their reasons go to
    # stderr, not here: sources.json should change when the data does, not when an error's wording does)
    failed_sources: tuple[str, ...] = ()


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "ftp://"))


def repository_root() -> Path:
    """The folder relative local sources are relative to: the repository the pipeline runs for.

    DVC sets ``DVC_ROOT`` for every stage command: the workspace for ``dvc repro`` and ``dvc exp
    run``, and the *original* repository for ``dvc exp run --queue`` / ``--temp``, whose stages run
    in a copy under ``.dvc/tmp/exps/``, where ``../shared`` would point elsewhere. A stage
    started by hand runs from the repository root."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def local_path(source: str) -> Path:
    """A local ``source`` as an absolute path (relative ones against :func:`repository_root`)."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else repository_root() / path


def _copy_hashing(src: BinaryIO, dst: BinaryIO, total: Optional[int], desc: str) -> tuple[str, str, int]:
    sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return sha256.hexdigest(), md5.hexdigest(), size


def _sha256sums_entry(path: Path) -> Optional[str]:
    """The checksum a mirror lists for ``path`` in a SHA256SUMS file beside it or in a parent."""
    for folder in [path.parent, *path.parent.parents][:3]:
        sums = folder / "SHA256SUMS"
        if sums.is_file():
            rel = path.relative_to(folder).as_posix()
            for line in sums.read_text().splitlines():
                digest, _, name = line.strip().partition("  ")
                if name.removeprefix("./") == rel:
                    return digest
    return None


def tree_sha256(folder: Path) -> str:
    """One digest for a folder: sha256 over each file's relative path and contents, sorted."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def expected_checksum(spec: Source) -> tuple[str, str]:
    """(algorithm, hex digest) that ``spec`` must match; raise if no checksum is known."""
    if spec.sha256:
        return "sha256", spec.sha256.lower()
    if spec.md5:
        return "md5", spec.md5.lower()
    if spec.source in OFFICIAL_MD5:
        return "md5", OFFICIAL_MD5[spec.source]
    if not _is_url(spec.source):
        listed = _sha256sums_entry(local_path(spec.source).resolve())
        if listed:
            return "sha256", listed
    raise FetchError(
        f"no checksum known for {spec.source!r}: set its sha256 (or md5) in params.yaml under fetch"
    )


def fetch(name: str, spec: Source, dest_dir: Path, retries: int = 3) -> FetchRecord:
    """Obtain ``spec``'s source, or the first of its list that is there: absent or unreachable
    sources are reported on stderr and skipped, but a checksum mismatch, a missing checksum or a
    full disk stops at once (a corrupt mirror must not be replaced silently by other pixels)."""
    if isinstance(spec.source, str):
        return _fetch_one(name, spec, dest_dir, retries)
    candidates = spec.candidates()
    failed: list[tuple[str, str]] = []
    for candidate in candidates:
        try:
            record = _fetch_one(name, candidate, dest_dir, retries)
        except SourceUnavailable as exc:
            failed.append((candidate.source, exc.reason))
            then = "trying the next" if len(failed) < len(candidates) else "no source left"
            print(f"fetch.{name}: source {len(failed)} of {len(candidates)} {candidate.source!r} failed: "
                  f"{exc.reason}; {then}", file=sys.stderr)
            continue
        return dataclasses.replace(record, failed_sources=tuple(source for source, _ in failed))
    tried = "; ".join(f"{i}. {source!r}: {reason}" for i, (source, reason) in enumerate(failed, 1))
    raise FetchError(
        f"fetch.{name}: none of its {len(failed)} sources could be obtained ({tried}); make one of them "
        f"available (the mirror, or network access) or add one to fetch.{name}.source"
    )


def _fetch_one(name: str, spec: Source, dest_dir: Path, retries: int) -> FetchRecord:
    """Copy or download ``spec.source`` (one location) into ``dest_dir``/``name`` (sources may share
    a file name) and verify it; return what was done. Network errors and truncated transfers are
    retried; a checksum mismatch or a full disk stops at once, leaving nothing at the destination."""
    is_url = _is_url(spec.source)
    dest_dir = dest_dir / name
    local = None if is_url else local_path(spec.source)
    if local is not None and local.is_dir():
        return _fetch_folder(name, spec, local, dest_dir / local.name)
    if local is not None and not local.is_file():
        raise SourceUnavailable(
            f"fetch.{name}.source: {spec.source!r} does not exist (looked for {local}); point it at the "
            f"official URL, or at a local copy of the archive or its extracted folder",
            f"does not exist (looked for {local})",
        )
    algo, expected = expected_checksum(spec)
    dest = dest_dir / spec.source.rstrip("/").rsplit("/", 1)[-1]
    for attempt in range(1, retries + 1):
        try:
            with atomic_path(dest) as tmp, tmp.open("wb") as out:
                if local is None:
                    with urllib.request.urlopen(spec.source, timeout=60) as response:
                        total = int(response.headers.get("Content-Length") or 0) or None
                        sha256, md5, size = _copy_hashing(response, out, total, name)
                    if total is not None and size != total:  # urllib returns a cut-off body without an error
                        raise ConnectionError(f"the transfer ended after {size} of {total} bytes")
                else:
                    with local.open("rb") as src:
                        sha256, md5, size = _copy_hashing(src, out, local.stat().st_size, name)
                actual = sha256 if algo == "sha256" else md5
                if actual != expected:
                    raise FetchError(
                        f"fetch.{name}: checksum mismatch for {spec.source!r} ({size} bytes): {algo} is {actual}, "
                        f"expected {expected}; the file is truncated, corrupt or not the one params.yaml names"
                    )
            return FetchRecord(name, spec.source, dest.as_posix(), sha256, size, f"{algo}:{expected}")
        except (OSError, http.client.HTTPException) as exc:  # network errors, cut-off transfers: retry
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise _disk_full(name, dest, exc) from exc
            if attempt == retries:
                why = f"after {retries} tries: {exc or type(exc).__name__}"
                raise SourceUnavailable(f"fetch.{name}: could not read {spec.source!r} {why}", f"could not read it {why}") from exc
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _disk_full(name: str, dest: Path, exc: OSError) -> FetchError:
    return FetchError(f"fetch.{name}: cannot write {dest}: {exc.strerror}; free disk space and re-run")


def _fetch_folder(name: str, spec: Source, source: Path, dest: Path) -> FetchRecord:
    """Copy an extracted dataset folder; its tree digest must match ``sha256`` when one is given."""
    digest = tree_sha256(source)
    if spec.sha256 and digest != spec.sha256.lower():
        raise FetchError(
            f"fetch.{name}: tree sha256 of folder {spec.source!r} is {digest}, expected {spec.sha256}"
        )
    try:
        with atomic_dir(dest) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    except shutil.Error as exc:  # copytree collects each file's error: (source, destination, reason)
        raise FetchError(f"fetch.{name}: cannot copy {spec.source!r} to {dest}: {exc.args[0][0][2]}") from exc
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(name, dest, exc) from exc
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    checked = f"tree-sha256:{spec.sha256}" if spec.sha256 else "unverified (local folder, no sha256 in params)"
    return FetchRecord(name, spec.source, dest.as_posix(), digest, size, checked)
