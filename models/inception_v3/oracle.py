"""Inception v3's TF reference: TF-Slim's own ``inception_v3``, run in TF1 graph mode.

``TFSlimInceptionV3`` is the oracle ``verify`` and the parity tests compare ports with;
``build_synthetic_checkpoint`` writes a SYNTHETIC checkpoint with the release's variable names,
saved by TensorFlow itself (both through ``models.tf_slim_graph``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.inception_v3.spec import SPEC
from models.tf_slim_graph import TFSlimGraph, tf_slim_net, write_synthetic_checkpoint


class TFSlimInceptionV3(TFSlimGraph):
    """TF-Slim's ``inception_v3`` restored from a checkpoint (see ``TFSlimGraph``); its end
    points are TF-Slim's own dict, which the spec's names are."""

    spec = SPEC
    input_shape = (None, 299, 299, 3)

    @classmethod
    def build(cls, images, num_classes, aux, is_training=False, batch_norm_decay=None,
              reuse=None):
        tf, slim, inception_v3 = tf_slim_net("inception_v3")
        scope = inception_v3.inception_v3_arg_scope(
            **({} if batch_norm_decay is None else {"batch_norm_decay": batch_norm_decay}))
        with slim.arg_scope(scope):
            _, end_points = inception_v3.inception_v3(
                images, num_classes=num_classes, is_training=is_training,
                create_aux_logits=aux, dropout_keep_prob=1.0 if is_training else 0.8, reuse=reuse)
        return end_points


Reference = TFSlimInceptionV3


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               num_classes: int = 1001, aux: bool = True, seed: int = 0,
                               v1_format: bool = False) -> Path:
    """Write a calibrated random TF-Slim Inception v3 checkpoint at ``prefix``; return it.

    ``v1_format`` writes the older single-file V1 table (as the 2016 inception_v3 release).
    """
    return write_synthetic_checkpoint(
        prefix, calibration_images, TFSlimInceptionV3.build,
        {"Logits": "InceptionV3/Logits/Conv2d_1c_1x1",
         "AuxLogits": "InceptionV3/AuxLogits/Conv2d_2b_1x1"},
        num_classes=num_classes, aux=aux, seed=seed, v1_format=v1_format)
