"""What every backend offers, read from its :class:`~edgeml.quantization.base.Quantizer` class (the one
place a backend's facts live): ``edgeml backends`` prints it, the sweep_report stage writes it for the docs."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

from edgeml.params import ParamsError
from edgeml.quantization import BACKENDS, quantizer_class
from edgeml.reporting.markdown import table

ARM_HOST = platform.machine().lower() in ("aarch64", "arm64")  # where ARM-oriented backends' speed is their own
HEADER = ["`backend`", "what it is", "deployable file", "runtime", "`observer`", "`activations` (auto: the first)", "QAT",
          "artifact", "profiler", "installed here", "speed here"]


def describe(backend: str) -> dict[str, Any]:
    """One backend's facts; a backend whose packages are missing says which, and nothing else."""
    try:
        cls = quantizer_class(backend)
    except ParamsError as exc:
        return {"backend": backend, "installed": False, "why": str(exc)}
    return {
        "backend": backend, "installed": True, "summary": cls.summary, "file_format": cls.file_format, "runtime": cls.runtime,
        "observers": list(cls.observers), "activations": list(cls.activations), "qat": cls.supports_qat,
        "packageable": cls.packageable(), "profiler": cls.profiler, "arm_note": cls.arm_note,
    }


def describe_all() -> list[dict[str, Any]]:
    return [describe(backend) for backend in BACKENDS]


def markdown(backends: list[dict[str, Any]]) -> str:
    rows = []
    for b in backends:
        if not b["installed"]:
            rows.append([f"`{b['backend']}`", b["why"], *[""] * 7, "no", ""])
            continue
        rows.append([
            f"`{b['backend']}`", b["summary"], b["file_format"], b["runtime"], ", ".join(b["observers"]), ", ".join(b["activations"]),
            "yes" if b["qat"] else "no", "yes" if b["packageable"] else "no: its format cannot be packaged",
            f"`{b['profiler']}`" if b["profiler"] else "none", "yes",
            f"not representative: {b['arm_note']}" if b["arm_note"] and not ARM_HOST else "representative",
        ])
    return table(HEADER, rows) + "\n"


def run(args: argparse.Namespace) -> int:
    backends = describe_all()
    print(json.dumps(backends, indent=2) if args.json else markdown(backends), end="" if not args.json else "\n")
    return 0
