"""Finding architectures: the folders under ``models/``, by name, by state dict, by model."""
from __future__ import annotations

import pkgutil
from collections import Counter
from functools import lru_cache
from importlib import import_module

from models.spec.architecture import Architecture

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
