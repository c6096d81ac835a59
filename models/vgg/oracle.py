"""VGG's TF reference: TF-Slim's own ``vgg_16`` / ``vgg_19`` under ``vgg_arg_scope``, run in TF1
graph mode (``models.tf_slim_graph``).

``oracle_for(spec)`` gives each of the two architectures its ``Reference`` (the graph verify and
the parity tests compare ports with) and ``build_synthetic_checkpoint`` (a SYNTHETIC checkpoint
with the release's variable names, written by TensorFlow itself).

Synthetic weights: VGG has no batch norm to calibrate, so the graph is built with initialisers
that keep every layer's activations alive and the biases visible: He-scaled weights (the
activations keep their scale through 16-19 ReLU layers instead of shrinking ~2x per layer:
measured on VGG-16 and the photos, an RMS of 70-130 at every end point, about half of each
map positive) and random biases of std 10 (zero biases, TF-Slim's default, would let a port
that drops or misplaces them pass). ``fc8`` is whitened on the photos it sees
(``models.calibration``), so that different photos get different classes. The initialisers
matter only when a checkpoint is written: a ``Reference`` restores every variable from the
checkpoint.
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from models.spec import Architecture
from models.tf_slim_graph import TFSlimGraph, tf_slim_net, write_synthetic_checkpoint
from models.vgg.spec import SPECS

BIAS_STD = 10.0  # synthetic biases; the VGG-preprocessed photos' pixels have a std of ~69


class TFSlimVGG(TFSlimGraph):
    """TF-Slim's VGG of ``spec`` restored from a checkpoint (see ``TFSlimGraph``). TF-Slim's end
    points are keyed by scope (``vgg_16/conv3/conv3_3``, ``vgg_16/pool3``, ``vgg_16/fc6``), as
    the spec's are; ``Logits`` is TF-Slim's ``vgg_16/fc8``, squeezed to [N, classes]."""

    @classmethod
    def build(cls, images, num_classes, aux, is_training=False, batch_norm_decay=None,
              reuse=None):
        # is_training would only switch dropout on (VGG has no batch norm): always inference
        tf, slim, vgg = tf_slim_net("vgg")
        synthetic = {
            "weights_initializer": tf.compat.v1.variance_scaling_initializer(
                scale=2.0, mode="fan_in", distribution="truncated_normal"),
            "biases_initializer": tf.compat.v1.random_normal_initializer(stddev=BIAS_STD)}
        with slim.arg_scope(vgg.vgg_arg_scope()), slim.arg_scope([slim.conv2d], **synthetic), \
                tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(), reuse=reuse):
            logits, end_points = getattr(vgg, cls.spec.name)(
                images, num_classes=num_classes, is_training=False)
        found = {name: end_points[name] for name in cls.spec.end_points if name in end_points}
        found["Logits"] = logits
        return found


@functools.lru_cache(maxsize=None)
def reference_class(spec: Architecture) -> type[TFSlimVGG]:
    return type(f"TFSlim{spec.title.replace('-', '')}", (TFSlimVGG,),
                {"spec": spec, "__module__": __name__})


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               spec: Architecture, num_classes: int | None = None,
                               seed: int = 0, v1_format: bool = False) -> Path:
    """Write a random TF-Slim checkpoint of ``spec`` at ``prefix``, its classifier whitened on
    ``calibration_images``; return it. ``v1_format`` writes the older single-file V1 table (as
    the 2016 releases)."""
    return write_synthetic_checkpoint(
        prefix, calibration_images, reference_class(spec).build,
        {"Logits": f"{spec.tf_root}/fc8"},
        num_classes=spec.eval.num_classes if num_classes is None else num_classes, aux=False,
        seed=seed, v1_format=v1_format)


def oracle_for(spec: Architecture) -> SimpleNamespace:
    """``spec``'s ``Reference`` and ``build_synthetic_checkpoint``."""
    if spec not in SPECS:
        raise LookupError(f"{spec.name} is no TF-Slim VGG")
    return SimpleNamespace(
        Reference=reference_class(spec),
        build_synthetic_checkpoint=functools.partial(build_synthetic_checkpoint, spec=spec))
