"""Session-wide TensorFlow fixtures: each checkpoint is written by TensorFlow once per run."""
from __future__ import annotations

import numpy as np
import pytest

from porting.photos import load_photos


@pytest.fixture(scope="session")
def photos():
    """(names, NHWC float32 batch in [-1, 1]) of 10 real photos shipped with scikit-image."""
    return load_photos()


@pytest.fixture(scope="session")
def synthetic_ckpt(tmp_path_factory, photos):
    """Prefix of a TF-Slim Inception v3 V2 checkpoint (1001 classes, aux, global_step)."""
    from porting.synthetic import build_synthetic_checkpoint

    prefix = tmp_path_factory.mktemp("synthetic") / "adv_inception_v3.ckpt"
    return build_synthetic_checkpoint(prefix, photos[1])


@pytest.fixture(scope="session")
def tf_model(synthetic_ckpt):
    from porting.tfslim import TFSlimInceptionV3

    model = TFSlimInceptionV3(synthetic_ckpt, num_classes=1001, aux=True)
    yield model
    model.close()


@pytest.fixture(scope="session")
def tf_outputs(tf_model, photos):
    """TF-Slim's Logits and AuxLogits on the photos: {batch_size: {end_point: array}}."""
    images = photos[1]
    batch1 = [tf_model(images[i:i + 1]) for i in range(len(images))]
    return {
        1: {k: np.concatenate([b[k] for b in batch1]) for k in batch1[0]},
        len(images): tf_model(images),
    }
