"""``port-weights verify --weights NAME.onnx``: an exported graph in ONNX Runtime and OpenVINO
against the TF oracle (or goldens), with the bounds and report of ``porting.verify.run``.

The graph's ONNX metadata (``porting.onnx.graph``) says its architecture, classes and input
size. Before running anything, every ``AveragePool`` is checked statically: one that counts
padding where TF's SAME pool does not is a failure naming the node. Then each engine runs the
graph twice over the images, at batch 1 and at batch 10 (the dynamic batch axis), and every
output that is a TF-Slim end point (``Logits``; all end points for ``export --end-points``) is
compared with the reference: max |diff| <= 1e-4 x max(1, max |TF|) for class scores, 1e-3 for
feature maps, and the same top-1 and top-5. The export has no AuxLogits head, so that end point
is reported as skipped.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.spec import get_architecture
from porting.onnx.engines import ENGINES
from porting.errors import PortError
from porting.onnx.graph import PoolFinding, check_average_pools, read_exported
from porting.verify.parity import Parity
from porting.verify.run import (Progress, Report, VerifyRequest, compare_outputs, first_class_of,
                            open_reference)
from porting.write.manifest import record_manifest_parity

BATCH = 10  # the larger batch every engine runs, besides batch 1


@dataclass
class OnnxReport:
    """The parity of each run (engine x batch size) and the static pool check."""
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
    manifest: Path | None = None
    manifest_skipped: str | None = None
    goldens_written = None
    compared = True

    @property
    def passed(self) -> bool:
        return bool(self.runs) and not self.pool_findings and all(
            run.passed for run in self.runs.values())

    @property
    def manifest_parity(self) -> Parity:
        """The Logits parity recorded in the manifest: the run furthest from the reference."""
        return max((run.end_points["Logits"] for run in self.runs.values()),
                   key=lambda p: (not p.passed, p.relative_error))

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


def _engines(request: VerifyRequest) -> tuple[list, dict[str, str]]:
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


def _cached(reference, count: int, batch_size: int):
    """``reference`` computed once over all images (in batches), then served by slices."""
    chunks = [reference(start, min(start + batch_size, count))
              for start in range(0, count, batch_size)]
    whole = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    return lambda start, stop: {name: value[start:stop] for name, value in whole.items()}


def _nhwc_runner(run):
    """An engine's runner (NCHW in, NCHW maps out) as ``compare_outputs`` wants it (NHWC)."""
    def ours(images_nhwc: np.ndarray) -> dict:
        out = run(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        return {name: value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
                for name, value in out.items()}
    return ours


def run(request: VerifyRequest, progress: Progress | None = None) -> OnnxReport:
    """Verify the exported graph ``request.weights`` as the module docstring describes."""
    request.check()
    graph = read_exported(request.weights)
    spec = get_architecture(graph.architecture)
    engines, skipped_engines = _engines(request)
    pools, findings = check_average_pools(graph.model)
    wanted = tuple(name for name in spec.end_points if name in graph.outputs)
    with contextlib.ExitStack() as stack:
        ref = open_reference(request, "float32", stack, wanted)
        source, images = ref.source, ref.images
        first_class = first_class_of(request.weights, spec, graph.num_classes, source)
        if images.shape[1:3] != (graph.input_size, graph.input_size):
            raise PortError(f"{request.weights}: exported for {graph.input_size}x"
                            f"{graph.input_size} inputs; the reference images are "
                            f"{images.shape[1]}x{images.shape[2]} (export at the default size "
                            "to verify)")
        report = OnnxReport(str(request.weights), spec.name, ref.described, ref.names, pools,
                            findings, skipped_engines=skipped_engines)
        reference = _cached(ref.reference, len(images), request.batch_size)
        report.batches = tuple(sorted({1, min(BATCH, len(images))}))
        for engine in engines:
            ours = _nhwc_runner(engine.load(request.weights))
            report.engines.append(engine.label())
            for batch in report.batches:
                label = f"{engine.label()}, batch {batch}"
                step = None if progress is None else functools.partial(progress, label)
                run_report = Report(str(request.weights), ref.described, ref.names, "float32",
                                    spec.name)
                if source.aux:
                    run_report.skipped["AuxLogits"] = "not in the exported graph (the export " \
                                                      "drops the aux head)"
                run_report.end_points = compare_outputs(
                    spec, ours, images, reference, first_class=first_class, batch_size=batch,
                    progress=step, reference_name=str(request.goldens or request.src))
                report.runs[label] = run_report
    report.manifest, report.manifest_skipped = record_manifest_parity(
        request.weights, report.manifest_parity, f"{report.reference} (float32, "
        f"{', '.join(report.runs)})")
    return report
