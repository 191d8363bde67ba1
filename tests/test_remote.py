"""The DVC remote and run-cache, and the experiment queue, on a throwaway 2-stage pipeline.

The project's own `.dvc/config` names a local directory beside the checkout as the default
remote; these tests check what that buys: a fresh clone restores outputs instead of recomputing.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
from configobj import ConfigObj

pytestmark = pytest.mark.e2e  # runs DVC itself: `pytest -m "not e2e"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = f"""\
stages:
  one:
    cmd: {sys.executable} -c "open('a.txt', 'w').write(open('seed.txt').read())"
    deps: [seed.txt]
    outs: [a.txt]
  two:
    cmd: {sys.executable} -c "import yaml; f = yaml.safe_load(open('params.yaml'))['factor']; open('b.txt', 'w').write(open('a.txt').read() * f)"
    deps: [a.txt]
    params: [factor]
    outs: [b.txt]
"""


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A committed git + DVC repo, its outputs computed, and a local remote beside it (not yet pushed to)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                    ["git", "config", "user.name", "t"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"]):
        sh(*command, cwd=repo)
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "params.yaml").write_text("factor: 2\n")
    (repo / "seed.txt").write_text("hello ")
    sh("dvc", "remote", "add", "--default", "local", "../remote", cwd=repo)  # from the cwd: tmp_path/remote
    sh("dvc", "repro", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "pipeline", cwd=repo)
    return repo


def test_project_config_names_a_default_remote_outside_the_checkout() -> None:
    config = ConfigObj(str(ROOT / ".dvc/config"))
    name = config["core"]["remote"]
    url = config[f'remote "{name}"']["url"]
    assert not url.startswith(("s3:", "gs:", "ssh:", "http")), "the default remote must work without credentials"
    location = (ROOT / ".dvc" / url).resolve()  # DVC resolves a relative url against .dvc/
    assert not location.is_relative_to(ROOT)


def test_fresh_clone_pulls_and_runs_nothing(project: Path) -> None:
    """A fresh clone's `dvc pull` + `dvc repro` recomputes nothing; and a result computed (factor=3) and pushed
    from one checkout but never committed is checked out from the run-cache, not recomputed, in the clone."""
    sh("dvc", "push", "--run-cache", cwd=project)
    (project / "params.yaml").write_text("factor: 3\n")  # e.g. CI on a branch: `dvc push` sends the workspace's
    sh("dvc", "repro", cwd=project)  # outputs; --run-cache adds the (params, deps) -> outputs record
    sh("dvc", "push", "--run-cache", cwd=project)
    clone = project.parent / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=project.parent)
    sh("dvc", "pull", "--run-cache", cwd=clone)
    assert (clone / "b.txt").read_text() == "hello hello "
    out = sh("dvc", "repro", cwd=clone)
    assert "Running stage" not in out and "didn't change, skipping" in out
    assert "up to date" in sh("dvc", "status", cwd=clone)

    (clone / "params.yaml").write_text("factor: 3\n")
    out = sh("dvc", "repro", "--pull", cwd=clone)  # --pull: fetch the outputs a run-cache entry names
    assert "Running stage" not in out and "is cached - skipping run" in out
    assert (clone / "b.txt").read_text() == "hello " * 3


def test_queued_experiments_run_in_parallel(project: Path) -> None:
    """`dvc exp run --queue` + `dvc queue start -j 2` (queued runs work in a copy under .dvc/tmp/exps/)."""
    for factor in (3, 4):
        sh("dvc", "exp", "run", "--queue", "-S", f"factor={factor}", cwd=project)
    sh("dvc", "queue", "start", "-j", "2", cwd=project)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = sh("dvc", "exp", "show", "--csv", "--no-pager", cwd=project)
    factors = sorted(row["factor"] for row in csv.DictReader(shown.splitlines()) if row["State"] == "Success")
    assert factors == ["3", "4"], shown
