"""An exported ONNX graph as this tool writes and reads it, with the ``onnx`` package only (no
torch, no runtime): the metadata that says what the graph computes, and the static check of its
average pools.

Metadata (``metadata_props``, keys below ``tf_porting.``): architecture, classes and where
ImageNet's classes start (TF-Slim's background class 0 kept or dropped), the input layout and
size, the preprocessing recipe, what was left out (AuxLogits) and the source weights' sha256.
``verify`` reads it to know what to compare with; a user reads it to feed the graph.

Average pools: TF's SAME average pool divides by the number of real (not padded) inputs under
the window; an ONNX ``AveragePool`` that pads must say ``count_include_pad=0`` for that, and a
pool fed by an explicit ``Pad`` counts the padded zeros whatever it says. Both mistakes have
shipped in converters (TensorRT, onnx2torch) for Inception; ``check_average_pools`` names any
pool that makes them. TF's VALID pools have no padding, so there is nothing to count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from porting.errors import PortError

PREFIX = "tf_porting."


@dataclass(frozen=True)
class PoolFinding:
    node: str
    problem: str

    def __str__(self) -> str:
        return f"AveragePool {self.node}: {self.problem}"


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def check_average_pools(model) -> tuple[int, list[PoolFinding]]:
    """(number of AveragePool nodes, those that count padding as TF does not)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    pools = [node for node in model.graph.node if node.op_type == "AveragePool"]
    findings = []
    for node in pools:
        attrs = _attributes(node)
        name = node.name or node.output[0]
        pads = any(attrs.get("pads", [])) or attrs.get("auto_pad", b"NOTSET") not in (
            b"NOTSET", b"VALID", "NOTSET", "VALID")
        if pads and attrs.get("count_include_pad", 0):
            findings.append(PoolFinding(name, "count_include_pad=1 counts the padded zeros in "
                                              "the mean; TF's SAME pool excludes them"))
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Pad":
            findings.append(PoolFinding(name, f"fed by Pad {source.name or source.output[0]}: "
                                              "the padded zeros are counted in the mean; TF's "
                                              "SAME pool excludes them"))
    return len(pools), findings


def with_metadata(payload: bytes, metadata: dict[str, str], doc: str) -> bytes:
    """``payload`` (a serialised ModelProto) with ``metadata`` (keys below ``tf_porting.``)
    and a doc string set; serialisation of the same message gives the same bytes."""
    import onnx

    model = onnx.load_from_string(payload)
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + key, value
    model.doc_string = doc
    return model.SerializeToString()


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    model: object                 # onnx.ModelProto
    metadata: dict[str, str]      # without the prefix
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def architecture(self) -> str:
        return self.metadata["architecture"]

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def input_size(self) -> int:
        return int(self.metadata["input_size"])


REQUIRED = ("architecture", "num_classes", "input_size", "input_layout", "label_offset")


def read_exported(path: str | Path) -> ExportedGraph:
    """An ONNX file written by ``port-weights export``; PortError naming the file if it is no
    ONNX model, lacks this tool's metadata, keeps weights in other files, or does not fit the
    architecture its metadata names."""
    import onnx

    from models.spec import architectures

    path = Path(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError as err:
        raise PortError(f"{path}: no such ONNX file") from err
    except IsADirectoryError as err:
        raise PortError(f"{path}: is a folder, not an ONNX file") from err
    except Exception as err:  # protobuf and onnx raise many kinds for a damaged file
        raise PortError(f"{path}: not an ONNX model ({type(err).__name__})") from err
    if not model.graph.node:
        raise PortError(f"{path}: not an ONNX model (no graph)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise PortError(f"{path}: keeps weights in external files; an export of this tool is "
                        "one self-contained file")
    props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props
             if p.key.startswith(PREFIX)}
    missing = [key for key in REQUIRED if key not in props]
    if missing:
        raise PortError(f"{path}: no {PREFIX}{missing[0]} metadata: not a graph written by "
                        "`port-weights export`")
    if props["architecture"] not in architectures():
        raise PortError(f"{path}: metadata names architecture {props['architecture']!r}, none "
                        f"of {', '.join(architectures())}")
    try:
        int(props["num_classes"]), int(props["input_size"]), int(props["label_offset"])
    except ValueError as err:
        raise PortError(f"{path}: damaged metadata ({err})") from err
    graph = ExportedGraph(path, model, props, tuple(i.name for i in model.graph.input),
                          tuple(o.name for o in model.graph.output))
    if "Logits" not in graph.outputs:
        raise PortError(f"{path}: the graph has no Logits output (outputs: "
                        f"{', '.join(graph.outputs)})")
    return graph
