"""ResNet's TF reference: TF-Slim's own ``resnet_v1_*`` / ``resnet_v2_*``, run in TF1 graph mode
on inputs of any size (``models.tf_slim_graph``).

``oracle_for(spec)`` gives each of the six architectures its ``Reference`` (the graph verify
and the parity tests compare ports with) and ``build_synthetic_checkpoint`` (a SYNTHETIC
checkpoint with the release's variable names, written by TensorFlow itself).
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from models.resnet.spec import SPECS
from models.spec import Architecture
from models.tf_slim_graph import TFSlimGraph, tf_slim_net, write_synthetic_checkpoint


# Each unit's residual branch scaled down, as in trained ResNets: with every branch as large as
# the identity (random init), 36 units in a row amplify float32 rounding ~500x (measured on
# resnet_v1_152, block3), far past what trained weights do. v1: the last batch norm's gamma;
# v2: conv3, which has no batch norm.
RESIDUAL_SCALES = {"1": {"conv3/BatchNorm/gamma": 0.2}, "2": {"conv3/weights": 0.2, "conv3/biases": 0.2}}


class TFSlimResNet(TFSlimGraph):
    """TF-Slim's ResNet of ``spec`` restored from a checkpoint (see ``TFSlimGraph``). TF-Slim's
    end points are keyed by scope (``resnet_v2_50/block1/unit_1/bottleneck_v2``), as the spec's
    are; ``Logits`` is ``<root>/logits`` squeezed to [N, classes]."""

    @classmethod
    def build(cls, images, num_classes, aux, is_training=False, batch_norm_decay=None,
              reuse=None):
        spec = cls.spec
        tf, slim, nets = tf_slim_net(f"resnet_v{spec.name[len('resnet_v')]}")
        resnet_utils = tf_slim_net("resnet_utils")[2]
        scope = resnet_utils.resnet_arg_scope(
            **({} if batch_norm_decay is None else {"batch_norm_decay": batch_norm_decay}))
        with slim.arg_scope(scope):
            logits, end_points = getattr(nets, spec.name)(
                images, num_classes=num_classes, is_training=is_training, reuse=reuse)
        found = {name: end_points[name] for name in spec.end_points if name in end_points}
        found["Logits"] = tf.squeeze(logits, [1, 2])
        return found


@functools.lru_cache(maxsize=None)
def reference_class(spec: Architecture) -> type[TFSlimResNet]:
    return type(f"TFSlim{spec.title.replace('-', '').replace(' ', '')}", (TFSlimResNet,),
                {"spec": spec, "__module__": __name__})


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               spec: Architecture, num_classes: int | None = None,
                               seed: int = 0, v1_format: bool = False) -> Path:
    """Write a calibrated random TF-Slim checkpoint of ``spec`` at ``prefix``; return it.
    ``v1_format`` writes the older single-file V1 table."""
    return write_synthetic_checkpoint(
        prefix, calibration_images, reference_class(spec).build,
        {"Logits": f"{spec.tf_root}/logits"},
        num_classes=spec.eval.num_classes if num_classes is None else num_classes, aux=False,
        seed=seed, v1_format=v1_format, scales=RESIDUAL_SCALES[spec.name[len("resnet_v")]])


def oracle_for(spec: Architecture) -> SimpleNamespace:
    """``spec``'s ``Reference`` and ``build_synthetic_checkpoint``."""
    if spec not in SPECS:
        raise LookupError(f"{spec.name} is no TF-Slim ResNet")
    return SimpleNamespace(
        Reference=reference_class(spec),
        build_synthetic_checkpoint=functools.partial(build_synthetic_checkpoint, spec=spec))
