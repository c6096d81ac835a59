"""Inception v4 in other projects' layouts (``models.spec.foreign``).

- timm ``inception_v4`` (``timm/models/inception_v4.py``): our keys without the aux head (timm
  has none), 1000 classes; its pools exclude padding as TF's do (nothing of its own to run).
- Cadene's pretrainedmodels ``inceptionv4`` (``pretrainedmodels/models/inceptionv4.py``, which
  timm's is taken from): the same ``features.N`` and ``last_linear`` keys, 1001 classes
  (background kept), no aux head.
- The converter zoo's ``tf_inception_v4.npy`` (ylhz/tf_to_pytorch_model, MMdnn's emitter): TF
  graph node names (body under ``InceptionV4/InceptionV4/``), 1001 classes, aux head.
"""
from models.inception_v4.spec import SPEC
from models.spec import inception_op_scope
from models.spec.foreign import PICKLED_DICT, ForeignLayout, register, renamed, zoo_keys

_ZOO = zoo_keys(SPEC, 1001, True, inception_op_scope)

register(
    ForeignLayout("timm", SPEC.name, "inception_v4", 1000, False, renamed(SPEC, 1000, False),
                  source="timm/models/inception_v4.py"),
    ForeignLayout("cadene", SPEC.name, "inceptionv4", 1001, False, renamed(SPEC, 1001, False),
                  source="Cadene/pretrained-models.pytorch pretrainedmodels/models/inceptionv4.py"),
    ForeignLayout("zoo", SPEC.name, "tf_inception_v4.npy", 1001, True, _ZOO.keys,
                  frozenset(_ZOO.reshaped), frozenset(_ZOO.implied_ones), suffixes=PICKLED_DICT,
                  source="ylhz/tf_to_pytorch_model torch_nets/tf_inception_v4.py"),
)
