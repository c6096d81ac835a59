"""The inference engines an exported ONNX graph is run in: ONNX Runtime (CPU execution
provider) and OpenVINO (CPU plugin, float32), each as ``run(images_nchw) -> {output: array}``.

Both come with the ``onnx`` extra (``pip install 'tf-porting[onnx]'``). OpenVINO is told to
compute in float32: on CPUs with bf16 or AMX units its default precision hint is bf16, which
would move logits far beyond the parity bound.

How the tool runs them:

- from the graph's bytes, never its path: the engine runs what was read and checked
  (``porting.onnx.graph``), and has no folder to look for other files in;
- quietly: their logs (ONNX Runtime's coloured multi-line ones) stay off the terminal unless
  asked for (``logs=True``, the CLI's ``--debug``); what went wrong is in the one-line
  PortError. ONNX Runtime's telemetry, which leaves ``mat-debug-<pid>.log`` and ``.ses`` in
  TMPDIR when it is imported, is switched off (``ORT_DISABLE_TELEMETRY=1``, unless set);
- a failure to load or to run (an allocation the graph asks for and the machine cannot give)
  is a PortError naming the file, with the engine's informative line (OpenVINO puts its source
  locations first);
- stoppably (``stoppable``): a call into an engine holds the thread until it returns, and
  Python runs a signal's handler only between bytecodes of the main thread, so SIGTERM or
  Ctrl-C would wait for the engine. ``stoppable`` runs the call in a worker thread and waits
  for it in short slices; a signal's exception then unwinds the command at once, the engine
  is asked to cancel, and the worker is left to end with the process.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from porting.errors import PortError, escaped, first_line
from porting.files import read_input
from porting.onnx.graph import MAX_GRAPH_BYTES

Run = Callable[[np.ndarray], dict]
WAIT_SLICE_S = 0.05  # how long the main thread waits on a worker between signal checks


class Session(Protocol):
    """A graph loaded in an engine."""

    def run(self, images: np.ndarray) -> dict:
        """{output name: array} of NCHW float32 images; PortError if the engine fails."""

    def cancel(self) -> None:
        """Ask a ``run`` in progress (in another thread) to stop."""


@dataclass(frozen=True)
class Engine:
    name: str          # what --engine takes
    package: str       # the distribution that provides it
    title: str
    mode: str          # how it runs here, as labels show it

    def installed(self) -> bool:
        try:
            version(self.package)
        except PackageNotFoundError:
            return False
        return True

    def label(self) -> str:
        return f"{self.title} {version(self.package)} ({self.mode})"

    def open(self, path: Path, threads: int | None = None, spin: bool = True, *,
             payload: bytes | None = None, logs: bool = False) -> Session:
        """The graph at ``path`` (``payload``: its bytes, already read) loaded in the engine;
        ``threads``: intra-op threads (default: the engine's own choice); ``spin=False``:
        waiting threads sleep instead of spinning (ONNX Runtime's ``allow_spinning``;
        OpenVINO's TBB threads do not spin-wait); ``logs``: let the engine log to stderr.
        PortError naming the file if the engine refuses it."""
        if not self.installed():
            raise PortError(f"{self.name}: not installed (pip install 'tf-porting[onnx]')")
        path = Path(path)
        if payload is None:
            payload = read_input(path, MAX_GRAPH_BYTES, "ONNX file")
        try:
            return _LOADERS[self.name](self, path, payload, threads, spin, logs)
        except PortError:
            raise
        except Exception as err:  # the engines raise their own kinds for a graph they refuse
            raise PortError(f"{path}: {self.title} cannot load it ({type(err).__name__}: "
                            f"{informative_line(err)[:200]})") from err

    def load(self, path: Path, threads: int | None = None, spin: bool = True) -> Run:
        """``open(...).run``: a runner of the graph at ``path``."""
        return self.open(path, threads, spin).run

    def failed(self, path: Path, err: Exception) -> PortError:
        """The one-line error for a run the engine could not finish."""
        return PortError(f"{path}: {self.title} failed running it ({type(err).__name__}: "
                         f"{informative_line(err)[:200]})")


# OpenVINO's source locations: a line of its own, or a check's within a line (ending in ":")
_LOCATION = re.compile(r"Exception from \S+:\d+:")
_CHECK = re.compile(r"\s*Check '.*' failed at \S+:\d+:")
# ONNX Runtime's message prefix and the C++ function it names before the reason
_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "
                        r"|/onnxruntime_src/\S+:\d+ [^(]*\([^)]*\) ")


def informative_line(err: Exception) -> str:
    """An engine's error in one line: its first line that is not a source location (OpenVINO
    starts with "Exception from src/...cpp:132:" lines; ONNX Runtime's one line loses its
    "[ONNXRuntimeError] : 1 : FAIL : " and the C++ function it names), joined with the next
    while it ends in a colon. OpenVINO's conversion summary (the operations it cannot
    convert), when it has one, is the line."""
    lines = [line.strip() for line in str(err).splitlines()]
    if "Summary:" in lines:
        summary = [line.removeprefix("-- ") for line in lines[lines.index("Summary:") + 1:]
                   if line.startswith("-- ")]
        if summary:
            return escaped("; ".join(summary))
    lines = [_ORT_NOISE.sub("", _CHECK.sub(":", line)).strip() for line in lines]
    told = [line for line in lines if line not in ("", ":") and not _LOCATION.fullmatch(line)]
    if not told:
        return first_line(err, escape=True)
    text = told[0]
    for line in told[1:]:
        if not text.endswith(":"):
            break
        text = f"{text} {line}"
    return escaped(text)


def stoppable(call: Callable[[], object], cancel: Callable[[], None] | None = None):
    """``call()``, run in a worker thread while this thread waits in slices of
    ``WAIT_SLICE_S``, so that a signal's handler runs here while an engine holds the worker.
    If anything (the handler's exception) interrupts the wait, ``cancel()`` asks the engine to
    stop and the exception goes on; the worker, a daemon, ends with the process."""
    done: dict = {}

    def work():
        try:
            done["value"] = call()
        except BaseException as err:  # handed to the waiting thread
            done["error"] = err

    worker = threading.Thread(target=work, name="port-weights engine", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(WAIT_SLICE_S)
    except BaseException:
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()
        raise
    if "error" in done:
        raise done["error"]
    return done["value"]


def stoppable_runner(engine: Engine, path: Path, payload: bytes, logs: bool = False) -> Run:
    """A runner of the graph whose every engine call (the load, each run) is ``stoppable``."""
    session = stoppable(lambda: engine.open(path, payload=payload, logs=logs))

    def run(images: np.ndarray) -> dict:
        return stoppable(lambda: session.run(images), session.cancel)
    return run


class _OnnxRuntime:
    def __init__(self, engine: Engine, path: Path, payload: bytes, threads: int | None,
                 spin: bool, logs: bool):
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before the import: see above
        import onnxruntime as ort

        with contextlib.suppress(AttributeError):  # in case it was imported before
            ort.disable_telemetry_events()
        self._ort, self._engine, self._path = ort, engine, path
        self._severity = 2 if logs else 4  # warnings (ONNX Runtime's default), or fatal only
        ort.set_default_logger_severity(self._severity)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = self._severity
        self._session = ort.InferenceSession(payload, options,
                                             providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self._session.get_outputs()]
        self._input = self._session.get_inputs()[0].name
        self._runs: list = []

    def run(self, images: np.ndarray) -> dict:
        options = self._ort.RunOptions()
        options.log_severity_level = self._severity
        self._runs.append(options)
        try:
            return dict(zip(self._names, self._session.run(self._names, {self._input: images},
                                                           options)))
        except Exception as err:  # the engine's kinds: a failed allocation, a bad shape
            raise self._engine.failed(self._path, err) from err
        finally:
            self._runs.remove(options)

    def cancel(self) -> None:
        for options in list(self._runs):
            options.terminate = True


class _OpenVINO:
    def __init__(self, engine: Engine, path: Path, payload: bytes, threads: int | None,
                 spin: bool, logs: bool):
        import openvino as ov

        self._engine, self._path = engine, path
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "LOG_LEVEL": "LOG_WARNING" if logs else "LOG_NONE"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        compiled = core.compile_model(core.read_model(payload), "CPU", config)
        self._outputs = [(o.get_any_name(), o) for o in compiled.outputs]
        self._request = compiled.create_infer_request()

    def run(self, images: np.ndarray) -> dict:
        try:
            result = self._request.infer({0: images})
            return {name: np.array(result[port]) for name, port in self._outputs}
        except Exception as err:  # the engine's kinds: a failed allocation, a bad shape
            raise self._engine.failed(self._path, err) from err

    def cancel(self) -> None:
        self._request.cancel()


_LOADERS = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVINO}
ENGINES = {engine.name: engine for engine in (
    Engine("onnxruntime", "onnxruntime", "ONNX Runtime", "CPU"),
    Engine("openvino", "openvino", "OpenVINO", "CPU, f32"),
)}
