"""``port-weights export``: a ported weights file as a hashed, self-describing ONNX graph.

``NAME.onnx`` is written as ``NAME-<sha256[:8]>.onnx`` with its manifest ``NAME-<sha256[:8]>.json``
beside it, both through one ``porting.files.Outputs`` transaction (all or nothing, never
replacing an input, a link or a non-regular file). The graph is the BN-folded model without the
aux head (``porting.onnx.trace``); what it computes and how to feed it is in its ONNX metadata
(``porting.onnx.graph``) and in the manifest. Two exports of the same weights file (its name
and its bytes) with the same options give the same bytes (torch's TorchScript exporter is
deterministic; tested). The file's name is provenance the graph records (the metadata's
``source_weights``, the manifest's ``source.weights``): a renamed copy gives a graph that
differs in that one metadata entry, and so in its hash (tested).

The input size is bounded (``MIN_INPUT_SIZE``..``MAX_INPUT_SIZE``) before any work: tracing
the model at a size holds its activations, which grow with its square (ResNet-152 with
``--end-points`` takes ~5.7 GB at 2048 px, ~1.5 GB at 1024); and one the architecture refuses
(VGG's fc6 takes 224 to 255 px) is refused before tracing (``trace.input_size_refused``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from models.spec import ClassLayout
from porting.errors import PortError, escaped
from porting.files import Outputs, sha256_file
from porting.onnx.graph import PREFIX, with_metadata
from porting.write.hashed import Written, settle_hashed
from porting.write.manifest import (ExportOptionsRecord, ExportSourceRecord, GraphOutputRecord,
                                    Manifest, ToolRecord, ported_from, sidecar, stage_sidecar,
                                    tool_version)

SUFFIX = ".onnx"
MIN_INPUT_SIZE = 75     # the smallest input every architecture's stem reduces to a map
MAX_INPUT_SIZE = 1024   # 3.4x the largest evaluation size (299): bounds the tracing's memory


@dataclass(frozen=True)
class ExportResult:
    written: Written
    manifest: Path
    metadata: dict[str, str]
    outputs: tuple[str, ...]


def class_layout(spec, num_classes: int) -> ClassLayout:
    """The layout of a model with ``num_classes`` outputs: made from the architecture's
    trained classes if it can be, else from a checkpoint with that many (no background)."""
    try:
        return ClassLayout.of(spec.eval, num_classes)
    except ValueError:
        return ClassLayout.of(spec.eval, num_classes, source=num_classes)


def classes_meaning(spec, num_classes: int) -> tuple[int, str]:
    """(label offset, the background-class choice in words) of a graph with ``num_classes``
    outputs."""
    layout = class_layout(spec, num_classes)
    if layout.offset:
        return layout.offset, (f"kept: output 0 is TF-Slim's background class, outputs "
                               f"{layout.offset}..{layout.outputs - 1} the ImageNet-1k classes")
    if layout.dropped:
        return layout.offset, (f"dropped: output i is TF-Slim's class i + {layout.dropped} "
                               "(timm's layout, ImageNet-1k order)")
    return layout.offset, "none: the source had no background class"


def graph_metadata(spec, num_classes: int, input_size: int, weights: Path, sha256: str,
                   outputs: tuple[str, ...], opset: int) -> dict[str, str]:
    import torch

    prep = spec.eval
    offset, background = classes_meaning(spec, num_classes)
    return {
        "architecture": spec.name,
        "title": spec.title,
        "num_classes": str(num_classes),
        "label_offset": str(offset),
        "background_class": background,
        "input": "images",
        "input_layout": "NCHW",
        "input_size": str(input_size),
        "input_shape": f"[batch, 3, {input_size}, {input_size}] float32 {prep.color}",
        "value_range": json.dumps(list(prep.value_range)),
        "mean": json.dumps(list(prep.mean)),
        "std": json.dumps(list(prep.std)),
        "preprocessing": prep.recipe,
        "outputs": ",".join(outputs),
        "aux_logits": "dropped (the AuxLogits head is a training aid; forward never uses it)",
        "batch_norm": ("folded into the convolutions (float64 math, rounded once to float32)"
                       if spec.folds_batch_norm else "none in this architecture"),
        "source_weights": weights.name,
        "source_sha256": sha256,
        "exporter": f"torch.onnx (TorchScript) torch {torch.__version__.split('+')[0]}, "
                    f"opset {opset}",
        "tool": f"tf-porting {tool_version()}",
    }


def export_weights(weights: str | Path, dst: str | Path, input_size: int | None = None,
                   opset: int | None = None, end_points: bool = False,
                   force: bool = False) -> ExportResult:
    """Export the ported file ``weights`` (.pth or .safetensors) to ``dst``'s hashed sibling."""
    from porting.onnx.trace import OPSET, export_onnx, input_size_refused
    from models.spec import architecture_of_model
    from porting.weights import load_ported

    weights, dst = Path(weights), Path(dst)
    opset = opset or OPSET
    if input_size is not None and not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
        raise PortError(f"--input-size {input_size}: the graph's input must be "
                        f"{MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels")
    if dst.name in ("", ".", ".."):
        raise PortError(f"{str(dst)!r}: --dst needs a file name")
    if dst.suffix not in ("", SUFFIX):
        raise PortError(f"{dst}: output name must end in {SUFFIX}")
    dst = dst.with_suffix(SUFFIX)
    if weights.suffix == SUFFIX:
        raise PortError(f"{weights}: is an ONNX graph already; export takes a ported .pth or "
                        ".safetensors file")
    inputs = (weights, sidecar(weights, ".json"), sidecar(weights, ".md"))
    with Outputs(inputs) as outputs:
        outputs.check(dst)  # before any work: refused targets fail fast
        model = load_ported(weights)
        spec = architecture_of_model(model)
        input_size = input_size or spec.eval.input_size
        refused = input_size_refused(model, input_size)
        if refused is not None:
            raise PortError(f"--input-size {input_size}: {spec.title} cannot take it "
                            f"({escaped(refused)})")
        payload, names = export_onnx(model, input_size, opset, end_points)
        source_sha256 = sha256_file(weights)
        metadata = graph_metadata(spec, model.num_classes, input_size, weights, source_sha256,
                                  names, opset)
        payload = with_metadata(payload, metadata,
                                f"{spec.title} ported from TF-Slim by tf-porting; the "
                                f"{PREFIX}* metadata says how to feed it and what its "
                                "outputs mean")
        written = _stage(outputs, dst, payload, force)
        manifest = Manifest(
            tool=ToolRecord(version=tool_version()),
            source=ExportSourceRecord(weights=weights.name, bytes=weights.stat().st_size,
                                      sha256=source_sha256,
                                      ported_from=ported_from(weights, source_sha256)),
            output=GraphOutputRecord(file=written.path.name, format="onnx", bytes=written.size,
                                     sha256=written.sha256, onnx_metadata=metadata),
            options=ExportOptionsRecord(architecture=spec.name, num_classes=model.num_classes,
                                        input_size=input_size, opset=opset, outputs=names,
                                        end_points=end_points, exporter=metadata["exporter"],
                                        onnx=version("onnx")),
            variables=None)
        manifest_path = sidecar(written.path, ".json")
        stage_sidecar(outputs, manifest_path, manifest, written.sha256, force)
        outputs.commit(last=written.path)
    return ExportResult(written, manifest_path, metadata, names)


def _stage(outputs: Outputs, dst: Path, payload: bytes, force: bool) -> Written:
    sha256 = hashlib.sha256(payload).hexdigest()
    outputs.make_folder(dst.parent)
    written = settle_hashed(outputs, dst, sha256, len(payload), force)
    if not written.unchanged:
        outputs.add(written.path, payload)
    return written
