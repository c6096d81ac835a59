"""A foreign weight file as flat numpy tensors, and which registered layout it is in.

``.pth`` files load with ``torch.load(weights_only=True)``, ``.safetensors`` with safetensors,
the converter zoo's ``.npy`` with ``porting.compare.pickles`` (arrays and plain containers
only); each through ``porting.files``' input rule. Nested dicts are flattened with "/" (the
zoo's ``node/parameter``); a training checkpoint's ``state_dict`` (or ``model``) entry is
taken when the file holds one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spec import Architecture
from models.spec.foreign import NOT_WEIGHTS, ForeignLayout, foreign_layouts
from porting.errors import PortError
from porting.files import check_input, open_input
from porting.read.archives import check_stored_zip

WRAPPERS = ("state_dict", "model")  # where training scripts keep the weights in a checkpoint


def read_foreign(path: Path) -> dict[str, np.ndarray]:
    """{key: array} of a ``.pth``, ``.safetensors`` or pickled ``.npy`` file."""
    if path.suffix == ".npy":
        from porting.compare.pickles import load_pickled_dict

        return _flat(path, load_pickled_dict(path))
    if path.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise PortError(f"{path}: not a foreign weight file (.pth, .pt, .bin, .safetensors or "
                        "the converter zoo's .npy)")
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                loaded = load_file(check_input(path, "weights file"))
            else:
                with open_input(path, "weights file") as file:
                    check_stored_zip(path, file)
                    loaded = torch.load(file, map_location="cpu", weights_only=True)
    except PortError:
        raise
    except Exception as err:  # torch and safetensors raise many kinds for a damaged file
        raise PortError(f"{path}: not a PyTorch weights file ({type(err).__name__})") from err
    from porting.compare.pickles import check_tree

    check_tree(path, loaded)  # a .pth is a pickle too: its memo can share one dict everywhere
    if isinstance(loaded, dict):
        for wrapper in WRAPPERS:
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict):
        raise PortError(f"{path}: holds {type(loaded).__name__}, not a state dict")

    def numpy(value):
        if not isinstance(value, torch.Tensor):
            raise PortError(f"{path}: a value of type {type(value).__name__} in its state dict")
        value = value.detach()
        return (value.float() if value.is_floating_point() else value).numpy()

    return _flat(path, loaded, convert=numpy)


def _flat(path, tree: dict, prefix: str = "", convert=np.asarray) -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(path, value, f"{name}/", convert))
        elif isinstance(value, np.ndarray) or hasattr(value, "shape"):
            out[name] = convert(value)
    if not out and not prefix:
        raise PortError(f"{path}: holds no tensors")
    return out


@dataclass
class Mapped:
    """A foreign file's tensors in our layout, where its layout has them."""
    layout: ForeignLayout
    tensors: dict[str, np.ndarray]  # our key -> the foreign tensor, in our shape
    missing: dict[str, str]         # our key -> its foreign key, which the file lacks
    misshapen: dict[str, str]       # our key -> why its foreign tensor does not fit
    extra: list[str]                # foreign keys no key of ours maps to


def choose_layout(path: Path, tensors: dict, spec: Architecture,
                  name: str | None = None) -> ForeignLayout:
    """The registered layout of ``spec`` that ``name`` names, or (``name`` None) the one whose
    keys the file holds most of in the layout's shapes (timm's Inception v4 keys are Cadene's:
    only the classifier's 1000 or 1001 classes tell them apart); PortError naming the file
    when none fits."""
    layouts = {key: layout for key, layout in foreign_layouts(spec.name).items()
               if path.suffix in layout.suffixes or path.suffix in (".pt", ".bin")
               and ".pth" in layout.suffixes}
    if name is not None:
        if name not in layouts:
            raise PortError(f"{path}: no {name!r} layout of {spec.title} for {path.suffix} "
                            f"files (known: {', '.join(layouts) or 'none'})")
        return layouts[name]
    def fits(layout: ForeignLayout) -> float:
        shapes = spec.target_layout(layout.num_classes, layout.aux)
        return sum(theirs in layout.implied_ones and theirs not in tensors
                   or theirs in tensors and _fits(tensors[theirs], shapes[ours], theirs, layout)
                   for ours, theirs in layout.keys.items()) / len(layout.keys)

    scores = {key: fits(layout) for key, layout in layouts.items()}
    best = max(scores, key=lambda key: (scores[key], -len(layouts[key].keys)), default=None)
    if best is None or scores[best] < 0.5:
        found = ", ".join(f"{key} {score:.0%}" for key, score in scores.items())
        raise PortError(f"{path}: its keys fit no layout of {spec.title} (keys found per "
                        f"layout: {found or 'no layout for this suffix'}); pass --layout")
    return layouts[best]


def _fits(value: np.ndarray, shape: tuple, theirs: str, layout: ForeignLayout) -> bool:
    """Whether a foreign tensor fills our tensor of ``shape`` (as is, or reshaped where the
    layout says its values are ours in another shape)."""
    return value.shape == shape or (theirs in layout.reshaped
                                    and value.size == int(np.prod(shape)))


def map_to_ours(tensors: dict[str, np.ndarray], layout: ForeignLayout,
                shapes: dict[str, tuple]) -> Mapped:
    """The foreign tensors under our keys and in our shapes (``shapes``: our layout's)."""
    mapped, missing, misshapen = {}, {}, {}
    for ours, theirs in layout.keys.items():
        if theirs not in tensors:
            if theirs in layout.implied_ones:
                mapped[ours] = np.ones(shapes[ours], np.float32)
            else:
                missing[ours] = theirs
            continue
        value = tensors[theirs]
        if not _fits(value, shapes[ours], theirs, layout):
            misshapen[ours] = f"{theirs} is {list(value.shape)}, ours {list(shapes[ours])}"
            continue
        mapped[ours] = value.reshape(shapes[ours]) if value.shape != shapes[ours] else value
    used = set(layout.keys.values())
    extra = [key for key in tensors if key not in used
             and key.rsplit(".", 1)[-1] not in NOT_WEIGHTS]
    return Mapped(layout, mapped, missing, misshapen, extra)
