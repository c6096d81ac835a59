"""What a verification says: ``Verification``, the interface the CLI prints, writes as JSON and
records in the manifest, and ``Report``, one runner's end points against the reference (a
ported file, with its gradients; each engine x batch run of an exported graph, which
``porting.onnx.verify.OnnxReport`` composes)."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from models.spec import get_architecture
from porting.verify.parity import Parity

if TYPE_CHECKING:  # gradients imports torch, which verifying a graph on goldens does without
    from porting.verify.gradients import GradientParity

RULE = ("max_abs_diff <= relative_tolerance * max(1, max |TF|); classifiers also need the "
        "same top-1 and top-5 on every image")


@dataclass(kw_only=True)
class Verification(ABC):
    """A verification's outcome, whatever ran, and what it left beside the weights."""
    goldens_written: Path | None = None   # the golden file recorded on the way (--record-goldens)
    manifest: Path | None = None          # the weights' manifest, Logits parity recorded in it
    manifest_skipped: str | None = None   # why a manifest beside the weights was left alone

    @property
    @abstractmethod
    def passed(self) -> bool: ...

    @property
    @abstractmethod
    def compared(self) -> bool:
        """Whether anything was compared (not only goldens recorded)."""

    @property
    @abstractmethod
    def manifest_parity(self) -> Parity:
        """What ``verify`` records in the weights' manifest: a Logits parity."""

    @abstractmethod
    def manifest_reference(self) -> str:
        """What the manifest's parity was measured against, in words."""

    @abstractmethod
    def verdict(self) -> str:
        """One line: PASS or FAIL, and why."""

    @abstractmethod
    def table(self) -> list[str]:
        """The figures, as lines of text."""

    @abstractmethod
    def to_json(self) -> dict:
        """The report as JSON-ready data."""


@dataclass
class Report(Verification):
    """One runner's end points against the reference (and, for a ported file, its gradients)."""
    weights: str | None
    reference: str  # what the port was compared with
    images: list[str]
    dtype: str
    architecture: str
    end_points: dict[str, Parity] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # end point -> why not compared
    gradients: GradientParity | None = None

    @property
    def first_divergence(self) -> str | None:
        return next((name for name, p in self.end_points.items() if not p.passed), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None and (self.gradients is None or self.gradients.passed)

    @property
    def compared(self) -> bool:
        return bool(self.end_points)

    @property
    def manifest_parity(self) -> Parity:
        return self.end_points["Logits"]

    def manifest_reference(self) -> str:
        return f"{self.reference} ({self.dtype})"

    def verdict(self) -> str:
        n = len(self.images)
        if not self.end_points:
            return f"recorded {n} images' end points to {self.goldens_written}"
        first = self.first_divergence
        if first is not None:
            p = self.end_points[first]
            failing = sum(not q.passed for q in self.end_points.values())
            return (f"FAIL: first divergence at {first}: {p} (relative {p.relative_error:.3g}); "
                    f"{failing} of {len(self.end_points)} end points fail")
        if self.gradients is not None and not self.gradients.passed:
            return f"FAIL: end points agree, gradients do not: {self.gradients}"
        logits = self.end_points["Logits"]
        return (f"PASS: {len(self.end_points)} end points within bounds of {self.reference} "
                f"on {n} images ({self.dtype}); top-1 "
                f"{logits.top1_agree}/{n}, top-5 {logits.top5_agree}/{n}"
                + ("; gradients and FGSM agree" if self.gradients is not None else ""))

    def table(self) -> list[str]:
        names = get_architecture(self.architecture).end_points
        w = max(16, 2 + max(map(len, names)))  # ResNet's scoped names run to ~45 characters
        lines = [f"{'end point':<{w}}{'max |diff|':>12}{'relative':>12}{'bound':>10}  result"]
        for name in names:
            if name in self.skipped:
                lines.append(f"{name:<{w}}{'-':>12}{'-':>12}{'-':>10}  skipped: {self.skipped[name]}")
            elif name in self.end_points:
                p = self.end_points[name]
                result = "ok" if p.passed else "FAIL"
                if p.top1_agree is not None:
                    result += f" (top-1 {p.top1_agree}/{p.images}, top-5 {p.top5_agree}/{p.images})"
                lines.append(f"{name:<{w}}{p.max_abs_diff:>12.3g}{p.relative_error:>12.3g}"
                             f"{p.relative_tolerance:>10.0e}  {result}")
        if self.gradients is not None:
            lines.append(f"gradients: {self.gradients} -> {'ok' if self.gradients.passed else 'FAIL'}")
        return lines

    def to_json(self) -> dict:
        """Non-finite numbers (an infinite relative error) are null, since JSON has no Infinity
        or NaN."""
        return _finite_or_null({
            "passed": self.passed,
            "verdict": self.verdict(),
            "first_divergence": self.first_divergence,
            "weights": self.weights,
            "architecture": self.architecture,
            "reference": self.reference,
            "dtype": self.dtype,
            "rule": RULE,
            "images": self.images,
            "end_points": {
                name: {"max_abs_diff": p.max_abs_diff, "relative_error": p.relative_error,
                       "scale": p.scale, "relative_tolerance": p.relative_tolerance,
                       "bound": p.tolerance, "passed": p.passed,
                       "top1_agree": p.top1_agree, "top5_agree": p.top5_agree}
                for name, p in self.end_points.items()},
            "skipped": self.skipped,
            "gradients": None if self.gradients is None else {
                **{k: getattr(self.gradients, k) for k in self.gradients.__dataclass_fields__},
                "passed": self.gradients.passed},
            "goldens_written": None if self.goldens_written is None else str(self.goldens_written),
            "manifest": None if self.manifest is None else str(self.manifest),
        })


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
