"""Importing TensorFlow and TF-Slim quietly, on TF 2.21 (the TF reader and the oracles use it).

tf-slim 1.1.0 builds layers through ``tensorflow.python.layers``, which lazily imports
``tf_keras.legacy_tf_layers.*``; tf-keras 2.x keeps those modules under ``tf_keras.src``. We
register them under the old names before importing tf_slim (seen working with tensorflow-cpu
2.21.0 + tf-keras 2.21.0). This module imports nothing of the project but its errors.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

from porting.errors import PortError

_LEGACY_LAYERS = ("base", "convolutional", "core", "normalization", "pooling", "variable_scope_shim")


@contextlib.contextmanager
def _stderr_to_devnull():
    """Silence file descriptor 2: TF 2.21's C++ logs ignore TF_CPP_MIN_LOG_LEVEL at import."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """TensorFlow, with its C++ start-up chatter (oneDNN, CUDA probing) silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        try:
            with _stderr_to_devnull():
                import tensorflow  # noqa: F401
        except ImportError as err:
            raise PortError(f"this needs TensorFlow ({err}); install the reference stack: "
                            "pip install 'tf-porting[tf]'") from err
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_tf_slim():
    """(tf, slim), with the tf_keras module aliases in place."""
    tf = import_tensorflow()

    # tf-keras's legacy layers warn on every use of the API tf_slim is built on.
    warnings.filterwarnings("ignore", message="`layer.apply` is deprecated")
    try:
        legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
        sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
        for sub in _LEGACY_LAYERS:
            module = importlib.import_module(f"tf_keras.src.legacy_tf_layers.{sub}")
            sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{sub}", module)
        import tf_slim as slim
    except ImportError as err:
        raise PortError(f"this needs tf-keras and TF-Slim ({err}); install the reference "
                        "stack: pip install 'tf-porting[tf]'") from err
    return tf, slim


def session_config(threads: int = 2):
    """A TF1 session config with ``threads`` intra-op threads and one inter-op thread."""
    tf = import_tensorflow()
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                    inter_op_parallelism_threads=1)
