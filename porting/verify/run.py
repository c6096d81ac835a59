"""``port-weights verify``: every TF-Slim end point of a ported file against the source.

The reference is the architecture's TF oracle on the source checkpoint (``models/<name>/oracle.py``:
TF-Slim's own graph for Inception v3 and the ResNets, Keras's InceptionResNetV2 plus TF-Slim's
aux head for Inception-ResNet-v2), or a golden file recorded from it (``porting.verify.goldens``, no TensorFlow
needed). The end points and which of them are classifier outputs come from the architecture's
spec. Each end point passes when
max |diff| <= bound x max(1, max |TF|) (``porting.verify.parity``: in float32 1e-4 for the classifier
outputs, 1e-3 for feature maps; 1e-10 everywhere with both sides in float64) and, for the
classifiers, top-1 and top-5 agree on every image. The first end point in network order that
fails is where the port went wrong.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.spec import Architecture, architecture_of_model, get_architecture
from porting.errors import PortError
from porting.files import check_target, is_stream
from porting.verify.goldens import GoldenRecorder, Goldens, Reference, SourceInfo
from porting.verify.gradients import FLOAT32_RELATIVE_TOLERANCE, GradientParity, gradient_parity
from porting.verify.parity import (FLOAT64_RELATIVE_TOLERANCE, MAP_RELATIVE_TOLERANCE,
                            RELATIVE_TOLERANCE, Parity, compare, torch_end_points)
from porting.weights import load_ported
from porting.write.manifest import record_manifest_parity

# progress(phase, images done, images in all)
Progress = Callable[[str, int, int], None]


def relative_tolerance(spec: Architecture, end_point: str, float64: bool) -> float:
    if float64:
        return FLOAT64_RELATIVE_TOLERANCE
    return RELATIVE_TOLERANCE if end_point in spec.classifier_end_points else MAP_RELATIVE_TOLERANCE


@dataclass
class Report:
    weights: str | None
    reference: str  # what the port was compared with
    images: list[str]
    dtype: str
    architecture: str = "inception_v3"
    end_points: dict[str, Parity] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # end point -> why not compared
    gradients: GradientParity | None = None
    goldens_written: Path | None = None
    manifest: Path | None = None          # the weights' manifest, Logits parity recorded in it
    manifest_skipped: str | None = None   # why a manifest beside the weights was left alone

    @property
    def first_divergence(self) -> str | None:
        return next((name for name, p in self.end_points.items() if not p.passed), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and (self.gradients is None or self.gradients.passed)

    @property
    def compared(self) -> bool:
        """Whether anything was compared (not only goldens recorded)."""
        return bool(self.end_points)

    @property
    def manifest_parity(self) -> Parity:
        """What ``verify`` records in the weights' manifest: the Logits parity."""
        return self.end_points["Logits"]

    def verdict(self) -> str:
        n = len(self.images)
        if not self.end_points:
            return f"recorded {n} images' end points to {self.goldens_written}"
        first = self.first_divergence
        if first is not None:
            p = self.end_points[first]
            failing = sum(not q.passed for q in self.end_points.values())
            return (f"FAIL: first divergence at {first}: {p} (relative {p.relative_error:.3g}); "
                    f"{failing} of {len(self.end_points)} end points fail")
        if self.gradients is not None and not self.gradients.passed:
            return f"FAIL: end points agree, gradients do not: {self.gradients}"
        logits = self.end_points["Logits"]
        return (f"PASS: {len(self.end_points)} end points within bounds of {self.reference} "
                f"on {n} images ({self.dtype}); top-1 "
                f"{logits.top1_agree}/{n}, top-5 {logits.top5_agree}/{n}"
                + ("; gradients and FGSM agree" if self.gradients is not None else ""))

    def table(self) -> list[str]:
        names = get_architecture(self.architecture).end_points
        w = max(16, 2 + max(map(len, names)))  # ResNet's scoped names run to ~45 characters
        lines = [f"{'end point':<{w}}{'max |diff|':>12}{'relative':>12}{'bound':>10}  result"]
        for name in names:
            if name in self.skipped:
                lines.append(f"{name:<{w}}{'-':>12}{'-':>12}{'-':>10}  skipped: {self.skipped[name]}")
            elif name in self.end_points:
                p = self.end_points[name]
                result = "ok" if p.passed else "FAIL"
                if p.top1_agree is not None:
                    result += f" (top-1 {p.top1_agree}/{p.images}, top-5 {p.top5_agree}/{p.images})"
                lines.append(f"{name:<{w}}{p.max_abs_diff:>12.3g}{p.relative_error:>12.3g}"
                             f"{p.relative_tolerance:>10.0e}  {result}")
        if self.gradients is not None:
            lines.append(f"gradients: {self.gradients} -> {'ok' if self.gradients.passed else 'FAIL'}")
        return lines

    def to_json(self) -> dict:
        """The report as JSON-ready data; non-finite numbers (an infinite relative error) are
        null, since JSON has no Infinity or NaN."""
        return _finite_or_null({
            "passed": self.passed,
            "verdict": self.verdict(),
            "first_divergence": self.first_divergence,
            "weights": self.weights,
            "architecture": self.architecture,
            "reference": self.reference,
            "dtype": self.dtype,
            "rule": "max_abs_diff <= relative_tolerance * max(1, max |TF|); classifiers also "
                    "need the same top-1 and top-5 on every image",
            "images": self.images,
            "end_points": {
                name: {"max_abs_diff": p.max_abs_diff, "relative_error": p.relative_error,
                       "scale": p.scale, "relative_tolerance": p.relative_tolerance,
                       "bound": p.tolerance, "passed": p.passed,
                       "top1_agree": p.top1_agree, "top5_agree": p.top5_agree}
                for name, p in self.end_points.items()},
            "skipped": self.skipped,
            "gradients": None if self.gradients is None else {
                **{k: getattr(self.gradients, k) for k in self.gradients.__dataclass_fields__},
                "passed": self.gradients.passed},
            "goldens_written": None if self.goldens_written is None else str(self.goldens_written),
            "manifest": None if self.manifest is None else str(self.manifest),
        })


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def compare_end_points(model: torch.nn.Module, images: np.ndarray, reference: Reference, *,
                       first_class: int = 0, float64: bool = False, batch_size: int = 2,
                       progress=None, reference_name: str = "reference") -> dict[str, Parity]:
    """Parity of every end point both sides have, batch by batch (memory stays small).

    ``first_class=1`` compares 1000-class outputs with TF's logits[:, 1:] (background dropped).
    """
    return compare_outputs(architecture_of_model(model), functools.partial(torch_end_points, model),
                           images, reference, first_class=first_class, float64=float64,
                           batch_size=batch_size, progress=progress, reference_name=reference_name)


def compare_outputs(spec: Architecture, ours: Callable[[np.ndarray], dict], images: np.ndarray,
                    reference: Reference, *, first_class: int = 0, float64: bool = False,
                    batch_size: int = 2, progress=None,
                    reference_name: str = "reference") -> dict[str, Parity]:
    """``compare_end_points`` for any runner: ``ours(NHWC images)`` -> {end point: array, 4-D
    ones NHWC} (a PyTorch model, or an exported graph in an inference engine)."""
    results: dict[str, Parity] = {}
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        expected = reference(start, stop)
        computed = ours(images[start:stop])
        for name in spec.end_points:
            if name in computed and name in expected:
                scores = name in spec.logits_end_points
                ref = expected[name][:, first_class:] if scores else expected[name]
                if computed[name].shape != ref.shape:  # goldens of another model, or damaged
                    raise PortError(f"{reference_name}: end point {name} has shape "
                                    f"{list(ref.shape)}, the weights give "
                                    f"{list(computed[name].shape)}")
                parity = compare(computed[name], ref, relative_tolerance(spec, name, float64),
                                 scores)
                results[name] = results[name].merge(parity) if name in results else parity
        if progress is not None:
            progress(stop, len(images))
    return results


def first_class_for(weights: Path, model, source: SourceInfo) -> int:
    """0 or the label offset: where the file's classes start among the checkpoint's; PortError
    if the file cannot be a port of the checkpoint (other architecture, other classes)."""
    return first_class_of(weights, architecture_of_model(model), model.num_classes, source)


def first_class_of(weights: Path, spec: Architecture, num_classes: int,
                   source: SourceInfo) -> int:
    """``first_class_for`` given the file's architecture and number of classes."""
    if spec.name != source.architecture:
        raise PortError(f"{weights}: is {spec.title}; it cannot be a port of {source.checkpoint} "
                        f"({get_architecture(source.architecture).title})")
    if num_classes == source.num_classes:
        return 0
    if num_classes == source.num_classes - spec.eval.label_offset:
        return spec.eval.label_offset
    raise PortError(f"{weights}: has {num_classes} classes; it cannot be a port of "
                    f"{source.checkpoint} ({source.num_classes} classes)")


class UsageProblem(PortError):
    """A request that cannot make sense whatever the files hold (the CLI's usage error)."""


@dataclass(frozen=True)
class VerifyRequest:
    weights: Path | None = None
    src: Path | None = None           # TF-Slim checkpoint: run TF-Slim's graph
    goldens: Path | None = None       # or a golden file recorded from one
    images_dir: Path | None = None    # default: porting.verify.photos' set
    image_count: int | None = None
    float64: bool = False
    gradients: bool = False
    label: int | None = None          # true label for --gradients (default TF's top-1)
    ema: bool = False
    record_goldens: Path | None = None
    arch: str | None = None           # force the checkpoint's architecture
    batch_size: int = 2
    engines: tuple[str, ...] | None = None  # an .onnx file: where to run it (default: all)

    def inputs(self) -> tuple[Path, ...]:
        """The files this request reads, which no output of it may replace: the weights and
        their sidecars (verify updates those in place, not through another option), the
        goldens, the checkpoint and its files."""
        from porting.write.manifest import sidecar
        from porting.read.sources import resolve_source

        files = [] if self.weights is None else [
            self.weights, sidecar(self.weights, ".json"), sidecar(self.weights, ".md")]
        files += [path for path in (self.goldens, self.src) if path is not None]
        if self.src is not None:
            with contextlib.suppress(PortError):  # an archive or a bad path: itself only
                files += resolve_source(self.src).files
        return tuple(files)

    def check(self) -> None:
        """UsageProblem if the options contradict each other or ask for nothing."""
        if (self.src is None) == (self.goldens is None):
            raise UsageProblem("give the reference: --src CHECKPOINT or --goldens FILE.h5 "
                               "(one of them)")
        if self.goldens is not None and (self.gradients or self.record_goldens):
            raise UsageProblem("--gradients and --record-goldens need TensorFlow and the "
                               "checkpoint (--src), not --goldens")
        if self.weights is None and self.record_goldens is None:
            raise UsageProblem("nothing to do: give --weights FILE to verify, or "
                               "--record-goldens FILE.h5")
        if self.onnx and (self.float64 or self.gradients or self.record_goldens):
            raise UsageProblem("--float64, --gradients and --record-goldens need a ported "
                               ".pth/.safetensors file: an ONNX export is float32 and runs "
                               "forward only")
        if self.engines and not self.onnx:
            raise UsageProblem("--engine runs an exported .onnx --weights file")

    @property
    def onnx(self) -> bool:
        """Whether the weights are an exported ONNX graph (``porting.onnx.verify`` runs it)."""
        return self.weights is not None and self.weights.suffix == ".onnx"


def _checkpoint_source(request: VerifyRequest, dtype: str, stack: contextlib.ExitStack):
    """(SourceInfo, TF reference, architecture) for ``request.src``, kept open on ``stack`` (an
    archive stays unpacked while the reference reads it); TensorFlow is imported here."""
    from porting.convert import PortOptions, architecture_of
    from porting.files import sha256_file
    from porting.read.open import open_source
    from porting.read.sources import V1, V2

    opened = stack.enter_context(open_source(request.src, arch=request.arch))
    source = opened.reader.source
    if source.format not in (V1, V2):
        raise PortError(f"{request.src}: verify runs the TF reference on a TensorFlow "
                        "checkpoint; Keras weights have no TF-Slim graph to run")
    spec = architecture_of(opened.reader, PortOptions(arch=request.arch))
    from porting.read.tf import tf_readable_prefix

    prefix = stack.enter_context(tf_readable_prefix(source))  # TF globs its prefix
    tf_model = spec.oracle_module().Reference.for_checkpoint(prefix, ema=request.ema,
                                                             dtype=dtype)
    stack.callback(tf_model.close)
    info = SourceInfo(str(source.prefix), {f.name: sha256_file(f) for f in source.files},
                      tf_model.num_classes, tf_model.aux, request.ema, dtype, spec.name)
    return info, tf_model, spec


@dataclass
class OpenedReference:
    """What a verification compares with: the source facts, the input images and their names,
    the reference's end points by image range, and what it is, in words."""
    source: SourceInfo
    images: np.ndarray
    names: list[str]
    reference: Reference
    described: str
    tf_model: object | None = None        # the TF oracle (--src), for --gradients
    recorder: GoldenRecorder | None = None

    def finish_recording(self) -> Path | None:
        """Move the recorded golden file into place (when recording); its path."""
        if self.recorder is None:
            return None
        written, self.recorder = self.recorder.finish(), None
        return written


def open_reference(request: VerifyRequest, dtype: str, stack: contextlib.ExitStack,
                   end_points: tuple[str, ...] | None = None) -> OpenedReference:
    """The goldens or the TF oracle on ``request.src`` (asked for ``end_points``, default all
    of the architecture's; all of them when recording goldens), kept open on ``stack``."""
    from porting.verify.photos import load_photos

    if request.goldens is not None:
        goldens = Goldens(request.goldens)
        stack.callback(goldens.close)
        source = goldens.source
        if source.dtype != dtype:
            raise PortError(f"{request.goldens}: recorded in {source.dtype}; verify with"
                            f"{' --float64' if source.dtype == 'float64' else 'out --float64'}")
        return OpenedReference(source, goldens.inputs[:request.image_count],
                               goldens.names[:request.image_count], goldens.reference,
                               f"goldens {request.goldens}")
    source, tf_model, spec = _checkpoint_source(request, dtype, stack)
    names, images = load_photos(request.image_count, request.images_dir, config=spec.eval)
    images = images.astype(dtype)
    if end_points is None or request.record_goldens is not None:
        end_points = spec.end_points
    reference = functools.partial(_tf_end_points, tf_model, end_points, images)
    opened = OpenedReference(source, images, names, reference,
                             f"{spec.oracle_name} on {source.checkpoint}", tf_model)
    if request.record_goldens is not None:
        opened.recorder = GoldenRecorder(request.record_goldens, images, names, source)
        stack.callback(lambda: opened.recorder and opened.recorder.abandon())
        opened.reference = opened.recorder.recording(reference)
    return opened


def run(request: VerifyRequest, progress: Progress | None = None) -> Report:
    """Verify ``request.weights`` (and/or record goldens) as the CLI's ``verify`` describes."""
    request.check()
    if request.record_goldens is not None:  # before any work: refused targets fail fast
        if is_stream(request.record_goldens):
            raise PortError(f"{request.record_goldens}: golden files are HDF5 and cannot be "
                            "streamed; give a file name")
        check_target(request.record_goldens, request.inputs())
    dtype = "float64" if request.float64 else "float32"
    model = None
    if request.weights is not None:
        model = load_ported(request.weights)
        if request.float64 and model.fold_bn:
            raise PortError(f"{request.weights}: --float64 proves the mapping exact, but this "
                            "file's folded weights were rounded to float32 after folding; "
                            "verify it in float32")
        model = model.to(getattr(torch, dtype))

    with contextlib.ExitStack() as stack:
        ref = open_reference(request, dtype, stack)
        source, images, names, reference = ref.source, ref.images, ref.names, ref.reference
        tf_model, described = ref.tf_model, ref.described
        report = Report(None if request.weights is None else str(request.weights), described,
                        names, dtype, source.architecture)
        if model is None:  # only recording
            for start in range(0, len(images), request.batch_size):
                stop = min(start + request.batch_size, len(images))
                reference(start, stop)
                if progress is not None:
                    progress("TF reference", stop, len(images))
        else:
            first_class = first_class_for(request.weights, model, source)
            if model.AuxLogits is not None and not source.aux:
                raise PortError(f"{request.weights}: has an AuxLogits head, but "
                                f"{source.checkpoint} has none")
            if model.AuxLogits is None and source.aux:
                report.skipped["AuxLogits"] = "not in the weights file (ported without aux)"
            step = None if progress is None else functools.partial(progress, "end points")
            report.end_points = compare_end_points(
                model, images, reference, first_class=first_class, float64=request.float64,
                batch_size=request.batch_size, progress=step,
                reference_name=str(request.goldens or request.src))
            if request.gradients:
                if request.label is not None and not 0 <= request.label < model.num_classes:
                    raise PortError(f"--label {request.label}: {request.weights} has classes "
                                    f"0..{model.num_classes - 1}")
                labels = None if request.label is None else np.full(len(images), request.label)
                step = None if progress is None else functools.partial(progress, "gradients")
                report.gradients = gradient_parity(
                    model, tf_model, images, first_class=first_class, labels=labels,
                    relative_tolerance=(FLOAT64_RELATIVE_TOLERANCE if request.float64
                                        else FLOAT32_RELATIVE_TOLERANCE),
                    batch_size=request.batch_size, progress=step)
        report.goldens_written = ref.finish_recording()
        if model is not None:
            report.manifest, report.manifest_skipped = record_manifest_parity(
                request.weights, report.manifest_parity, f"{report.reference} ({report.dtype})")
        return report


def _tf_end_points(tf_model, end_points: tuple[str, ...], images: np.ndarray, start: int,
                   stop: int) -> dict:
    return tf_model(images[start:stop], end_points)
