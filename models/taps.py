"""Feature taps, the PyTorch side: values of a model's forward pass by TF's names.

Each model defines ``_walk(x, tap)``: its forward pass, calling ``tap(name, value)`` (which
returns ``value``) at every value of its architecture's ``Taps`` table (``models.spec.taps``),
under a name of that table (an end point or a TF tensor name). ``TapsMixin`` gives it

- ``taps(x, names)``: ``{name: tensor}`` for the names asked (TF-Slim graph tensor names, with
  or without ``:0``, or end points), NCHW where TF's are NHWC, the graph kept for autograd; the
  walk stops once the last of them is computed, so asking for an early layer costs the layers
  up to it only;
- ``forward_end_points(x)``: every TF-Slim end point the model has, in the spec's order.
"""
from __future__ import annotations

from typing import Iterable

import torch

from models.spec import Taps, UnknownTap, architecture_of_model


class _Complete(Exception):
    """Every value asked for is recorded: the walk stops here."""


class Recorder:
    """The ``tap`` a walk calls: keeps the values of ``points`` (the table's keys) and stops the
    walk after the last one."""

    def __init__(self, table: Taps, points: Iterable[str]):
        self.table, self.wanted, self.found = table, set(points), {}

    def wants(self, name: str) -> bool:
        """Whether the value named ``name`` is asked for (to skip a head nobody asked for)."""
        return self.table.point(name) in self.wanted

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        point = self.table.point(name)
        if point in self.wanted:
            self.found[point] = value
            if len(self.found) == len(self.wanted):
                raise _Complete
        return value


def walk_until_complete(walk, x: torch.Tensor, recorder: Recorder) -> dict[str, torch.Tensor]:
    """Run ``walk(x, recorder)`` until it has recorded every value asked for."""
    if recorder.wanted:
        try:
            walk(x, recorder)
        except _Complete:
            pass
    missing = recorder.wanted - set(recorder.found)
    if missing:  # a walk that misses a value of its table: a bug, as the layout test checks
        raise RuntimeError(f"the walk recorded no {sorted(missing)[0]!r}")
    return recorder.found


class TapsMixin:
    """``taps`` and ``forward_end_points`` for a model with a ``_walk`` (see the module)."""

    AuxLogits: torch.nn.Module | None

    def _walk(self, x: torch.Tensor, tap) -> None:
        raise NotImplementedError

    @property
    def tap_table(self) -> Taps:
        """The architecture's table: every name ``taps`` takes."""
        return architecture_of_model(self).taps

    def _missing_head(self, end_points: tuple[str, ...]) -> bool:
        return "AuxLogits" in end_points and self.AuxLogits is None

    def taps(self, x: torch.Tensor, names: str | Iterable[str]) -> dict[str, torch.Tensor]:
        """``{name: value}`` for each of ``names`` (one name or several): a TF-Slim graph tensor
        name (``"InceptionV3/InceptionV3/Mixed_5b/concat"``, ``":0"`` optional) or an end
        point (``"AuxLogits"``), in the model's layout (NCHW maps; TF's are NHWC). ``KeyError``
        (``UnknownTap``, one line) for a name the table lacks or the aux head of a model built
        without it."""
        names = [names] if isinstance(names, str) else list(names)
        table = self.tap_table
        resolved = {name: table.resolve(name) for name in names}
        for name, tap in resolved.items():
            if self._missing_head(tap.end_points):
                raise UnknownTap(f"{name!r}: this model was built without its AuxLogits head "
                                 "(aux_logits=False, or a file ported with --no-aux)")
        found = walk_until_complete(self._walk, x,
                                    Recorder(table, {tap.point for tap in resolved.values()}))
        return {name: found[tap.point] for name, tap in resolved.items()}

    def forward_end_points(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every TF-Slim end point of the spec the model has (NCHW maps, [N, C] vectors; no
        ``AuxLogits`` without the head), for per-layer parity reports. A path of its own, so
        that ``forward`` keeps no intermediate tensors alive."""
        spec = architecture_of_model(self)
        wanted = [name for name in spec.end_points if not self._missing_head((name,))]
        found = walk_until_complete(self._walk, x,
                                    Recorder(spec.taps, {spec.taps.point(n) for n in wanted}))
        return {name: found[spec.taps.point(name)] for name in wanted}
