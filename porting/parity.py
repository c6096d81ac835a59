"""Parity between PyTorch and TensorFlow outputs: the bound this project publishes.

Logits agree when max |diff| <= 1e-4 x max(1, max |TF logit|) and the top-1 and top-5 classes
(as ordered sets, per image) are identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    tolerance: float
    top1_agree: int
    top5_agree: int
    images: int

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff <= self.tolerance and self.top1_agree == self.images
                and self.top5_agree == self.images)

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs_diff:.3g} (bound {self.tolerance:.3g}), "
                f"top-1 {self.top1_agree}/{self.images}, top-5 {self.top5_agree}/{self.images}")


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, largest first (stable for ties)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def compare(ours: np.ndarray, reference: np.ndarray) -> Parity:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shape {ours.shape} vs reference {reference.shape}")
    return Parity(
        max_abs_diff=float(np.abs(ours - reference).max()),
        tolerance=RELATIVE_TOLERANCE * max(1.0, float(np.abs(reference).max())),
        top1_agree=int((top_k(ours, 1) == top_k(reference, 1)).all(1).sum()),
        top5_agree=int((top_k(ours, 5) == top_k(reference, 5)).all(1).sum()),
        images=len(reference),
    )


def torch_outputs(model: torch.nn.Module, images_nhwc: np.ndarray, batch_size: int) -> dict:
    """{"Logits", "AuxLogits"?} as numpy, running ``model`` over NHWC images in batches."""
    chunks: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, len(images_nhwc), batch_size):
            x = torch.from_numpy(images_nhwc[start:start + batch_size]).permute(0, 3, 1, 2)
            if getattr(model, "AuxLogits", None) is not None:
                out = model.forward_end_points(x)
                out = {k: out[k] for k in ("Logits", "AuxLogits")}
            else:
                out = {"Logits": model(x)}
            for name, value in out.items():
                chunks.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in chunks.items()}
