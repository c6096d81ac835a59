"""Inception v4's TF reference: research/slim's ``inception_v4`` as a TF1 graph of tf_slim layers.

Neither tf_slim's pip package nor keras.applications has Inception v4, so the graph is built
here (``build_inception_v4``) from TF-Slim's own layers (``slim.conv2d`` + ``slim.batch_norm``,
``slim.max_pool2d``, ``slim.avg_pool2d``, ``slim.fully_connected``) after tensorflow/models
``research/slim/nets/inception_v4.py`` and its arg scope ``inception_utils.inception_arg_scope``.
The network is written as data (``STEM``, ``BLOCKS``: each block's branches in TF-Slim's order),
so the scopes, depths, kernels, strides and paddings can be read against that source line by
line. It is an oracle we wrote, so the tests cross-check it with one we did not: timm's
``inception_v4`` on the same weights (tests/test_inception_v4.py).

``TFSlimInceptionV4`` (``Reference``) is what ``port-weights verify`` compares ports with;
``build_synthetic_checkpoint`` writes a SYNTHETIC checkpoint with the release's 608 variable
names (+ ``global_step``), saved by TensorFlow itself (both through ``models.tf_slim_graph``).
TensorFlow is imported on first use, not with this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.inception_v4.spec import AUX_INPUT, BN_EPS, FEATURE_END_POINTS, SPEC
from models.tf_runtime import import_tf_slim
from models.tf_slim_graph import TFSlimGraph, write_synthetic_checkpoint

BN_DECAY = 0.9997  # inception_arg_scope's batch_norm_decay (training only)
# Synthetic checkpoints: batch-norm betas ~ N(BETA_MEAN, BETA_STD). A conv + batch norm + ReLU
# with random weights amplifies float32 rounding relative to the signal by sqrt(p / var), p the
# fraction of active ReLUs and var the variance of the ReLU's output for unit-variance input
# (inference batch norm is a fixed affine map, calibrated to the signal's fluctuation, which
# zero-mean rounding noise fills entirely): 1.21 per layer for betas around 0 (p = 0.5), 1.06
# around 1 (p = 0.84). Measured on the photos, TF's graph against the port (and timm's
# inception_v4, which computes the port's numbers bit for bit) in float32, from Conv2d_2b_3x3 to
# Mixed_7d: with betas around 0, 1.45x per block (geometric mean), 9e-4 relative at Mixed_7d and
# 3.2e-4 at the logits, three times the published bound; with betas around 1, which this uses,
# 1.16x per block, 1.5e-5 and 1e-5. In float64 both agree to 3e-14: a property of the random
# weights, not of either implementation.
BETA_MEAN = 1.0

# A step of a branch: a conv (scope, depth, kernel), with stride 2 / VALID where TF-Slim says
# so; a pool (kind, scope, stride, padding); or a fork: convs on the same input, concatenated
# (Inception-C). Convs are stride 1 and SAME unless a step says otherwise (the blocks' arg scope).
S2 = {"stride": 2, "padding": "VALID"}
VALID = {"padding": "VALID"}


def conv(scope, depth, kernel, **kw):
    return ("conv", scope, depth, kernel, kw)


def pool(kind, scope, **kw):
    return (kind, scope, None, [3, 3], kw)


def fork(*convs):
    return ("fork", convs)


STEM = (  # (end point, branches); a block of one branch is a plain layer
    ("Conv2d_1a_3x3", [[conv(None, 32, [3, 3], **S2)]]),
    ("Conv2d_2a_3x3", [[conv(None, 32, [3, 3], **VALID)]]),
    ("Conv2d_2b_3x3", [[conv(None, 64, [3, 3])]]),
    ("Mixed_3a", [[pool("max", "MaxPool_0a_3x3", **S2)],
                  [conv("Conv2d_0a_3x3", 96, [3, 3], **S2)]]),
    ("Mixed_4a", [[conv("Conv2d_0a_1x1", 64, [1, 1]), conv("Conv2d_1a_3x3", 96, [3, 3], **VALID)],
                  [conv("Conv2d_0a_1x1", 64, [1, 1]), conv("Conv2d_0b_1x7", 64, [1, 7]),
                   conv("Conv2d_0c_7x1", 64, [7, 1]), conv("Conv2d_1a_3x3", 96, [3, 3], **VALID)]]),
    ("Mixed_5a", [[conv("Conv2d_1a_3x3", 192, [3, 3], **S2)],
                  [pool("max", "MaxPool_1a_3x3", **S2)]]),
)

INCEPTION_A = [
    [conv("Conv2d_0a_1x1", 96, [1, 1])],
    [conv("Conv2d_0a_1x1", 64, [1, 1]), conv("Conv2d_0b_3x3", 96, [3, 3])],
    [conv("Conv2d_0a_1x1", 64, [1, 1]), conv("Conv2d_0b_3x3", 96, [3, 3]),
     conv("Conv2d_0c_3x3", 96, [3, 3])],
    [pool("avg", "AvgPool_0a_3x3"), conv("Conv2d_0b_1x1", 96, [1, 1])],
]
REDUCTION_A = [
    [conv("Conv2d_1a_3x3", 384, [3, 3], **S2)],
    [conv("Conv2d_0a_1x1", 192, [1, 1]), conv("Conv2d_0b_3x3", 224, [3, 3]),
     conv("Conv2d_1a_3x3", 256, [3, 3], **S2)],
    [pool("max", "MaxPool_1a_3x3", **S2)],
]
INCEPTION_B = [
    [conv("Conv2d_0a_1x1", 384, [1, 1])],
    [conv("Conv2d_0a_1x1", 192, [1, 1]), conv("Conv2d_0b_1x7", 224, [1, 7]),
     conv("Conv2d_0c_7x1", 256, [7, 1])],
    [conv("Conv2d_0a_1x1", 192, [1, 1]), conv("Conv2d_0b_7x1", 192, [7, 1]),
     conv("Conv2d_0c_1x7", 224, [1, 7]), conv("Conv2d_0d_7x1", 224, [7, 1]),
     conv("Conv2d_0e_1x7", 256, [1, 7])],
    [pool("avg", "AvgPool_0a_3x3"), conv("Conv2d_0b_1x1", 128, [1, 1])],
]
REDUCTION_B = [
    [conv("Conv2d_0a_1x1", 192, [1, 1]), conv("Conv2d_1a_3x3", 192, [3, 3], **S2)],
    [conv("Conv2d_0a_1x1", 256, [1, 1]), conv("Conv2d_0b_1x7", 256, [1, 7]),
     conv("Conv2d_0c_7x1", 320, [7, 1]), conv("Conv2d_1a_3x3", 320, [3, 3], **S2)],
    [pool("max", "MaxPool_1a_3x3", **S2)],
]
INCEPTION_C = [
    [conv("Conv2d_0a_1x1", 256, [1, 1])],
    [conv("Conv2d_0a_1x1", 384, [1, 1]),
     fork(conv("Conv2d_0b_1x3", 256, [1, 3]), conv("Conv2d_0c_3x1", 256, [3, 1]))],
    [conv("Conv2d_0a_1x1", 384, [1, 1]), conv("Conv2d_0b_3x1", 448, [3, 1]),
     conv("Conv2d_0c_1x3", 512, [1, 3]),
     fork(conv("Conv2d_0d_1x3", 256, [1, 3]), conv("Conv2d_0e_3x1", 256, [3, 1]))],
    [pool("avg", "AvgPool_0a_3x3"), conv("Conv2d_0b_1x1", 256, [1, 1])],
]
BLOCKS = (*STEM,
          *((f"Mixed_5{c}", INCEPTION_A) for c in "bcde"), ("Mixed_6a", REDUCTION_A),
          *((f"Mixed_6{c}", INCEPTION_B) for c in "bcdefgh"), ("Mixed_7a", REDUCTION_B),
          *((f"Mixed_7{c}", INCEPTION_C) for c in "bcd"))
assert tuple(name for name, _ in BLOCKS) == FEATURE_END_POINTS


def inception_arg_scope(batch_norm_decay: float = BN_DECAY):
    """research/slim's ``inception_utils.inception_arg_scope``: every conv has a batch norm
    (decay 0.9997, epsilon 1e-3, no gamma, updates in UPDATE_OPS) and a ReLU, He-initialised
    weights. (Its L2 weight regulariser is left out: a training loss, not the function.)"""
    tf, slim = import_tf_slim()
    batch_norm = {"decay": batch_norm_decay, "epsilon": BN_EPS, "scale": False,
                  "updates_collections": tf.compat.v1.GraphKeys.UPDATE_OPS}
    with slim.arg_scope([slim.conv2d], weights_initializer=slim.variance_scaling_initializer(),
                        activation_fn=tf.nn.relu, normalizer_fn=slim.batch_norm,
                        normalizer_params=batch_norm) as scope:
        return scope


def _step(tf, slim, net, step):
    kind = step[0]
    if kind == "fork":
        return tf.concat([_step(tf, slim, net, c) for c in step[1]], axis=3)
    _, scope, depth, kernel, kw = step
    if kind == "conv":
        return slim.conv2d(net, depth, kernel, scope=scope, **kw)
    layer = slim.max_pool2d if kind == "max" else slim.avg_pool2d  # avg: SAME, padding excluded
    return layer(net, kernel, scope=scope, **kw)


def _block(tf, slim, net, name, branches):
    """One end point: a single layer named ``name``, or a block of named branches, concatenated
    in order on channels."""
    if len(branches) == 1:
        (step,) = branches[0]
        return _step(tf, slim, net, step[:1] + (name,) + step[2:])
    outputs = []
    with tf.compat.v1.variable_scope(name):
        for index, branch in enumerate(branches):
            with tf.compat.v1.variable_scope(f"Branch_{index}"):
                out = net
                for step in branch:
                    out = _step(tf, slim, out, step)
                outputs.append(out)
        return tf.concat(outputs, axis=3)  # in the block's scope: TF's <block>/concat


def build_inception_v4(images, num_classes: int = 1001, aux: bool = True,
                       is_training: bool = False, dropout_keep_prob: float = 0.8,
                       reuse=None) -> dict:
    """research/slim's ``inception_v4(images, num_classes, is_training, create_aux_logits=aux)``
    under the arg scope in force: its end points (``Conv2d_1a_3x3`` .. ``Mixed_7d``,
    ``AuxLogits``, ``global_pool``, ``PreLogitsFlatten``, ``Logits``)."""
    tf, slim = import_tf_slim()
    end_points = {}
    with tf.compat.v1.variable_scope("InceptionV4", values=[images], reuse=reuse) as scope, \
            slim.arg_scope([slim.batch_norm, slim.dropout], is_training=is_training), \
            slim.arg_scope([slim.conv2d, slim.max_pool2d, slim.avg_pool2d], stride=1,
                           padding="SAME"):
        # inception_v4_base(scope=scope) re-enters the scope: the same variables, and the
        # trunk's ops in the name scope InceptionV4/InceptionV4 (research/slim's graph names)
        with tf.compat.v1.variable_scope(scope, values=[images]):
            net = images
            for name, branches in BLOCKS:
                net = end_points[name] = _block(tf, slim, net, name, branches)
        if aux and num_classes:
            with tf.compat.v1.variable_scope("AuxLogits"):
                head = slim.avg_pool2d(end_points[AUX_INPUT], [5, 5], stride=3, padding="VALID",
                                       scope="AvgPool_1a_5x5")
                head = slim.conv2d(head, 128, [1, 1], scope="Conv2d_1b_1x1")
                head = slim.conv2d(head, 768, head.get_shape()[1:3], padding="VALID",
                                   scope="Conv2d_2a")  # the kernel is the map: 5x5 at 299 px
                end_points["AuxLogits"] = slim.fully_connected(
                    slim.flatten(head), num_classes, activation_fn=None, scope="Aux_logits")
        with tf.compat.v1.variable_scope("Logits"):
            net = end_points["global_pool"] = slim.avg_pool2d(
                net, net.get_shape()[1:3], padding="VALID", scope="AvgPool_1a")
            net = slim.dropout(net, dropout_keep_prob, scope="Dropout_1b")
            net = end_points["PreLogitsFlatten"] = slim.flatten(net, scope="PreLogitsFlatten")
            end_points["Logits"] = slim.fully_connected(net, num_classes, activation_fn=None,
                                                        scope="Logits")
    return end_points


class TFSlimInceptionV4(TFSlimGraph):
    """research/slim's ``inception_v4`` restored from a checkpoint (see ``TFSlimGraph``); its end
    points are TF-Slim's names, which the spec's are."""

    spec = SPEC
    input_shape = (None, 299, 299, 3)

    @classmethod
    def build(cls, images, num_classes, aux, is_training=False, batch_norm_decay=None,
              reuse=None):
        _, slim = import_tf_slim()
        with slim.arg_scope(inception_arg_scope(
                BN_DECAY if batch_norm_decay is None else batch_norm_decay)):
            return build_inception_v4(images, num_classes, aux, is_training=is_training,
                                      dropout_keep_prob=1.0 if is_training else 0.8, reuse=reuse)


Reference = TFSlimInceptionV4


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               num_classes: int = 1001, aux: bool = True, seed: int = 0,
                               v1_format: bool = False) -> Path:
    """Write a calibrated random TF-Slim Inception v4 checkpoint at ``prefix``; return it.

    ``v1_format`` writes the single-file V1 table (as the 2016-09-09 release). Batch norm
    betas are drawn around ``BETA_MEAN`` (see there).
    """
    return write_synthetic_checkpoint(
        prefix, calibration_images, TFSlimInceptionV4.build,
        {"Logits": "InceptionV4/Logits/Logits", "AuxLogits": "InceptionV4/AuxLogits/Aux_logits"},
        num_classes=num_classes, aux=aux, seed=seed, v1_format=v1_format, beta_mean=BETA_MEAN)
