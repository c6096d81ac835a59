"""An exported ONNX graph as this tool writes and reads it, with the ``onnx`` package only (no
torch, no runtime): the metadata that says what the graph computes, and the static checks made
before any engine runs it.

Metadata (``metadata_props``, keys below ``tf_porting.``): architecture, classes and where
ImageNet's classes start (TF-Slim's background class 0 kept or dropped), the input layout and
size, the preprocessing recipe, what was left out (AuxLogits) and the source weights' sha256.
``verify`` reads it to know what to compare with; a user reads it to feed the graph.

Average pools: TF's SAME average pool divides by the number of real (not padded) inputs under
the window; an ONNX ``AveragePool`` that pads must say ``count_include_pad=0`` for that, and a
pool fed by an explicit ``Pad`` counts the padded zeros whatever it says. Both mistakes have
shipped in converters (TensorRT, onnx2torch) for Inception; ``check_average_pools`` names any
pool that makes them. TF's VALID pools have no padding, so there is nothing to count.

What a verified graph may be (``read_exported``, ``check_sizes``): one self-contained file read
once (at most ``MAX_GRAPH_BYTES``, a regular file; the engines get those very bytes, never the
path, so nothing beside it can be read), with no tensor anywhere (initializers, ``Constant``
attributes, subgraphs, functions) keeping its data in another file: the graph's sha256 then
covers everything it computes. No control flow (``Loop``, ``If``, ``Scan``, or any node
carrying a subgraph), which no export contains and which can run forever. One float32 NCHW
input whose declared size is the one its metadata states. And no tensor whose shape, as declared
or as onnx infers it at the largest batch verify runs, needs more than ``MAX_TENSOR_BYTES``: the
engines would try to allocate it (what shape inference cannot see is caught when the engine
fails, ``porting.onnx.engines``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from porting.errors import PortError, escaped, first_line
from porting.files import read_input

PREFIX = "tf_porting."
MAX_GRAPH_BYTES = 2**31 - 1    # protobuf's limit on one message: an ONNX file larger is no model
MAX_TENSOR_BYTES = 2**30       # per tensor; the exports' largest is ~55 MB at batch 10
CONTROL_FLOW = ("Loop", "If", "Scan")


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
    payload: bytes                # the file's bytes, as checked: what the engines are given

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
    regular file or no ONNX model, keeps data in other files, has control flow, lacks this
    tool's metadata, does not fit the architecture its metadata names, or declares another
    input than its metadata states."""
    import onnx

    from models.spec import architectures

    path = Path(path)
    payload = read_input(path, MAX_GRAPH_BYTES, "ONNX file")
    try:
        model = onnx.load_from_string(payload)
    except Exception as err:  # protobuf and onnx raise many kinds for a damaged file
        raise PortError(f"{path}: not an ONNX model ({type(err).__name__})") from err
    if not model.graph.node:
        raise PortError(f"{path}: not an ONNX model (no graph)")
    check_self_contained(path, model)
    check_no_control_flow(path, model)
    props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props
             if p.key.startswith(PREFIX)}
    missing = [key for key in REQUIRED if key not in props]
    if missing:
        raise PortError(f"{path}: no {PREFIX}{missing[0]} metadata: not a graph written by "
                        "`port-weights export`")
    if props["architecture"] not in architectures():
        raise PortError(f"{path}: metadata names architecture "
                        f"{escaped(repr(props['architecture']))}, none of "
                        f"{', '.join(architectures())}")
    try:
        int(props["num_classes"]), int(props["input_size"]), int(props["label_offset"])
    except ValueError as err:
        raise PortError(f"{path}: damaged metadata ({escaped(str(err))})") from err
    initialized = {t.name for t in model.graph.initializer}
    graph = ExportedGraph(path, model, props,
                          tuple(i.name for i in model.graph.input if i.name not in initialized),
                          tuple(o.name for o in model.graph.output), payload)
    if "Logits" not in graph.outputs:
        raise PortError(f"{path}: the graph has no Logits output (outputs: "
                        f"{escaped(', '.join(graph.outputs))})")
    check_input(graph)
    return graph


# --- what the graph may hold -------------------------------------------------------------

def _node_name(node) -> str:
    return node.name or (node.output[0] if node.output else "")


def _scopes(model):
    """(nodes, initializers, sparse initializers, where) of every scope of the model: its graph,
    its local functions, and every subgraph of their nodes at any depth (``where`` says which,
    for the error line)."""
    from onnx import AttributeProto

    stack = [(model.graph, "the graph")]
    stack += [(function, f"function {function.name!r}") for function in model.functions]
    while stack:
        scope, where = stack.pop()
        yield (scope.node, getattr(scope, "initializer", ()),
               getattr(scope, "sparse_initializer", ()), where)
        for node in scope.node:
            inner = f"a subgraph of {node.op_type} node {_node_name(node)!r}"
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    stack.append((attribute.g, inner))
                elif attribute.type == AttributeProto.GRAPHS:
                    stack += [(graph, inner) for graph in attribute.graphs]


def _walk(model):
    """(node, where) for every node of every scope of the model (``_scopes``)."""
    for nodes, _, _, where in _scopes(model):
        for node in nodes:
            yield node, where


def _tensors(model):
    """(tensor, what holds it) for every TensorProto in the model: initializers (dense and
    sparse) and tensor attributes of nodes (``Constant``'s value...), in every scope."""
    from onnx import AttributeProto

    for nodes, initializers, sparse_initializers, where in _scopes(model):
        for tensor in initializers:
            yield tensor, f"an initializer of {where}"
        for sparse in sparse_initializers:
            yield sparse.values, f"a sparse initializer of {where}"
            yield sparse.indices, f"a sparse initializer of {where}"
        for node in nodes:
            holder = f"{node.op_type} node {_node_name(node)!r} in {where}"
            for attribute in node.attribute:
                if attribute.type == AttributeProto.TENSOR:
                    yield attribute.t, holder
                elif attribute.type == AttributeProto.TENSORS:
                    yield from ((tensor, holder) for tensor in attribute.tensors)
                elif attribute.type in (AttributeProto.SPARSE_TENSOR,
                                        AttributeProto.SPARSE_TENSORS):
                    sparse = ([attribute.sparse_tensor] if attribute.type ==
                              AttributeProto.SPARSE_TENSOR else attribute.sparse_tensors)
                    for each in sparse:
                        yield each.values, holder
                        yield each.indices, holder


def check_self_contained(path: Path, model) -> None:
    """PortError naming the file and the tensor if any tensor of the model, anywhere, keeps its
    data in another file (ONNX external data): what the graph computes would then not be
    covered by the graph's sha256, and swapping the other file would change it."""
    from onnx import TensorProto

    for tensor, holder in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            where = {entry.key: entry.value for entry in tensor.external_data}.get("location", "?")
            raise PortError(f"{path}: tensor {escaped(repr(tensor.name))} ({holder}) keeps its "
                            f"data in {escaped(repr(where))}, outside the file; a verified graph "
                            "is one self-contained file")


def check_no_control_flow(path: Path, model) -> None:
    """PortError naming the node if the model has control flow (``Loop``, ``If``, ``Scan``, or
    any node carrying a subgraph), which no export of this tool contains and which can keep an
    engine busy forever."""
    from onnx import AttributeProto

    for node, where in _walk(model):
        nested = any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
                     for a in node.attribute)
        if node.op_type in CONTROL_FLOW or nested:
            raise PortError(f"{path}: {escaped(node.op_type)} node "
                            f"{escaped(repr(_node_name(node)))} in "
                            f"{escaped(where)}: control flow, which no export of this tool "
                            f"contains ({', '.join(CONTROL_FLOW)} are refused)")


def _dims(value) -> list:
    """A value's declared dims: ints where fixed, names (str) where symbolic, None where
    unknown; None for no tensor type or no shape."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim]


def _shown(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_input(graph: ExportedGraph) -> None:
    """PortError unless the graph has one input, float32 [batch, 3, S, S] with S the
    ``input_size`` its metadata states (the engines are fed images of that size)."""
    from onnx import TensorProto

    path, size = graph.path, graph.input_size
    if len(graph.inputs) != 1:
        raise PortError(f"{path}: the graph has {len(graph.inputs)} inputs "
                        f"({escaped(', '.join(graph.inputs))}); an export has one, the images")
    value = next(i for i in graph.model.graph.input if i.name == graph.inputs[0])
    dims = _dims(value)
    name = escaped(repr(value.name))
    if value.type.tensor_type.elem_type != TensorProto.FLOAT or dims is None or len(dims) != 4:
        raise PortError(f"{path}: input {name} is not a float32 4-D tensor; an export takes "
                        "float32 NCHW images")
    if any(isinstance(have, int) and have != want for have, want in zip(dims[1:],
                                                                         (3, size, size))):
        raise PortError(f"{path}: metadata says input_size {size} (images [batch, 3, {size}, "
                        f"{size}]), the graph declares its input {name} as {_shown(dims)}")
    if not isinstance(dims[0], str):
        raise PortError(f"{path}: input {name} is {_shown(dims)}: its batch axis is not "
                        "dynamic, as every export's is")


def _itemsize(data_type: int) -> int:
    """Bytes per element of an ONNX data type (1 for those without a fixed size: strings)."""
    from onnx import helper

    try:
        return max(1, helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except Exception:  # undefined or unknown type numbers
        return 1


def check_sizes(graph: ExportedGraph, batch: int) -> None:
    """PortError naming the tensor if any tensor of the graph, at ``batch`` images (the
    largest batch it is run with), would take more than ``MAX_TENSOR_BYTES``: its shape as
    declared or as onnx infers it (symbolic batch dims counted as ``batch``; dims that
    cannot be inferred are left to the engine, whose failure is one line too); and any
    tensor the file holds whose declared dims say more."""
    import onnx

    path, model = graph.path, graph.model
    for tensor, holder in _tensors(model):  # the file holds them, or claims to
        count = 1
        for d in tensor.dims:
            count *= max(d, 0)
        if count * _itemsize(tensor.data_type) > MAX_TENSOR_BYTES:
            raise PortError(f"{path}: tensor {escaped(repr(tensor.name))} ({holder}) is "
                            f"declared {list(tensor.dims)}, {count * _itemsize(tensor.data_type):,}"
                            f" bytes; at most {MAX_TENSOR_BYTES:,} are allowed per tensor")
    batch_dim = _dims(next(i for i in model.graph.input if i.name == graph.inputs[0]))[0]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:  # onnx's inference refuses what it cannot make sense of
        raise PortError(f"{path}: onnx cannot infer the graph's shapes "
                        f"({type(err).__name__}: {escaped(first_line(err))[:200]})") from err
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    for value in values:
        dims = _dims(value)
        if not dims or any(d is None or (isinstance(d, str) and d != batch_dim) for d in dims):
            continue  # a scalar, or a shape the inference could not fix
        itemsize = _itemsize(value.type.tensor_type.elem_type)
        count = 1
        for d in dims:
            count *= batch if isinstance(d, str) else max(d, 0)
        if count * itemsize > MAX_TENSOR_BYTES:
            at = f" at batch {batch}" if any(isinstance(d, str) for d in dims) else ""
            raise PortError(f"{path}: tensor {escaped(repr(value.name))} would be "
                            f"{_shown(dims)} ({count * itemsize:,} bytes{at}); "
                            f"at most {MAX_TENSOR_BYTES:,} bytes are allowed per tensor")
