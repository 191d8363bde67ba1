"""Installed size of each runtime set (numpy, Pillow and onnxruntime or openvino: what `edgeml predict` needs
for an ONNX or an OpenVINO IR artifact) next to the full install's, from the installed distributions' file lists.

    python scripts/install_sizes.py

Each set is its packages plus everything they require, transitively (markers evaluated here, extras
not followed); sizes are what those packages' files take on disk here, in MB (10^6 bytes).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIMES = {"onnx": ["numpy", "pillow", "onnxruntime"], "openvino_ir": ["numpy", "pillow", "openvino"]}  # by artifact format


def closure(roots: list[str]) -> set[str]:
    """The installed distributions ``roots`` need, themselves included."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def size_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for file in distribution(name).files or []:
            path = file.locate()
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def main() -> None:
    full = closure(["edgeml"])
    runtimes = {fmt: closure(roots) for fmt, roots in RUNTIMES.items()}
    print(json.dumps({
        "runtime_packages": {fmt: sorted(names) for fmt, names in runtimes.items()},
        "runtime_mb": {fmt: round(size_mb(names), 1) for fmt, names in runtimes.items()},
        "full_packages": len(full),
        "full_mb": round(size_mb(full), 1),
        "largest_full_mb": dict(sorted(((n, round(size_mb({n}), 1)) for n in full), key=lambda kv: -kv[1])[:8]),
    }, indent=2))


if __name__ == "__main__":
    main()
