"""What a verification compares with: the golden file, or the architecture's TF oracle on the
source checkpoint (``--src``; TensorFlow is imported only then), opened for the length of a
run, and the class rule that says whether a file can be a port of that source at all."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spec import Architecture, ClassLayout, get_architecture
from porting.errors import PortError
from porting.verify.goldens import GoldenImages, GoldenRecorder, Goldens, Reference, SourceInfo
from porting.verify.request import VerifyRequest


def class_layout(weights: Path, spec: Architecture, num_classes: int,
                 source: SourceInfo) -> ClassLayout:
    """Where the ``num_classes`` outputs of ``weights`` (of ``spec``) sit among the source
    checkpoint's classes: compare them with the reference's scores[:, layout.dropped:].
    PortError if the file cannot be a port of the checkpoint (other architecture, other
    classes)."""
    if spec.name != source.architecture:
        raise PortError(f"{weights}: is {spec.title}; it cannot be a port of {source.checkpoint} "
                        f"({get_architecture(source.architecture).title})")
    try:
        return ClassLayout.of(spec.eval, num_classes, source.num_classes)
    except ValueError as err:
        raise PortError(f"{weights}: has {num_classes} classes; it cannot be a port of "
                        f"{source.checkpoint} ({source.num_classes} classes)") from err


@dataclass
class OpenedReference:
    """What a verification compares with: the source facts, the input images and their names,
    the reference's end points by image range, and what it is, in words."""
    source: SourceInfo
    images: np.ndarray | GoldenImages     # golden files' are read a slice at a time
    names: list[str]
    reference: Reference
    described: str
    tf_model: object | None = None        # the TF oracle (--src), for --gradients
    recorder: GoldenRecorder | None = None
    replayable: bool = False              # reading the reference again costs no computation

    def computed_once(self, batch_size: int) -> Reference:
        """``reference`` computed once over all images (``batch_size`` at a time), then served
        by slices: for a subject that runs the images more than once. A replayable reference
        (a golden file) is read again instead, a slice at a time, never whole."""
        if self.replayable:
            return self.reference
        count = len(self.images)
        chunks = [self.reference(start, min(start + batch_size, count))
                  for start in range(0, count, batch_size)]
        whole = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
        return lambda start, stop: {name: value[start:stop] for name, value in whole.items()}

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

    if request.goldens is not None:  # read lazily: only the images and end points compared
        goldens = Goldens(request.goldens, request.image_count, end_points)
        stack.callback(goldens.close)
        source = goldens.source
        if source.dtype != dtype:
            raise PortError(f"{request.goldens}: recorded in {source.dtype}; verify with"
                            f"{' --float64' if source.dtype == 'float64' else 'out --float64'}")
        return OpenedReference(source, goldens.images, goldens.names, goldens.reference,
                               f"goldens {request.goldens}", replayable=True)
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


def _checkpoint_source(request: VerifyRequest, dtype: str, stack: contextlib.ExitStack):
    """(SourceInfo, TF reference, architecture) for ``request.src``, kept open on ``stack`` (an
    archive stays unpacked while the reference reads it); TensorFlow is imported here."""
    from porting.convert import PortOptions, architecture_of, root_scope
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
    root = root_scope(opened.reader, spec)  # a renamed copy's (AdvInceptionV3): read under it
    renamed = {"root": root} if root != spec.tf_root else {}
    tf_model = spec.oracle_module().Reference.for_checkpoint(prefix, ema=request.ema,
                                                             dtype=dtype, **renamed)
    stack.callback(tf_model.close)
    info = SourceInfo(str(source.prefix), {f.name: sha256_file(f) for f in source.files},
                      tf_model.num_classes, tf_model.aux, request.ema, dtype, spec.name)
    return info, tf_model, spec


def _tf_end_points(tf_model, end_points: tuple[str, ...], images: np.ndarray, start: int,
                   stop: int) -> dict:
    return tf_model(images[start:stop], end_points)
