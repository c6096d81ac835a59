"""Finding architectures: the folders under ``models/``, by name, by state dict, by model."""
from __future__ import annotations

import pkgutil
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


def folders() -> dict[str, tuple[Architecture, ...]]:
    """Each architecture folder, by package (``models.resnet``), with the architectures its
    ``spec.py`` defines; what a folder keeps beside its spec (its ``releases.json``) is found
    through the package."""
    return dict(_folders())


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


def architecture_of_model(model) -> Architecture:
    """The architecture whose PyTorch class ``model`` is an instance of (no torch import)."""
    cls = type(model)
    for spec in architectures().values():
        if spec.model == f"{cls.__module__}:{cls.__qualname__}":
            return spec
    raise UnknownArchitecture(f"{cls.__qualname__} is no model of a known architecture")
