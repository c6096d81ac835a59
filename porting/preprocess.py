"""Image preprocessing in numpy, from an architecture's eval config alone: TF-Slim's two eval
paths, exactly, and timm's alternative.

The config (``models.spec.EvalConfig``) names its ``method`` and states every number (input
size, crop fraction or resize side, interpolation, mean and std); nothing here has a default of
its own. ``tf-slim`` (``TF_SLIM``) is the config's own method, what the TF model was evaluated
with:

- ``inception`` (TF-Slim's ``inception_preprocessing``, eval): pixels to [0, 1],
  ``tf.image.central_crop(crop_fraction)``, the TF1 op ``resize_bilinear`` to the input size
  with ``align_corners=False`` and ``half_pixel_centers=False``, then ``(x - mean) / std``:
  TF-Slim's ``(x - 0.5) * 2`` for mean = std = 0.5, to the bit, as dividing by a power of two
  is exact (tested on every pixel value). That legacy op samples source pixel ``i * in / out``
  (no half-pixel shift), so TF2's ``tf.image.resize``, PIL and ``F.interpolate`` all differ
  from it; it is reimplemented here.
- ``vgg`` (TF-Slim's ``vgg_preprocessing``, eval): the [0, 255] pixels resized (the same legacy
  op) so that the shorter side is ``resize_side`` (each side ``rint(side * resize_side /
  shorter)``, in float32), a central crop of the input size at offset ``(side - size) // 2``,
  then ``(x - 255 mean) / (255 std)``: TF's ``x - means`` to the bit, as 255 std is 1.

``timm`` (``TIMM``, timm's eval transform for such a model): bicubic resize (PIL) of the
shorter side to ``floor(input_size / crop_fraction)``, centre crop, ``(x - mean) / std`` on
[0, 1]. The same range, other pixels.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from porting.errors import PortError

TF_SLIM, TIMM = "tf-slim", "timm"
METHODS = (TF_SLIM, TIMM)  # what `predict --preprocess` offers


def central_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as ``tf.image.central_crop`` computes them: the start
    is truncated, int((size - size * fraction) / 2), and the box is what is left (not rounded)."""
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return top, left, height - 2 * top, width - 2 * left


def _legacy_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the weight of the upper one, per output index.

    In float32 like TF's kernel: the source position ``i * (in / out)`` of a large image carries
    ~1e-4 of rounding, which float64 arithmetic would not reproduce."""
    scale = np.float32(in_size / out_size)
    position = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, position - lower.astype(np.float32)


def resize_bilinear_legacy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC float32 image resized like TF1 ``resize_bilinear(align_corners=False,
    half_pixel_centers=False)``, with TF's float32 arithmetic and order of operations."""
    top, bottom, wy = _legacy_axis(image.shape[0], height)
    left, right, wx = _legacy_axis(image.shape[1], width)
    image = image.astype(np.float32)
    wx, wy = wx[None, :, None], wy[:, None, None]
    upper = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * wx
    lower = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * wx
    return upper + (lower - upper) * wy


# TF1's resize op for each interpolation a TF-Slim config may name
TF1_RESIZE: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "bilinear": resize_bilinear_legacy,
}


def _tf1_resize(config, image: np.ndarray, height: int, width: int) -> np.ndarray:
    if config.interpolation not in TF1_RESIZE:
        raise ValueError(f"no TF1 resize op for interpolation {config.interpolation!r}")
    return TF1_RESIZE[config.interpolation](image, height, width)


def _normalised(image: np.ndarray, config, scale: float) -> np.ndarray:
    """``(image - scale mean) / (scale std)`` per channel in float32, for an ``image`` on
    [0, ``scale``] (the config's mean and std are on [0, 1])."""
    mean = np.asarray([scale * m for m in config.mean], np.float32)
    std = np.asarray([scale * s for s in config.std], np.float32)
    return (image - mean) / std


def inception_preprocessing(pixels: np.ndarray, config) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC: TF-Slim's ``inception_preprocessing`` eval path."""
    image = pixels.astype(np.float32) / 255.0
    top, left, h, w = central_crop_box(*image.shape[:2], config.crop_fraction)
    size = config.input_size
    image = _tf1_resize(config, image[top:top + h, left:left + w], size, size)
    return _normalised(image, config, 1)


def vgg_preprocessing(pixels: np.ndarray, config) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC: TF-Slim's ``vgg_preprocessing`` eval path."""
    image = pixels.astype(np.float32)
    height, width = image.shape[:2]
    scale = np.float32(config.resize_side) / np.float32(min(height, width))
    new_height, new_width = (int(np.rint(np.float32(side) * scale)) for side in (height, width))
    image = _tf1_resize(config, image, new_height, new_width)
    size = config.input_size
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return _normalised(image[top:top + size, left:left + size], config, 255)


@dataclass(frozen=True)
class Method:
    """One of TF-Slim's eval preprocessings: what it does to pixels, and in words."""
    preprocess: Callable[[np.ndarray, object], np.ndarray]  # (uint8 HWC RGB, config) -> HWC
    summary: Callable[[object], str]                        # config -> a few words


# TF-Slim's eval preprocessing for each ``EvalConfig.method``
TF_SLIM_METHODS = {
    "inception": Method(inception_preprocessing, lambda config: (
        f"central crop {config.crop_fraction:.1%}, TF1 {config.interpolation} resize to "
        f"{config.input_size}x{config.input_size}")),
    "vgg": Method(vgg_preprocessing, lambda config: (
        f"TF1 {config.interpolation} resize of the shorter side to {config.resize_side}, "
        f"central crop {config.input_size}x{config.input_size}")),
}


def tf_slim_method(config) -> Method:
    """The TF-Slim preprocessing the config names; ValueError for one not implemented."""
    if config.method not in TF_SLIM_METHODS:
        raise ValueError(f"no preprocessing method {config.method!r} (known: "
                         f"{', '.join(TF_SLIM_METHODS)})")
    return TF_SLIM_METHODS[config.method]


def tf_slim_eval(pixels: np.ndarray, config) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC, the config's own TF-Slim eval preprocessing."""
    return tf_slim_method(config).preprocess(pixels, config)


def timm_scale_size(config) -> int:
    """The shorter side timm's eval transform resizes to before its centre crop."""
    return math.floor(config.input_size / config.crop_fraction)


def timm_eval(image, config) -> np.ndarray:
    """PIL RGB image -> float32 HWC, timm's eval transform for the config's numbers."""
    from PIL import Image

    size, scale_size = config.input_size, timm_scale_size(config)
    w, h = image.size
    if w <= h:
        new_w, new_h = scale_size, int(scale_size * h / w)
    else:
        new_w, new_h = int(scale_size * w / h), scale_size
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    return ((pixels - mean) / std).astype(np.float32)


def summary(config, method: str = TF_SLIM) -> str:
    """What ``method`` does for ``config``, in a few words (for help texts)."""
    if method == TIMM:
        return (f"bicubic resize of the shorter side to {timm_scale_size(config)}, centre crop "
                f"{config.input_size}x{config.input_size}")
    return tf_slim_method(config).summary(config)


def load_image(path: str | Path, config, method: str = TF_SLIM) -> np.ndarray:
    """One image file as HWC float32, preprocessed for ``config`` (an architecture's
    ``EvalConfig``) by ``method`` (``METHODS``); PortError naming the file if it is
    unreadable."""
    from PIL import Image

    if method not in METHODS:
        raise ValueError(f"no preprocessing {method!r} (known: {', '.join(METHODS)})")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses at twice that: refuse at once, as
            # decoding such an image (a "decompression bomb") takes gigabytes
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise PortError(f"{path}: image too large (more than {Image.MAX_IMAGE_PIXELS:,} "
                        "pixels)") from err
    except OSError as err:  # missing, unreadable or not an image (PIL's error is an OSError)
        raise PortError(f"{path}: cannot read image ({type(err).__name__})") from err
    if method == TIMM:
        return timm_eval(image, config)
    return tf_slim_eval(np.asarray(image), config)
