"""Timing workers: each model loaded and run in a process of its own, taking turns, failures named."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edgeml.bench.isolated import InOwnProcess, Load, WorkerError, Workers, latency_stats_ms

# A factory module the workers import: each model imports "its runtime" (a stdlib module no worker
# imports otherwise) and, on every call, records its process id and which of the runtimes it can see.
PROBE = '''
import os, sys, importlib

RUNTIMES = ("wave", "netrc")

def probe(log, runtime):
    importlib.import_module(runtime)
    def run(x):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {' '.join(r for r in RUNTIMES if r in sys.modules)}\\n")
    return run, lambda batch: [0] * batch

def broken():
    raise RuntimeError("this model file is damaged")

def environment(log, name):
    def run(x):
        with open(log, "a") as f:
            f.write(os.environ.get(name, "unset") + "\\n")
    return run, lambda batch: [0] * batch
'''


@pytest.fixture
def probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "timing_probe.py").write_text(textwrap.dedent(PROBE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def test_each_model_runs_alone_in_its_own_process(probe_module: Path):
    logs = {runtime: probe_module / f"{runtime}.log" for runtime in ("wave", "netrc")}
    loads = {runtime: Load("timing_probe:probe", {"log": str(log), "runtime": runtime}) for runtime, log in logs.items()}
    with Workers(loads) as workers:
        for _ in range(2):  # taking turns
            for worker in workers.values():
                assert len(worker.samples(batch=1, settle=1, runs=3)) == 3
    seen = {runtime: {tuple(line.split()) for line in log.read_text().splitlines()} for runtime, log in logs.items()}
    (wave_pid, wave_modules), = seen["wave"]
    (netrc_pid, netrc_modules), = seen["netrc"]
    assert wave_pid != netrc_pid and str(os.getpid()) not in (wave_pid, netrc_pid)
    assert (wave_modules, netrc_modules) == ("wave", "netrc")  # neither sees the other's runtime
    assert len(logs["wave"].read_text().splitlines()) == 2 * (1 + 3)  # settle runs are run, not timed


def test_a_worker_starts_with_the_environment_its_load_adds(probe_module: Path, monkeypatch: pytest.MonkeyPatch):
    """What takes effect only at process start (glibc's malloc tunables, for huge pages) reaches that one worker."""
    monkeypatch.setenv("EDGEML_PROBE_KEPT", "parent")
    logs = {name: probe_module / f"{name}.log" for name in ("plain", "tuned", "kept")}
    loads = {
        "plain": Load("timing_probe:environment", {"log": str(logs["plain"]), "name": "GLIBC_TUNABLES"}),
        "tuned": Load("timing_probe:environment", {"log": str(logs["tuned"]), "name": "GLIBC_TUNABLES"}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
        "kept": Load("timing_probe:environment", {"log": str(logs["kept"]), "name": "EDGEML_PROBE_KEPT"}, {"OTHER": "1"}),
    }
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with Workers(loads) as workers:
        for worker in workers.values():
            worker.samples(batch=1, settle=0, runs=1)
    assert {name: log.read_text().split() for name, log in logs.items()} == {
        "plain": ["unset"], "tuned": ["glibc.malloc.hugetlb=1"], "kept": ["parent"]}


def test_a_worker_that_cannot_load_names_its_model_and_why(probe_module: Path):
    with pytest.raises(WorkerError, match=r"(?s)int8: its timing worker failed to load its model.*this model file is damaged"):
        Workers({"int8": Load("timing_probe:broken", {})})
    worker = InOwnProcess("fp32", Load("timing_probe:absent", {}))
    with pytest.raises(WorkerError, match=r"(?s)fp32: .*has no attribute 'absent'"):
        worker.samples(1, 0, 1)
    worker.close()


def test_latency_stats_are_order_statistics_in_ms():
    stats = latency_stats_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["min"] == pytest.approx(1.0) and stats["median"] == pytest.approx(50.5)
    assert stats["p10"] == pytest.approx(10.9) and stats["p90"] == pytest.approx(90.1)
