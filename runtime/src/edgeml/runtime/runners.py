"""Running a loaded artifact: uint8 NHWC images in, (class probabilities, OOD scores) out, as numpy.

ONNX artifacts run on onnxruntime alone and OpenVINO IR artifacts on openvino alone, so a device needs
only numpy, Pillow and that runtime; TorchScript (``.pt``) and torch.export (``.pt2``) artifacts import
torch when they are loaded.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import openvino
    import torch


# Notices torch prints while loading or first running a torch-format artifact. They concern torch's
# and torchao's maintainers, not a user of the artifact, so they are dropped there and nowhere else.
# torch's C++ side on stderr, once per process, when a TorchScript INT8 model loads:
QUANTIZED_TENSOR_NOTICE = "quantized tensor creation functions that produce tensors with dtype"


NOTICE_LOGGERS = (
    "torch.utils._pytree",  # torchao registers an Enum as a pytree constant, deprecated upstream
    "torch.utils.cpp_extension",  # Inductor finds no CUDA while it compiles a .pt2 artifact for the CPU
)


Outputs = tuple[np.ndarray, np.ndarray]  # (class probabilities, OOD scores) of a batch


class Runner(Protocol):
    def __call__(self, images: np.ndarray) -> Outputs: ...

    def torch_module(self) -> "torch.nn.Module": ...

    def pipelined(self, batches: Iterable[np.ndarray]) -> Iterator[Outputs]:
        """The outputs of each batch, in order; a runtime that can overlap calls overrides this."""
        for batch in batches:
            yield self(batch)


def ort_session(
    model: str | Path | bytes, threads: Optional[int] = None, spinning: bool = True, optimize: bool = True,
    providers: Optional[list] = None, configure: Optional[Callable[["onnxruntime.SessionOptions"], None]] = None,
) -> "onnxruntime.InferenceSession":
    """The one way this project opens an ONNX Runtime session: errors-only logging, one inter-op thread,
    the CPU provider unless ``providers`` says otherwise. ``threads`` None: ONNX Runtime's default (the
    physical cores). ``spinning`` False: idle workers sleep instead of spinning, leaving the cores to the
    threads that decode the next batch. ``optimize`` False: ONNX's own arithmetic, unfused. ``configure``
    adds to these options (the profiler turns on tracing), so a profiled session is the deployed one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers etc.
    # fuse QDQ around int8 (s8) activations into integer kernels on x86 too: ORT does it by default on ARM only
    # (QDQIsInt8Allowed), and an s8s8 file otherwise runs some convolutions as float Conv between Q and DQ
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if configure:
        configure(options)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


class OnnxRunner(Runner):
    """An ONNX Runtime session on the CPU; ``threads`` None uses ONNX Runtime's default (the physical cores)."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        self.path, self.threads = path, threads
        try:
            self.session = ort_session(path, threads, spinning=False)
        except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base but Exception
            raise ValueError(f"onnxruntime cannot load it ({type(exc).__name__}: {exc})") from exc
        self.input_name = self.session.get_inputs()[0].name

    def metadata(self, key: str) -> Optional[str]:
        return self.session.get_modelmeta().custom_metadata_map.get(key)

    def __call__(self, images: np.ndarray) -> Outputs:
        probabilities, scores = self.session.run(None, {self.input_name: np.ascontiguousarray(images.transpose(0, 3, 1, 2))})
        return probabilities, scores

    def torch_module(self) -> "torch.nn.Module":
        from edgeml.runtime.torch_files import OnnxModule

        return OnnxModule(self.path, self.threads)


def openvino_compiled(
    model: "str | Path | openvino.Model", threads: Optional[int] = None, profiling: bool = False,
    shape: Optional[Sequence[int]] = None, pinning: Optional[bool] = None, throughput: bool = False,
) -> "openvino.CompiledModel":
    """The one way this project compiles an OpenVINO model for the CPU: for latency (one stream), in f32
    for everything not INT8 (OpenVINO would pick bf16 on CPUs that have it, changing the numbers).
    ``throughput``: for many calls in flight instead, as many streams as OpenVINO finds best (on 2 cores:
    two streams of one thread each), for :class:`OpenVinoCalls`' pipelined calls.
    ``threads`` None: OpenVINO's default (the physical cores). ``profiling``: each infer request records
    every node's time (:func:`edgeml.bench.profile.profile_openvino`), so a profiled model is the deployed one.
    ``shape``: the input's static shape (e.g. batch 1), which spares each call OpenVINO's shape inference and
    buffer resizing; None keeps the model's own (dynamic) shape. ``pinning``: pin the inference threads to cores
    (None: OpenVINO's default)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints
    import openvino.properties.streams as streams

    config = {hints.inference_precision: ov.Type.f32}
    if throughput:
        config[hints.performance_mode] = hints.PerformanceMode.THROUGHPUT
    else:
        config |= {streams.num: 1, hints.performance_mode: hints.PerformanceMode.LATENCY}
    if threads:
        config[props.inference_num_threads] = threads
    if profiling:
        config[props.enable_profiling] = True
    if pinning is not None:
        config[hints.enable_cpu_pinning] = pinning
    core = ov.Core()
    if shape is not None:
        model = (model if isinstance(model, ov.Model) else core.read_model(str(model))).clone()
        model.reshape(list(shape))
    return core.compile_model(model if isinstance(model, ov.Model) else str(model), "CPU", config)


class OpenVinoCalls:
    """An OpenVINO model compiled for each way it is called: static batch 1 (``single_shape``), and, each
    compiled on first use (a batch-1 caller runs no other executor), a dynamic batch for other single calls
    and throughput for a stream of batches (:meth:`pipelined`). Batch 1 runs on arrays bound to its request
    once (:func:`bound_request`); other calls zero-copy (the input array is the request's input tensor; only
    the small outputs are copied out). Call it from one thread at a time."""

    def __init__(self, model: "openvino.Model", threads: Optional[int], single_shape: Sequence[int]):
        self.model, self.threads = model, threads
        self.single = openvino_compiled(model, threads, shape=single_shape)
        self.single_request, self.single_input, self.single_outputs = bound_request(self.single)

    @functools.cached_property
    def batched(self) -> "openvino.CompiledModel":
        return openvino_compiled(self.model, self.threads)

    @functools.cached_property
    def batched_request(self) -> "openvino.InferRequest":
        return self.batched.create_infer_request()

    def __call__(self, array: np.ndarray) -> list[np.ndarray]:
        if array.shape == self.single_input.shape:
            np.copyto(self.single_input, array, casting="no")  # a wrong dtype raises, as OpenVINO would
            self.single_request.infer()
            return [output.copy() for output in self.single_outputs]
        array = np.ascontiguousarray(array)  # kept alive here: the tensor shares its memory without owning it
        _infer(self.batched_request, array)
        return _outputs(self.batched_request)

    @functools.cached_property
    def throughput(self) -> "openvino.CompiledModel":
        # unpinned: a decoding thread then shares the cores with both streams, where a pinned stream waits for
        # the core it is bound to (JPEG files, 1 decoding thread: +7% images/s measured, PNG unchanged)
        return openvino_compiled(self.model, self.threads, throughput=True, pinning=False)

    def pipelined(self, arrays: Iterable[np.ndarray]) -> Iterator[list[np.ndarray]]:
        """The outputs of each array, in order, with as many calls in flight as the throughput-compiled model
        has streams (an AsyncInferQueue): on 2 cores, two 1-thread streams, each slowed alone when a decoding
        thread takes its core, where one 2-thread call stalls whole. Measured on 2 cores with 1 decoding
        thread, batch 64: +8-14% images/s over one 2-thread call at a time. A single array (nothing after
        it) takes the latency path, as a lone call should."""
        import openvino as ov

        arrays = iter(arrays)
        first = next(arrays, None)
        second = next(arrays, None)
        if first is None:
            return
        if second is None:
            yield self(first)
            return
        queue = ov.AsyncInferQueue(self.throughput, self.throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        inputs: dict[int, np.ndarray] = {}  # each kept alive until its call is done: the tensors share their memory
        done: dict[int, list[np.ndarray]] = {}
        queue.set_callback(lambda request, index: done.__setitem__(index, _outputs(request)))
        given = 0
        try:
            for index, array in enumerate(itertools.chain([first, second], arrays)):
                inputs[index] = np.ascontiguousarray(array)
                queue.start_async({0: ov.Tensor(inputs[index], shared_memory=True)}, index)  # waits for a free request
                while given in done:
                    del inputs[given]
                    yield done.pop(given)
                    given += 1
            queue.wait_all()
            while given in done:
                yield done.pop(given)
                given += 1
        finally:
            queue.wait_all()  # an abandoned generator still lets its calls finish before their inputs are freed


def bound_request(compiled: "openvino.CompiledModel") -> tuple["openvino.InferRequest", np.ndarray, list[np.ndarray]]:
    """An infer request of a static-shape model with numpy arrays of its own bound once as its input and
    output tensors: a call copies its input in and its outputs out. Why: right after an inference the
    caches are cold, and each Python-side OpenVINO call is slow; measured on 2 cores at batch 1, making and
    setting an input tensor and fetching two output tensors per call cost 42 µs, against 13 µs for the two
    copies here, which brings the artifact's call from +10% to +3-5% over the bare one."""
    import openvino as ov

    def array(port: "openvino.ConstOutput") -> np.ndarray:
        return np.zeros(tuple(port.get_shape()), port.get_element_type().to_dtype())

    request = compiled.create_infer_request()
    inputs, outputs = array(compiled.input()), [array(port) for port in compiled.outputs]
    request.set_input_tensor(ov.Tensor(inputs, shared_memory=True))
    for index, output in enumerate(outputs):
        request.set_output_tensor(index, ov.Tensor(output, shared_memory=True))
    return request, inputs, outputs


def _infer(request: "openvino.InferRequest", array: np.ndarray) -> None:
    import openvino as ov

    request.set_input_tensor(ov.Tensor(array, shared_memory=True))
    request.infer()


def _outputs(request: "openvino.InferRequest") -> list[np.ndarray]:
    return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]


def nhwc_uint8(model: "openvino.Model") -> "openvino.Model":
    """``model`` (uint8 NCHW input) taking uint8 NHWC images, as decoded files are: OpenVINO's PrePostProcessor
    converts the layout inside the graph, so no NumPy transpose copies each batch first."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    return steps.build()


class OpenVinoRunner(Runner):
    """An OpenVINO IR artifact on the CPU (its weights verified before it is read, see
    :func:`edgeml.runtime.artifact.EdgeModel.load`): uint8 NHWC in, static batch 1 for single images
    (:class:`OpenVinoCalls`). Call it from one thread at a time."""

    def __init__(self, path: Path, threads: Optional[int] = None, image_size: int = 32):
        import openvino as ov

        self.path, self.threads = path, threads
        try:
            self.calls = OpenVinoCalls(nhwc_uint8(ov.Core().read_model(str(path))), threads, [1, image_size, image_size, 3])
        except RuntimeError as exc:  # OpenVINO's read and compile errors
            raise ValueError(f"openvino cannot load it ({exc})") from exc

    def __call__(self, images: np.ndarray) -> Outputs:
        probabilities, scores = self.calls(images)
        return probabilities, scores

    def pipelined(self, batches: Iterable[np.ndarray]) -> Iterator[Outputs]:
        for probabilities, scores in self.calls.pipelined(batches):
            yield probabilities, scores

    def torch_module(self) -> "torch.nn.Module":
        from edgeml.runtime.torch_files import RunnerModule

        return RunnerModule(self)


class TorchRunner(Runner):
    """A TorchScript or torch.export artifact; ``backend`` names the quantization engine of TorchScript INT8."""

    def __init__(self, path: Path, backend: str, threads: Optional[int] = None):
        import torch

        from edgeml.runtime.torch_files import load_torch_file

        if threads:
            torch.set_num_threads(threads)
        with dropped_stderr_lines(QUANTIZED_TENSOR_NOTICE), quiet_loggers(NOTICE_LOGGERS):
            self.module = load_torch_file(path, engine=backend)

    def __call__(self, images: np.ndarray) -> Outputs:
        import torch

        with torch.no_grad(), quiet_loggers(NOTICE_LOGGERS):  # a .pt2 artifact compiles on its first call
            probabilities, scores = self.module(torch.from_numpy(images).permute(0, 3, 1, 2))
        return probabilities.numpy(), scores.numpy()

    def torch_module(self) -> "torch.nn.Module":
        return self.module


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str]) -> Iterator[None]:
    """Only errors from the Python loggers ``names`` inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def dropped_stderr_lines(text: str) -> Iterator[None]:
    """Drop the lines containing ``text`` that anything, C++ included, writes to stderr (file
    descriptor 2) inside the block; every other line is passed on when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True) if text not in line]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
