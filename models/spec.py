"""What the converter knows about an architecture, as data and without torch.

Every architecture is one folder under ``models/`` whose ``spec.py`` defines ``SPEC``, an
``Architecture``: the one table from TF-Slim variable scopes to PyTorch modules (with each
layer's kind and shape, in the model's state-dict order), the TF-Slim end points, and the
evaluation config (timm's "pretrained cfg": input size, crop, interpolation, mean/std, classes,
label offset, classifier name). ``architectures()`` finds the folders; nothing outside them
names an architecture.

A layer kind is defined once, here: which TF variables live under its scope, which PyTorch keys
it fills (plain and with batch norm folded), the shape rule between the two and the transform.
The tests check each table against its PyTorch model's ``state_dict()`` for every variant.
"""
from __future__ import annotations

import math
import pkgutil
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module

import numpy as np

from models.folding import BN_EPS, fold_batch_norm

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # state, not parameters
AUX_SCOPE = "AuxLogits"

Arrays = dict  # role or PyTorch key -> numpy array


def _f32(array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian float32, as the writers store it; an array (or view) already
    in that form is used as it is, since readers hand out a fresh buffer per read."""
    return np.ascontiguousarray(array, dtype="<f4")


# --- layer kinds ----------------------------------------------------------------------------

class LayerKind:
    """One kind of TF-Slim layer. ``shape`` is the layer's shape as the table gives it: a conv's
    PyTorch weight shape (out, in, kh, kw), or a classifier's input features (in,)."""

    name: str
    variables: dict[str, str]  # role -> TF variable name below the layer's scope
    bn_eps: float = BN_EPS     # the batch norm's epsilon, where the kind has one

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


class ConvBN(LayerKind):
    """Conv without bias + batch norm (+ ReLU or not): PyTorch ``BasicConv2d``.

    ``conv_bn``: TF-Slim's Inception batch norm, without gamma (``bn.weight`` holds ones).
    ``conv_bn_gamma``: with gamma (``scale=True``, as ``resnet_arg_scope`` has it). The epsilon
    is the architecture's (``table(..., bn_eps)``: 1e-3 for Inception, 1e-5 for ResNet).
    """

    def __init__(self, gamma: bool = False, bn_eps: float = BN_EPS):
        self.gamma, self.bn_eps = gamma, bn_eps
        self.name = "conv_bn_gamma" if gamma else "conv_bn"
        self.variables = {"weight": "weights", "beta": "BatchNorm/beta",
                          "mean": "BatchNorm/moving_mean", "var": "BatchNorm/moving_variance"}
        if gamma:
            self.variables["gamma"] = "BatchNorm/gamma"

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


class BatchNorm(LayerKind):
    """A batch norm of its own, with gamma (ResNet v2's ``preact`` and ``postnorm``): PyTorch
    ``nn.BatchNorm2d``. Nothing precedes it that it could fold into, so ``--fold-bn`` keeps it.
    The table gives its channels as the shape."""

    name = "bn"
    variables = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean",
                 "var": "moving_variance"}

    def __init__(self, bn_eps: float = BN_EPS):
        self.bn_eps = bn_eps

    def layout(self, module, shape, classes, folded):
        return _batch_norm_layout(module, shape[0])

    def tf_shapes(self, shape, classes):
        return {role: shape for role in self.variables}

    def tensors(self, module, v, folded, drop):
        return _batch_norm_tensors(module, v)


class ConvBias(LayerKind):
    """Conv with bias and no batch norm or activation: a plain ``nn.Conv2d`` (e.g. the residual
    "up" convs of Inception-ResNet). Folding leaves it as it is."""

    name = "conv_bias"
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


class ConvClassifier(Classifier):
    """A 1x1 conv classifier with bias (Inception v3's ``Logits/Conv2d_1c_1x1``): [1, 1, in, C]."""

    name = "conv_classifier"

    def tf_shapes(self, shape, classes):
        return {"weight": (1, 1, shape[0], classes), "bias": (classes,)}

    def _matrix(self, weight):
        return weight[0, 0]


class FCClassifier(Classifier):
    """``slim.fully_connected`` (Inception-ResNet-v2's ``Logits/Logits``): weights [in, C]."""

    name = "fc_classifier"

    def tf_shapes(self, shape, classes):
        return {"weight": (shape[0], classes), "bias": (classes,)}

    def _matrix(self, weight):
        return weight


def kinds(bn_eps: float = BN_EPS) -> dict[str, LayerKind]:
    """Every layer kind by name, its batch norms (if any) with ``bn_eps``."""
    return {kind.name: kind for kind in (ConvBN(bn_eps=bn_eps), ConvBN(gamma=True, bn_eps=bn_eps),
                                         BatchNorm(bn_eps), ConvBias(), ConvClassifier(),
                                         FCClassifier())}


# --- the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    scope: str          # full TF scope, e.g. "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5"
    module: str         # PyTorch module path, e.g. "Mixed_5c.branch5x5_2"
    kind: LayerKind
    shape: tuple        # conv: (out, in, kh, kw); classifier: (in,)
    is_aux: bool

    def variables(self) -> dict[str, str]:
        """role -> full TF variable name."""
        return {role: f"{self.scope}/{leaf}" for role, leaf in self.kind.variables.items()}

    def label(self, role: str) -> str:
        """Where a checkpoint variable lands, as reports show it: ``Mixed_5b.branch1x1 (weight)``."""
        return f"{self.module} ({role})"


def table(root: str, rows: str, bn_eps: float = BN_EPS) -> list[Layer]:
    """Layers from rows of ``tf_scope module kind shape...``, scopes below ``root``.

    Convs give ``KHxKW IN OUT`` (e.g. ``1x7 128 160``), classifiers their input features, batch
    norms their channels. ``bn_eps`` is the architecture's batch-norm epsilon. Blank lines and
    ``#`` comments are ignored.
    """
    by_name = kinds(bn_eps)
    layers = []
    for row in rows.splitlines():
        row = row.split("#", 1)[0].split()
        if not row:
            continue
        scope, module, kind, *dims = row
        if len(dims) == 3:
            kh, kw = map(int, dims[0].split("x"))
            shape = (int(dims[2]), int(dims[1]), kh, kw)
        else:
            (features,) = dims
            shape = (int(features),)
        layers.append(Layer(f"{root}/{scope}", module, by_name[kind], shape,
                            scope.startswith(AUX_SCOPE + "/")))
    return layers


@dataclass(frozen=True)
class EvalConfig:
    """How the TF model was evaluated, and what its outputs mean (timm's pretrained cfg)."""
    input_size: int
    crop_fraction: float      # central crop of the image before resizing
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float]
    num_classes: int          # as TF-Slim trained it
    label_offset: int         # leading outputs that are not ImageNet-1k classes (TF's background)
    classifier: str           # module of the main classifier
    recipe: str               # the preprocessing, in words, with its source
    color: str = "RGB"
    # VGG style: resize the shorter side to this, then central crop input_size; None:
    # Inception style, central crop crop_fraction of the image, then resize to input_size
    resize_side: int | None = None


def inception_eval(classifier: str) -> EvalConfig:
    """TF-Slim's ``inception_preprocessing`` eval recipe, which its Inception networks share,
    on ImageNet with the background class (1001 outputs)."""
    return EvalConfig(
        input_size=299, crop_fraction=0.875, interpolation="bilinear",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), value_range=(-1.0, 1.0),
        num_classes=1001, label_offset=1, classifier=classifier,
        recipe="TF-Slim inception_preprocessing (eval): central_crop(0.875), TF1 "
               "resize_bilinear (align_corners=False, half_pixel_centers=False) to 299x299, "
               "(x - 0.5) * 2",
    )


@dataclass(frozen=True)
class KerasAdapter:
    """How a ``keras.applications`` model's weight file maps onto the TF-Slim scopes.

    Keras names layers it is not told to name with a per-class counter in creation order
    (``conv2d``, ``conv2d_1``, ...); the counted convs and batch norms, sorted by counter, are
    the architecture's non-aux ``conv_bn`` layers in table order, minus those in ``named``.
    ``named`` maps the layers keras.applications does name (conv -> TF scope below the root;
    its batch norm is ``<name>_bn``); ``classifier`` is the Dense layer.
    """
    application: str                       # e.g. "keras.applications.InceptionV3"
    named: dict[str, str] = field(default_factory=dict)
    classifier: str = "predictions"


@dataclass(frozen=True)
class Architecture:
    name: str                 # the folder, and what --arch takes: "inception_v3"
    title: str                # "Inception v3"
    tf_root: str              # TF-Slim's root scope: "InceptionV3"
    layers: tuple[Layer, ...]  # in the PyTorch model's state-dict order
    end_points: tuple[str, ...]  # TF-Slim end points that verify compares, in network order
    classifier_end_points: tuple[str, ...]  # held to the logits' bound
    eval: EvalConfig
    model: str                # "package.module:Class" of the PyTorch definition
    oracle: str               # module with the TF reference graph (needs TensorFlow)
    oracle_name: str          # what that reference is, as reports name it
    paper: str
    keras: KerasAdapter | None = None
    timm_keys: str | None = None  # the timm model whose state-dict keys ours are, if any

    logits_end_points = ("AuxLogits", "Logits")  # class scores: label offset and top-k apply

    @property
    def classifier(self) -> Layer:
        return next(layer for layer in self.layers if layer.module == self.eval.classifier)

    @property
    def has_aux(self) -> bool:
        return any(layer.is_aux for layer in self.layers)

    @property
    def package(self) -> str:
        """The folder's package, e.g. ``models.inception_v3``."""
        return self.model.partition(":")[0].rsplit(".", 1)[0]

    @property
    def batch_norm(self) -> str:
        """How the model's conv batch norms are parameterised, in words (for model cards)."""
        norms = {(layer.kind.bn_eps, layer.kind.gamma) for layer in self.layers
                 if isinstance(layer.kind, ConvBN)}
        return "; ".join(f"eps {eps:.0e}".replace("e-0", "e-") + f", gamma {'learned' if gamma else '1'}"
                         for eps, gamma in sorted(norms))

    @property
    def standalone_batch_norms(self) -> int:
        """Batch norms with no conv before them to fold into (ResNet v2's pre-activations)."""
        return sum(isinstance(layer.kind, BatchNorm) for layer in self.layers)

    def target_layout(self, num_classes: int, aux: bool = True,
                      fold_bn: bool = False) -> "OrderedDict[str, tuple[int, ...]]":
        """Keys and shapes of the PyTorch model's ``state_dict()`` for these options, in order."""
        return OrderedDict(
            item for layer in self.layers if aux or not layer.is_aux
            for item in layer.kind.layout(layer.module, layer.shape, num_classes, fold_bn))

    def parameter_count(self, num_classes: int, aux: bool = True, fold_bn: bool = False) -> int:
        """Learned parameters (buffers excluded) of that model."""
        return sum(math.prod(shape) for key, shape in
                   self.target_layout(num_classes, aux, fold_bn).items()
                   if key.rsplit(".", 1)[1] not in BUFFERS)

    def options_of(self, keys) -> dict | None:
        """``num_classes``, ``aux_logits`` and ``fold_bn`` of a state dict of this architecture
        (given its keys and shapes), or None if the keys are not this model's."""
        shapes = dict(keys)
        weight = f"{self.eval.classifier}.weight"
        first_conv = next(layer for layer in self.layers if isinstance(layer.kind, ConvBN))
        if weight not in shapes or f"{first_conv.module}.conv.weight" not in shapes:
            return None
        return {"num_classes": shapes[weight][0],
                "aux_logits": any(key.startswith(f"{AUX_SCOPE}.") for key in shapes),
                "fold_bn": f"{first_conv.module}.conv.bias" in shapes}

    def model_class(self):
        """The PyTorch model class (imports torch)."""
        module, _, name = self.model.partition(":")
        return getattr(import_module(module), name)

    def oracle_module(self):
        """This architecture's TF reference: the oracle module, with its ``Reference`` (the
        graph verify compares with) and ``build_synthetic_checkpoint``; a module serving several
        architectures gives them through ``oracle_for(spec)``. Imports TensorFlow on use."""
        module = import_module(self.oracle)
        return module.oracle_for(self) if hasattr(module, "oracle_for") else module


# --- finding architectures --------------------------------------------------------------------

@lru_cache(maxsize=1)
def _folders() -> dict[str, tuple[Architecture, ...]]:
    """Each folder of ``models`` with a ``spec.py``, by package: its ``SPEC``, or its ``SPECS``
    when one definition serves several (e.g. ResNet's depths)."""
    import models

    found = {}
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        if info.ispkg:
            try:
                module = import_module(f"models.{info.name}.spec")
            except ModuleNotFoundError as err:
                if err.name != f"models.{info.name}.spec":
                    raise
                continue
            found[f"models.{info.name}"] = tuple(getattr(module, "SPECS", None) or (module.SPEC,))
    return found


def architectures() -> dict[str, Architecture]:
    """Every architecture of every folder (``_folders``), by name."""
    return dict(sorted((spec.name, spec) for specs in _folders().values() for spec in specs))


def representatives() -> tuple[str, ...]:
    """One architecture per folder (its ``SPEC``, or the first of its ``SPECS``): what the
    benchmarks run by default."""
    return tuple(specs[0].name for specs in _folders().values())


class UnknownArchitecture(LookupError):
    """The variables fit no architecture here; the message says what was found."""


def get_architecture(name: str) -> Architecture:
    known = architectures()
    if name not in known:
        raise UnknownArchitecture(f"no architecture named {name!r} (known: {', '.join(known)})")
    return known[name]


def detect_architecture(variable_names) -> Architecture:
    """The architecture whose TF-Slim root scope holds the model variables among
    ``variable_names``; UnknownArchitecture naming the root scopes found otherwise."""
    roots = Counter(name.split("/", 1)[0] for name in variable_names
                    if "/" in name and non_model_reason(name) is None)
    by_root = {spec.tf_root: spec for spec in architectures().values()}
    matches = [by_root[root] for root in roots if root in by_root]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(f"{root} ({count} variables)" for root, count in roots.most_common(4))
    known = ", ".join(f"{spec.tf_root} ({spec.name})" for spec in by_root.values())
    if matches:
        raise UnknownArchitecture(f"variables of several architectures ({found}); pass --arch")
    raise UnknownArchitecture(f"no known architecture: root scopes {found or 'none'} "
                              f"(known: {known})")


def architecture_of_state_dict(keys) -> tuple[Architecture, dict]:
    """(architecture, model options) of a ported state dict from its keys and shapes."""
    pairs = list(keys)
    candidates = [(spec, options) for spec in architectures().values()
                  if (options := spec.options_of(pairs)) is not None]
    for spec, options in candidates:  # the one whose keys are exactly these (ResNet's depths)
        layout = spec.target_layout(options["num_classes"], options["aux_logits"],
                                    options["fold_bn"])
        if layout.keys() == dict(pairs).keys():
            return spec, options
    if candidates:  # keys of an architecture, but not all of them: load_state_dict says which
        return candidates[0]
    raise UnknownArchitecture("not a state dict of a known architecture (" + ", ".join(
        f"{s.name}: no {s.eval.classifier}.weight" for s in architectures().values()) + ")")


# --- what else TF-Slim training checkpoints hold ------------------------------------------------

NON_MODEL_NAMES = frozenset({"global_step", "beta1_power", "beta2_power"})
# Suffixes of optimizer slots and moving-average shadows that TF trainers add to model variables.
SLOT_SUFFIXES = ("/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1", "/Momentum",
                 "/Adam", "/Adam_1", "/Adagrad", "/Ftrl", "/Ftrl_1")
EMA_SUFFIX = "/ExponentialMovingAverage"


def non_model_reason(name: str) -> str | None:
    """Why a checkpoint variable is not a model weight, or None if it should be one."""
    if name in NON_MODEL_NAMES:
        return "training counter"
    for suffix in SLOT_SUFFIXES:
        if name.endswith(suffix):
            kind = "moving-average shadow" if suffix == EMA_SUFFIX else "optimizer slot"
            return f"{kind} ({suffix[1:]})"
    return None


def architecture_of_model(model) -> Architecture:
    """The architecture whose PyTorch class ``model`` is an instance of (no torch import)."""
    cls = type(model)
    for spec in architectures().values():
        if spec.model == f"{cls.__module__}:{cls.__qualname__}":
            return spec
    raise UnknownArchitecture(f"{cls.__qualname__} is no model of a known architecture")
