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

Work and memory are bounded by the output, whatever the image's shape: the TF1 resize computes
only the output pixels that are kept (the crop), each from the four source pixels it reads, so
a 1x80000 strip costs what a photo does (bit for bit what resizing the whole image and cropping
gives). timm's path resizes the whole image with PIL (whose resize of a part is not bit for bit
the same), so it refuses an image whose longer side is more than ``MAX_ASPECT_RATIO`` times its
shorter one (the resized image would be that many times larger than the crop).

Images are read by ``load_image`` under the input rule (``porting.files.open_input``: a
regular file), at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, reads capped at the file's size
(a PNG chunk declaring 4 GiB in a 1 KiB file is not allocated); a damaged file is one
``PortError``. 16-bit greyscale (PNG, TIFF, PGM) is scaled to 8 bits by its high byte, as PIL
reads 16-bit colour PNGs; 32-bit integer and float pixels, whose range no file states, are
refused.
"""
from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from porting.errors import PortError, first_line
from porting.files import open_input

TF_SLIM, TIMM = "tf-slim", "timm"
METHODS = (TF_SLIM, TIMM)  # what `predict --preprocess` offers
# timm's path resizes the whole image: its longer side may be at most this many times the
# shorter (panoramas reach ~10:1; at 100:1 the resized image is ~12M pixels, 46 MB in PIL)
MAX_ASPECT_RATIO = 100


def central_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as ``tf.image.central_crop`` computes them: the start
    is truncated, int((size - size * fraction) / 2), and the box is what is left (not rounded)."""
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return top, left, height - 2 * top, width - 2 * left


def _legacy_axis(in_size: int, out_size: int, start: int | None = None,
                 stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the weight of the upper one, per output index of
    ``start:stop`` (default all).

    In float32 like TF's kernel: the source position ``i * (in / out)`` of a large image carries
    ~1e-4 of rounding, which float64 arithmetic would not reproduce; the index ``i`` is rounded
    to float32 as TF's ``static_cast<float>`` does (numpy's float32 ``arange`` gives the same)."""
    start, stop = start or 0, out_size if stop is None else stop
    scale = np.float32(in_size / out_size)
    position = np.arange(start, stop).astype(np.float32) * scale
    # float32 rounding can put the last positions of a very long axis at ``in_size``
    lower = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, position - lower.astype(np.float32)


def resize_bilinear_legacy(image: np.ndarray, height: int, width: int,
                           crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """HWC image resized like TF1 ``resize_bilinear(align_corners=False,
    half_pixel_centers=False)``, with TF's float32 arithmetic and order of operations.

    ``crop`` (top, left, crop height, crop width): only that window of the resized image is
    computed, bit for bit what cropping the whole one gives, in memory of the window's size.
    The source pixels are gathered (four per output pixel) before they become float32."""
    y, x, crop_height, crop_width = crop or (0, 0, height, width)
    if not (0 <= y and y + crop_height <= height and 0 <= x and x + crop_width <= width):
        raise ValueError(f"crop {crop} outside the {height}x{width} image")
    top, bottom, wy = _legacy_axis(image.shape[0], height, y, y + crop_height)
    left, right, wx = _legacy_axis(image.shape[1], width, x, x + crop_width)

    def at(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return image[np.ix_(rows, columns)].astype(np.float32)

    wx, wy = wx[None, :, None], wy[:, None, None]
    top_left, bottom_left = at(top, left), at(bottom, left)
    upper = top_left + (at(top, right) - top_left) * wx
    lower = bottom_left + (at(bottom, right) - bottom_left) * wx
    return upper + (lower - upper) * wy


# TF1's resize op for each interpolation a TF-Slim config may name: (HWC image, height, width,
# crop window or None) -> the window of the resized image, float32
TF1_RESIZE: dict[str, Callable[..., np.ndarray]] = {
    "bilinear": resize_bilinear_legacy,
}


def _tf1_resize(config, image: np.ndarray, height: int, width: int,
                crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    if config.interpolation not in TF1_RESIZE:
        raise ValueError(f"no TF1 resize op for interpolation {config.interpolation!r}")
    return TF1_RESIZE[config.interpolation](image, height, width, crop)


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
    """uint8 HWC RGB -> float32 HWC: TF-Slim's ``vgg_preprocessing`` eval path (only the
    central crop of the resized image is computed: a strip's other side may resize to millions
    of pixels)."""
    height, width = pixels.shape[:2]
    scale = np.float32(config.resize_side) / np.float32(min(height, width))
    new_height, new_width = (int(np.rint(np.float32(side) * scale)) for side in (height, width))
    size = config.input_size
    top, left = (new_height - size) // 2, (new_width - size) // 2
    image = _tf1_resize(config, pixels, new_height, new_width, (top, left, size, size))
    return _normalised(image, config, 255)


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
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise PortError(f"image of {w}x{h} pixels: --preprocess timm resizes the whole image "
                        f"and takes aspect ratios up to {MAX_ASPECT_RATIO}:1 (--preprocess "
                        "tf-slim computes only the crop)")
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


class _CappedReads:
    """A file whose ``read(n)`` asks for no more than is left in it: PIL reads some chunks whole
    by their declared length (a PNG's IDAT), and Python allocates what is asked before reading
    (4 GiB for a corrupt length in a 1 KiB file)."""

    def __init__(self, file):
        self._file = file
        self._size = os.fstat(file.fileno()).st_size

    def read(self, size=-1):
        if size is not None and size >= 0:
            size = min(size, max(self._size - self._file.tell(), 0))
        return self._file.read(size)

    def __getattr__(self, name):
        return getattr(self._file, name)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16-bit greyscale
_WIDENED_TO_I = ("PNG", "PPM")  # formats of at most 16 bits per sample that PIL may read as "I"
# What PIL raises on a damaged file besides OSError (its own fuzzing finds these)
_DAMAGED = (SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _rgb(image, path):
    """A PIL image as 8-bit RGB: what ``convert("RGB")`` gives, but 16-bit greyscale scaled by
    its high byte (``convert`` would clip it, 0..65535 to 0..255: white) and 32-bit integer or
    float pixels refused (no file says what their range is)."""
    from PIL import Image

    sixteen = image.mode in SIXTEEN_BIT_MODES or (
        image.mode == "I" and image.format in _WIDENED_TO_I)
    if sixteen:
        high = np.clip(np.asarray(image), 0, 65535).astype(np.uint32) >> 8
        return Image.fromarray(high.astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise PortError(f"{path}: {kind} pixels (PIL mode {image.mode}) have no stated range; "
                        "save the image with 8 or 16 bits per channel")
    return image.convert("RGB")


def load_image(path: str | Path, config, method: str = TF_SLIM) -> np.ndarray:
    """One image file as HWC float32, preprocessed for ``config`` (an architecture's
    ``EvalConfig``) by ``method`` (``METHODS``); PortError naming the file if it is
    unreadable, damaged, not a regular file or refused (see the module docstring)."""
    from PIL import Image

    if method not in METHODS:
        raise ValueError(f"no preprocessing {method!r} (known: {', '.join(METHODS)})")
    with open_input(path, "image") as file:
        try:
            with warnings.catch_warnings():
                # PIL warns above MAX_IMAGE_PIXELS and refuses at twice that: refuse at once, as
                # decoding such an image (a "decompression bomb") takes gigabytes
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(_CappedReads(file)) as image:
                    image = _rgb(image, path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise PortError(f"{path}: image too large (more than {Image.MAX_IMAGE_PIXELS:,} "
                            "pixels)") from err
        except OSError as err:  # not an image, or truncated (PIL's errors are OSErrors)
            raise PortError(f"{path}: cannot read image ({type(err).__name__})") from err
        except _DAMAGED as err:
            raise PortError(f"{path}: cannot read image (damaged: "
                            f"{first_line(err, escape=True)})") from err
    if method == TIMM:
        try:
            return timm_eval(image, config)
        except PortError as err:
            raise PortError(f"{path}: {err}") from None
    return tf_slim_eval(np.asarray(image), config)
