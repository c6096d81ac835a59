"""What ``compare`` found: ``Comparison``, typed, printed as a table and written as JSON. Its two
runs are ``porting.verify.report.Report``s, as ``verify`` reports them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from porting.verify.report import Report, _finite_or_null

WORST = 10  # tensors named in the table


@dataclass(frozen=True)
class TensorDistance:
    key: str              # ours
    foreign_key: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float          # max |ours|: what the difference is relative to

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.scale, 1e-30)


@dataclass
class Comparison:
    foreign: str
    layout: str               # "timm:inception_v3"
    architecture: str
    checkpoint: str | None    # the weights compared with (None with goldens: no tensors)
    classes: int
    tensors: list[TensorDistance] = field(default_factory=list)  # worst first
    missing: dict[str, str] = field(default_factory=dict)  # our key -> the foreign key lacking
    misshapen: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)      # foreign keys we have no use for
    weights_run: Report | None = None        # the foreign weights in our exact network
    weights_run_skipped: str | None = None
    architecture_run: Report | None = None   # the foreign weights in the file's own network
    architecture_note: str | None = None     # why it differs, or why it was not run

    @property
    def weight_distance(self) -> float | None:
        return max((t.max_abs_diff for t in self.tensors), default=None)

    def worst(self, count: int = WORST) -> list[TensorDistance]:
        return [t for t in self.tensors if t.max_abs_diff > 0][:count]

    def verdict(self) -> str:
        parts = [f"{len(self.tensors)} tensors compared"]
        if self.weight_distance is not None:
            parts.append(f"weight distance {self.weight_distance:.3g}"
                         + (f" (worst {self.tensors[0].key})" if self.weight_distance else ""))
        parts += [f"{len(self.missing)} missing"] * bool(self.missing)
        parts += [f"{len(self.misshapen)} misshapen"] * bool(self.misshapen)
        parts += [f"{len(self.extra)} extra"] * bool(self.extra)
        for label, run in (("our network", self.weights_run),
                           ("its own network", self.architecture_run)):
            if run is not None and "Logits" in run.end_points:
                p = run.end_points["Logits"]
                parts.append(f"{label}: Logits max |diff| {p.max_abs_diff:.3g}, top-1 "
                             f"{p.top1_agree}/{p.images}")
        return f"{self.layout} vs {self.checkpoint or self.architecture}: " + "; ".join(parts)

    def table(self) -> list[str]:
        lines = [f"layout   {self.layout} ({self.classes} classes) of {self.architecture}",
                 f"tensors  {len(self.tensors)} mapped, {len(self.missing)} missing, "
                 f"{len(self.misshapen)} misshapen, {len(self.extra)} extra"]
        if self.checkpoint is None:
            lines.append("         (goldens hold no weights: per-tensor distances need --src)")
        worst = self.worst()
        if worst:
            w = max(len(t.key) for t in worst) + 2
            lines.append(f"  {'worst tensors':<{w}}{'max |diff|':>12}{'relative':>12}")
            lines += [f"  {t.key:<{w}}{t.max_abs_diff:>12.3g}{t.relative:>12.3g}" for t in worst]
        elif self.tensors:
            lines.append("  every mapped tensor equals the checkpoint's")
        for key, theirs in list(self.missing.items())[:WORST]:
            lines.append(f"  missing  {theirs} (our {key})")
        for key, why in list(self.misshapen.items())[:WORST]:
            lines.append(f"  misshapen {key}: {why}")
        for key in self.extra[:WORST]:
            lines.append(f"  extra    {key}")
        for title, run, note in (("in our network (weight differences alone)", self.weights_run,
                                  self.weights_run_skipped),
                                 ("in its own network (architecture differences too)",
                                  self.architecture_run, self.architecture_note)):
            lines.append(f"end points, {title}:")
            if run is not None:
                if note:
                    lines.append(f"  ({note})")
                lines += ["  " + line for line in run.table()]
            else:
                lines.append(f"  not run: {note}")
        return lines

    def to_json(self) -> dict:
        return _finite_or_null({
            "foreign": self.foreign, "layout": self.layout, "architecture": self.architecture,
            "checkpoint": self.checkpoint, "classes": self.classes,
            "verdict": self.verdict(),
            "weight_distance": self.weight_distance,
            "tensors": [{**asdict(t), "shape": list(t.shape), "relative": t.relative}
                        for t in self.tensors],
            "worst": [t.key for t in self.worst()],
            "missing": self.missing, "misshapen": self.misshapen, "extra": self.extra,
            "weights_run": None if self.weights_run is None else self.weights_run.to_json(),
            "weights_run_skipped": self.weights_run_skipped,
            "architecture_run": (None if self.architecture_run is None
                                 else self.architecture_run.to_json()),
            "architecture_note": self.architecture_note,
        })

