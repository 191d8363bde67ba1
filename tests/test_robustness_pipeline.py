"""The pipeline under faults: an expected failure is one line, a killed stage leaves no partial
output and re-runs to the same bytes, a failed fetch keeps the previous data, a queued experiment
finds relative sources, and a tampered artifact is refused before anything in it is deserialised."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pipeline import tiny_params

from edgeml import stage
from edgeml.io import atomic_dir, write_json
from edgeml.model.resnet import build_resnet18, save_checkpoint
from edgeml.runtime.artifact import ArtifactError, EdgeModel

REPO = Path(__file__).parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def declared_outputs(name: str) -> list[str]:
    """A stage's outs and metrics as dvc.yaml declares them."""
    entries = STAGES[name].get("outs", []) + STAGES[name].get("metrics", [])
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def snapshot(root: Path, paths: list[str]) -> dict[str, object]:
    """path -> sha256 of a file, or {relative file: sha256} of a folder, or None when absent."""
    def digest(file: Path) -> str:
        return hashlib.sha256(file.read_bytes()).hexdigest()

    state: dict[str, object] = {}
    for rel in paths:
        path = root / rel
        if path.is_dir():
            state[rel] = {p.relative_to(path).as_posix(): digest(p) for p in sorted(path.rglob("*")) if p.is_file()}
        else:
            state[rel] = digest(path) if path.exists() else None
    return state


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


def small_params(mirror: Path) -> dict:
    """The end-to-end test's tiny params, with fewer detectors: what matters here is how outputs are written."""
    params = tiny_params(mirror)
    params["ood"].update(detectors=["msp", "energy", "knn"], search={"knn": {"k": [1, 5]}})
    return params


@pytest.fixture
def project(tmp_path: Path, mirror: Path) -> Path:
    """A folder to run stage scripts in (no git or DVC needed): tiny params over the tiny mirror."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(mirror)))
    return root


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


# --- 1. Expected failures are one line ---------------------------------------------------------

def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]


def test_missing_input_is_one_line_naming_the_file(project: Path):
    assert_one_error_line(
        run_stage("prepare", project), "error: data/sources.json: not found; run the stages that produce it first"
    )


def test_bad_params_are_one_line_naming_the_key(project: Path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["bench"]["warmup"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert_one_error_line(run_stage("prepare", project), "error: params.yaml: bench.warmup: must be >= 0, got -1")


def test_corrupt_input_is_one_line_naming_the_file(project: Path, mirror: Path):
    truncated = project / "cifar10.tar.gz"
    truncated.write_bytes((mirror / "cifar10-jpeg.tar.gz").read_bytes()[:5000])
    (project / "data").mkdir()
    (project / "data/sources.json").write_text(json.dumps({"cifar10": {"path": str(truncated)}}))
    assert_one_error_line(run_stage("prepare", project), f"error: {truncated}: archive is truncated or corrupt")
    assert not (project / "data/prepared").exists() and leftovers(project) == []


@pytest.mark.parametrize("bug", [KeyError("missing"), ValueError("a library's complaint"), ConnectionResetError(104, "reset")])
def test_other_exceptions_keep_their_traceback(bug: Exception, capsys):
    """Only the project's errors and the OS errors a user fixes (missing file, permission, full disk)
    become one line; anything else is a bug and propagates."""
    def failing() -> None:
        raise bug

    with pytest.raises(type(bug)):
        stage.run(failing)
    assert capsys.readouterr().err == ""


# --- 2. SIGKILL at any point --------------------------------------------------------------------

# Runs a stage script, recording each change it makes to files under the working directory
# (an open for writing, a rename, a removal, a mkdir: Python's audit events). It logs them to
# EDGEML_EVENT_LOG, or SIGKILLs itself at EDGEML_KILL ("before <event>#<n>": just before the n-th
# time that event happens; "after <event>#<n>": just before the next change after it).
DRIVER = r'''
import os, runpy, signal, sys
root, log = os.getcwd(), os.environ.get("EDGEML_EVENT_LOG")
when, _, kill = os.environ.get("EDGEML_KILL", "never #0").partition(" ")
kill_event, _, kill_occurrence = kill.rpartition("#")
events = []
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT

def inside(path):
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(root + os.sep)

def hook(event, args):
    if event == "open" and not (args[2] & WRITES):
        return
    if event not in ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
        return
    if event in ("os.remove", "os.rmdir") and args[1] is not None:
        return  # relative to a folder descriptor (shutil.rmtree inside a tree it logged), not to the cwd
    if not inside(args[0]):
        return
    if when == "after" and events and events[-1] == kill_event and events.count(kill_event) == int(kill_occurrence):
        os.kill(os.getpid(), signal.SIGKILL)
    target = f" -> {os.path.relpath(os.fsdecode(args[1]), root)}" if event == "os.rename" else ""
    events.append(f"{event} {os.path.relpath(os.fsdecode(args[0]), root)}{target}")
    if when == "before" and events[-1] == kill_event and events.count(kill_event) == int(kill_occurrence):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    if log:
        with open(log, "w") as f:
            f.write("\n".join(events))
'''


def run_driven(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    driver = cwd.parent / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run(
        [sys.executable, str(driver), str(REPO / "stages" / f"{name}.py")], cwd=cwd, env={**ENV, **env},
        capture_output=True, text=True, timeout=600,
    )


def is_temporary(path: str) -> bool:
    return any(part.startswith(".") and part.endswith(".tmp") for part in Path(path).parts)


def check_writes_go_through_temporaries(name: str, events: list[str], outputs: list[str]) -> None:
    """Every file the stage opens for writing is a temporary, every rename moves a temporary (or an
    old output being replaced) into place, and nothing removes a declared output in place: so a
    kill at any of these points leaves each output complete or absent."""
    for event in events:
        kind, path, *rest = event.split(" ")
        if kind == "open":
            assert is_temporary(path), f"{name} writes {path} in place"
        elif kind == "os.rename":
            target = rest[-1]
            assert is_temporary(path) or target == str(Path(path).parent / f".{Path(path).name}.old"), event
        elif kind in ("os.remove", "shutil.rmtree", "os.rmdir"):
            assert is_temporary(path) or path.endswith(".old"), f"{name} deletes {path} in place"


def kill_points(events: list[str], outputs: list[str]) -> dict[str, str]:
    """Where to kill (see DRIVER): in the middle of writing, just before and just after each output
    folder is renamed into place (with an old output present, "before" is after the old one was
    moved aside), and at the first and last changes."""
    def at(i: int) -> str:  # events[i], as its n-th occurrence
        return f"{events[i]}#{events[: i + 1].count(events[i])}"

    points = {
        "the first change": f"before {at(0)}",
        "the middle change": f"before {at(len(events) // 2)}",
        "the last change": f"before {at(len(events) - 1)}",
    }
    for out in outputs:
        renamed = f"os.rename {Path(out).parent / ('.' + Path(out).name + '.tmp')} -> {out}"
        if renamed in events:
            points[f"{out} is renamed into place"] = f"before {renamed}#1"
            if events.index(renamed) < len(events) - 1:  # "after" kills at the next change: there must be one
                points[f"{out} was renamed into place"] = f"after {renamed}#1"
    return points


def check_killed_stage(name: str, root: Path, points: tuple[str, ...] = ()) -> None:
    """Run ``name`` once for reference, then kill it at each kill point (``points`` selects some
    by their start), one after another, each run starting from what the previous kill left: every
    declared output must stay complete or absent, and a final run must reproduce the reference
    byte for byte and clean every temporary. Runs go through the same driver, as TorchScript files
    record the Python stack they were traced from."""
    outputs = declared_outputs(name)
    log = root.parent / f"{name}.events"
    result = run_driven(name, root, EDGEML_EVENT_LOG=str(log))
    assert result.returncode == 0, result.stderr
    reference = snapshot(root, outputs)
    assert all(reference.values()), reference
    events = log.read_text().splitlines()
    check_writes_go_through_temporaries(name, events, outputs)
    chosen = {k: v for k, v in kill_points(events, outputs).items() if not points or k.startswith(points)}
    assert any(k.endswith("is renamed into place") for k in chosen), chosen  # the stage writes through atomic_dir
    for point, event in chosen.items():
        killed = run_driven(name, root, EDGEML_KILL=event)
        assert killed.returncode == -9, f"{name} was not killed at {point} ({event}): {killed.stderr}"
        after = snapshot(root, outputs)
        partial = sorted(k for k, v in after.items() if v is not None and v != reference[k])
        assert not partial, f"{name} killed at {point} ({event}) left partial output {partial}"
    result = run_driven(name, root)
    assert result.returncode == 0, result.stderr
    rerun = snapshot(root, outputs)
    assert rerun == reference, f"{name}: after the kills a re-run differs from the reference in {[k for k in outputs if rerun[k] != reference[k]]}"
    assert leftovers(root) == []


@pytest.mark.e2e
def test_killed_stages_leave_no_partial_output_and_rerun_identically(project: Path):
    """prepare at every kill point; quantize, ood_fp32 and ood (slower) in the middle and at the folder swap."""
    assert run_stage("fetch", project).returncode == 0
    check_killed_stage("prepare", project)
    torch.manual_seed(0)  # an untrained model stands in for the train stage's
    save_checkpoint(build_resnet18("torchvision"), "torchvision", 10, project / "models/fp32.pt")
    check_killed_stage("quantize", project, ("the middle", "models/deploy is"))
    check_killed_stage("ood_fp32", project, ("the middle", "data/ood_fp32 is"))
    check_killed_stage("ood", project, ("the middle", "data/scores is"))


def test_atomic_writes_are_durable_and_clean_up_after_a_killed_run(tmp_path: Path, monkeypatch):
    """The data reaches the disk before the rename and the rename before returning (fsync of the
    file, then of its folder); temporaries a killed run left are removed by the next run."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", str(a))) or real_replace(a, b))
    out = tmp_path / "out.json"
    (tmp_path / ".out.json.tmp").write_text("{half")  # a killed run's
    write_json(out, {"a": 1})
    assert calls == [("fsync", str(tmp_path / ".out.json.tmp")), ("replace", str(tmp_path / ".out.json.tmp")), ("fsync", str(tmp_path))]
    assert json.loads(out.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    folder = tmp_path / "scores"
    (tmp_path / ".scores.tmp").mkdir()  # a killed run's, before and after moving the old folder aside
    (tmp_path / ".scores.old").mkdir()
    calls.clear()
    with atomic_dir(folder) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.npz").write_bytes(b"a")
    assert ("fsync", str(tmp_path / ".scores.tmp" / "sub" / "a.npz")) in calls[: calls.index(("replace", str(tmp_path / ".scores.tmp")))]
    assert calls[-1] == ("fsync", str(tmp_path))
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "b.npz").write_bytes(b"b")
        raise RuntimeError("the stage failed")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["out.json", "scores", "scores/sub", "scores/sub/a.npz"]


# --- 3. A failed fetch keeps the previous data --------------------------------------------------

def fetch_in_process(root: Path, monkeypatch, capsys) -> str:
    """Run the fetch stage in this process (so mocks apply); it must exit 1 with one error line
    (progress bars aside), which is returned."""
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "stages/fetch.py"), run_name="__main__")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in re.split(r"[\r\n]", err) if line.startswith("error: ")]
    return line


@contextlib.contextmanager
def small_disk(folder: Path, size: int):
    """Mount a tmpfs of ``size`` bytes on ``folder``; skip where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def good_fetch(project: Path) -> dict[str, object]:
    assert run_stage("fetch", project).returncode == 0
    return snapshot(project, declared_outputs("fetch"))


@pytest.mark.parametrize("fault", ["truncated archive", "corrupt archive", "checksum mismatch"])
def test_failed_fetch_keeps_the_previous_data(project: Path, mirror: Path, fault: str, monkeypatch, capsys):
    before = good_fetch(project)
    archive = mirror / "cifar10-jpeg.tar.gz"
    if fault == "truncated archive":  # SHA256SUMS still lists the complete file
        archive.write_bytes(archive.read_bytes()[:-100])
    elif fault == "corrupt archive":
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
    else:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["fetch"]["mnist"]["sha256"] = "0" * 64
        (project / "params.yaml").write_text(yaml.safe_dump(params))
    error = fetch_in_process(project, monkeypatch, capsys)
    assert error.startswith("error: fetch.") and "checksum mismatch" in error, error
    assert snapshot(project, declared_outputs("fetch")) == before
    assert leftovers(project) == []


def test_fetch_on_a_full_disk_keeps_the_previous_data(project: Path, mirror: Path, monkeypatch, capsys):
    """A real full disk: data/ is a tmpfs with room for one copy of the raw data, not two."""
    raw_size = sum(p.stat().st_size for p in mirror.rglob("*") if p.is_file())
    with small_disk(project / "data", raw_size * 3 // 2 + 64 * 1024):
        before = good_fetch(project)
        error = fetch_in_process(project, monkeypatch, capsys)
        assert snapshot(project, declared_outputs("fetch")) == before
        assert leftovers(project) == []
    assert error.startswith("error: fetch.") and "No space left on device; free disk space" in error, error


def test_fetch_on_a_full_disk_keeps_the_previous_data_mocked(project: Path, monkeypatch, capsys):
    """The same without mounting: the third file written hits ENOSPC."""
    before = good_fetch(project)
    import edgeml.data.sources

    copy, calls = edgeml.data.sources._copy_hashing, []

    def filling(src, dst, total, desc):
        calls.append(desc)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return copy(src, dst, total, desc)

    monkeypatch.setattr(edgeml.data.sources, "_copy_hashing", filling)
    error = fetch_in_process(project, monkeypatch, capsys)
    assert error.startswith(f"error: fetch.{calls[2]}: cannot write ") and "No space left on device; free disk space" in error
    assert snapshot(project, declared_outputs("fetch")) == before
    assert leftovers(project) == []


# --- 3b. Relative sources in a queued / temp experiment ------------------------------------------

def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_relative_sources_resolve_in_a_temp_experiment(tmp_path: Path, mirror: Path):
    """`dvc exp run --temp` (like `--queue`) runs the stage in a copy under .dvc/tmp/exps/, where
    ``../mirror`` does not exist; DVC_ROOT (set by DVC to the original repository) resolves it."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = small_params(mirror)
    for spec in params["fetch"].values():
        if isinstance(spec, dict):
            spec["source"] = os.path.relpath(spec["source"], root)
    assert params["fetch"]["cifar10"]["source"] == "../mirror/cifar10-jpeg.tar.gz"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fetch": STAGES["fetch"] | {
        "deps": ["stages/fetch.py"], "outs": ["data/raw", {"data/sources.json": {"cache": False}}]}}}))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        assert sh(*command, cwd=root).returncode == 0
    result = sh("dvc", "exp", "run", "--temp", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'fetch'" in result.stdout


# --- 5. A tampered artifact is refused before deserialisation ------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx", ".xml"])
def test_tampered_artifact_is_refused_before_it_is_deserialised(tmp_path: Path, monkeypatch, suffix: str):
    artifact = tmp_path / f"edgeml_int8{suffix}"
    original = b"PK\x03\x04 an artifact " * 100
    artifact.write_bytes(original)
    (tmp_path / f"{artifact.name}.sha256").write_text(f"{hashlib.sha256(original).hexdigest()}  {artifact.name}\n")
    artifact.write_bytes(original[:-1] + b"!")  # one byte changed

    def forbidden(*args, **kwargs):
        pytest.fail("the artifact was deserialised before its sha256 was checked")

    import pickle
    import xml.etree.ElementTree as ElementTree
    import zipfile

    import onnx
    import onnxruntime
    import openvino

    for owner, name in [(torch, "load"), (torch.jit, "load"), (torch.export, "load"), (onnx, "load"),
                        (onnx, "load_model"), (onnxruntime, "InferenceSession"), (zipfile, "ZipFile"),
                        (pickle, "load"), (pickle, "loads"), (np, "load"), (ElementTree, "parse"),
                        (openvino.Core, "read_model"), (openvino.Core, "compile_model")]:
        monkeypatch.setattr(owner, name, forbidden)
    with pytest.raises(ArtifactError, match=r"sha256 is [0-9a-f]{64}, expected [0-9a-f]{64}; the file is corrupt or was modified"):
        EdgeModel.load(tmp_path)


@pytest.mark.parametrize(
    "path", ["data/.prepared.tmp/cifar10.npz", "models/.deploy.old/int8.pt", "metrics/sweep/.fbgemm_histogram.json.tmp"]
)
def test_temporaries_left_by_a_kill_are_invisible_to_dvc_and_git(path: str):
    """A kill leaves `.<name>.tmp` / `.<name>.old` beside an output until the next run: inside a
    dependency folder (metrics/sweep) DVC would otherwise see a changed dependency, and git an
    untracked file in metrics/."""
    assert sh("git", "check-ignore", "-q", "--no-index", path, cwd=REPO).returncode == 0, "add .*.tmp and .*.old to .gitignore"
    assert sh("dvc", "check-ignore", "-q", path, cwd=REPO).returncode == 0, "add .*.tmp and .*.old to .dvcignore"
