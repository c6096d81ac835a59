"""Image preprocessing in numpy: TF-Slim's Inception and VGG eval paths, exactly, and timm's.

Size, crop and recipe come from the architecture's eval config (``models.spec.EvalConfig``);
the defaults are Inception's (299 px, central crop 0.875).

``tf-slim`` (TF-Slim's ``preprocess_for_eval``, used by the adversarial-model eval scripts):
pixels to [0, 1], ``tf.image.central_crop(0.875)``, the TF1 op ``resize_bilinear`` to 299x299
with ``align_corners=False`` and ``half_pixel_centers=False``, then ``(x - 0.5) * 2``.
That legacy op samples source pixel ``i * in / out`` (no half-pixel shift), so TF2's
``tf.image.resize``, PIL and ``F.interpolate`` all differ from it; it is reimplemented here.

With ``resize_side`` in the config (ResNet v1), ``tf-slim`` is TF-Slim's ``vgg_preprocessing``
eval path instead: the [0, 255] pixels resized (the same legacy op) so that the shorter side is
``resize_side`` (each side ``rint(side * resize_side / shorter)``, in float32), a central crop of
``input_size`` at offset ``(side - size) // 2``, then the mean subtracted (``(x - mean) / std``
with the config's [0, 1]-scale mean and std is that, up to float32 rounding).

``timm`` (timm's eval transform for this model): bicubic resize of the shorter side to
floor(299 / 0.875) = 341 (PIL), centre crop 299, mean = std = 0.5. Same [-1, 1] range, other pixels.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from porting.errors import PortError

SIZE = 299
CROP_FRACTION = 0.875
METHODS = ("tf-slim", "timm")


def central_crop_box(height: int, width: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
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


def tf_slim_eval(pixels: np.ndarray, size: int = SIZE,
                 crop_fraction: float = CROP_FRACTION) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC in [-1, 1], TF-Slim's eval preprocessing."""
    image = pixels.astype(np.float32) / 255.0
    top, left, h, w = central_crop_box(*image.shape[:2], crop_fraction)
    image = resize_bilinear_legacy(image[top:top + h, left:left + w], size, size)
    return (image - 0.5) * 2.0


def vgg_eval(pixels: np.ndarray, size: int, resize_side: int,
             mean: tuple[float, float, float]) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC, TF-Slim's ``vgg_preprocessing`` eval path (``mean`` on the
    [0, 255] scale)."""
    image = pixels.astype(np.float32)
    height, width = image.shape[:2]
    scale = np.float32(resize_side) / np.float32(min(height, width))
    new_height, new_width = (int(np.rint(np.float32(side) * scale)) for side in (height, width))
    image = resize_bilinear_legacy(image, new_height, new_width)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return image[top:top + size, left:left + size] - np.asarray(mean, np.float32)


def timm_eval(image, size: int = SIZE, crop_fraction: float = CROP_FRACTION,
              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """PIL RGB image -> float32 HWC, timm's eval transform (default: inception_v3's, [-1, 1])."""
    from PIL import Image

    scale_size = math.floor(size / crop_fraction)
    w, h = image.size
    if w <= h:
        new_w, new_h = scale_size, int(scale_size * h / w)
    else:
        new_w, new_h = int(scale_size * w / h), scale_size
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def load_image(path: str | Path, method: str = "tf-slim", config=None) -> np.ndarray:
    """One image file as HWC float32 in [-1, 1], sized for ``config`` (an ``EvalConfig``;
    default Inception's 299 px); PortError naming the file if it is unreadable."""
    from PIL import Image

    size, crop = (config.input_size, config.crop_fraction) if config else (SIZE, CROP_FRACTION)
    resize_side = config.resize_side if config else None
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
    if method == "tf-slim":
        if resize_side is not None:
            mean = tuple(255 * m for m in config.mean)
            return vgg_eval(np.asarray(image), size, resize_side, mean)
        return tf_slim_eval(np.asarray(image), size, crop)
    return timm_eval(image, size, crop, *((config.mean, config.std) if config else ()))
