"""Inception-ResNet-v2 in other projects' layouts (``models.spec.foreign``).

- timm ``inception_resnet_v2`` (``timm/models/inception_resnet_v2.py``): our keys without the
  aux head (timm has none), 1000 classes; its pools exclude padding as TF's do, so it computes
  TF's logits with TF's weights (nothing of its own to run).
- Cadene's pretrainedmodels ``inceptionresnetv2`` (``pretrainedmodels/models/
  inceptionresnetv2.py``, which timm's is taken from): the same keys with the classifier named
  ``last_linear`` instead of ``classif``, 1001 classes (background kept), no aux head.
- The converter zoo's ``tf_inc_res_v2.npy`` / ``tf_ens_adv_inc_res_v2.npy`` (ylhz/
  tf_to_pytorch_model, MMdnn's emitter): TF graph node names (body under
  ``InceptionResnetV2/InceptionResnetV2/``), 1001 classes, aux head; ``Logits/Logits`` is a
  fully connected layer, its node ``.../MatMul`` (MMdnn's dense naming).
"""
from models.inception_resnet_v2.spec import SPEC
from models.spec import inception_op_scope
from models.spec.foreign import PICKLED_DICT, ForeignLayout, register, renamed, zoo_keys


def _last_linear(key: str) -> str:
    return "last_linear." + key[len("classif."):] if key.startswith("classif.") else key


_ZOO = zoo_keys(SPEC, 1001, True, inception_op_scope)

register(
    ForeignLayout("timm", SPEC.name, "inception_resnet_v2", 1000, False,
                  renamed(SPEC, 1000, False), source="timm/models/inception_resnet_v2.py"),
    ForeignLayout("cadene", SPEC.name, "inceptionresnetv2", 1001, False,
                  renamed(SPEC, 1001, False, _last_linear),
                  source="Cadene/pretrained-models.pytorch pretrainedmodels/models/"
                         "inceptionresnetv2.py"),
    ForeignLayout("zoo", SPEC.name, "tf_inc_res_v2.npy", 1001, True, _ZOO.keys,
                  frozenset(_ZOO.reshaped), frozenset(_ZOO.implied_ones), suffixes=PICKLED_DICT,
                  source="ylhz/tf_to_pytorch_model torch_nets/tf_inc_res_v2.py"),
)
