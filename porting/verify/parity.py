"""Parity between PyTorch and TensorFlow outputs: the bounds this project publishes.

Classifier outputs agree when max |diff| <= 1e-4 x max(1, max |TF|) and the top-1 and top-5
classes (as ordered sets, per image) are identical. Feature maps (the other TF-Slim end points)
get 1e-3 x max(1, max |TF|): float32 error grows along the network, measured on the synthetic
checkpoint from 1e-7 relative (Conv2d_1a_3x3) to 5e-5 (Mixed_7c, BN-folded), which would leave
the logits' bound only a 2x margin there; any wrong weight, statistic or pooling rule misses
1e-3 by orders of magnitude. With both sides in float64 every end point gets 1e-10 (measured
7e-14). Scaling by max(1, max|TF|) keeps one number meaningful for small maps and large logits.

numpy only: whatever computed the outputs (PyTorch, an ONNX engine) is the runner's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.spec import Architecture

RELATIVE_TOLERANCE = 1e-4  # logits (the published bound)
MAP_RELATIVE_TOLERANCE = 1e-3  # float32 feature maps
FLOAT64_RELATIVE_TOLERANCE = 1e-10  # both sides in double: what is left is summation order
# float32 input gradients: 3x the measured noise floor (porting.verify.gradients says why)
GRADIENT_RELATIVE_TOLERANCE = 0.1
FGSM_PIXELS = 2 / 255  # the FGSM step, as a fraction of the pixel range (4/255 on [-1, 1])


def tolerance_for(spec: Architecture, end_point: str, float64: bool) -> float:
    """The bound of ``end_point`` of ``spec``: the logits' for its classifier outputs, the
    feature maps' for the rest; float64's for every end point with both sides in double."""
    if float64:
        return FLOAT64_RELATIVE_TOLERANCE
    return RELATIVE_TOLERANCE if end_point in spec.classifier_end_points else MAP_RELATIVE_TOLERANCE


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    scale: float  # max(1, max |reference|)
    relative_tolerance: float
    top1_agree: int | None  # None for feature maps, where classes mean nothing
    top5_agree: int | None
    images: int

    @property
    def tolerance(self) -> float:
        return self.relative_tolerance * self.scale

    @property
    def relative_error(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and (
            self.top1_agree is None or self.top1_agree == self.top5_agree == self.images)

    def merge(self, other: "Parity") -> "Parity":
        """The parity of two disjoint batches of images taken together."""
        def add(a, b):
            return None if a is None else a + b

        return Parity(max(self.max_abs_diff, other.max_abs_diff), max(self.scale, other.scale),
                      self.relative_tolerance, add(self.top1_agree, other.top1_agree),
                      add(self.top5_agree, other.top5_agree), self.images + other.images)

    def __str__(self) -> str:
        text = f"max |diff| {self.max_abs_diff:.3g} (bound {self.tolerance:.3g})"
        if self.top1_agree is not None:
            text += (f", top-1 {self.top1_agree}/{self.images}, "
                     f"top-5 {self.top5_agree}/{self.images}")
        return text


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, largest first (stable for ties)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def compare(ours: np.ndarray, reference: np.ndarray,
            relative_tolerance: float = RELATIVE_TOLERANCE, classes: bool | None = None) -> Parity:
    """``classes``: whether the arrays are class scores (top-1/top-5 must agree); default: any
    2-D array."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shape {ours.shape} vs reference {reference.shape}")
    classes = reference.ndim == 2 if classes is None else classes
    return Parity(
        max_abs_diff=float(np.abs(ours - reference).max()),
        scale=max(1.0, float(np.abs(reference).max())),
        relative_tolerance=relative_tolerance,
        top1_agree=int((top_k(ours, 1) == top_k(reference, 1)).all(1).sum()) if classes else None,
        top5_agree=int((top_k(ours, 5) == top_k(reference, 5)).all(1).sum()) if classes else None,
        images=len(reference),
    )
