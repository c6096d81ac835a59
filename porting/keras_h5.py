"""Keras HDF5 weights of ``keras.applications.InceptionV3``, read with h5py alone.

Two layouts are accepted:
- Keras 2 legacy ``.h5`` (``save_weights`` or a full ``save``, weights under ``model_weights``):
  the root attribute ``layer_names`` lists layer groups, each with ``weight_names`` attributes.
- Keras 3 ``.weights.h5``: ``layers/<class>[_k]/vars/0..`` where ``k`` counts layers of a class
  in ``model.layers`` order, and the ``vars`` group carries the layer's ``name`` attribute.

Which conv is which: ``model.layers`` (and so both files' order) is sorted by graph depth,
which interleaves the branches of each Inception block, but Keras names layers with a counter
in creation order (``conv2d``, ``conv2d_1``, ...), and keras.applications creates them in
TF-Slim's scope order (Branch_0..3, top to bottom). So the k-th conv and k-th batch norm by
name counter are the k-th conv layer of ``porting.name_map`` (without the aux head); the
tests prove it against Keras's own predictions. The reader presents the weights under TF-Slim
variable names, so the converter and its checks are the same for every source.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from porting.errors import PortError
from porting.name_map import CLASSIFIER, CONV_BN, LAYERS
from porting.readers import VariableInfo
from porting.sources import CheckpointSource

KERAS2, KERAS3 = "Keras 2 HDF5", "Keras 3 HDF5"
H5_SUFFIXES = (".h5", ".hdf5")

# Keras 3 stores variables by position; the order in which each layer class creates them.
_KERAS3_VARS = {
    "conv2d": ("kernel",),  # use_bias=False in keras.applications.InceptionV3
    "batch_normalization": ("beta", "moving_mean", "moving_variance"),  # scale=False: no gamma
    "dense": ("kernel", "bias"),
}
_COUNTED_NAME = re.compile(r"(conv2d|batch_normalization)(?:_(\d+))?")


@dataclass(frozen=True)
class _KerasLayer:
    name: str                 # the Keras layer name, e.g. "conv2d_12"
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


def _kind_of(path: Path, name: str, roles) -> str:
    if name == "predictions" or set(roles) == {"kernel", "bias"}:
        return "dense"
    match = _COUNTED_NAME.fullmatch(name)
    if not match:
        raise PortError(f"{path}: layer {name!r} is not part of keras.applications.InceptionV3")
    return match.group(1)


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
        roles = _KERAS3_VARS.get(kind)
        if roles is None or len(variables) != len(roles):
            raise PortError(f"{path}: layers/{group_name} ({len(variables)} variables) is not part "
                            "of keras.applications.InceptionV3")
        if "name" not in variables.attrs:
            raise PortError(f"{path}: layers/{group_name} has no layer name (saved by an older "
                            "Keras 3), so its place in the network cannot be told")
        name = _text(variables.attrs["name"])
        if kind != "dense" and not _COUNTED_NAME.fullmatch(name):  # its counter orders it
            raise PortError(f"{path}: layers/{group_name} is named {name!r}, not a layer of "
                            "keras.applications.InceptionV3")
        weights = {role: variables[str(i)] for i, role in enumerate(roles)}
        layers.append(_KerasLayer(name, kind, weights))
    return layers


def _creation_order(layers: list[_KerasLayer], kind: str) -> list[_KerasLayer]:
    """Layers of ``kind`` sorted by Keras's name counter ("conv2d" is 0, "conv2d_7" is 7)."""
    chosen = [layer for layer in layers if layer.kind == kind]
    return sorted(chosen, key=lambda l: int(_COUNTED_NAME.fullmatch(l.name).group(2) or 0))


class KerasReader:
    """A CheckpointReader over a Keras InceptionV3 weights file, with TF-Slim variable names."""

    kind = "h5py"

    def __init__(self, path: str | Path):
        import h5py  # only this reader needs it

        self.path = Path(path)
        if not self.path.is_file():
            raise PortError(f"{self.path}: no such Keras weights file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise PortError(f"{self.path}: not an HDF5 file: {err}") from err
        try:
            self._index(self._file)
        except BaseException as err:
            self._file.close()
            if isinstance(err, KeyError):  # a group or dataset the layout promises is missing
                raise PortError(f"{self.path}: not a Keras InceptionV3 weights file: "
                                f"missing {err}") from err
            raise

    def _index(self, root) -> None:
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
        self._datasets, self._keras_names = self._map(layers)
        self._variables = {
            name: VariableInfo(np.dtype(ds.dtype), self._tf_shape(name, ds.shape))
            for name, ds in sorted(self._datasets.items())
        }

    def _map(self, layers: list[_KerasLayer]) -> tuple[dict, dict]:
        """TF-Slim variable name -> dataset, and -> the Keras weight it comes from."""
        convs = _creation_order(layers, "conv2d")
        norms = _creation_order(layers, "batch_normalization")
        dense = [layer for layer in layers if layer.kind == "dense"]
        targets = [layer for layer in LAYERS if layer.kind == CONV_BN and not layer.is_aux]
        if not (len(convs) == len(norms) == len(targets)) or len(dense) != 1:
            raise PortError(f"{self.path}: {len(convs)} conv, {len(norms)} batch-norm and "
                            f"{len(dense)} dense layers; keras.applications.InceptionV3 has "
                            f"{len(targets)}, {len(targets)} and 1")
        datasets, names = {}, {}

        def take(tf_name: str, layer: _KerasLayer, role: str):
            if role not in layer.weights:
                raise PortError(f"{self.path}: layer {layer.name!r} has no {role} "
                                f"(it holds {', '.join(layer.weights)})")
            datasets[tf_name], names[tf_name] = layer.weights[role], f"{layer.name}/{role}"

        for target, conv, norm in zip(targets, convs, norms):
            tf_vars = target.variables()  # shapes are checked against the model by convert
            take(tf_vars["weight"], conv, "kernel")  # Keras kernels are HWIO, as TF's
            for role, keras_role in (("beta", "beta"), ("mean", "moving_mean"),
                                     ("var", "moving_variance")):
                take(tf_vars[role], norm, keras_role)
        classifier = CLASSIFIER.variables()
        take(classifier["weight"], dense[0], "kernel")
        take(classifier["bias"], dense[0], "bias")
        return datasets, names

    @staticmethod
    def _tf_shape(name: str, shape) -> tuple[int, ...]:
        # Keras's Dense kernel [in, classes] is TF-Slim's 1x1 conv [1, 1, in, classes].
        return (1, 1, *shape) if name == CLASSIFIER.variables()["weight"] else tuple(shape)

    def variables(self) -> Mapping[str, VariableInfo]:
        return self._variables

    def stored_name(self, name: str) -> str:
        """The Keras weight a TF-Slim variable name stands for, e.g. ``conv2d_5/kernel``."""
        return self._keras_names[name]

    def read(self, name: str) -> np.ndarray:
        try:
            value = np.asarray(self._datasets[name][()])
        except OSError as err:
            raise PortError(f"{self.path}: cannot read {self.stored_name(name)}: {err}") from err
        return value.reshape(self._variables[name].shape)
