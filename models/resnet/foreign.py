"""ResNet v2 in the converter zoo's layout (``models.spec.foreign``): ylhz/tf_to_pytorch_model's
``tf_resnet_v2_50.npy`` / ``_101`` / ``_152`` (MMdnn's emitter), TF graph node names
(``resnet_v2_50/block1/unit_1/bottleneck_v2/conv1/Conv2D``; the root scope is opened once),
1001 classes.

timm and torchvision have no port of TF-Slim's ResNets: timm's ``resnetv2_*`` are its own
(BiT) networks, and torchvision's ``resnet50`` keys would map onto ResNet v1's but stride in the
first unit of a block where TF-Slim strides in the last; neither is registered.
"""
from models.resnet.spec import SPECS
from models.spec.foreign import PICKLED_DICT, ForeignLayout, register, zoo_keys

for _spec in SPECS:
    if _spec.name.startswith("resnet_v2_"):
        _zoo = zoo_keys(_spec, 1001, False, lambda scope: scope)
        register(ForeignLayout("zoo", _spec.name, f"tf_{_spec.name}.npy", 1001, False, _zoo.keys,
                               frozenset(_zoo.reshaped), frozenset(_zoo.implied_ones),
                               suffixes=PICKLED_DICT,
                               source=f"ylhz/tf_to_pytorch_model torch_nets/tf_{_spec.name}.py"))
