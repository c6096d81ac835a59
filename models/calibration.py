"""Making random weights input-sensitive, for SYNTHETIC checkpoints (numpy only).

A parity test on a network that maps every photo to the same class proves little. The oracles'
checkpoint builders (``models/<arch>/oracle.py``) give every batch norm a random beta and set its
moving statistics to the batch statistics of its input on real photos, and give the classifiers
whitened inputs (``whitened_classifier``), so that different photos get different classes.
"""
from __future__ import annotations

import numpy as np

SYNTHETIC_LABEL = "SYNTHETIC TF-Slim {name} checkpoint (random calibrated weights, not the release)"
LOGIT_SCALE = 4.0  # std of the logits over photos, roughly that of a trained ImageNet model


def synthetic_label(name: str) -> str:
    return SYNTHETIC_LABEL.format(name=name)


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
