"""``port-weights compare``: the foreign file read (its refusals first), its layout chosen, its
tensors set against the exact port of the checkpoint (per tensor), then run against the TF
reference (the oracle on --src, or goldens): in our exact network (weight differences alone)
and, where the file's own network computes differently from TF's, in that network too."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from porting.compare.foreign import Mapped, choose_layout, map_to_ours, read_foreign
from porting.compare.report import Comparison, TensorDistance
from porting.errors import PortError
from porting.verify.report import Report
from porting.verify.request import UsageProblem, VerifyRequest


TENSORS_ONLY = "per-tensor distances only (--tensors-only): no images run"


@dataclass(frozen=True)
class CompareRequest:
    foreign: Path
    src: Path | None = None
    goldens: Path | None = None
    layout: str | None = None        # a registered layout's name; default: the best fit
    images_dir: Path | None = None
    image_count: int | None = None
    arch: str | None = None
    batch_size: int = 2
    end_points: bool = True          # run the images (False: per-tensor distances only)

    def check(self) -> None:
        if (self.src is None) == (self.goldens is None):
            raise UsageProblem("give the reference: --src CHECKPOINT or --goldens FILE.h5 "
                               "(one of them)")

    def verify_request(self) -> VerifyRequest:
        return VerifyRequest(src=self.src, goldens=self.goldens, images_dir=self.images_dir,
                             image_count=self.image_count, arch=self.arch,
                             batch_size=self.batch_size)


def tensor_distances(mapped: Mapped, ours: dict[str, np.ndarray]) -> list[TensorDistance]:
    """max |foreign - ours| per mapped tensor, worst first (ties in our key order)."""
    out = []
    for key, theirs in mapped.tensors.items():
        mine = np.asarray(ours[key], np.float64)
        diff = float(np.abs(np.asarray(theirs, np.float64) - mine).max()) if mine.size else 0.0
        out.append(TensorDistance(key, mapped.layout.keys[key], tuple(mine.shape), diff,
                                  float(np.abs(mine).max()) if mine.size else 0.0))
    return sorted(out, key=lambda t: -t.max_abs_diff)


def compare(request: CompareRequest, progress=None) -> Comparison:
    request.check()
    tensors = read_foreign(request.foreign)  # a refused file stops here, before any work
    with contextlib.ExitStack() as stack:
        if request.src is not None:
            from porting.convert import PortOptions, architecture_of, convert
            from porting.read.open import open_source

            reader = stack.enter_context(open_source(request.src, arch=request.arch)).reader
            spec = architecture_of(reader, PortOptions(arch=request.arch))
        else:
            from models.spec import get_architecture
            from porting.verify.goldens import Goldens

            goldens = Goldens(request.goldens, 1, ())
            spec = get_architecture(goldens.source.architecture)
            goldens.close()
        layout = choose_layout(request.foreign, tensors, spec, request.layout)
        shapes = spec.target_layout(layout.num_classes, layout.aux)
        mapped = map_to_ours(tensors, layout, shapes)
        comparison = Comparison(str(request.foreign), layout.name, spec.name,
                                None if request.src is None else str(request.src),
                                layout.num_classes, missing=mapped.missing,
                                misshapen=mapped.misshapen, extra=mapped.extra)
        if request.src is not None:
            try:
                ours = convert(reader, PortOptions(num_classes=layout.num_classes,
                                                   aux=layout.aux, arch=request.arch))
            except PortError as err:
                raise PortError(f"{request.foreign}: holds {layout.num_classes} classes"
                                f"{' and the aux head' if layout.aux else ''} "
                                f"({layout.name}); the checkpoint cannot be ported so: "
                                f"{err}") from err
            comparison.tensors = tensor_distances(mapped, ours.state_dict)
        if request.end_points:
            _run(request, spec, mapped, tensors, comparison, stack, progress)
        else:
            comparison.weights_run_skipped = comparison.architecture_note = TENSORS_ONLY
    return comparison


def _run(request, spec, mapped: Mapped, tensors, comparison: Comparison, stack, progress):
    """Both runs against the reference the request names, into ``comparison``."""
    from porting.verify.reference import class_layout, open_reference

    opened = open_reference(request.verify_request(), "float32", stack)
    dropped = class_layout(request.foreign, spec, mapped.layout.num_classes,
                           opened.source).dropped
    run_end_points(comparison, spec, mapped, tensors, opened.images,
                   opened.computed_once(request.batch_size), dropped=dropped,
                   names=opened.names, described=opened.described,
                   batch_size=request.batch_size, progress=progress)


def run_end_points(comparison: Comparison, spec, mapped: Mapped, tensors: dict, images,
                   reference, *, dropped: int, names: list[str], described: str,
                   batch_size: int = 2, progress=None) -> None:
    """The foreign weights against ``reference`` (a ``porting.verify.goldens.Reference`` over
    ``images``, TF's scores[:, dropped:] compared): in our exact network (every end point
    the reference has), and in the file's own where it computes differently (Logits)."""
    from porting.compare.torch_runs import in_its_network, in_our_network
    from porting.verify.run import compare_outputs

    layout = mapped.layout

    def report(runner, label) -> Report:
        result = Report(comparison.foreign, described, names, "float32", spec.name)
        result.end_points = compare_outputs(
            spec, runner, images, reference, dropped=dropped, batch_size=batch_size,
            reference_name=described,
            progress=None if progress is None else lambda done, total: progress(label, done,
                                                                                   total))
        return result

    if mapped.missing or mapped.misshapen:
        comparison.weights_run_skipped = (f"the file does not fill our network "
                                          f"({len(mapped.missing)} missing, "
                                          f"{len(mapped.misshapen)} misshapen)")
    else:
        comparison.weights_run = report(in_our_network(spec, mapped), "our network")
    if layout.computes is None:
        comparison.architecture_note = (f"{layout.name} computes as TF does: its run is the "
                                        "one above")
    elif layout.build is None:
        comparison.architecture_note = f"{layout.computes}; {layout.name} is not installed here"
    else:
        runner = in_its_network(layout, tensors)
        if isinstance(runner, str):
            comparison.architecture_note = f"{layout.computes}; {runner}"
        else:
            comparison.architecture_note = layout.computes
            comparison.architecture_run = report(runner, layout.name)
