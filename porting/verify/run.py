"""``port-weights verify``: every TF-Slim end point of a ported file or an exported graph against
the source.

The reference is the architecture's TF oracle on the source checkpoint (``models/<name>/oracle.py``:
TF-Slim's own graph for Inception v3 and the ResNets, Keras's InceptionResNetV2 plus TF-Slim's
aux head for Inception-ResNet-v2), or a golden file recorded from it (``porting.verify.goldens``, no
TensorFlow needed): ``porting.verify.reference``. What is verified is a ``Subject``: a ported
file in PyTorch (``porting.verify.torch_runner``) or an exported graph in its inference engines
(``porting.onnx.verify``), each a set of runs that turn NHWC images into end points. The end
points and which of them are classifier outputs come from the architecture's spec. Each end
point passes when max |diff| <= bound x max(1, max |TF|) (``porting.verify.parity``: in float32
1e-4 for the classifier outputs, 1e-3 for feature maps; 1e-10 everywhere with both sides in
float64) and, for the classifiers, top-1 and top-5 agree on every image. The first end point in
network order that fails is where the port went wrong.

torch-free: only a subject's runner imports its framework.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from models.spec import Architecture, ClassLayout
from porting.errors import PortError
from porting.files import check_folder, check_target, written_through
from porting.verify.goldens import Reference
from porting.verify.parity import Parity, compare, tolerance_for
from porting.verify.reference import OpenedReference, class_layout, open_reference
from porting.verify.report import Report, Verification
from porting.verify.request import VerifyRequest
from porting.write.manifest import record_manifest_parity

# progress(phase, images done, images in all)
Progress = Callable[[str, int, int], None]
# NHWC images -> {end point: array, 4-D ones NHWC}
Runner = Callable[[np.ndarray], dict]


@dataclass(frozen=True)
class Run:
    """One pass of a subject over the images: how the report and the progress line name it, its
    batch size, and its runner, made when the pass starts."""
    label: str
    batch_size: int
    runner: Callable[[], Runner]


class Subject(Protocol):
    """What ``run`` verifies, opened from the request's weights before the reference is (its own
    refusals come first): a ported file or an exported graph."""
    spec: Architecture
    num_classes: int
    end_points: tuple[str, ...] | None  # what to ask the reference for (None: all of spec's)

    def skipped(self, opened: OpenedReference) -> dict[str, str]:
        """The reference's end points left out of the comparison, and why; PortError if the
        reference cannot be compared with this subject (an aux head the checkpoint lacks,
        another input size)."""

    def runs(self, images: int) -> list[Run]:
        """The passes over ``images`` images."""

    def report(self, runs: dict[str, Report], opened: OpenedReference, layout: ClassLayout,
               progress: Progress | None) -> Verification:
        """The verification's report from its runs' reports (and what else it checks)."""


def run(request: VerifyRequest, open_weights: Callable[[VerifyRequest], Subject],
        progress: Progress | None = None) -> Verification:
    """Verify ``request.weights``, opened by ``open_weights`` (and/or record goldens) as the CLI's
    ``verify`` describes."""
    request.check()
    if request.record_goldens is not None:  # before any work: refused targets fail fast
        if written_through(request.record_goldens):  # a pipe, a device, /dev/stdout
            raise PortError(f"{request.record_goldens}: golden files are HDF5 and cannot be "
                            "streamed; give a file name")
        check_target(request.record_goldens, request.inputs())
        check_folder(request.record_goldens)
    dtype = "float64" if request.float64 else "float32"
    subject = None if request.weights is None else open_weights(request)
    with contextlib.ExitStack() as stack:
        opened = open_reference(request, dtype, stack,
                                None if subject is None else subject.end_points)
        if subject is None:  # only recording
            for start in range(0, len(opened.images), request.batch_size):
                stop = min(start + request.batch_size, len(opened.images))
                opened.reference(start, stop)
                if progress is not None:
                    progress("TF reference", stop, len(opened.images))
            report = Report(None, opened.described, opened.names, dtype,
                            opened.source.architecture)
        else:
            report = _compare(subject, request, opened, dtype, progress)
        report.goldens_written = opened.finish_recording()
    if subject is not None:
        report.manifest, report.manifest_skipped = record_manifest_parity(
            request.weights, report.manifest_parity, report.manifest_reference())
    return report


def _compare(subject: Subject, request: VerifyRequest, opened: OpenedReference, dtype: str,
             progress: Progress | None) -> Verification:
    """Every run of ``subject`` against the reference, and the subject's report of them."""
    layout = class_layout(request.weights, subject.spec, subject.num_classes, opened.source)
    skipped = subject.skipped(opened)
    runs = subject.runs(len(opened.images))
    reference = (opened.reference if len(runs) == 1
                 else opened.computed_once(request.batch_size))
    reports = {}
    for each in runs:
        report = Report(str(request.weights), opened.described, opened.names, dtype,
                        subject.spec.name, skipped=dict(skipped))
        report.end_points = compare_outputs(
            subject.spec, each.runner(), opened.images, reference, dropped=layout.dropped,
            float64=request.float64, batch_size=each.batch_size,
            progress=None if progress is None else functools.partial(progress, each.label),
            reference_name=str(request.goldens or request.src))
        reports[each.label] = report
    return subject.report(reports, opened, layout, progress)


def compare_outputs(spec: Architecture, ours: Runner, images: np.ndarray, reference: Reference,
                    *, dropped: int = 0, float64: bool = False, batch_size: int = 2,
                    progress=None, reference_name: str = "reference") -> dict[str, Parity]:
    """Parity of every end point both sides have, batch by batch (memory stays small), ``ours``
    any runner (a PyTorch model, or an exported graph in an inference engine).

    ``dropped=1`` compares 1000-class outputs with TF's logits[:, 1:] (background dropped:
    ``ClassLayout.dropped``)."""
    results: dict[str, Parity] = {}
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        expected = reference(start, stop)
        computed = ours(images[start:stop])
        for name in spec.end_points:
            if name in computed and name in expected:
                scores = name in spec.logits_end_points
                ref = expected[name][:, dropped:] if scores else expected[name]
                if computed[name].shape != ref.shape:  # goldens of another model, or damaged
                    raise PortError(f"{reference_name}: end point {name} has shape "
                                    f"{list(ref.shape)}, the weights give "
                                    f"{list(computed[name].shape)}")
                parity = compare(computed[name], ref, tolerance_for(spec, name, float64), scores)
                results[name] = results[name].merge(parity) if name in results else parity
        if progress is not None:
            progress(stop, len(images))
    return results
