"""Each runtime timed alone: every model is loaded and run in a worker process of its own, and the
workers take turns, so no model is ever timed beside another runtime's thread pool.

Why: in one process, torch's OpenMP pool, ONNX Runtime's spinning workers and OpenVINO's pinned
threads share the two cores with whatever is timed. Measured before this module, the same OpenVINO IR
read 0.92 ms in the bench stage (one process, three runtimes), 0.78 ms in the sweep and 0.70 ms alone.
A worker that is not running waits on a pipe, idle; each turn starts with a few untimed runs, so the
previous worker's lingering threads are not charged to this one.

A worker builds its model with a *factory*, named as ``"module:function"`` and called with keyword
arguments; it returns ``(model, make_input)``, where ``make_input(batch)`` gives the input of a batch.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

Model = Callable[[Any], object]
MakeInput = Callable[[int], Any]


class Timer(Protocol):
    """Something that runs a model on a batch and times it: ``settle`` untimed runs, then ``runs`` timed ones."""

    def samples(self, batch: int, settle: int, runs: int) -> list[float]: ...


def timed_runs(model: Model, example: Any, settle: int, runs: int, clock: Callable[[], float]) -> list[float]:
    """Seconds of each of ``runs`` calls of ``model`` on ``example``, after ``settle`` calls that are not timed."""
    for _ in range(settle):
        model(example)
    seconds = []
    for _ in range(runs):
        start = clock()
        model(example)
        seconds.append(clock() - start)
    return seconds


@dataclasses.dataclass
class InProcess:
    """A model timed in this process (a GPU path, whose device is not shared; tests, with a simulated ``clock``)."""

    model: Model
    make_input: MakeInput
    clock: Callable[[], float] = time.perf_counter

    def samples(self, batch: int, settle: int, runs: int) -> list[float]:
        return timed_runs(self.model, self.make_input(batch), settle, runs, self.clock)


@dataclasses.dataclass(frozen=True)
class Load:
    """How a worker builds its model: ``factory`` (``"module:function"``) called with ``kwargs`` (JSON values),
    in a process whose environment has ``env`` added (what only takes effect at process start, such as glibc's
    malloc tunables)."""

    factory: str
    kwargs: dict[str, Any]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


class WorkerError(RuntimeError):
    """A timing worker failed to load or run its model; the message names it and ends with its stderr."""


class InOwnProcess:
    """A model loaded and timed in a worker process of its own (``python -m edgeml.bench.isolated``).
    Start many, then :meth:`wait_ready` each: they load side by side, and nothing is timed while they do."""

    def __init__(self, name: str, load: Load):
        self.name = name
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edgeml.bench.isolated"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, env={**os.environ, **load.env},
        )
        self._send({"factory": load.factory, "kwargs": load.kwargs})
        self._ready = False

    def wait_ready(self) -> int:
        """Block until the model is loaded; its process id."""
        pid = self._receive()["ready"]
        self._ready = True
        return pid

    def samples(self, batch: int, settle: int, runs: int) -> list[float]:
        if not self._ready:
            self.wait_ready()
        self._send({"batch": batch, "settle": settle, "runs": runs})
        return self._receive()["seconds"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._stderr.close()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise self._failure("exited") from None

    def _receive(self) -> dict[str, Any]:
        line = self._process.stdout.readline()
        if not line:
            raise self._failure(f"exited with code {self._process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise self._failure(reply["error"])
        return reply

    def _failure(self, what: str) -> WorkerError:
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")[-3000:]
        return WorkerError(f"{self.name}: its timing worker {what}\n--- worker stderr ---\n{stderr}")


class Workers(dict[str, InOwnProcess]):
    """One worker per model, by name, started together and closed together (a ``with`` block)."""

    def __init__(self, loads: dict[str, Load]):
        super().__init__()
        try:
            for name, load in loads.items():
                self[name] = InOwnProcess(name, load)
            for worker in self.values():
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for worker in self.values():
            worker.close()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latency_stats_ms(seconds: list[float]) -> dict[str, float]:
    """Min, 10th percentile, median and 90th percentile of timed runs, in ms."""
    ms = np.asarray(seconds) * 1e3
    return {"min": float(ms.min()), "p10": float(np.percentile(ms, 10)), "median": float(np.median(ms)),
            "p90": float(np.percentile(ms, 90))}


# Factories: what a worker may load.

def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # before loading: ONNX Runtime sessions and OpenVINO take torch's count


def deployable(path: str, backend: str, threads: int) -> tuple[Model, MakeInput]:
    """A quantize-stage file (:func:`edgeml.quantization.load_deployable`): normalised float NCHW in."""
    _torch_threads(threads)
    import torch

    from edgeml.quantization import load_deployable

    model = load_deployable(Path(path), backend)
    generator = torch.Generator().manual_seed(0)
    # plain contiguous NCHW, as a caller passes it (a channels-last batch of one sends the frozen FP32
    # TorchScript model down a slow path, ~5x here)
    return _no_grad(model), lambda batch: torch.randn(batch, 3, 32, 32, generator=generator)


def artifact(path: str, threads: int) -> tuple[Model, MakeInput]:
    """The packaged artifact as ``edgeml predict`` calls it once files are decoded: :meth:`EdgeModel.predict_images`
    on uint8 NHWC images (no torch imported for ONNX and OpenVINO IR artifacts)."""
    from edgeml.runtime.artifact import EdgeModel

    model = EdgeModel.load(path, threads=threads)
    return model.predict_images, _uint8_images


def bare_openvino(path: str, threads: int, pinning: bool | None = None) -> tuple[Model, MakeInput]:
    """An OpenVINO IR artifact called bare: compiled static for batch 1 with uint8 NHWC input, one infer
    request, the input set zero-copy and nothing read back: the reference the artifact's own calls are held to.
    ``pinning``: threads pinned to cores or not (None: OpenVINO's default), a setting the bench tries."""
    import openvino as ov

    from edgeml.runtime.runners import nhwc_uint8, openvino_compiled

    model = nhwc_uint8(ov.Core().read_model(path))
    compiled = {}

    def run(images: np.ndarray) -> None:
        if len(images) not in compiled:
            static = openvino_compiled(model, threads, shape=[len(images), *images.shape[1:]], pinning=pinning)
            compiled[len(images)] = static.create_infer_request()
        request = compiled[len(images)]
        request.set_input_tensor(ov.Tensor(images, shared_memory=True))
        request.infer()

    return run, _uint8_images


def _uint8_images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)


def _no_grad(model: Any) -> Model:
    import torch

    def run(x: Any) -> object:
        with torch.no_grad():
            return model(x)

    return run


def serve() -> None:
    """The worker: read a :class:`Load`, build the model, then answer timing requests until stdin closes.
    Replies go to the original stdout; anything the libraries print goes to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        load = json.loads(sys.stdin.readline())
        module, function = load["factory"].split(":")
        model, make_input = getattr(importlib.import_module(module), function)(**load["kwargs"])
    except Exception:
        reply({"error": "failed to load its model:\n" + traceback.format_exc()})
        return
    reply({"ready": os.getpid()})
    examples: dict[int, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            example = examples.setdefault(request["batch"], make_input(request["batch"]))
            reply({"seconds": timed_runs(model, example, request["settle"], request["runs"], time.perf_counter)})
        except Exception:
            reply({"error": "failed while running:\n" + traceback.format_exc()})
            return


if __name__ == "__main__":
    serve()
