"""Inception-ResNet-v2's TF reference: Keras's ``InceptionResNetV2`` plus TF-Slim's aux head.

tf_slim ships no ``inception_resnet_v2``, so the independent oracle is
``keras.applications.InceptionResNetV2`` (Keras 3; the same function as TF-Slim's graph, its
release weights were converted from TF-Slim's) with the TF-Slim weights loaded by name through
the spec's ``KerasAdapter``, and the ``AuxLogits`` head, which Keras lacks, as a small TF graph
(``aux_logits``).

- ``KerasInceptionResNetV2`` (``Reference``) is what ``port-weights verify`` compares ports
  with: every TF-Slim end point of ``SPEC.end_points``, Logits with the checkpoint's own
  classifier (1001 classes: column 0 is TF's background).
- ``calibrated_keras_model`` makes a random Keras model input-sensitive on photos;
  ``build_synthetic_checkpoint`` writes its weights (plus a calibrated aux head and a background
  class) under the release's 908 variable names with TensorFlow's own Save ops: a SYNTHETIC
  checkpoint, not the release.
- ``keras_to_tf_slim`` / ``tf_slim_to_keras`` map weights between the two naming schemes.

TensorFlow and Keras are imported on first use, not with this module.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from models.calibration import whitened_classifier
from models.inception_resnet_v2.spec import BLOCKS, BN_EPS, FINAL_BLOCK, SPEC
from models.spec import (AUX_SCOPE, EMA_SUFFIX, ClassLayout, KerasAdapter, KerasMismatch,
                         with_root)
from models.tf_slim_graph import BETA_STD, GLOBAL_STEP, checkpoint_layout
from porting.errors import PortError, first_line
from models.tf_runtime import import_tensorflow

UP_BIAS_STD = 0.1          # up conv biases, as a fraction of the block input's std
BACKGROUND_SCALE = 0.5     # the synthetic background logit, relative to a whitened class
MEASURE_IMAGES = 4         # images of the pass that scales the residual up convs
BLOCK_TYPES = ("block35", "block17", "block8")
BLOCK8_REPEATS = BLOCKS[-1][-1]  # Keras's block8_<this + 1> is TF-Slim's final Block8

# Keras layers that hold the TF-Slim end points it has (AuxLogits and Logits are computed).
_NAMED_END_POINTS = {"Mixed_5b": "mixed_5b", "Mixed_6a": "mixed_6a",
                     "PreAuxLogits": "block17_20_ac", "Mixed_7a": "mixed_7a",
                     "Conv2d_7b_1x1": "conv_7b_ac", "PreLogitsFlatten": "avg_pool"}
# The stem's unnamed end points: (Keras layer class, index among its counted layers, shape).
_STEM_END_POINTS = {
    "Conv2d_1a_3x3": ("Activation", 0, (149, 149, 32)),
    "Conv2d_2a_3x3": ("Activation", 1, (147, 147, 32)),
    "Conv2d_2b_3x3": ("Activation", 2, (147, 147, 64)),
    "MaxPool_3a_3x3": ("MaxPooling2D", 0, (73, 73, 64)),
    "Conv2d_3b_1x1": ("Activation", 3, (73, 73, 80)),
    "Conv2d_4a_3x3": ("Activation", 4, (71, 71, 192)),
    "MaxPool_5a_3x3": ("MaxPooling2D", 1, (35, 35, 192)),
}


# --- Keras <-> TF-Slim names ------------------------------------------------------------------

def _keras():
    import_tensorflow()  # quiet start-up
    import keras

    return keras


def _names_of(model, class_name: str) -> list[str]:
    """The names of the model's layers of Keras class ``class_name``."""
    return [layer.name for layer in model.layers if type(layer).__name__ == class_name]


def _auto_named(model, class_name: str) -> list:
    """The model's layers of ``class_name`` that Keras named by its counter, in creation order
    (``KerasAdapter.counted``, the rule the HDF5 reader applies to a file)."""
    return [model.get_layer(name)
            for name in KerasAdapter.counted(_names_of(model, class_name), class_name)]


def keras_weight_map(model) -> list[tuple[object, str, tuple]]:
    """[(Keras variable, TF-Slim variable name, TF shape)] for every weight of a Keras
    ``InceptionResNetV2`` (no aux head; the classifier with Keras's own class count), each
    Keras weight exactly once, by ``SPEC.keras.assign``. ``ValueError`` if the model does not
    fit ``SPEC``."""
    adapter = SPEC.keras
    try:
        assigned = adapter.assign(SPEC, _names_of(model, adapter.CONV),
                                  _names_of(model, adapter.NORM))
    except KerasMismatch as err:
        raise ValueError(f"{model.name}: {err.convs} counted Conv2D and {err.norms} "
                         f"BatchNormalization layers, the spec has {err.rows} unnamed conv_bn "
                         "layers") from err
    pairs = []
    for layer, conv_name, norm_name in assigned:
        names, shapes = layer.variables(), layer.kind.tf_shapes(layer.shape, 0)
        conv = model.get_layer(conv_name)
        if norm_name is None:  # the residual "up" convs: bias, no batch norm
            pairs += [(conv.kernel, names["weight"], shapes["weight"]),
                      (conv.bias, names["bias"], shapes["bias"])]
            continue
        norm = model.get_layer(norm_name)
        if conv.bias is not None or norm.gamma is not None:
            raise ValueError(f"{conv.name}/{norm.name}: expected a conv without bias and a "
                             "batch norm without gamma")
        if abs(norm.epsilon - BN_EPS) > 1e-9:
            raise ValueError(f"{norm.name}: epsilon {norm.epsilon}, TF-Slim's is {BN_EPS}")
        for role, var in (("weight", conv.kernel), ("beta", norm.beta),
                          ("mean", norm.moving_mean), ("var", norm.moving_variance)):
            pairs.append((var, names[role], shapes[role]))
    dense, classifier = model.get_layer(adapter.classifier), SPEC.classifier
    classes = dense.kernel.shape[-1]
    names, shapes = classifier.variables(), classifier.kind.tf_shapes(classifier.shape, classes)
    pairs += [(dense.kernel, names["weight"], shapes["weight"]),
              (dense.bias, names["bias"], shapes["bias"])]

    for var, name, shape in pairs:
        if tuple(var.shape) != tuple(shape):
            raise ValueError(f"{var.path}: shape {tuple(var.shape)}, {name} needs {shape}")
    paths = [var.path for var, _, _ in pairs]
    if len(set(paths)) != len(paths) or set(paths) != {var.path for var in model.weights}:
        raise ValueError(f"{model.name}: the mapping does not take each of its "
                         f"{len(model.weights)} weights once ({len(paths)} mapped)")
    return pairs


def keras_to_tf_slim(model) -> dict[str, np.ndarray]:
    """The Keras model's weights under TF-Slim's names (no AuxLogits; Keras's classes)."""
    return {name: np.array(var.numpy()) for var, name, _ in keras_weight_map(model)}


def tf_slim_to_keras(variables: dict, model) -> None:
    """Load TF-Slim-named arrays into a Keras ``InceptionResNetV2``, cast to its dtype. A
    classifier with TF-Slim's background class, where Keras's has none, loses it
    (``ClassLayout``); other variables (AuxLogits, global_step, ...) are ignored."""
    for var, name, shape in keras_weight_map(model):
        if name not in variables:
            raise PortError(f"no {name} to load into Keras's {var.path}")
        value = np.asarray(variables[name])
        if name.startswith(f"{SPEC.classifier.scope}/"):
            try:
                layout = ClassLayout.of(SPEC.eval, shape[-1], source=value.shape[-1])
            except ValueError:
                raise PortError(f"{name}: {value.shape[-1]} classes, Keras's model has "
                                f"{shape[-1]}") from None
            value = value[..., layout.dropped:]
        if value.shape != tuple(shape):
            raise PortError(f"{name}: shape {value.shape}, Keras's {var.path} needs {shape}")
        var.assign(value.astype(var.dtype))


# --- Keras models --------------------------------------------------------------------------

@contextlib.contextmanager
def _keras_dtype(dtype: str):
    """Build Keras layers (and inputs) in ``dtype``; the previous policy comes back after."""
    keras = _keras()
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield keras
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)


def keras_model(dtype: str = "float32", classes: int = 1000):
    """A fresh ``keras.applications.InceptionResNetV2`` without weights or softmax."""
    with _keras_dtype(dtype) as keras:
        return keras.applications.InceptionResNetV2(weights=None, classes=classes,
                                                    classifier_activation=None)


def _block_names(model) -> list[str]:
    return [layer.name[:-len("_conv")] for layer in model.layers
            if re.fullmatch(rf"(?:{'|'.join(BLOCK_TYPES)})_\d+_conv", layer.name)]


def _residual_taps(model, block: str):
    """(block input, up conv output) Keras tensors of a residual block."""
    up = model.get_layer(f"{block}_conv").output
    for layer in model.layers:
        if type(layer).__name__ == "CustomScaleLayer" and layer.input[1] is up:
            return layer.input[0], up
    raise ValueError(f"{block}: no residual sum found")


def _residual_sum(model, block: str):
    """The Keras tensor of a residual block's ``x + scale * up`` (TF-Slim's ``<block>/add``)."""
    up = model.get_layer(f"{block}_conv").output
    for layer in model.layers:
        if type(layer).__name__ == "CustomScaleLayer" and layer.input[1] is up:
            return layer.output
    raise ValueError(f"{block}: no residual sum found")


def _probe(model, outputs: dict):
    keras = _keras()
    return keras.Model(model.inputs[0], outputs)


def calibrated_keras_model(images: np.ndarray, seed: int = 0, dtype: str = "float32",
                           report: dict | None = None):
    """Keras ``InceptionResNetV2`` (1000 classes, no softmax) with random weights made
    input-sensitive on ``images`` (NHWC in [-1, 1], e.g. 10 photos):

    1. every kernel ~ N(0, 2 / fan_in) from ``seed`` (no global seeding), BN betas
       ~ N(0, ``BETA_STD``);
    2. a training pass (BN momentum 0) on the first ``MEASURE_IMAGES`` images measures each
       residual block's input ``x`` and up conv output ``up``; the up conv's kernel is scaled
       by std(x) / std(up), so that the residual branch is as large as the stream it is added
       to (before TF-Slim's 0.17 / 0.10 / 0.20 / 1.0 block scale: the stream stays finite and
       every block changes it), and gets a bias ~ N(0, ``UP_BIAS_STD`` x std(x)) (so that
       biases count). With BN-normalised inputs an up conv's output scale hardly depends on
       what comes before it, so one measurement suffices;
    3. a training pass on all images with BN momentum 0 sets every moving mean / variance to
       the batch statistics of its input (each batch norm given the calibrated ones before it);
    4. an inference pass gives the ``avg_pool`` features, and ``predictions`` gets a whitened
       classifier (``whitened_classifier``), so that photos get different classes.

    The inference features are checked against pass 3 (moving statistics == batch statistics
    make the two the same function on these images), and the moving statistics of the first, a
    middle and the last batch norm against their inputs' statistics in inference.
    ``report``, if given, receives the figures (``up_to_x_std_ratio`` before scaling,
    ``train_vs_inference``, ``moving_stat_error``, ``logit_std``, ``distinct_top1``) and the
    inference pass's arrays: ``features`` (avg_pool), ``pre_aux`` (block17_20_ac) and
    ``logits`` (Keras's ``predictions`` on those features, i.e. the model's output).
    """
    keras = _keras()
    rng = np.random.default_rng(seed)
    model = keras_model(dtype)
    images = np.asarray(images, dtype)
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            shape = tuple(layer.kernel.shape)
            layer.kernel.assign(rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
                                .astype(dtype))
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
            layer.beta.assign(rng.normal(0.0, BETA_STD, layer.beta.shape).astype(dtype))

    blocks = _block_names(model)
    taps = {block: _residual_taps(model, block) for block in blocks}
    moments = _probe(model, {f"{block}:{part}": keras.ops.std(tensor) for block, pair
                             in taps.items() for part, tensor in zip(("x", "up"), pair)})
    measured = {k: float(v) for k, v in
                moments(images[:MEASURE_IMAGES], training=True).items()}  # pass 1
    ratios = {}
    for block in blocks:
        x_std, up_std = measured[f"{block}:x"], measured[f"{block}:up"]
        ratios[block] = up_std / x_std
        conv = model.get_layer(f"{block}_conv")
        conv.kernel.assign(conv.kernel.numpy() * (x_std / up_std))
        conv.bias.assign(rng.normal(0.0, UP_BIAS_STD * x_std, conv.bias.shape).astype(dtype))

    # Pass 2 sets the moving statistics of the scaled network; the inference pass must then
    # agree with it. A few batch norms' inputs are checked against their moving statistics.
    norms = _auto_named(model, "BatchNormalization")
    checked = [norms[0], norms[len(norms) // 2], model.get_layer("conv_7b_bn")]
    outputs = {"features": model.get_layer("avg_pool").output,
               "pre_aux": model.get_layer(_NAMED_END_POINTS["PreAuxLogits"]).output,
               **{norm.name: norm.input for norm in checked}}
    probe = _probe(model, outputs)
    trained = np.asarray(probe(images, training=True)["features"])
    for norm in model.layers:
        if isinstance(norm, keras.layers.BatchNormalization):
            norm.momentum = 0.99  # Keras's default again
    inferred = {k: np.asarray(v) for k, v in probe(images, training=False).items()}
    features = inferred["features"]
    feature_error = float(np.abs(features - trained).max() / np.abs(trained).max())
    if not feature_error < 1e-4:
        raise AssertionError(f"inference differs from the calibration pass by {feature_error}")
    stat_errors = {}
    for norm in checked:
        values = inferred[norm.name].astype(np.float64)
        mean, var = values.mean((0, 1, 2)), values.var((0, 1, 2))
        stat_errors[norm.name] = max(
            float(np.abs(norm.moving_mean.numpy() - mean).max() / np.sqrt(var).max()),
            float(np.abs(norm.moving_variance.numpy() - var).max() / var.max()))
    if not max(stat_errors.values()) < 1e-4:
        raise AssertionError(f"moving statistics are not the batch statistics: {stat_errors}")

    weights, biases = whitened_classifier(features, 1000, rng)
    dense = model.get_layer(SPEC.keras.classifier)
    dense.set_weights([weights.astype(dtype), biases.astype(dtype)])
    if report is not None:
        logits = np.asarray(dense(features))
        report.update(up_to_x_std_ratio=(min(ratios.values()), max(ratios.values())),
                      train_vs_inference=feature_error, moving_stat_error=stat_errors,
                      logit_std=float(logits.std()), distinct_top1=len(set(logits.argmax(1))),
                      features=features, pre_aux=inferred["pre_aux"], logits=logits)
    return model


# --- the aux head --------------------------------------------------------------------------

_AUX = {layer.scope.rsplit("/", 1)[1]: layer for layer in SPEC.layers if layer.is_aux}
_AUX_CONVS = ("Conv2d_1b_1x1", "Conv2d_2a_5x5")


def _bn_relu(tf, x, beta, mean, var):
    return tf.nn.relu(tf.nn.batch_normalization(x, mean, var, beta, None, BN_EPS))


def aux_logits(pre_aux: np.ndarray, variables: dict, dtype: str = "float32") -> np.ndarray:
    """TF-Slim's AuxLogits head on ``PreAuxLogits`` (NHWC): avg_pool 5x5/3 VALID, conv 1x1 +
    BN + ReLU, conv 5x5 VALID + BN + ReLU, flatten, fully connected. ``variables`` by TF name."""
    tf = import_tensorflow()
    x = tf.nn.avg_pool2d(tf.constant(pre_aux, dtype), 5, 3, "VALID")
    for scope in _AUX_CONVS:
        v = {role: tf.constant(variables[name], dtype)
             for role, name in _AUX[scope].variables().items()}
        x = tf.nn.conv2d(x, v["weight"], 1, "VALID")
        x = _bn_relu(tf, x, v["beta"], v["mean"], v["var"])
    names = _AUX["Logits"].variables()
    x = tf.reshape(x, [tf.shape(x)[0], -1])
    return (tf.matmul(x, tf.constant(variables[names["weight"]], dtype))
            + tf.constant(variables[names["bias"]], dtype)).numpy()


def _calibrated_aux(pre_aux: np.ndarray, num_classes: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random aux head weights calibrated like the trunk: random betas, moving statistics =
    batch statistics of each conv's output on these ``PreAuxLogits``, whitened classifier."""
    tf = import_tensorflow()
    found = {}
    x = tf.nn.avg_pool2d(tf.constant(pre_aux, tf.float32), 5, 3, "VALID")
    for scope in _AUX_CONVS:
        layer = _AUX[scope]
        names, shapes = layer.variables(), layer.kind.tf_shapes(layer.shape, num_classes)
        fan_in = np.prod(shapes["weight"][:3])
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), shapes["weight"]).astype(np.float32)
        out = np.asarray(tf.nn.conv2d(x, kernel, 1, "VALID"), np.float64)
        stats = {"weight": kernel, "beta": rng.normal(0.0, BETA_STD, shapes["beta"]),
                 "mean": out.mean((0, 1, 2)), "var": out.var((0, 1, 2))}
        stats = {role: value.astype(np.float32) for role, value in stats.items()}
        found.update({names[role]: value for role, value in stats.items()})
        x = _bn_relu(tf, tf.constant(out, tf.float32), stats["beta"], stats["mean"],
                     stats["var"])
    names = _AUX["Logits"].variables()
    weights, biases = whitened_classifier(np.asarray(x), num_classes, rng)
    return {**found, names["weight"]: weights, names["bias"]: biases}


# --- the synthetic checkpoint ----------------------------------------------------------------

def synthetic_weights(images: np.ndarray, num_classes: int = 1001, aux: bool = True,
                      seed: int = 0, keras_model=None,
                      report: dict | None = None) -> tuple[dict[str, np.ndarray], object]:
    """(TF-Slim model variables, the calibrated Keras model they come from).

    ``keras_model``: an already calibrated model (``calibrated_keras_model`` on the same
    images) to reuse instead of calibrating a new one; ``report`` is passed on to
    ``calibrated_keras_model`` (a new model only). For 1001 classes the Logits get a random
    background class 0 (``BACKGROUND_SCALE`` times a whitened class) in front of Keras's 1000,
    so TF classes 1..1000 are Keras's 0..999; for 1000 the classifier is Keras's; for any
    other count it is a new whitened classifier (Keras's logits then do not apply). The aux
    head (``aux``) is calibrated on the photos' PreAuxLogits (``_calibrated_aux``).
    """
    rng = np.random.default_rng([seed, 1])
    found = {} if report is None else report
    if keras_model is None:
        model = calibrated_keras_model(images, seed, report=found)
    elif aux or num_classes != 1000:  # the calibration's inputs of the new classifiers
        model = keras_model
        taps = _probe(model, {"features": model.get_layer("avg_pool").output,
                              "pre_aux": model.get_layer(_NAMED_END_POINTS["PreAuxLogits"]).output})
        found = {k: np.asarray(v) for k, v in taps(np.asarray(images, np.float32)).items()}
    else:
        model = keras_model
    variables = keras_to_tf_slim(model)
    names = SPEC.classifier.variables()
    background = ClassLayout.of(SPEC.eval, num_classes, source=num_classes).background
    if background:  # TF-Slim's classes: the background in front of Keras's
        weights, biases = whitened_classifier(found["features"], background, rng)
        variables[names["weight"]] = np.concatenate(
            [BACKGROUND_SCALE * weights, variables[names["weight"]]], axis=1)
        variables[names["bias"]] = np.concatenate(
            [BACKGROUND_SCALE * biases, variables[names["bias"]]])
    elif num_classes != 1000:
        variables[names["weight"]], variables[names["bias"]] = whitened_classifier(
            found["features"], num_classes, rng)
    if aux:
        variables.update(_calibrated_aux(found["pre_aux"], num_classes, rng))
    return {name: np.ascontiguousarray(value, np.float32)
            for name, value in variables.items()}, model


def write_tf_checkpoint(prefix: str | Path, tensors: dict[str, np.ndarray],
                        v1_format: bool = False) -> Path:
    """``tensors`` written by TensorFlow's SaveV2 (``prefix.index`` + data) or, with
    ``v1_format``, its V1 Save op (one file at ``prefix``)."""
    tf = import_tensorflow()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    values = [tf.constant(tensors[name]) for name in names]
    if v1_format:
        tf.raw_ops.Save(filename=str(prefix), tensor_names=names, data=values)
    else:
        tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=values)
    return prefix


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               num_classes: int = 1001, aux: bool = True, seed: int = 0,
                               v1_format: bool = False, keras_model=None,
                               return_keras: bool = False, report: dict | None = None):
    """Write a SYNTHETIC TF-Slim Inception-ResNet-v2 checkpoint at ``prefix``: the release's
    908 model variables (898 without aux, whose head has 10) + ``global_step`` (int64), with
    calibrated random weights (``synthetic_weights``; ``keras_model`` and ``report`` as
    there). Returns the prefix, or (prefix, the Keras model) with ``return_keras``;
    ``v1_format`` writes the single-file V1 table (TF's V1 Save op), else V2 (SaveV2)."""
    variables, model = synthetic_weights(calibration_images, num_classes, aux, seed,
                                         keras_model, report)
    variables["global_step"] = np.array(GLOBAL_STEP, np.int64)
    prefix = write_tf_checkpoint(prefix, variables, v1_format)
    return (prefix, model) if return_keras else prefix


# --- the reference -------------------------------------------------------------------------

def _set_threads(tf, threads: int):
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime is already initialised with another count
        pass


class KerasInceptionResNetV2:
    """Keras's InceptionResNetV2 with a TF-Slim checkpoint's weights, plus TF-Slim's AuxLogits.

    ``ema=True`` takes each variable's ExponentialMovingAverage shadow where the checkpoint
    has one. ``dtype="float64"`` builds the Keras model in double precision (every value is
    the checkpoint's, cast). Logits use the checkpoint's own classifier, background included.
    """

    def __init__(self, checkpoint_prefix: str | Path, num_classes: int = 1001, aux: bool = True,
                 ema: bool = False, threads: int = 2, dtype: str = "float32",
                 root: str | None = None):
        tf = import_tensorflow()
        _set_threads(tf, threads)
        self.prefix, self.num_classes, self.aux = str(checkpoint_prefix), num_classes, aux
        self.root = root or SPEC.tf_root  # a renamed copy's root scope (Architecture.aliases)
        self.ema, self.dtype = ema, dtype
        variables = self._read(tf)
        # Keras's classifier has no background class: the checkpoint's leading ones are left out
        layout = ClassLayout.of(SPEC.eval, num_classes, source=num_classes)
        self.model = keras_model(dtype, classes=num_classes - layout.background)
        tf_slim_to_keras(variables, self.model)
        names = SPEC.classifier.variables()
        self._classifier = (tf.constant(variables[names["weight"]], dtype),
                            tf.constant(variables[names["bias"]], dtype))
        self._aux_variables = {name: value for name, value in variables.items()
                               if name.startswith(f"{SPEC.tf_root}/{AUX_SCOPE}/")}
        self._taps = self._find_taps()
        self.end_points = tuple(name for name in SPEC.end_points
                                if name in self._taps or name == "Logits"
                                or (name == "AuxLogits" and aux))
        self._probes = {}

    def _read(self, tf) -> dict[str, np.ndarray]:
        try:
            reader = tf.train.load_checkpoint(self.prefix)
            stored = reader.get_variable_to_shape_map()
            variables = {}
            for layer in SPEC.layers:
                if layer.is_aux and not self.aux:
                    continue
                shapes = layer.kind.tf_shapes(layer.shape, self.num_classes)
                for role, name in layer.variables().items():
                    own = with_root(name, SPEC.tf_root, self.root)  # its name in the file
                    if own not in stored:
                        raise PortError(f"{self.prefix}: not a TF-Slim Inception-ResNet-v2 "
                                        f"checkpoint with these options (no {own})")
                    shadow = own + EMA_SUFFIX
                    source = shadow if self.ema and shadow in stored else own
                    if tuple(stored[source]) != tuple(shapes[role]):
                        raise PortError(f"{self.prefix}: {source} has shape "
                                        f"{tuple(stored[source])}, expected {shapes[role]}")
                    variables[name] = reader.get_tensor(source).astype(self.dtype)
        except tf.errors.OpError as err:
            raise PortError(f"{self.prefix}: TensorFlow cannot read it: "
                            f"{first_line(err)}") from err
        return variables

    def _find_taps(self) -> dict:
        taps = {}
        for name, (class_name, index, shape) in _STEM_END_POINTS.items():
            layer = _auto_named(self.model, class_name)[index]
            if tuple(layer.output.shape[1:]) != shape:
                raise ValueError(f"{layer.name} for {name}: shape {layer.output.shape}")
            taps[name] = layer.output
        for name, layer in _NAMED_END_POINTS.items():
            taps[name] = self.model.get_layer(layer).output
        return taps

    def _keras_tensor(self, tensor: str):
        """The Keras tensor that is TF-Slim's graph tensor ``tensor`` (a name of ``SPEC.taps``):
        an end point's, or a residual block's sum (Keras's scale layer) or ReLU
        (``<block>_ac``); Keras numbers the final ``Block8`` on from the repeat: ``block8_10``."""
        tap = SPEC.taps.resolve(tensor)
        for end_point in tap.end_points:
            if end_point in self._taps:
                return self._taps[end_point]
        *_, scope, op = tensor.split("/")
        block = f"block8_{BLOCK8_REPEATS + 1}" if scope == FINAL_BLOCK else scope
        if op == "add":
            return _residual_sum(self.model, block)
        return self.model.get_layer(f"{block}_ac").output

    def graph_tensors(self, images_nhwc: np.ndarray, tensors) -> dict[str, np.ndarray]:
        """TF-Slim graph tensors of the trunk by name (``SPEC.taps``; NHWC), all from one run
        of the Keras model: what proves the port's ``taps`` for this architecture."""
        tensors = tuple(tensors)
        probe = _probe(self.model, {f"t{i}": self._keras_tensor(name)
                                    for i, name in enumerate(tensors)})
        found = probe(np.asarray(images_nhwc, self.dtype), training=False)
        return {name: np.asarray(found[f"t{i}"]) for i, name in enumerate(tensors)}

    @classmethod
    def for_checkpoint(cls, checkpoint_prefix: str | Path, **kwargs) -> "KerasInceptionResNetV2":
        """The model the checkpoint holds: its number of classes, with AuxLogits if it has them."""
        classes, aux = checkpoint_layout(checkpoint_prefix, SPEC, kwargs.get("root"))
        return cls(checkpoint_prefix, num_classes=classes, aux=aux, **kwargs)

    def _tensors(self, names: tuple):
        """A Keras model from the input to the ``names`` end points."""
        if names not in self._probes:
            self._probes[names] = _probe(self.model, {name: self._taps[name] for name in names})
        return self._probes[names]

    def _graph(self, names: tuple):
        """The ``names`` end points as one traced TF graph (``tf.function``): calling a Keras
        model eagerly runs op by op, ~6x slower on 2 threads, which would flatter any
        comparison of speed with this reference."""
        key = ("graph", names)
        if key not in self._probes:
            probe = self._tensors(names)
            self._probes[key] = import_tensorflow().function(
                lambda images: probe(images, training=False), reduce_retracing=True)
        return self._probes[key]

    def _logits(self, features):
        """features @ the checkpoint's classifier (all its classes), in TF."""
        weights, biases = self._classifier
        return import_tensorflow().matmul(features, weights) + biases

    def __call__(self, images_nhwc: np.ndarray, end_points=("Logits", "AuxLogits")) -> dict:
        """End points for a batch of NHWC images in [-1, 1]; 4-D ones as NHWC arrays."""
        wanted = [name for name in end_points if name in self.end_points]
        taps = set(name for name in wanted if name in self._taps)
        if "Logits" in wanted:
            taps.add("PreLogitsFlatten")
        if "AuxLogits" in wanted:
            taps.add("PreAuxLogits")
        found = self._graph(tuple(sorted(taps)))(np.asarray(images_nhwc, self.dtype))
        results = {}
        for name in wanted:
            if name == "Logits":
                results[name] = np.asarray(self._logits(found["PreLogitsFlatten"]))
            elif name == "AuxLogits":
                results[name] = aux_logits(np.asarray(found["PreAuxLogits"]),
                                           self._aux_variables, self.dtype)
            else:
                results[name] = np.asarray(found[name])
        return results

    def loss_gradient(self, images_nhwc: np.ndarray, labels: np.ndarray,
                      dropped: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(Logits[:, dropped:], d loss / d images) for the summed softmax cross-entropy of
        ``labels`` (indices into the kept classes); ``dropped=1`` drops the background
        (``ClassLayout.dropped``). Traced once per ``dropped`` into one TF graph, as the
        forward pass is (``_graph``)."""
        tf = import_tensorflow()
        key = ("gradient", dropped)
        if key not in self._probes:
            features = self._tensors(("PreLogitsFlatten",))

            def loss_gradient(images, labels):
                with tf.GradientTape() as tape:
                    tape.watch(images)
                    logits = self._logits(features(images, training=False)["PreLogitsFlatten"])
                    logits = logits[:, dropped:]
                    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=labels, logits=logits))
                return logits, tape.gradient(loss, images)

            self._probes[key] = tf.function(loss_gradient, reduce_retracing=True)
        logits, gradient = self._probes[key](tf.constant(np.asarray(images_nhwc, self.dtype)),
                                             tf.constant(np.asarray(labels), tf.int64))
        return logits.numpy(), gradient.numpy()

    def close(self):
        """Drop the Keras model and its probes (their memory goes with them)."""
        self._probes.clear()
        self._taps = {}
        self.model = self._classifier = None
        self._aux_variables = {}


Reference = KerasInceptionResNetV2
