"""``port-weights verify --weights NAME.onnx``: an exported graph in ONNX Runtime and OpenVINO
against the TF oracle (or goldens), driven by ``porting.verify.run`` with its bounds and report.

The graph's ONNX metadata (``porting.onnx.graph``) says its architecture, classes and input
size. Before running anything, the graph is checked statically: one self-contained file, no
control flow, the input its metadata states, no tensor beyond the size budget at batch 10
(each a one-line PortError); and every ``AveragePool``: one that counts padding where TF's
SAME pool does not is a failure naming the node. The engines get the bytes that were checked,
and run stoppably (``porting.onnx.engines``). Then each engine runs the
graph twice over the images, at batch 1 and at batch 10 (the dynamic batch axis), and every
output that is a TF-Slim end point (``Logits``; all end points for ``export --end-points``) is
compared with the reference: max |diff| <= 1e-4 x max(1, max |TF|) for class scores, 1e-3 for
feature maps, and the same top-1 and top-5. The export has no AuxLogits head, so that end point
is reported as skipped.

Needs onnx, an engine, numpy and h5py (for goldens): neither torch nor TensorFlow.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from models.spec import Architecture, ClassLayout, get_architecture
from porting.errors import PortError
from porting.onnx.engines import ENGINES, Engine, stoppable_runner
from porting.onnx.graph import (ExportedGraph, PoolFinding, check_average_pools, check_sizes,
                                read_exported)
from porting.verify.parity import Parity
from porting.verify.reference import OpenedReference
from porting.verify.report import Report, Verification
from porting.verify.request import VerifyRequest
from porting.verify.run import Progress, Run, Runner

BATCH = 10  # the larger batch every engine runs, besides batch 1


@dataclass
class OnnxReport(Verification):
    """The static pool check and the parity of each run (engine x batch size)."""
    weights: str
    architecture: str
    reference: str
    images: list[str]
    pools: int = 0
    pool_findings: list[PoolFinding] = field(default_factory=list)
    runs: dict[str, Report] = field(default_factory=dict)
    skipped_engines: dict[str, str] = field(default_factory=dict)
    engines: list[str] = field(default_factory=list)   # labels of the engines run
    batches: tuple[int, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.runs) and not self.pool_findings and all(
            run.passed for run in self.runs.values())

    @property
    def compared(self) -> bool:
        return bool(self.runs)

    @property
    def manifest_parity(self) -> Parity:
        """The Logits parity recorded in the manifest: the run furthest from the reference."""
        return max((run.end_points["Logits"] for run in self.runs.values()),
                   key=lambda p: (not p.passed, p.relative_error))

    def manifest_reference(self) -> str:
        return f"{self.reference} (float32, {', '.join(self.runs)})"

    def verdict(self) -> str:
        n = len(self.images)
        problems = []
        if self.pool_findings:
            problems.append(f"{len(self.pool_findings)} of {self.pools} average pools count "
                            f"padding where TF does not (first: {self.pool_findings[0]})")
        for label, run in self.runs.items():
            if not run.passed:
                problems.append(f"{label}: {run.verdict().removeprefix('FAIL: ')}")
        if problems:
            return "FAIL: " + "; ".join(problems)
        runs = len(self.runs)
        return (f"PASS: {runs} run{'s' * (runs != 1)} ({' and '.join(self.engines)}; batch "
                f"{' and '.join(map(str, self.batches))}) within bounds of {self.reference} on "
                f"{n} images; worst Logits {self.manifest_parity}; {self.pools} average pools "
                "exclude padding as TF does")

    def table(self) -> list[str]:
        lines = [f"average pools: {self.pools}, "
                 + ("all exclude padding where TF does" if not self.pool_findings else
                    f"{len(self.pool_findings)} count it:")]
        lines += [f"  {finding}" for finding in self.pool_findings]
        for label, run in self.runs.items():
            lines += ["", f"== {label}", *run.table()]
        lines += [f"{engine}: skipped ({why})" for engine, why in self.skipped_engines.items()]
        return lines

    def to_json(self) -> dict:
        return {
            "passed": self.passed, "verdict": self.verdict(), "weights": self.weights,
            "format": "onnx", "architecture": self.architecture, "reference": self.reference,
            "images": self.images,
            "average_pools": {"count": self.pools,
                              "counting_padding": [vars(f) for f in self.pool_findings]},
            "runs": {label: run.to_json() for label, run in self.runs.items()},
            "skipped_engines": self.skipped_engines,
            "manifest": None if self.manifest is None else str(self.manifest),
        }


@dataclass
class OnnxSubject:
    """An exported graph opened for verification (a ``porting.verify.run.Subject``): its
    metadata and static pool check, and the engines to run it in."""
    request: VerifyRequest
    graph: ExportedGraph
    spec: Architecture
    engines: list[Engine]
    skipped_engines: dict[str, str]
    pools: int
    pool_findings: list[PoolFinding]
    engine_logs: bool = False   # let the engines log to stderr (the CLI's --debug)

    @classmethod
    def open(cls, request: VerifyRequest, engine_logs: bool = False) -> "OnnxSubject":
        """PortError naming the file if it is no graph of this tool or fails a static check,
        or naming a requested engine that is not installed."""
        graph = read_exported(request.weights)
        check_sizes(graph, BATCH)
        spec = get_architecture(graph.architecture)
        engines, skipped = _engines(request)
        pools, findings = check_average_pools(graph.model)
        return cls(request, graph, spec, engines, skipped, pools, findings, engine_logs)

    @property
    def num_classes(self) -> int:
        return self.graph.num_classes

    @property
    def end_points(self) -> tuple[str, ...]:
        """The graph's outputs that are end points (all of them for ``export --end-points``)."""
        return tuple(name for name in self.spec.end_points if name in self.graph.outputs)

    def skipped(self, opened: OpenedReference) -> dict[str, str]:
        size, images = self.graph.input_size, opened.images
        if images.shape[1:3] != (size, size):
            raise PortError(f"{self.request.weights}: exported for {size}x{size} inputs; the "
                            f"reference images are {images.shape[1]}x{images.shape[2]} (export "
                            "at the default size to verify)")
        if opened.source.aux:
            return {"AuxLogits": "not in the exported graph (the export drops the aux head)"}
        return {}

    def batches(self, images: int) -> tuple[int, ...]:
        return tuple(sorted({1, min(BATCH, images)}))

    def runs(self, images: int) -> list[Run]:
        runs = []
        for engine in self.engines:
            runner = functools.cache(lambda engine=engine: _nhwc_runner(stoppable_runner(
                engine, self.graph.path, self.graph.payload, self.engine_logs)))  # loaded once
            runs += [Run(f"{engine.label()}, batch {batch}", batch, runner)
                     for batch in self.batches(images)]
        return runs

    def report(self, runs: dict[str, Report], opened: OpenedReference, layout: ClassLayout,
               progress: Progress | None) -> OnnxReport:
        return OnnxReport(str(self.request.weights), self.spec.name, opened.described,
                          opened.names, self.pools, self.pool_findings, runs,
                          self.skipped_engines, [engine.label() for engine in self.engines],
                          self.batches(len(opened.images)))


def _engines(request: VerifyRequest) -> tuple[list[Engine], dict[str, str]]:
    """(engines to run, {engine: why skipped}); PortError if a requested one is missing."""
    if request.engines:
        chosen = [ENGINES[name] for name in request.engines]
        for engine in chosen:
            if not engine.installed():
                raise PortError(f"--engine {engine.name}: {engine.package} is not installed "
                                "(pip install 'tf-porting[onnx]')")
        return chosen, {}
    chosen = [engine for engine in ENGINES.values() if engine.installed()]
    if not chosen:
        raise PortError(f"{request.weights}: no ONNX engine installed "
                        "(pip install 'tf-porting[onnx]')")
    return chosen, {engine.name: f"{engine.package} not installed"
                    for engine in ENGINES.values() if not engine.installed()}


def _nhwc_runner(run) -> Runner:
    """An engine's runner (NCHW in, NCHW maps out) as ``porting.verify.run`` wants it (NHWC)."""
    def ours(images_nhwc: np.ndarray) -> dict:
        out = run(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        return {name: value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
                for name, value in out.items()}
    return ours
