"""The inference engines an exported ONNX graph is run in: ONNX Runtime (CPU execution
provider) and OpenVINO (CPU plugin, float32), each as ``run(images_nchw) -> {output: array}``.

Both come with the ``onnx`` extra (``pip install 'tf-porting[onnx]'``). OpenVINO is told to
compute in float32: on CPUs with bf16 or AMX units its default precision hint is bf16, which
would move logits far beyond the parity bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from porting.errors import PortError, first_line

Run = Callable[[np.ndarray], dict]


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

    def load(self, path: Path, threads: int | None = None, spin: bool = True) -> Run:
        """A runner of the graph at ``path``; ``threads``: intra-op threads (default: the
        engine's own choice); ``spin=False``: waiting threads sleep instead of spinning (ONNX
        Runtime's ``allow_spinning``; OpenVINO's TBB threads do not spin-wait). PortError naming
        the file if the engine refuses it."""
        if not self.installed():
            raise PortError(f"{self.name}: not installed (pip install 'tf-porting[onnx]')")
        try:
            return _LOADERS[self.name](Path(path), threads, spin)
        except PortError:
            raise
        except Exception as err:  # the engines raise their own kinds for a graph they refuse
            raise PortError(f"{path}: {self.title} cannot load it ({type(err).__name__}: "
                            f"{first_line(err)[:200]})") from err


def _onnxruntime(path: Path, threads: int | None, spin: bool) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> dict:
        return dict(zip(names, session.run(names, {input_name: images})))
    return run


def _openvino(path: Path, threads: int | None, spin: bool) -> Run:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    outputs = [(o.get_any_name(), o) for o in compiled.outputs]
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> dict:
        result = request.infer({0: images})
        return {name: np.array(result[port]) for name, port in outputs}
    return run


_LOADERS = {"onnxruntime": _onnxruntime, "openvino": _openvino}
ENGINES = {engine.name: engine for engine in (
    Engine("onnxruntime", "onnxruntime", "ONNX Runtime", "CPU"),
    Engine("openvino", "openvino", "OpenVINO", "CPU, f32"),
)}
