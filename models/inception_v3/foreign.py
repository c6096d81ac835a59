"""Inception v3 in other projects' layouts (``models.spec.foreign``).

- timm ``inception_v3`` (``timm/models/inception_v3.py``) and torchvision ``inception_v3``
  (``torchvision/models/inception.py``): our keys exactly (ours are theirs), 1000 classes, aux
  head. Both networks count the zero padding in the 3x3 average pools of Mixed_5b..Mixed_7c
  (``F.avg_pool2d(x, 3, 1, 1)``, ``count_include_pad`` left True) where TF's SAME pool divides by
  the real inputs only: same weights, other logits.
- Cadene's pretrainedmodels ``inceptionv3`` (``pretrainedmodels/models/torchvision_models.py``):
  torchvision's network with ``fc`` renamed ``last_linear``; 1000 classes. Not installed here
  (its pinned dependencies pull torchvision from PyPI), so its architecture is not run: it is
  torchvision's.
- The converter zoo's ``tf_inception_v3.npy`` (ylhz/tf_to_pytorch_model, MMdnn's emitter): TF
  graph node names, 1001 classes, aux head; TF-Slim opens the ``InceptionV3`` scope twice, so
  the body's nodes are ``InceptionV3/InceptionV3/...`` and the heads' ``InceptionV3/Logits/...``.
"""
from models.inception_v3.spec import SPEC
from models.spec import inception_op_scope
from models.spec.foreign import PICKLED_DICT, ForeignLayout, register, renamed, zoo_keys

PADDED_POOLS = ("its 3x3 average pools count the zero padding (count_include_pad=True); TF's "
                "SAME pools divide by the real inputs only")


def timm_model(num_classes: int):
    from models.third_party import timm

    return timm().create_model("inception_v3", pretrained=False, num_classes=num_classes,
                               aux_logits=True)


def torchvision_model(num_classes: int):
    from models.third_party import torchvision_models

    return torchvision_models().Inception3(num_classes=num_classes, aux_logits=True,
                                           transform_input=False, init_weights=False)


_ZOO = zoo_keys(SPEC, 1001, True, inception_op_scope)

register(
    ForeignLayout("timm", SPEC.name, "inception_v3", 1000, True, renamed(SPEC, 1000, True),
                  build="models.inception_v3.foreign:timm_model", computes=PADDED_POOLS,
                  source="timm/models/inception_v3.py"),
    ForeignLayout("torchvision", SPEC.name, "inception_v3", 1000, True,
                  renamed(SPEC, 1000, True),
                  build="models.inception_v3.foreign:torchvision_model", computes=PADDED_POOLS,
                  source="torchvision/models/inception.py"),
    ForeignLayout("cadene", SPEC.name, "inceptionv3", 1000, True,
                  renamed(SPEC, 1000, True,
                          lambda key: "last_linear." + key[3:] if key.startswith("fc.") else key),
                  computes=PADDED_POOLS,
                  source="Cadene/pretrained-models.pytorch pretrainedmodels/models/"
                         "torchvision_models.py (modify_inceptionv3)"),
    ForeignLayout("zoo", SPEC.name, "tf_inception_v3.npy", 1001, True, _ZOO.keys,
                  frozenset(_ZOO.reshaped), frozenset(_ZOO.implied_ones), suffixes=PICKLED_DICT,
                  source="ylhz/tf_to_pytorch_model torch_nets/tf_inception_v3.py"),
)
