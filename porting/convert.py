"""Checkpoint variables -> PyTorch state dict, with strict accounting.

Every model variable of the checkpoint is consumed exactly once, every parameter and buffer of
the target model is filled, every shape is checked before any data is read. Variables that are
not model weights (global_step, optimizer slots, moving-average shadows) are listed as skipped;
anything else left over is an error that names it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from models.folding import fold_batch_norm
from models.layout import target_layout
from porting.errors import PortError
from porting.name_map import CLASSIFIER, CONV_BN, EMA_SUFFIX, LAYERS, Layer, non_model_reason
from porting.readers import CheckpointReader

TF_CLASSES = 1001  # TF-Slim ImageNet classifiers: index 0 is "background"


@dataclass(frozen=True)
class PortOptions:
    num_classes: int = 1000  # 1000 drops TF's background row 0 (timm's layout); 1001 keeps it
    aux: bool = True         # port the AuxLogits head
    fold_bn: bool = False    # fold batch norm into conv weights and biases (deploy variant)
    ema: bool = False        # take /ExponentialMovingAverage shadows where present

    def describe(self) -> str:
        flags = [f"{self.num_classes} classes", "aux" if self.aux else "no aux"]
        flags += ["BN folded"] * self.fold_bn + ["EMA weights"] * self.ema
        return ", ".join(flags)


@dataclass
class Conversion:
    state_dict: "OrderedDict[str, np.ndarray]"  # C-contiguous little-endian float32 / int64
    mapped: dict[str, str] = field(default_factory=dict)   # TF variable -> PyTorch key(s)
    skipped: dict[str, str] = field(default_factory=dict)  # TF variable -> reason
    source_classes: int = 0


def _fmt_names(names, limit: int = 4) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def destination_label(layer: Layer, role: str) -> str:
    """Where a checkpoint variable lands, as reports show it: ``Mixed_5b.branch1x1 (weight)``."""
    return f"{layer.torch_name} ({role})"


def plan_variables(reader: CheckpointReader, options: PortOptions) -> tuple[list[Layer], dict, dict]:
    """Decide, from the index alone, which layers to port, where each value comes from, and
    what is skipped. Returns (layers, source name for each model variable, skipped)."""
    available = reader.variables()
    path = reader.source.files[0]
    layers = [layer for layer in LAYERS if options.aux or not layer.is_aux]
    wanted = {name for layer in layers for name in layer.variables().values()}
    aux_names = {name for layer in LAYERS if layer.is_aux for name in layer.variables().values()}

    if not wanted & available.keys() - aux_names:
        sample = _fmt_names([n for n in available if non_model_reason(n) is None], 3) or "nothing"
        raise PortError(f"{path}: not a TF-Slim Inception v3 checkpoint: none of its "
                        f"{len(wanted)} variables found (it holds {sample})")
    if options.aux and not aux_names & available.keys():
        raise PortError(f"{path}: checkpoint has no AuxLogits variables; "
                        "port it with --no-aux")

    shadows = {n[: -len(EMA_SUFFIX)] for n in available if n.endswith(EMA_SUFFIX)}
    if options.ema and not shadows & wanted:
        raise PortError(f"{path}: --ema asked for, but the checkpoint holds no "
                        f"{EMA_SUFFIX[1:]} shadow variables of the model")

    sources, skipped = {}, {}
    for name in wanted & available.keys():
        if options.ema and name in shadows:
            sources[name] = name + EMA_SUFFIX
            skipped[name] = "replaced by its moving average (--ema)"
        else:
            sources[name] = name
    missing = wanted - available.keys()
    if missing:
        raise PortError(f"{path}: {len(missing)} model variables missing: {_fmt_names(missing)}")

    unexpected = []
    for name in available:
        if name in wanted or name in sources.values():
            continue
        if name in aux_names:
            skipped[name] = "AuxLogits head left out (--no-aux)"
        elif (reason := non_model_reason(name)) is not None:
            skipped[name] = reason
        else:
            unexpected.append(name)
    if unexpected:
        raise PortError(f"{path}: {len(unexpected)} variables with no place in Inception v3: "
                        f"{_fmt_names(unexpected)}")
    return layers, sources, skipped


def _expected_tf_shape(kind: str, role: str, weight_shape: tuple, classes: int) -> tuple:
    """Shape a TF variable must have to fill a PyTorch layer whose weight has ``weight_shape``."""
    if kind == CONV_BN:  # conv OIHW <- TF HWIO; batch-norm vectors per output channel
        out_chs, in_chs, kh, kw = weight_shape
        return (kh, kw, in_chs, out_chs) if role == "weight" else (out_chs,)
    in_chs = weight_shape[1]  # classifier [C, in] <- TF [1, 1, in, C]
    return (1, 1, in_chs, classes) if role == "weight" else (classes,)


def _check_shapes(reader, layers, sources, layout, options) -> int:
    """Check every variable's dtype and shape against the target; return the source's classes."""
    available = reader.variables()
    path = reader.source.files[0]
    logits_bias = sources[CLASSIFIER.variables()["bias"]]
    if len(available[logits_bias].shape) != 1:
        raise PortError(f"{path}: {logits_bias} has shape {list(available[logits_bias].shape)}, "
                        "expected [classes]")
    source_classes = available[logits_bias].shape[0]
    if options.num_classes != source_classes and not (
            options.num_classes == TF_CLASSES - 1 and source_classes == TF_CLASSES):
        raise PortError(f"{path}: checkpoint classifier has {source_classes} classes; "
                        f"--num-classes {options.num_classes} cannot be made from it")
    for layer in layers:
        weight_key = "conv.weight" if layer.kind == CONV_BN else "weight"
        weight_shape = layout[f"{layer.torch_name}.{weight_key}"]
        for role, name in layer.variables().items():
            info = available[sources[name]]
            expected = _expected_tf_shape(layer.kind, role, weight_shape, source_classes)
            if info.shape != expected:
                raise PortError(f"{path}: {sources[name]} has shape {list(info.shape)}, "
                                f"expected {list(expected)}")
            if info.dtype.kind != "f":
                raise PortError(f"{path}: {sources[name]} has dtype {info.dtype}, expected float")
    return source_classes


def _f32(array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian float32, as the writers store it; an array (or view) already
    in that form is used as it is, since readers hand out a fresh buffer per read."""
    return np.ascontiguousarray(array, dtype="<f4")


def _conv_bn_tensors(prefix: str, v: dict[str, np.ndarray], fold_bn: bool) -> dict:
    weight = v["weight"].transpose(3, 2, 0, 1)  # HWIO -> OIHW, a view until it is copied
    if fold_bn:
        # The checkpoint's own precision in, float64 math, float32 out: rounded once.
        weight, bias = fold_batch_norm(weight, v["beta"], v["mean"], v["var"], dtype="<f4")
        return {f"{prefix}.conv.weight": weight, f"{prefix}.conv.bias": bias}
    return {
        f"{prefix}.conv.weight": _f32(weight),
        f"{prefix}.bn.weight": np.ones(len(v["beta"]), "<f4"),  # TF-Slim batch norm has no gamma
        f"{prefix}.bn.bias": _f32(v["beta"]),
        f"{prefix}.bn.running_mean": _f32(v["mean"]),
        f"{prefix}.bn.running_var": _f32(v["var"]),
        f"{prefix}.bn.num_batches_tracked": np.array(0, "<i8"),
    }


def _logits_tensors(prefix: str, v: dict[str, np.ndarray], drop_background: bool) -> dict:
    weight, bias = v["weight"][0, 0].T, v["bias"]  # [1, 1, in, C] -> [C, in]
    if drop_background:
        weight, bias = weight[1:], bias[1:]
    return {f"{prefix}.weight": _f32(weight), f"{prefix}.bias": _f32(bias)}


@dataclass(frozen=True)
class Plan:
    """Everything a port decides from the index alone, before any tensor is read."""
    layers: list[Layer]
    sources: dict[str, str]   # model variable -> checkpoint variable that supplies it
    skipped: dict[str, str]   # checkpoint variable -> reason
    layout: "OrderedDict[str, tuple[int, ...]]"
    source_classes: int


def plan(reader: CheckpointReader, options: PortOptions) -> Plan:
    """Names, shapes and dtypes checked against the target; PortError on anything wrong."""
    layers, sources, skipped = plan_variables(reader, options)
    layout = target_layout(options.num_classes, options.aux, options.fold_bn)
    source_classes = _check_shapes(reader, layers, sources, layout, options)
    return Plan(layers, sources, skipped, layout, source_classes)


def convert(reader: CheckpointReader, options: PortOptions = PortOptions()) -> Conversion:
    """Build the PyTorch state dict for ``options`` from ``reader``'s checkpoint."""
    checked = plan(reader, options)
    layers, sources, skipped, layout = checked.layers, checked.sources, checked.skipped, checked.layout
    source_classes = checked.source_classes
    drop_background = source_classes == TF_CLASSES and options.num_classes == TF_CLASSES - 1

    tensors, mapped = {}, {}
    for layer in layers:
        names = layer.variables()
        values = {role: reader.read(sources[name]) for role, name in names.items()}
        if layer.kind == CONV_BN:
            produced = _conv_bn_tensors(layer.torch_name, values, options.fold_bn)
        else:
            produced = _logits_tensors(layer.torch_name, values, drop_background)
        for role, name in names.items():
            mapped[sources[name]] = destination_label(layer, role)
        tensors.update(produced)

    # Accounting: exactly the target's keys, each with the target's shape.
    if tensors.keys() != layout.keys():
        extra, missing = tensors.keys() - layout.keys(), layout.keys() - tensors.keys()
        raise AssertionError(f"name map out of step with the model: extra {sorted(extra)[:3]}, "
                             f"unfilled {sorted(missing)[:3]}")
    for key, shape in layout.items():
        if tensors[key].shape != shape:
            raise AssertionError(f"{key}: produced {list(tensors[key].shape)}, model wants {list(shape)}")
    state_dict = OrderedDict((key, tensors[key]) for key in layout)
    return Conversion(state_dict, mapped, dict(sorted(skipped.items())), source_classes)
