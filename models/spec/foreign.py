"""Foreign weight layouts: how other projects store an architecture's weights (timm, torchvision,
Cadene's pretrainedmodels, the converter zoo's pickled ``.npy`` dicts), as data.

A ``ForeignLayout`` says, for one architecture and one project, which foreign key holds each key
of our state dict, how many classes the foreign file holds (which decides the port it is compared
with: 1000 drops TF's background), whether it has the aux head, which foreign tensors hold the
same values in another shape (VGG's fc6 as a 7x7 conv in timm, a 1x1 conv classifier in the zoo),
which ones a loader fills with ones when absent (the zoo's batch norms without gamma), and, where
the project's own network computes differently from TF's, how to build it and in what it
differs. Each architecture folder registers its layouts in ``models/<name>/foreign.py``
(``register``, loud on a duplicate, as ``models.spec.kinds.layer_kind`` is); ``foreign_layouts``
finds them. Torch-free: a layout's ``build`` names a function that imports torch when called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Callable, Mapping

from models.spec.architecture import Architecture
from models.spec.discovery import folders
from models.spec.kinds import BUFFERS

NOT_WEIGHTS = BUFFERS[2:]  # num_batches_tracked: a counter, compared by no layout
WEIGHT_FILES = (".pth", ".safetensors")
PICKLED_DICT = (".npy",)


@dataclass(frozen=True)
class ForeignLayout:
    layout: str                 # the registry's name: "timm", "torchvision", "cadene", "zoo"
    architecture: str           # ours: "inception_v3"
    model: str                  # the project's name for it: timm's "inception_v3", "vgg16", ...
    num_classes: int            # classes the foreign file holds
    aux: bool                   # whether it holds the AuxLogits head
    keys: Mapping[str, str]     # our state-dict key -> foreign key (NOT_WEIGHTS left out)
    reshaped: frozenset[str] = frozenset()      # foreign keys: same values, another shape
    implied_ones: frozenset[str] = frozenset()  # foreign keys a loader fills with ones if absent
    build: str | None = None    # "module:function" (num_classes) -> the project's own nn.Module
    computes: str | None = None  # how that network differs from TF's, in words (None: it does not)
    suffixes: tuple[str, ...] = WEIGHT_FILES
    source: str = ""            # where the key names were read

    @property
    def name(self) -> str:
        return f"{self.layout}:{self.model}"

    def builder(self) -> Callable:
        module, _, function = self.build.partition(":")
        return getattr(import_module(module), function)


LAYOUTS: dict[tuple[str, str], ForeignLayout] = {}  # (layout, architecture) -> layout


def register(*layouts: ForeignLayout) -> None:
    """Add layouts to the registry; a second one for the same layout and architecture is an
    error naming both."""
    for layout in layouts:
        key = (layout.layout, layout.architecture)
        if key in LAYOUTS and LAYOUTS[key] is not layout:
            raise ValueError(f"foreign layout {layout.layout!r} of {layout.architecture!r} is "
                             f"registered twice: {LAYOUTS[key].name} and {layout.name}")
        LAYOUTS[key] = layout


def foreign_layouts(architecture: str | None = None) -> dict[str, ForeignLayout]:
    """Every registered layout of ``architecture`` by layout name (all: by "layout/architecture"),
    each folder's ``foreign.py`` imported first."""
    for package in folders():
        try:
            import_module(f"{package}.foreign")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.foreign":
                raise
    return {(name if architecture else f"{name}/{arch}"): layout
            for (name, arch), layout in sorted(LAYOUTS.items())
            if architecture in (None, arch)}


def renamed(spec: Architecture, num_classes: int, aux: bool,
            rename: Callable[[str], str] = lambda key: key) -> dict[str, str]:
    """Our key -> ``rename(key)`` for every weight of ``spec``'s model with these options: the
    layout of a project whose keys differ from ours by a rule (or not at all)."""
    return {key: rename(key) for key in spec.target_layout(num_classes, aux)
            if key.rsplit(".", 1)[-1] not in NOT_WEIGHTS}


@dataclass
class ZooKeys:
    """The converter zoo's layout of an architecture: what ``zoo_keys`` returns."""
    keys: dict[str, str] = field(default_factory=dict)
    reshaped: set[str] = field(default_factory=set)
    implied_ones: set[str] = field(default_factory=set)


def zoo_keys(spec: Architecture, num_classes: int, aux: bool,
             name_scope: Callable[[str], str]) -> ZooKeys:
    """The zoo's keys (``node/parameter``, the pickled dict flattened) for ``spec``'s weights.

    The zoo (MMdnn's TF -> PyTorch emitter, as ylhz/tf_to_pytorch_model ships it) keys each
    layer's weights by the TF graph node that uses them, ``name_scope(variable scope)`` plus
    the op: ``<scope>/Conv2D`` -> {weights (OIHW), bias}, ``<scope>/BatchNorm/FusedBatchNorm``
    (``<scope>/FusedBatchNorm`` for a batch norm of its own) -> {scale, bias, mean, var}, scale
    left out where TF has no gamma (the generated model fills ones); a 1x1 conv classifier keeps
    its [classes, in, 1, 1] shape. ``name_scope`` is the architecture's: TF-Slim nets that open
    their root scope twice name their body's ops ``Root/Root/...``."""
    out = ZooKeys()
    wanted = spec.target_layout(num_classes, aux)
    for layer in spec.layers:
        if layer.is_aux and not aux:
            continue
        node, module, kind = name_scope(layer.scope), layer.module, layer.kind.name
        if kind in ("conv_bn", "conv_bn_gamma", "bn"):
            conv = f"{module}.conv" if kind != "bn" else None
            norm = f"{module}.bn" if kind != "bn" else module
            bn_node = f"{node}/BatchNorm/FusedBatchNorm" if kind != "bn" else f"{node}/FusedBatchNorm"
            if conv:
                out.keys[f"{conv}.weight"] = f"{node}/Conv2D/weights"
            for ours, theirs in (("weight", "scale"), ("bias", "bias"),
                                 ("running_mean", "mean"), ("running_var", "var")):
                out.keys[f"{norm}.{ours}"] = f"{bn_node}/{theirs}"
            if not layer.kind.variables.get("gamma"):
                out.implied_ones.add(f"{bn_node}/scale")
        elif kind in ("conv_bias", "conv_classifier", "fc_classifier"):
            op = "MatMul" if kind == "fc_classifier" else "Conv2D"
            out.keys[f"{module}.weight"] = f"{node}/{op}/weights"
            out.keys[f"{module}.bias"] = f"{node}/{op}/bias"
            if kind == "conv_classifier":
                out.reshaped.add(f"{node}/{op}/weights")
        else:
            raise ValueError(f"{spec.name}: the zoo layout has no rule for layer kind {kind!r}")
    missing = [key for key in wanted if key not in out.keys
               and key.rsplit(".", 1)[-1] not in NOT_WEIGHTS]
    if missing:
        raise AssertionError(f"{spec.name}: zoo keys out of step with the model: {missing[:3]}")
    return out
