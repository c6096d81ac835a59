"""The TF reference for architectures that ``tf_slim.nets`` ships: TF-Slim's own graph, run in
TF1 graph mode, and SYNTHETIC checkpoints written by it.

An architecture's ``oracle.py`` subclasses ``TFSlimGraph`` with how to build its net and how
TF-Slim's end points map onto the spec's (``models/inception_v3``, ``models/resnet``), and calls
``write_synthetic_checkpoint`` with the same builder. Everything runs inside a private
``tf.Graph``, so eager mode stays on for the rest of the process. TensorFlow is imported on first
use, not with this module.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np

from models.calibration import whitened_classifier
from models.spec import AUX_SCOPE, EMA_SUFFIX, Architecture, with_root
from models.tf_runtime import import_tensorflow, import_tf_slim, session_config
from porting.errors import PortError, first_line  # the one porting module models/ imports

GLOBAL_STEP = 123456  # what the synthetic checkpoints store as global_step
BETA_STD = 0.2        # random batch-norm betas (and gammas around 1) of synthetic checkpoints


def tf_slim_net(name: str):
    """(tf, slim, ``tf_slim.nets.<name>``); PortError if TF-Slim is not installed."""
    tf, slim = import_tf_slim()
    try:
        from importlib import import_module

        return tf, slim, import_module(f"tf_slim.nets.{name}")
    except ImportError as err:
        raise PortError(f"this needs TF-Slim ({err}); install the reference stack: "
                        "pip install 'tf-porting[tf]'") from err


@contextlib.contextmanager
def tf1_tensor_identity(tf):
    """Build a graph with TF1's tensor semantics (compared by identity, hashable), then turn
    TF2's default back on.

    Nothing in the graph changes: in graph mode a variable compares by identity either way. But
    with TF2's tensor equality on, every variable comparison and hash first asks
    ``executing_eagerly_outside_functions()``, and tf_keras's legacy ``add_weight`` (behind every
    ``slim.batch_norm``) checks each new variable against all earlier ones: graph building is
    quadratic, and that check was about half of it (ResNet-152: 16-19 s -> 9-10 s measured,
    6930 ops either way)."""
    tf.compat.v1.disable_tensor_equality()
    try:
        yield
    finally:
        tf.compat.v1.enable_tensor_equality()


def checkpoint_layout(checkpoint_prefix: str | Path, spec: Architecture,
                      root: str | None = None) -> tuple[int, bool]:
    """(number of classes, has AuxLogits) of a TF-Slim checkpoint of ``spec``, from its index;
    ``root``: the root scope it stores them under, where it is a renamed copy
    (``Architecture.aliases``)."""
    tf = import_tensorflow()
    root = root or spec.tf_root
    try:
        shapes = dict(tf.train.list_variables(str(checkpoint_prefix)))
    except tf.errors.OpError as err:
        raise PortError(f"{checkpoint_prefix}: TensorFlow cannot read it: {first_line(err)}") from err
    logits_bias = with_root(spec.classifier.variables()["bias"], spec.tf_root, root)
    if logits_bias not in shapes:
        raise PortError(f"{checkpoint_prefix}: not a TF-Slim {spec.title} checkpoint "
                        f"(no {logits_bias})")
    return shapes[logits_bias][0], any(name.startswith(f"{root}/{AUX_SCOPE}/")
                                       for name in shapes)


def conv_input(tensor):
    """The input of the convolution or matrix product that computes ``tensor`` (through its
    bias add and any reshape): what a classifier, a 1x1 conv or a fully connected layer, sees."""
    op = tensor.op
    while op.type not in ("Conv2D", "MatMul"):
        op = op.inputs[0].op
    return op.inputs[0]


class TFSlimGraph:
    """A TF-Slim inference graph restored from a checkpoint; subclasses give ``spec``, the
    input shape and ``build``.

    ``ema=True`` restores each variable from its ExponentialMovingAverage shadow where the
    checkpoint has one (what TF-Slim's eval scripts do). ``dtype="float64"`` builds the same
    graph in double precision: TF-Slim creates its variables in the input's dtype (and takes
    its non-fused batch norm, as the fused kernel has no float64), and every value is the
    checkpoint's, cast. ``root`` is the root scope of a renamed copy (``AdvInceptionV3``):
    the graph keeps TF-Slim's own scope, and each variable is read from its name under it.
    """

    spec: Architecture
    input_shape: tuple = (None, None, None, 3)  # NHWC; None: any size

    @classmethod
    def build(cls, images, num_classes: int, aux: bool, is_training: bool = False,
              batch_norm_decay: float | None = None, reuse=None) -> dict:
        """TF-Slim's net under its arg scope; its end points under the spec's names (class
        scores as ``Logits``, [N, classes])."""
        raise NotImplementedError

    def __init__(self, checkpoint_prefix: str | Path, num_classes: int | None = None,
                 aux: bool | None = None, ema: bool = False, threads: int = 2,
                 dtype: str = "float32", root: str | None = None):
        tf = import_tensorflow()
        self.root = root or self.spec.tf_root
        self.num_classes = self.spec.eval.num_classes if num_classes is None else num_classes
        self.aux = self.spec.has_aux if aux is None else aux
        self.graph = tf.Graph()
        self._loss_gradients = {}
        with self.graph.as_default():
            self.images = tf.compat.v1.placeholder(dtype, list(self.input_shape), name="images")
            with tf1_tensor_identity(tf):
                self.end_points = self.build(self.images, self.num_classes, self.aux)
            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(threads))
            try:
                self._restore(tf, str(checkpoint_prefix), ema)
            except tf.errors.OpError as err:
                self.session.close()
                raise PortError(f"{checkpoint_prefix}: TensorFlow cannot restore it: "
                                f"{first_line(err)}") from err

    def _restore(self, tf, prefix: str, ema: bool):
        """Initialise every variable with its checkpoint value cast to the variable's dtype, in
        one run (a Saver refuses to restore float32 values into float64 variables)."""
        reader = tf.train.load_checkpoint(prefix)
        stored = set(reader.get_variable_to_shape_map())
        variables = tf.compat.v1.global_variables()
        feed = {}
        for var in variables:
            name = with_root(var.op.name, self.spec.tf_root, self.root)
            if ema and name + EMA_SUFFIX in stored:
                name += EMA_SUFFIX
            feed[var.initial_value] = reader.get_tensor(name).astype(var.dtype.as_numpy_dtype)
        self.session.run([var.initializer for var in variables], feed)

    @classmethod
    def for_checkpoint(cls, checkpoint_prefix: str | Path, **kwargs) -> "TFSlimGraph":
        """The graph the checkpoint holds: its number of classes, with AuxLogits if it has them."""
        classes, aux = checkpoint_layout(checkpoint_prefix, cls.spec, kwargs.get("root"))
        return cls(checkpoint_prefix, num_classes=classes, aux=aux, **kwargs)

    def __call__(self, images_nhwc: np.ndarray, end_points=("Logits", "AuxLogits")) -> dict:
        """End points for a batch of NHWC images; 4-D ones as NHWC arrays."""
        fetch = {name: self.end_points[name] for name in end_points if name in self.end_points}
        return self.session.run(fetch, {self.images: images_nhwc})

    def loss_gradient(self, images_nhwc: np.ndarray, labels: np.ndarray,
                      dropped: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(Logits[:, dropped:], d loss / d images) for the summed softmax cross-entropy of
        ``labels`` (indices into the kept classes); ``dropped=1`` drops the background
        (``ClassLayout.dropped``)."""
        if dropped not in self._loss_gradients:
            tf = import_tensorflow()
            with self.graph.as_default():
                labels_in = tf.compat.v1.placeholder(tf.int64, [None])
                logits = self.end_points["Logits"][:, dropped:]
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels_in, logits=logits))
                gradient = tf.compat.v1.gradients(loss, self.images)[0]
            self._loss_gradients[dropped] = labels_in, logits, gradient
        labels_in, logits, gradient = self._loss_gradients[dropped]
        return self.session.run((logits, gradient), {self.images: images_nhwc, labels_in: labels})

    def close(self):
        self.session.close()


def write_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray,
                               build: Callable, heads: dict[str, str], *, num_classes: int,
                               aux: bool, seed: int = 0, v1_format: bool = False,
                               scales: dict[str, float] | None = None,
                               beta_mean: float = 0.0) -> Path:
    """Write a calibrated random checkpoint of TF-Slim's net at ``prefix``; return it.

    ``build`` is a ``TFSlimGraph.build``; ``heads`` maps each classifier end point (``Logits``,
    ``AuxLogits``) to its classifier's scope (a 1x1 conv or a fully connected layer). Batch
    norms get random betas (and gammas, where they have one), then their moving statistics are
    set to the batch statistics of their input on ``calibration_images`` in one training-mode
    pass with decay 0, and each classifier is whitened on what it saw in that pass
    (``models.calibration``), so that different photos get different classes. One graph, one pass: building TF-Slim's graph is the slow part (~0.1 s
    per batch norm). ``scales`` multiplies the variables whose names end with a key by its value
    before calibration (a deep net's residual branches, as training leaves them: small);
    ``beta_mean`` centres the random betas (a deep net without residuals: see
    ``models/inception_v4/oracle.py``). ``v1_format`` writes the older single-file V1 table
    (as the 2016 releases).
    """
    tf = import_tensorflow()
    rng = np.random.default_rng(seed)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, *calibration_images.shape[1:]])
        with tf1_tensor_identity(tf):
            end_points = build(images, num_classes, aux, is_training=True, batch_norm_decay=0.0)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        variables = [v for v in tf.compat.v1.global_variables() if v is not global_step]
        by_name = {v.op.name: v for v in variables}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            initial = {}
            for var in variables:  # random batch-norm parameters, set at initialisation
                if var.op.name.endswith("beta"):
                    initial[var.initial_value] = rng.normal(beta_mean, BETA_STD, var.shape)
                elif var.op.name.endswith("gamma"):
                    initial[var.initial_value] = rng.normal(1.0, BETA_STD, var.shape)
            sess.run(tf.compat.v1.global_variables_initializer(),
                     {key: value.astype(np.float32) for key, value in initial.items()})
            scaled = [var.assign(var * factor) for var in variables
                      for suffix, factor in (scales or {}).items() if var.op.name.endswith(suffix)]
            if scaled:
                sess.run(scaled)
            heads = {end_point: scope for end_point, scope in heads.items() if end_point in end_points}
            _, inputs = sess.run((update_ops, [conv_input(end_points[end_point]) for end_point in heads]),
                                 {images: calibration_images})
            for scope, features in zip(heads.values(), inputs):
                weights, biases = whitened_classifier(features, num_classes, rng)
                kernel = by_name[f"{scope}/weights"]  # [1, 1, in, C] conv or [in, C] matrix
                kernel.load(weights.reshape(kernel.shape.as_list()), sess)
                by_name[f"{scope}/biases"].load(biases, sess)
            global_step.load(GLOBAL_STEP, sess)

            version = tf.compat.v1.train.SaverDef.V1 if v1_format else tf.compat.v1.train.SaverDef.V2
            saver = tf.compat.v1.train.Saver(write_version=version)
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    return prefix
