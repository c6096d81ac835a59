"""Top-k ImageNet classes of images under a ported model (``port-weights predict``).

Class names: ``data/imagenet_classes.tsv``, the 1000 ImageNet-1k synsets in their usual
(sorted WordNet id) order with their WordNet lemmas, as timm ships them (timm/data/_info).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from models.spec import ClassLayout, architecture_of_model
from porting.errors import PortError
from porting.preprocess import TF_SLIM, load_image
from porting.weights import load_ported

CLASSES_FILE = Path(__file__).parent / "data" / "imagenet_classes.tsv"
BATCH_SIZE = 16  # images per forward pass: memory is that of 16 images, however many are given


@dataclass(frozen=True)
class Prediction:
    label: int        # index into the model's outputs
    name: str
    probability: float


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(WordNet id, first lemma) of each ImageNet-1k class, in class-index order."""
    rows = (line.split("\t") for line in CLASSES_FILE.read_text().splitlines())
    return tuple((wnid, lemmas.split(",")[0]) for wnid, lemmas in rows)


def class_name(label: int, layout: ClassLayout) -> str:
    """Name of output ``label`` of a model with these classes (``layout``): TF-Slim's
    background class 0 of a 1001-class file is "background"."""
    index = layout.class_index(label)
    if index is None:
        return "background"
    wnid, name = imagenet_classes()[index]
    return f"{name} ({wnid})"


def top_predictions(logits: torch.Tensor, k: int, layout: ClassLayout) -> list[list[Prediction]]:
    probabilities = torch.softmax(logits.double(), dim=1)
    values, labels = probabilities.topk(k, dim=1)
    return [[Prediction(int(i), class_name(int(i), layout), float(p))
             for p, i in zip(row_values, row_labels)]
            for row_values, row_labels in zip(values, labels)]


def predict_files(weights, images, method: str = TF_SLIM, k: int = 5):
    """[(image path, top-k predictions)] for image files under the ported file ``weights``,
    preprocessed for its architecture by ``method`` (``porting.preprocess.METHODS``), run
    ``BATCH_SIZE`` at a time (each image is read and preprocessed just before its batch runs;
    nothing is returned if any image fails)."""
    model = load_ported(weights)
    config = architecture_of_model(model).eval
    try:  # a file with TF-Slim's classes keeps the background outputs; one ported to fewer has none
        layout = ClassLayout.of(config, model.num_classes)
    except ValueError as err:
        raise PortError(f"{weights}: {model.num_classes} classes, not ImageNet's ({err})") from err
    predictions = []
    for start in range(0, len(images), BATCH_SIZE):
        paths = images[start:start + BATCH_SIZE]
        batch = np.stack([load_image(path, config, method) for path in paths])
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).permute(0, 3, 1, 2))
        predictions += zip(paths, top_predictions(logits, k, layout))
    return predictions
