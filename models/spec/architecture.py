"""An architecture: its table, end points, eval config and where its model and oracle live."""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import import_module
from typing import ClassVar, Iterable

from models.spec.config import EvalConfig
from models.spec.kinds import BUFFERS, BatchNorm, ConvBN
from models.spec.table import AUX_SCOPE, Layer
from models.spec.taps import Taps


class KerasMismatch(ValueError):
    """A Keras model's counted layers do not fit the architecture's table."""

    def __init__(self, message: str, convs: int, norms: int, rows: int):
        super().__init__(message)
        self.convs, self.norms, self.rows = convs, norms, rows


@dataclass(frozen=True)
class KerasAdapter:
    """How a ``keras.applications`` model's layers map onto the TF-Slim scopes: the one rule,
    applied alike by the HDF5 reader (``porting.read.keras_h5``, to the layer names in a file)
    and by the live Keras oracle (``models.inception_resnet_v2.oracle``, to a built model).

    Keras names the layers it is not told to name with a per-class counter in creation order
    (``conv2d``, ``conv2d_1``, ...: ``counter``); keras.applications creates them in TF-Slim's
    scope order (Branch_0..3, top to bottom), while ``model.layers`` (and so a file) is sorted by
    graph depth, which interleaves branches. So the counted convs and batch norms, sorted by
    counter, are the architecture's non-aux ``conv_bn`` rows in table order, minus those in
    ``named`` (``assign``). ``named`` maps the layers keras.applications does name (conv -> TF
    scope below the root; a ``conv_bn`` row's batch norm is ``<name>_bn``); ``classifier`` is
    the Dense layer.
    """
    application: str                       # e.g. "keras.applications.InceptionV3"
    named: dict[str, str] = field(default_factory=dict)
    classifier: str = "predictions"

    CONV: ClassVar[str] = "Conv2D"         # the Keras classes of a conv_bn row's two layers
    NORM: ClassVar[str] = "BatchNormalization"

    @staticmethod
    def auto_name(class_name: str) -> str:
        """The stem of the names Keras gives layers of ``class_name``: its snake case, as
        ``keras.src.utils.naming.to_snake_case`` writes it (``Conv2D`` -> ``conv2d``,
        ``BatchNormalization`` -> ``batch_normalization``); a stem is its own stem."""
        name = re.sub(r"\W+", "", class_name)
        name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
        return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()

    @classmethod
    def counter(cls, layer_name: str, class_name: str) -> int | None:
        """Keras's creation counter in the name of a layer of ``class_name`` (a Keras class or
        its stem): ``conv2d`` is 0, ``conv2d_12`` is 12; None for a name Keras did not give
        by counter (one the model chose, or another class's)."""
        match = re.fullmatch(rf"{re.escape(cls.auto_name(class_name))}(?:_(\d+))?", layer_name)
        return None if match is None else int(match.group(1) or 0)

    @classmethod
    def counted(cls, names: Iterable[str], class_name: str) -> list[str]:
        """Of ``names`` (layers of ``class_name``: the caller knows their classes), those Keras
        named by its counter, in creation order. A second model built in the same process
        counts on from the first, so counters need not start at 0."""
        found = [(count, name) for name in names
                 if (count := cls.counter(name, class_name)) is not None]
        return [name for _, name in sorted(found)]

    def counted_rows(self, spec: "Architecture") -> list[Layer]:
        """The table rows the counted layers fill: non-aux ``conv_bn`` rows, in table order,
        minus the named ones."""
        named = {f"{spec.tf_root}/{scope}" for scope in self.named.values()}
        return [layer for layer in spec.layers if layer.kind.name == "conv_bn"
                and not layer.is_aux and layer.scope not in named]

    def assign(self, spec: "Architecture", convs: Iterable[str],
               norms: Iterable[str]) -> list[tuple[Layer, str, str | None]]:
        """(table row, Keras conv layer, its batch-norm layer or None) for every conv of the
        Keras model, given the names of its ``Conv2D`` layers (``convs``) and of its
        ``BatchNormalization`` layers (``norms``), named ones included: the counted ones in
        creation order onto ``counted_rows``, then the named ones (whose presence is the
        caller's to check). ``KerasMismatch`` if the counts do not fit."""
        rows = self.counted_rows(spec)
        convs, norms = self.counted(convs, self.CONV), self.counted(norms, self.NORM)
        if not len(convs) == len(norms) == len(rows):
            raise KerasMismatch(f"{len(convs)} counted conv and {len(norms)} batch-norm "
                                f"layers; {self.application} has {len(rows)} and {len(rows)}",
                                len(convs), len(norms), len(rows))
        scopes = {layer.scope: layer for layer in spec.layers}
        named = [(scopes[f"{spec.tf_root}/{scope}"], name) for name, scope in self.named.items()]
        return [*zip(rows, convs, norms),
                *((row, name, f"{name}_bn" if row.kind.name == "conv_bn" else None)
                  for row, name in named)]


@dataclass(frozen=True)
class TimmFacts:
    """How timm sees this architecture's ports: the facts of timm's pretrained cfg that the
    ``EvalConfig`` does not hold (a release folder's ``config.json``,
    ``porting.write.hub``), as timm keeps them beside each model.

    ``model`` is the timm model whose state-dict keys ours are (a 1000-class file without the
    aux head loads into it strictly). ``computes_tf`` says whether, with these weights, it
    computes TF's logits: measured by the tests against TF's own outputs; where it does not,
    ``differs`` says why, in words, and a release folder does not name it as its
    ``architecture`` (the model card gives the distance measured on the photos instead)."""
    model: str                   # timm's registered model name
    computes_tf: bool            # with these weights, TF's logits within verify's bound (tested)
    pool_size: tuple[int, int]   # the classifier's input map at eval.input_size (timm's pool_size)
    differs: str | None = None   # when it does not compute TF's logits: why

    def __post_init__(self):
        if self.computes_tf == (self.differs is not None):
            raise ValueError(f"{self.model}: say why timm's model differs, and only then")


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
    timm: TimmFacts | None = None  # the timm model whose state-dict keys ours are, if any
    torchvision_keys: str | None = None  # or the torchvision model (VGG: ``vgg16``)
    taps: Taps | None = None  # every value the model hands out by TF's names (models.spec.taps)
    # Root scopes that renamed copies of its checkpoints use instead of ``tf_root`` (attack code
    # renames the root so that several copies fit one TF graph: ``AdvInceptionV3``); only the
    # root differs (``models.spec.table.with_root``)
    aliases: tuple[str, ...] = ()

    logits_end_points = ("AuxLogits", "Logits")  # class scores: label offset and top-k apply

    @property
    def classifier(self) -> Layer:
        return next(layer for layer in self.layers if layer.module == self.eval.classifier)

    @property
    def timm_keys(self) -> str | None:
        """The timm model whose state-dict keys ours are, if any."""
        return self.timm.model if self.timm else None

    @property
    def first_conv(self) -> str:
        """The module of the first convolution (timm's ``first_conv``): what its weight's key
        names, e.g. ``features.0.conv``."""
        key = next(iter(self.target_layout(self.eval.num_classes, aux=False)))
        return key.rpartition(".")[0]

    @property
    def num_features(self) -> int:
        """Inputs of the main classifier (timm's ``num_features``)."""
        return self.target_layout(self.eval.num_classes, aux=False)[
            f"{self.eval.classifier}.weight"][1]

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
    def folds_batch_norm(self) -> bool:
        """Whether ``--fold-bn`` changes anything: a conv with a batch norm to fold into it.
        Without one (VGG) the folded layout is the plain one, and ports say nothing was folded."""
        return any(isinstance(layer.kind, ConvBN) for layer in self.layers)

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
        first_conv = next((layer for layer in self.layers if isinstance(layer.kind, ConvBN)), None)
        probe = first_conv or self.layers[0]  # a net without batch norm (VGG): its first layer
        if weight not in shapes or probe.kind.layout(probe.module, probe.shape, 1, False)[0][0] \
                not in shapes:
            return None
        return {"num_classes": shapes[weight][0],
                "aux_logits": any(key.startswith(f"{AUX_SCOPE}.") for key in shapes),
                "fold_bn": first_conv is not None and f"{first_conv.module}.conv.bias" in shapes}

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

