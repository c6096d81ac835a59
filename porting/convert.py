"""Checkpoint variables -> PyTorch state dict, with strict accounting.

Every model variable of the checkpoint is consumed exactly once, every parameter and buffer of
the target model is filled, every shape is checked before any data is read. Variables that are
not model weights (global_step, optimizer slots, moving-average shadows: ``porting.leftovers``)
are listed as skipped; anything else left over is an error that names it.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from models.spec import (EMA_SUFFIX, Architecture, ClassLayout, Layer, UnknownArchitecture,
                         architectures, get_architecture, with_root)
from porting.errors import PortError
from porting.leftovers import non_model_reason
from porting.read.api import CheckpointReader


@dataclass(frozen=True)
class PortOptions:
    num_classes: int = 1000  # 1000 drops TF's background row 0 (timm's layout); 1001 keeps it
    aux: bool = True         # port the AuxLogits head
    fold_bn: bool = False    # fold batch norm into conv weights and biases (deploy variant)
    ema: bool = False        # take /ExponentialMovingAverage shadows where present
    arch: str | None = None  # force the architecture (default: told by the variables' root scope)
    allow_nonfinite: bool = False  # port NaN/Inf weights instead of refusing the checkpoint

    def describe(self) -> str:
        flags = [f"{self.num_classes} classes", "aux" if self.aux else "no aux"]
        flags += ["BN folded"] * self.fold_bn + ["EMA weights"] * self.ema
        return ", ".join(flags)


@dataclass
class Conversion:
    state_dict: "OrderedDict[str, np.ndarray]"  # C-contiguous little-endian float32 / int64
    mapped: dict[str, str] = field(default_factory=dict)   # TF variable -> PyTorch key(s)
    skipped: dict[str, str] = field(default_factory=dict)  # TF variable -> reason
    architecture: Architecture | None = None
    options: PortOptions = PortOptions()  # as applied: no aux (or folding) for a net without one
    classes: ClassLayout | None = None  # the checkpoint's classes and those the port keeps
    root: str | None = None  # the checkpoint's root scope (an alias where it is a renamed copy)

    @property
    def source_classes(self) -> int:
        return self.classes.source

    @property
    def renamed_root(self) -> str | None:
        """The checkpoint's root scope where it is a renamed copy (``AdvInceptionV3``), else
        None."""
        return self.root if self.root != self.architecture.tf_root else None


def _fmt_names(names, limit: int = 4) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _model_roots(variable_names) -> Counter:
    """Root scope -> number of model variables under it (training leftovers aside)."""
    return Counter(name.split("/", 1)[0] for name in variable_names
                   if "/" in name and non_model_reason(name) is None)


def _by_root() -> dict[str, Architecture]:
    """Every root scope an architecture's checkpoints use (its own, and renamed copies'
    ``aliases``) -> the architecture; a scope claimed twice is a bug in the specs."""
    by_root: dict[str, Architecture] = {}
    for spec in architectures().values():
        for root in (spec.tf_root, *spec.aliases):
            if root in by_root:
                raise AssertionError(f"root scope {root} claimed by {by_root[root].name} and "
                                     f"{spec.name}")
            by_root[root] = spec
    return by_root


def detect_architecture(variable_names) -> Architecture:
    """The architecture whose TF-Slim root scope (or a renamed copy's, ``Architecture.aliases``)
    holds the model variables among ``variable_names`` (training leftovers aside);
    UnknownArchitecture naming the root scopes found otherwise."""
    roots = _model_roots(variable_names)
    by_root = _by_root()
    matches = [by_root[root] for root in roots if root in by_root]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(f"{root} ({count} variables)" for root, count in roots.most_common(4))
    if len({spec.name for spec in matches}) == 1:
        raise UnknownArchitecture(f"variables of several {matches[0].title} models ({found}); "
                                  "a port takes a checkpoint of one")
    known = ", ".join(f"{spec.tf_root} ({spec.name})" for spec in architectures().values())
    if matches:
        raise UnknownArchitecture(f"variables of several architectures ({found}); pass --arch")
    raise UnknownArchitecture(f"no known architecture: root scopes {found or 'none'} "
                              f"(known: {known})")


def architecture_of(reader: CheckpointReader, options: PortOptions) -> Architecture:
    """``--arch`` if given; else what the reader knows (Keras weights) or the root scope of the
    checkpoint's variables tells."""
    path = reader.source.files[0]
    try:
        if options.arch:
            return get_architecture(options.arch)
        known = getattr(reader, "architecture", None)
        return known or detect_architecture(reader.variables())
    except UnknownArchitecture as err:
        raise PortError(f"{path}: {err}") from err


def root_scope(reader: CheckpointReader, spec: Architecture) -> str:
    """The root scope under which ``reader``'s checkpoint stores ``spec``'s variables: its
    ``tf_root``, or the alias of a renamed copy (``AdvInceptionV3``); ``tf_root`` when it holds
    neither (the plan then says what is missing). PortError if it holds several copies."""
    roots = _model_roots(reader.variables())
    present = [root for root in (spec.tf_root, *spec.aliases) if root in roots]
    if len(present) > 1:
        found = ", ".join(f"{root} ({roots[root]} variables)" for root in present)
        raise PortError(f"{reader.source.files[0]}: variables of several {spec.title} models "
                        f"({found}); a port takes a checkpoint of one")
    return present[0] if present else spec.tf_root


def plan_variables(reader: CheckpointReader, options: PortOptions,
                   spec: Architecture) -> tuple[list[Layer], dict, dict]:
    """Decide, from the index alone, which layers of ``spec`` to port, where each value comes
    from, and what is skipped. Returns (layers, source name for each model variable, skipped).

    Source and skipped names are the checkpoint's own: under a renamed root scope
    (``root_scope``) where the checkpoint is a renamed copy."""
    available = reader.variables()
    path = reader.source.files[0]
    root = root_scope(reader, spec)
    stored = {with_root(name, root, spec.tf_root): name for name in available}  # own -> stored
    own = {name: own_name for own_name, name in stored.items()}                # stored -> own
    layers = [layer for layer in spec.layers if options.aux or not layer.is_aux]
    wanted = {name for layer in layers for name in layer.variables().values()}
    aux_names = {name for layer in spec.layers if layer.is_aux
                 for name in layer.variables().values()}

    if not wanted & stored.keys() - aux_names:
        sample = _fmt_names([n for n in available if non_model_reason(n) is None], 3) or "nothing"
        raise PortError(f"{path}: not a TF-Slim {spec.title} checkpoint: none of its "
                        f"{len(wanted)} variables found (it holds {sample})")
    if options.aux and spec.has_aux and not aux_names & stored.keys():
        raise PortError(f"{path}: checkpoint has no AuxLogits variables; "
                        "port it with --no-aux")

    shadows = {n[: -len(EMA_SUFFIX)] for n in stored if n.endswith(EMA_SUFFIX)}
    if options.ema and not shadows & wanted:
        raise PortError(f"{path}: --ema asked for, but the checkpoint holds no "
                        f"{EMA_SUFFIX[1:]} shadow variables of the model")

    sources, skipped = {}, {}
    for name in wanted & stored.keys():
        if options.ema and name in shadows:
            sources[name] = stored[name + EMA_SUFFIX]
            skipped[stored[name]] = "replaced by its moving average (--ema)"
        else:
            sources[name] = stored[name]
    missing = wanted - stored.keys()
    if missing:
        shown = {with_root(name, spec.tf_root, root) for name in missing}
        raise PortError(f"{path}: {len(missing)} model variables missing: {_fmt_names(shown)}")

    unexpected = []
    used = set(sources.values())
    for name in available:
        if own[name] in wanted or name in used:
            continue
        if own[name] in aux_names:
            skipped[name] = "AuxLogits head left out (--no-aux)"
        elif (reason := non_model_reason(name)) is not None:
            skipped[name] = reason
        else:
            unexpected.append(name)
    if unexpected:
        raise PortError(f"{path}: {len(unexpected)} variables with no place in {spec.title}: "
                        f"{_fmt_names(unexpected)}")
    return layers, sources, skipped


def _check_shapes(reader, spec: Architecture, layers, sources, options) -> ClassLayout:
    """Check every variable's dtype and shape against the target; return the class layout of
    the port (the source's classes and those kept)."""
    available = reader.variables()
    path = reader.source.files[0]
    logits_bias = sources[spec.classifier.variables()["bias"]]
    if len(available[logits_bias].shape) != 1:
        raise PortError(f"{path}: {logits_bias} has shape {list(available[logits_bias].shape)}, "
                        "expected [classes]")
    source_classes = available[logits_bias].shape[0]
    try:
        classes = ClassLayout.of(spec.eval, options.num_classes, source_classes)
    except ValueError:
        raise PortError(f"{path}: checkpoint classifier has {source_classes} classes; "
                        f"--num-classes {options.num_classes} cannot be made from it") from None
    for layer in layers:
        expected_shapes = layer.kind.tf_shapes(layer.shape, source_classes)
        for role, name in layer.variables().items():
            info = available[sources[name]]
            expected = expected_shapes[role]
            if info.shape != expected:
                raise PortError(f"{path}: {sources[name]} has shape {list(info.shape)}, "
                                f"expected {list(expected)}")
            if info.dtype.kind != "f":
                raise PortError(f"{path}: {sources[name]} has dtype {info.dtype}, expected float")
    return classes


def _check_finite(path, name: str, value: np.ndarray) -> None:
    """PortError naming a variable that holds NaN or Inf: a damaged or diverged checkpoint
    would otherwise be ported silently (and fold into every later layer's output)."""
    if value.size == 0 or (np.isfinite(value.min()) and np.isfinite(value.max())):
        return  # NaN propagates through min and max, and an Inf is one of them: no temporary
    bad = value.size - int(np.isfinite(value).sum())
    if bad:
        raise PortError(f"{path}: {name} holds {bad} NaN/Inf value{'s' * (bad > 1)} of "
                        f"{value.size}; --allow-nonfinite ports it anyway")


@dataclass(frozen=True)
class Plan:
    """Everything a port decides from the index alone, before any tensor is read."""
    architecture: Architecture
    layers: list[Layer]
    sources: dict[str, str]   # model variable -> checkpoint variable that supplies it
    skipped: dict[str, str]   # checkpoint variable -> reason
    layout: "OrderedDict[str, tuple[int, ...]]"
    classes: ClassLayout      # the checkpoint's classes and those the port keeps
    root: str                 # the root scope its variables are stored under

    @property
    def source_classes(self) -> int:
        return self.classes.source


def plan(reader: CheckpointReader, options: PortOptions) -> Plan:
    """Names, shapes and dtypes checked against the target; PortError on anything wrong."""
    spec = architecture_of(reader, options)
    layers, sources, skipped = plan_variables(reader, options, spec)
    classes = _check_shapes(reader, spec, layers, sources, options)
    layout = spec.target_layout(options.num_classes, options.aux, options.fold_bn)
    return Plan(spec, layers, sources, skipped, layout, classes, root_scope(reader, spec))


def convert(reader: CheckpointReader, options: PortOptions = PortOptions()) -> Conversion:
    """Build the PyTorch state dict for ``options`` from ``reader``'s checkpoint."""
    checked = plan(reader, options)
    layers, sources, skipped, layout = checked.layers, checked.sources, checked.skipped, checked.layout
    drop = checked.classes.dropped  # TF's background, where the port leaves it out

    tensors, mapped = {}, {}
    path = reader.source.files[0]
    for layer in layers:
        names = layer.variables()
        values = {role: reader.read(sources[name]) for role, name in names.items()}
        if not options.allow_nonfinite:
            for role, value in values.items():
                _check_finite(path, reader.stored_name(sources[names[role]]), value)
        tensors.update(layer.kind.tensors(layer.module, values, options.fold_bn, drop))
        for role, name in names.items():
            mapped[sources[name]] = layer.label(role)

    # Accounting: exactly the target's keys, each with the target's shape.
    if tensors.keys() != layout.keys():
        extra, missing = tensors.keys() - layout.keys(), layout.keys() - tensors.keys()
        raise AssertionError(f"name map out of step with the model: extra {sorted(extra)[:3]}, "
                             f"unfilled {sorted(missing)[:3]}")
    for key, shape in layout.items():
        if tensors[key].shape != shape:
            raise AssertionError(f"{key}: produced {list(tensors[key].shape)}, model wants {list(shape)}")
    state_dict = OrderedDict((key, tensors[key]) for key in layout)
    spec = checked.architecture  # nothing to fold in a net without batch norm (VGG): not folded
    applied = replace(options, aux=options.aux and spec.has_aux,
                      fold_bn=options.fold_bn and spec.folds_batch_norm)
    return Conversion(state_dict, mapped, dict(sorted(skipped.items())),
                      checked.architecture, applied, checked.classes, checked.root)
