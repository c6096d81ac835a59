"""Keras HDF5 weights of a ``keras.applications`` model, read with h5py alone.

Two layouts are accepted:
- Keras 2 legacy ``.h5`` (``save_weights`` or a full ``save``, weights under ``model_weights``):
  the root attribute ``layer_names`` lists layer groups, each with ``weight_names`` attributes.
- Keras 3 ``.weights.h5``: ``layers/<class>[_k]/vars/0..`` where ``k`` counts layers of a class
  in ``model.layers`` order, and the ``vars`` group carries the layer's ``name`` attribute.

Which conv is which is the architecture's ``KerasAdapter`` (``models/<name>/spec.py``), the
rule the live Keras oracle applies too: Keras names the layers it is not told to name by a
per-class counter in creation order, and keras.applications creates them in TF-Slim's scope
order, so the k-th counted conv and batch norm are the k-th non-aux ``conv_bn`` row of the
table once the layers keras.applications names itself are set aside. The tests prove it
against Keras's own predictions. The reader presents the weights under TF-Slim variable names,
so the converter and its checks are the same for every source. Before any layer is looked up,
the whole file is checked to keep its data to itself (``porting.read.h5safety``: no external or
dangling links, no external raw storage, no virtual datasets), so no byte from another file can
become a weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from models.spec import Architecture, KerasMismatch, architectures, get_architecture
from porting.errors import PortError, first_line
from porting.read.h5safety import check_self_contained, shown
from porting.read.api import VariableInfo
from porting.read.sources import CheckpointSource

KERAS2, KERAS3 = "Keras 2 HDF5", "Keras 3 HDF5"
H5_SUFFIXES = (".h5", ".hdf5")

# Keras 3 stores variables by position; the order in which each layer class creates them
# (keras.applications' convs have a bias only where they have no batch norm; BN has no gamma).
_KERAS3_VARS = {
    "conv2d": (("kernel",), ("kernel", "bias")),
    "batch_normalization": (("beta", "moving_mean", "moving_variance"),),
    "dense": (("kernel", "bias"),),
}


@dataclass(frozen=True)
class _KerasLayer:
    name: str                 # the Keras layer name, e.g. "conv2d_12" or "block35_1_conv"
    kind: str                 # "conv2d", "batch_normalization" or "dense"
    weights: dict             # role ("kernel", "beta", ...) -> h5py dataset


def is_keras_h5(src) -> bool:
    return str(src).endswith(H5_SUFFIXES)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _chunked_attr(group, name: str) -> list[str]:
    """A list attribute that Keras 2 may have split into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        return [_text(v) for v in group.attrs[name]]
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values += [_text(v) for v in group.attrs[f"{name}{chunk}"]]
        chunk += 1
    return values


def _kind_of(path: Path, name: str, weights: dict) -> str:
    """A Keras 2 layer's class, from the roles and ranks of its weights."""
    roles = set(weights)
    if "moving_mean" in roles:
        return "batch_normalization"
    if "kernel" in roles and len(weights["kernel"].shape) == 4:
        return "conv2d"
    if roles == {"kernel", "bias"}:
        return "dense"
    raise PortError(f"{path}: layer {name!r} ({', '.join(sorted(roles))}) is no conv, batch "
                    "norm or dense layer of a keras.applications model")


def _keras2_layers(path: Path, root) -> list[_KerasLayer]:
    layers = []
    for name in _chunked_attr(root, "layer_names"):
        group = root[name]
        weight_names = _chunked_attr(group, "weight_names")
        if not weight_names:
            continue
        # "conv2d_3/kernel:0" -> "kernel"
        weights = {w.rsplit("/", 1)[-1].split(":")[0]: group[w] for w in weight_names}
        layers.append(_KerasLayer(name, _kind_of(path, name, weights), weights))
    return layers


def _keras3_layers(path: Path, root) -> list[_KerasLayer]:
    layers = []
    for group_name, group in root["layers"].items():
        variables = group.get("vars")
        if variables is None or not len(variables):
            continue
        kind = re.sub(r"_\d+$", "", group_name)
        roles = next((r for r in _KERAS3_VARS.get(kind, ()) if len(r) == len(variables)), None)
        if roles is None:
            raise PortError(f"{path}: layers/{group_name} ({len(variables)} variables) is no "
                            "conv, batch norm or dense layer of a keras.applications model")
        if "name" not in variables.attrs:
            raise PortError(f"{path}: layers/{group_name} has no layer name (saved by an older "
                            "Keras 3), so its place in the network cannot be told")
        name = _text(variables.attrs["name"])
        weights = {role: variables[str(i)] for i, role in enumerate(roles)}
        layers.append(_KerasLayer(name, kind, weights))
    return layers


class _Mapping:
    """TF-Slim variable name -> (h5py dataset, Keras weight name) for one architecture."""

    def __init__(self, path: Path, spec: Architecture, layers: list[_KerasLayer]):
        self.path, self.spec = path, spec
        adapter = spec.keras
        by_name = {layer.name: layer for layer in layers}
        dense = [layer for layer in layers if layer.kind == "dense"]
        missing = [name for name in adapter.named if name not in by_name]
        convs, norms = ([layer.name for layer in layers if layer.kind == adapter.auto_name(cls)]
                        for cls in (adapter.CONV, adapter.NORM))
        try:
            assigned = adapter.assign(spec, convs, norms)
            counts = (len(adapter.counted_rows(spec)),) * 3  # counted convs, norms; rows
        except KerasMismatch as err:
            assigned, counts = None, (err.convs, err.norms, err.rows)
        if assigned is None or missing or len(dense) != 1:
            raise _NotThisArchitecture(
                f"{counts[0]} counted conv, {counts[1]} batch-norm and {len(dense)} dense "
                f"layers" + (f", no {missing[0]}" if missing else "") + f"; "
                f"{adapter.application} has {counts[2]}, {counts[2]} and 1")
        self.datasets, self.names = {}, {}
        used = set()
        for target, conv, norm in assigned:
            if norm is None:  # a conv with a bias and no batch norm (a residual "up" conv)
                variables = target.variables()
                self._take(variables["weight"], by_name[conv], "kernel")
                self._take(variables["bias"], by_name[conv], "bias")
                used.add(conv)
                continue
            if norm not in by_name:
                raise PortError(f"{path}: layer {conv!r} has no batch norm {norm}")
            self._conv_bn(target, by_name[conv], by_name[norm])
            used |= {conv, norm}
        classifier = spec.classifier.variables()
        self._take(classifier["weight"], dense[0], "kernel")
        self._take(classifier["bias"], dense[0], "bias")
        used.add(dense[0].name)
        extra = [layer.name for layer in layers if layer.name not in used]
        if extra:
            raise PortError(f"{path}: layer {extra[0]!r} is not part of {adapter.application}")

    def _take(self, tf_name: str, layer: _KerasLayer, role: str) -> None:
        if role not in layer.weights:
            raise PortError(f"{self.path}: layer {layer.name!r} has no {role} "
                            f"(it holds {', '.join(layer.weights)})")
        self.datasets[tf_name], self.names[tf_name] = layer.weights[role], f"{layer.name}/{role}"

    def _conv_bn(self, target, conv: _KerasLayer, norm: _KerasLayer) -> None:
        variables = target.variables()  # shapes are checked against the model by convert
        self._take(variables["weight"], conv, "kernel")  # Keras kernels are HWIO, as TF's
        for role, keras_role in (("beta", "beta"), ("mean", "moving_mean"),
                                 ("var", "moving_variance")):
            self._take(variables[role], norm, keras_role)


class _NotThisArchitecture(PortError):
    """The file's layers do not fit one architecture's Keras adapter."""


def _match(path: Path, layers: list[_KerasLayer], arch: str | None) -> _Mapping:
    """The mapping of the one architecture whose keras.applications model the layers fit."""
    candidates = [get_architecture(arch)] if arch else [
        spec for spec in architectures().values() if spec.keras is not None]
    misfits = []
    for spec in candidates:
        if spec.keras is None:
            raise PortError(f"{path}: --arch {spec.name} has no Keras weights layout")
        try:
            return _Mapping(path, spec, layers)
        except _NotThisArchitecture as err:
            misfits.append(f"{spec.name}: {err}")
    raise PortError(f"{path}: not the weights of a known keras.applications model "
                    f"({'; '.join(misfits)})")


class KerasReader:
    """A CheckpointReader over Keras weights of a ``keras.applications`` model, with TF-Slim
    variable names; ``arch`` forces the architecture (default: the one the layers fit)."""

    kind = "h5py"

    def __init__(self, path: str | Path, arch: str | None = None):
        import h5py  # only this reader needs it

        self.path = Path(path)
        if not self.path.is_file():
            raise PortError(f"{self.path}: no such Keras weights file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise PortError(f"{self.path}: not an HDF5 file: {err}") from err
        try:
            # before any object is reached through a link or any data read (check_self_contained)
            check_self_contained(self.path, self._file)
            self._index(self._file, arch)
        except BaseException as err:
            self._file.close()
            if isinstance(err, KeyError):  # a group or dataset the layout promises is missing
                raise PortError(f"{self.path}: not a Keras weights file of a keras.applications "
                                f"model: missing {err}") from err
            if isinstance(err, (OSError, RuntimeError)):  # h5py on damaged metadata
                raise PortError(f"{self.path}: damaged Keras weights file "
                                f"({type(err).__name__}: {shown(first_line(err))})") from err
            raise

    def _index(self, root, arch: str | None) -> None:
        """Find every layer's weights and name them as TF-Slim's variables."""
        if "layers" in root:
            layers, fmt = _keras3_layers(self.path, root), KERAS3
        else:
            root = root["model_weights"] if "model_weights" in root else root
            if not _chunked_attr(root, "layer_names"):
                raise PortError(f"{self.path}: not a Keras weights file (no layer_names "
                                "attribute and no layers/ group)")
            layers, fmt = _keras2_layers(self.path, root), KERAS2
        self.source = CheckpointSource(self.path, fmt, (self.path,))
        mapping = _match(self.path, layers, arch)
        self.architecture = mapping.spec
        self._datasets, self._keras_names = mapping.datasets, mapping.names
        classifier_weight = mapping.spec.classifier.variables()["weight"]
        classifier_shape = mapping.spec.classifier.kind.tf_shapes((0,), 0)["weight"]
        self._variables = {}
        for name, ds in sorted(self._datasets.items()):
            shape = tuple(ds.shape)
            if name == classifier_weight and len(classifier_shape) == 4:
                shape = (1, 1, *shape)  # Keras's Dense [in, classes] is a 1x1 conv here
            self._variables[name] = VariableInfo(np.dtype(ds.dtype), shape)

    def variables(self) -> Mapping[str, VariableInfo]:
        return self._variables

    def stored_name(self, name: str) -> str:
        """The Keras weight a TF-Slim variable name stands for, e.g. ``conv2d_5/kernel``."""
        return self._keras_names[name]

    def read(self, name: str) -> np.ndarray:
        try:
            value = np.asarray(self._datasets[name][()])
        except (OSError, RuntimeError) as err:  # a damaged chunk, a missing filter
            raise PortError(f"{self.path}: cannot read {self.stored_name(name)}: "
                            f"{shown(first_line(err))}") from err
        return value.reshape(self._variables[name].shape)

    def close(self) -> None:
        self._file.close()
