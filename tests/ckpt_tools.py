"""Make checkpoint variants for tests, written by TensorFlow's own SaveV2 op (eager, fast)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.tf_runtime import import_tensorflow


def read_all(prefix) -> dict[str, np.ndarray]:
    tf = import_tensorflow()
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())}


def write_checkpoint(prefix, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``tensors`` as a V2 checkpoint at ``prefix`` with TensorFlow's SaveV2."""
    tf = import_tensorflow()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def write_v1_checkpoint(path, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``tensors`` as a single-file V1 checkpoint with TensorFlow's (V1) Save op."""
    tf = import_tensorflow()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.Save(filename=str(path), tensor_names=names,
                    data=[tf.constant(tensors[n]) for n in names])
    return path
