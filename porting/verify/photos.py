"""Real photos for parity checks: the colour and grey photographs that scikit-image ships.

Each is preprocessed for an architecture's eval config (``porting.preprocess``): by default its
own TF-Slim eval path, the input the released model was evaluated on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from porting.errors import PortError
from porting.preprocess import TF_SLIM, load_image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
          "ihc.png", "retina.jpg", "motorcycle_left.png", "camera.png", "coins.png")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photos(count: int | None = None, folder: Path | None = None, method: str = TF_SLIM, *,
                config) -> tuple[list[str], np.ndarray]:
    """(names, NHWC float32 batch): the first ``count`` (default all) photos from ``folder``
    (sorted by name) or scikit-image's set, preprocessed for ``config`` (an architecture's
    ``EvalConfig``) by ``method`` (``porting.preprocess.METHODS``)."""
    if folder is None:
        paths = [photo_dir() / name for name in PHOTOS[:count]]
    else:
        folder = Path(folder)
        if not folder.is_dir():
            raise PortError(f"{folder}: not a folder of images")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not paths:
            raise PortError(f"{folder}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [p.name for p in paths], np.stack([load_image(p, config, method) for p in paths])
