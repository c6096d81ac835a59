"""Real photos for parity checks: the colour and grey photographs that scikit-image ships.

Preprocessing here only has to be deterministic (both frameworks get the same array):
central crop of 87.5% (TF-Slim's eval crop), bilinear resize to 299x299, scale to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
          "ihc.png", "retina.jpg", "motorcycle_left.png", "camera.png", "coins.png")
SIZE = 299


def photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photo(path: Path, size: int = SIZE) -> np.ndarray:
    """One image as HWC float32 in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        cw, ch = round(w * 0.875), round(h * 0.875)
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (pixels - 0.5) * 2.0


def load_photos(count: int = len(PHOTOS), folder: Path | None = None) -> tuple[list[str], np.ndarray]:
    """(names, NHWC float32 batch): ``count`` photos from ``folder`` or scikit-image's set."""
    if folder is None:
        paths = [photo_dir() / name for name in PHOTOS[:count]]
    else:
        paths = sorted(p for p in Path(folder).iterdir()
                       if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"})[:count]
    return [p.name for p in paths], np.stack([load_photo(p) for p in paths])
