"""VGG-16/19 in other projects' layouts (``models.spec.foreign``).

- torchvision ``vgg16`` / ``vgg19`` (``torchvision/models/vgg.py``): our keys exactly, 1000
  classes; at 224 px its ``AdaptiveAvgPool2d((7, 7))`` is the identity, so it computes TF's
  logits (nothing of its own to run).
- timm ``vgg16`` / ``vgg19`` (``timm/models/vgg.py``): the same ``features.N``; the head is a
  ``ConvMlp``: fc6 stored as the 7x7 conv it is in TF (``pre_logits.fc1``, [4096, 512, 7, 7],
  the same values as our Linear's [4096, 25088] in torch's flattening order), fc7 as a 1x1 conv
  (``pre_logits.fc2``), fc8 as ``head.fc``.
- Cadene's pretrainedmodels ``vgg16`` / ``vgg19`` (``pretrainedmodels/models/
  torchvision_models.py``, ``modify_vggs``): torchvision's with ``features`` renamed
  ``_features`` and the classifier's Linears ``linear0``, ``linear1``, ``last_linear``.
"""
from models.spec.foreign import ForeignLayout, register, renamed
from models.vgg.spec import SPECS

_TIMM_HEAD = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2",
              "classifier.6": "head.fc"}
_CADENE_HEAD = {"classifier.0": "linear0", "classifier.3": "linear1",
                "classifier.6": "last_linear"}


def _head(names: dict[str, str], features: str = "features"):
    def rename(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        if module in names:
            return f"{names[module]}.{leaf}"
        return features + key[len("features"):]
    return rename


for _spec in SPECS:
    _model = _spec.torchvision_keys  # "vgg16"
    register(
        ForeignLayout("torchvision", _spec.name, _model, 1000, False, renamed(_spec, 1000, False),
                      source="torchvision/models/vgg.py"),
        ForeignLayout("timm", _spec.name, _model, 1000, False,
                      renamed(_spec, 1000, False, _head(_TIMM_HEAD)),
                      reshaped=frozenset({"pre_logits.fc1.weight", "pre_logits.fc2.weight"}),
                      source="timm/models/vgg.py"),
        ForeignLayout("cadene", _spec.name, _model, 1000, False,
                      renamed(_spec, 1000, False, _head(_CADENE_HEAD, "_features")),
                      source="Cadene/pretrained-models.pytorch pretrainedmodels/models/"
                             "torchvision_models.py (modify_vggs)"),
    )
