"""A SYNTHETIC TF-Slim Inception v3 checkpoint, written by TensorFlow itself.

Built with tf_slim's own ``inception_v3`` in graph mode and saved with
``tf.compat.v1.train.Saver``, so variable names, shapes and file format are the release's
(388 model variables + global_step for 1001 classes with aux). The weights are random, NOT the
adversarially trained release; they are calibrated so that the network is input-sensitive:

- every batch norm gets a random beta, and its moving statistics are set to the batch statistics
  of its input on real photos (one training-mode pass with decay 0, which calibrates each layer
  given the already-calibrated layers before it);
- both classifiers see whitened inputs (weights divided by the per-channel std of their inputs,
  the mean folded into the bias), so different photos get different classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from porting.tfslim import build_inception_v3, import_tf_slim, session_config

SYNTHETIC_LABEL = "SYNTHETIC TF-Slim inception_v3 checkpoint (random calibrated weights, not the release)"
LOGIT_SCALE = 4.0  # std of the logits over photos, roughly that of a trained ImageNet model


def _classifier_input(end_points, scope: str):
    """The tensor that feeds ``scope``'s 1x1 classifier conv in the inference graph."""
    conv = end_points[scope].op.inputs[0].op  # Squeeze <- BiasAdd
    return conv.inputs[0].op.inputs[0]        # BiasAdd <- Conv2D <- input


def whitened_classifier(features: np.ndarray, num_classes: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random classifier weights [in, classes] and biases for inputs like ``features`` (one row
    per image), scaled and centred so that the logits differ from image to image."""
    features = features.reshape(len(features), -1).astype(np.float64)
    mean, std = features.mean(0), features.std(0)
    std = np.maximum(std, std.mean())  # no blow-up of near-constant channels
    weights = rng.normal(0.0, LOGIT_SCALE / np.sqrt(len(mean)), (len(mean), num_classes))
    weights /= std[:, None]
    biases = rng.normal(0.0, 0.1, num_classes) - mean @ weights
    return weights.astype(np.float32), biases.astype(np.float32)


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               num_classes: int = 1001, aux: bool = True, seed: int = 0,
                               v1_format: bool = False) -> Path:
    """Write a calibrated random TF-Slim Inception v3 checkpoint at ``prefix``; return it.

    ``v1_format`` writes the older single-file V1 table (as the 2016 inception_v3 release).
    """
    tf, _, _ = import_tf_slim()
    rng = np.random.default_rng(seed)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        build_inception_v3(images, num_classes, aux, is_training=True, batch_norm_decay=0.0)
        _, end_points = build_inception_v3(images, num_classes, aux, reuse=True)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        by_name = {v.op.name: v for v in tf.compat.v1.global_variables() if v is not global_step}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, var in by_name.items():
                if name.endswith("BatchNorm/beta"):
                    var.load(rng.normal(0.0, 0.2, var.shape).astype(np.float32), sess)
            sess.run(update_ops, {images: calibration_images})

            heads = [("Logits", "InceptionV3/Logits/Conv2d_1c_1x1")]
            if aux:
                heads.append(("AuxLogits", "InceptionV3/AuxLogits/Conv2d_2b_1x1"))
            inputs = sess.run([_classifier_input(end_points, ep) for ep, _ in heads],
                              {images: calibration_images})
            for (_, scope), features in zip(heads, inputs):
                weights, biases = whitened_classifier(features, num_classes, rng)
                by_name[f"{scope}/weights"].load(weights[None, None], sess)
                by_name[f"{scope}/biases"].load(biases, sess)
            global_step.load(123456, sess)

            version = tf.compat.v1.train.SaverDef.V1 if v1_format else tf.compat.v1.train.SaverDef.V2
            saver = tf.compat.v1.train.Saver(write_version=version)
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    return prefix
