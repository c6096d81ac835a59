"""Layer kinds: how one kind of TF-Slim layer's variables become PyTorch keys and tensors.

A kind is defined once and registered by name (``@layer_kind``, loud on a duplicate name, as
onnx2torch's converter registry is): which TF variables live under its scope, which PyTorch keys
it fills (plain and with batch norm folded), the shape rule between the two and the transform.
The generic kinds are here; an architecture folder that needs one no other has registers it in
its own ``spec.py``. Numpy only.
"""
from __future__ import annotations

import numpy as np

from models.folding import fold_batch_norm

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # state, not parameters
Arrays = dict  # role or PyTorch key -> numpy array


def _f32(array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian float32, as the writers store it; an array (or view) already
    in that form is used as it is, since readers hand out a fresh buffer per read."""
    return np.ascontiguousarray(array, dtype="<f4")


KINDS: dict[str, type] = {}  # name -> LayerKind subclass, filled by @layer_kind


def layer_kind(name: str):
    """Class decorator: register a ``LayerKind`` subclass as the kind ``name`` that table rows
    use. A second kind of the same name is an error naming both definitions."""
    def register(cls):
        if name in KINDS:
            first = KINDS[name]
            raise ValueError(f"layer kind {name!r} is defined twice: {first.__module__}."
                             f"{first.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        KINDS[name] = cls
        return cls
    return register


def make_kind(name: str, bn_eps: float) -> "LayerKind":
    """The kind ``name`` for a table whose batch norms have epsilon ``bn_eps``."""
    if name not in KINDS:
        raise ValueError(f"unknown layer kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name](bn_eps)


class LayerKind:
    """One kind of TF-Slim layer. ``shape`` is the layer's shape as the table gives it: a conv's
    PyTorch weight shape (out, in, kh, kw), or a classifier's input features (in,)."""

    name: str
    variables: dict[str, str]  # role -> TF variable name below the layer's scope
    batch_norm = False         # whether the kind holds a batch norm
    bn_eps: float | None       # its epsilon (the table's), None for kinds without one

    def __init__(self, bn_eps: float | None = None):
        self.bn_eps = bn_eps if self.batch_norm else None

    def layout(self, module: str, shape: tuple, classes: int, folded: bool) -> list[tuple]:
        """[(PyTorch key, shape)] the layer fills, in state-dict order."""
        raise NotImplementedError

    def tf_shapes(self, shape: tuple, classes: int) -> dict[str, tuple]:
        """role -> the shape its TF variable must have."""
        raise NotImplementedError

    def tensors(self, module: str, values: Arrays, folded: bool, drop: int) -> Arrays:
        """PyTorch key -> array, from role -> the TF variable's value; ``drop`` leading classes
        (TF's background) are left out of classifiers."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


@layer_kind("conv_bn")
class ConvBN(LayerKind):
    """Conv without bias + batch norm (+ ReLU or not): PyTorch ``BasicConv2d``.

    ``conv_bn``: TF-Slim's Inception batch norm, without gamma (``bn.weight`` holds ones).
    ``conv_bn_gamma``: with gamma (``scale=True``, as ``resnet_arg_scope`` has it). The epsilon
    is the architecture's (``table(..., bn_eps)``: 1e-3 for Inception, 1e-5 for ResNet).
    """

    batch_norm, gamma = True, False
    variables = {"weight": "weights", "beta": "BatchNorm/beta",
                 "mean": "BatchNorm/moving_mean", "var": "BatchNorm/moving_variance"}

    def layout(self, module, shape, classes, folded):
        if folded:
            return [(f"{module}.conv.weight", shape), (f"{module}.conv.bias", shape[:1])]
        return [(f"{module}.conv.weight", shape), *_batch_norm_layout(f"{module}.bn", shape[0])]

    def tf_shapes(self, shape, classes):
        out_chs, in_chs, kh, kw = shape  # TF conv kernels are HWIO
        return {"weight": (kh, kw, in_chs, out_chs),
                **{role: (out_chs,) for role in self.variables if role != "weight"}}

    def tensors(self, module, v, folded, drop):
        weight = v["weight"].transpose(3, 2, 0, 1)  # HWIO -> OIHW, a view until it is copied
        if folded:
            # The checkpoint's own precision in, float64 math, float32 out: rounded once.
            weight, bias = fold_batch_norm(weight, v["beta"], v["mean"], v["var"], v.get("gamma"),
                                           eps=self.bn_eps, dtype="<f4")
            return {f"{module}.conv.weight": weight, f"{module}.conv.bias": bias}
        return {f"{module}.conv.weight": _f32(weight),
                **_batch_norm_tensors(f"{module}.bn", v)}


@layer_kind("conv_bn_gamma")
class ConvBNGamma(ConvBN):
    """``conv_bn`` with gamma: TF-Slim's batch norm with ``scale=True``."""

    gamma = True
    variables = {**ConvBN.variables, "gamma": "BatchNorm/gamma"}


def _batch_norm_tensors(module: str, v: Arrays) -> Arrays:
    """``nn.BatchNorm2d``'s keys from TF's batch norm variables (gamma 1 where TF has none)."""
    gamma = v.get("gamma")
    return {
        f"{module}.weight": np.ones(len(v["beta"]), "<f4") if gamma is None else _f32(gamma),
        f"{module}.bias": _f32(v["beta"]),
        f"{module}.running_mean": _f32(v["mean"]),
        f"{module}.running_var": _f32(v["var"]),
        f"{module}.num_batches_tracked": np.array(0, "<i8"),
    }


def _batch_norm_layout(module: str, channels: int) -> list[tuple]:
    return [*((f"{module}.{key}", (channels,)) for key in ("weight", "bias", *BUFFERS[:2])),
            (f"{module}.num_batches_tracked", ())]


@layer_kind("bn")
class BatchNorm(LayerKind):
    """A batch norm of its own, with gamma (ResNet v2's ``preact`` and ``postnorm``): PyTorch
    ``nn.BatchNorm2d``. Nothing precedes it that it could fold into, so ``--fold-bn`` keeps it.
    The table gives its channels as the shape."""

    batch_norm = True
    variables = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean",
                 "var": "moving_variance"}

    def layout(self, module, shape, classes, folded):
        return _batch_norm_layout(module, shape[0])

    def tf_shapes(self, shape, classes):
        return {role: shape for role in self.variables}

    def tensors(self, module, v, folded, drop):
        return _batch_norm_tensors(module, v)


@layer_kind("conv_bias")
class ConvBias(LayerKind):
    """Conv with bias and no batch norm or activation: a plain ``nn.Conv2d`` (e.g. the residual
    "up" convs of Inception-ResNet). Folding leaves it as it is."""

    variables = {"weight": "weights", "bias": "biases"}

    def layout(self, module, shape, classes, folded):
        return [(f"{module}.weight", shape), (f"{module}.bias", shape[:1])]

    def tf_shapes(self, shape, classes):
        out_chs, in_chs, kh, kw = shape
        return {"weight": (kh, kw, in_chs, out_chs), "bias": (out_chs,)}

    def tensors(self, module, v, folded, drop):
        return {f"{module}.weight": _f32(v["weight"].transpose(3, 2, 0, 1)),
                f"{module}.bias": _f32(v["bias"])}


class Classifier(LayerKind):
    """A classifier as ``nn.Linear`` [classes, in]; subclasses say how TF stores the weight."""

    variables = {"weight": "weights", "bias": "biases"}

    def layout(self, module, shape, classes, folded):
        return [(f"{module}.weight", (classes, shape[0])), (f"{module}.bias", (classes,))]

    def _matrix(self, weight: np.ndarray) -> np.ndarray:  # TF's weight -> [in, classes]
        raise NotImplementedError

    def tensors(self, module, v, folded, drop):
        weight, bias = self._matrix(v["weight"]).T, v["bias"]
        return {f"{module}.weight": _f32(weight[drop:]), f"{module}.bias": _f32(bias[drop:])}


@layer_kind("conv_classifier")
class ConvClassifier(Classifier):
    """A 1x1 conv classifier with bias (Inception v3's ``Logits/Conv2d_1c_1x1``): [1, 1, in, C]."""

    def tf_shapes(self, shape, classes):
        return {"weight": (1, 1, shape[0], classes), "bias": (classes,)}

    def _matrix(self, weight):
        return weight[0, 0]


@layer_kind("fc_classifier")
class FCClassifier(Classifier):
    """``slim.fully_connected`` (Inception-ResNet-v2's ``Logits/Logits``): weights [in, C]."""

    def tf_shapes(self, shape, classes):
        return {"weight": (shape[0], classes), "bias": (classes,)}

    def _matrix(self, weight):
        return weight
