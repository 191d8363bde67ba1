"""The edge install, measured: for each extra of the edgeml-runtime distribution (./runtime), a fresh virtual
environment gets `pip install ./runtime[EXTRA]` and nothing else; what it installed (packages, MB on disk) goes
to metrics/install_sizes.md beside the full pipeline install of this environment (docs/performance.md shows it).

    python scripts/install_sizes.py

tests/test_runtime_install.py installs the same way and runs `edgeml predict` in those environments, without torch.
Needs the package registry (pip), as any install does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import venv
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"onnxruntime": "ONNX (.onnx)", "openvino": "OpenVINO IR (.xml + .bin)"}  # extra -> artifact format


def install_runtime(extra: str, folder: Path) -> Path:
    """A fresh virtual environment in ``folder`` with ``./runtime[extra]`` installed; returns its python."""
    venv.EnvBuilder(with_pip=True).create(folder / "env")
    python = folder / "env" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    # built from a copy: pip builds a local project in place, and the checkout should stay as it is
    source = shutil.copytree(ROOT / "runtime", folder / "runtime", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[{extra}]"],
                   check=True)
    return python


def installed(python: Path) -> dict[str, float]:
    """Each distribution the environment of ``python`` holds (pip and setuptools left out), with its MB on disk."""
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: sum(f.locate().stat().st_size "
            "for f in (d.files or []) if f.locate().is_file()) / 1e6 for d in m.distributions()}))")
    sizes = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)
    return {name: mb for name, mb in sorted(sizes.items()) if canonicalize_name(name) not in ("pip", "setuptools")}


def closure(roots: list[str]) -> set[str]:
    """The distributions installed here that ``roots`` need, themselves included (extras not followed)."""
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
        pending += [Requirement(line).name for line in dist.requires or []
                    if Requirement(line).marker is None or Requirement(line).marker.evaluate({"extra": ""})]
    return seen


def full_install_mb() -> float:
    return sum(f.locate().stat().st_size for name in closure(["edgeml"]) for f in (distribution(name).files or [])
               if f.locate().is_file()) / 1e6


def main() -> None:
    rows = []
    for extra, artifact in EXTRAS.items():
        with tempfile.TemporaryDirectory() as folder:
            sizes = installed(install_runtime(extra, Path(folder)))
        if any(canonicalize_name(name) == "torch" for name in sizes):
            raise SystemExit(f"./runtime[{extra}] pulled in torch")
        rows.append(f"| `pip install ./runtime[{extra}]` | {artifact} | {sum(sizes.values()):.0f} | {', '.join(sizes)} |")
    text = "\n".join([
        "#### Installed size of the edge runtime (a fresh virtual environment per extra, no torch)",
        "",
        "| install | artifacts it runs | MB on disk | distributions |",
        "|---|---|---|---|",
        *rows,
        f"| `pip install -e ./runtime -e .` (the pipeline, this machine) | all | {full_install_mb():.0f} | edgeml and its {len(closure(['edgeml'])) - 1} dependencies |",
        "",
        "Measured by `python scripts/install_sizes.py` (Python " + ".".join(map(str, sys.version_info[:3])) + f", {sys.platform}).",
    ]) + "\n"
    (ROOT / "metrics/install_sizes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
