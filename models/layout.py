"""The state-dict layout of ``models.inception_v3.InceptionV3`` as data, readable without torch.

The converter checks every checkpoint shape against the model it fills; importing torch and
building the model for that would double a port's run time. ``inception_v3_layout.json``
records each layer of the model (its name, and its weight shape or input features) in the
model's own order; ``target_layout`` expands it into the exact keys and shapes of
``InceptionV3(num_classes, aux_logits, fold_bn).state_dict()``. tests/test_layout.py checks
that it does, for every variant. After changing the model, regenerate the file with
``python -m models.layout``.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

LAYOUT_FILE = Path(__file__).with_name("inception_v3_layout.json")
AUX_PREFIX = "AuxLogits."
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # state, not parameters


@lru_cache(maxsize=1)
def _layers() -> tuple[dict, ...]:
    return tuple(json.loads(LAYOUT_FILE.read_text())["layers"])


def target_layout(num_classes: int, aux: bool = True,
                  fold_bn: bool = False) -> "OrderedDict[str, tuple[int, ...]]":
    """Keys and shapes of ``InceptionV3(num_classes, aux, fold_bn).state_dict()``, in order."""
    layout: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for layer in _layers():
        name = layer["name"]
        if name.startswith(AUX_PREFIX) and not aux:
            continue
        if layer["kind"] == "linear":
            layout[f"{name}.weight"] = (num_classes, layer["in_features"])
            layout[f"{name}.bias"] = (num_classes,)
            continue
        weight = tuple(layer["weight"])  # [out, in, kh, kw]
        layout[f"{name}.conv.weight"] = weight
        if fold_bn:
            layout[f"{name}.conv.bias"] = weight[:1]
        else:
            for key in ("weight", "bias", "running_mean", "running_var"):
                layout[f"{name}.bn.{key}"] = weight[:1]
            layout[f"{name}.bn.num_batches_tracked"] = ()
    return layout


def parameter_count(num_classes: int, aux: bool = True, fold_bn: bool = False) -> int:
    """Number of learned parameters (buffers excluded) of that model."""
    return sum(math.prod(shape) for key, shape in target_layout(num_classes, aux, fold_bn).items()
               if key.rsplit(".", 1)[1] not in BUFFERS)


def describe_model() -> dict:
    """The layout file's content, taken from the model definition itself (imports torch)."""
    from torch import nn

    from models.inception_v3 import BasicConv2d, InceptionV3

    layers = []
    for name, module in InceptionV3(1001, aux_logits=True, device="meta").named_modules():
        if isinstance(module, BasicConv2d):
            layers.append({"name": name, "kind": "conv_bn", "weight": list(module.conv.weight.shape)})
        elif isinstance(module, nn.Linear):
            layers.append({"name": name, "kind": "linear", "in_features": module.in_features})
    return {"model": "models.inception_v3.InceptionV3", "layers": layers}


def _dump(document: dict) -> str:
    lines = ",\n".join(f"    {json.dumps(layer)}" for layer in document["layers"])
    return f'{{\n  "model": {json.dumps(document["model"])},\n  "layers": [\n{lines}\n  ]\n}}\n'


if __name__ == "__main__":
    LAYOUT_FILE.write_text(_dump(describe_model()))
    print(f"wrote {LAYOUT_FILE}")
