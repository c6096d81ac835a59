"""An architecture: its table, end points, eval config and where its model and oracle live."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import import_module

from models.spec.config import EvalConfig
from models.spec.kinds import BUFFERS, BatchNorm, ConvBN
from models.spec.table import AUX_SCOPE, Layer

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
    torchvision_keys: str | None = None  # or the torchvision model (VGG: ``vgg16``)

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

