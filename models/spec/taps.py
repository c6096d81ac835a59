"""Feature taps: the values a ported model can hand out by TF's names, torch-free.

Attack and interpretability code written for TF-Slim picks a layer by the name of a tensor in
TF-Slim's graph (FIA, NAA, RPA: ``InceptionV3/InceptionV3/Mixed_5b/concat``,
``resnet_v2_152/block2/unit_8/bottleneck_v2/add``, ``vgg_16/conv3/conv3_3/Relu``; lucid's model
zoo lists the same names) or by TF-Slim's end-point name (``end_points['AuxLogits']`` for
PI-FGSM's aux loss). A ``Taps`` table, one per architecture (``Architecture.taps``, generated in
its ``spec.py`` from the same block list as its layer table), holds every value the model
records under both kinds of name:

- ``Tap.tensor``: the graph tensor's name, without TF's ``:0`` output suffix (which is accepted
  too), exactly as ``graph.get_tensor_by_name(tensor + ":0")`` finds it in TF-Slim's inference
  graph built at the root of a graph (a second copy of the net in the same graph is
  ``InceptionV3_1/...``: strip that yourself);
- ``Tap.end_points``: the TF-Slim end points that ARE that tensor (ResNet's ``<root>/block1``
  is its last unit's output, so one tensor may have two end points);
- ``Tap.point``: what the model's walk records it under (the tensor name, or the end point
  where the value has no single-tensor name the table gives, e.g. ResNet's squeezed
  ``Logits``).

The model side (``models.taps``) runs the network only as far as the last value asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

OUTPUT_SUFFIX = ":0"  # TF's name of an op's first output; a tap is always output 0


@dataclass(frozen=True)
class Tap:
    tensor: str | None            # TF graph tensor name (op name), None where the table gives none
    end_points: tuple[str, ...]   # TF-Slim end points that are this tensor

    def __post_init__(self):
        if self.tensor is None and not self.end_points:
            raise ValueError("a tap needs a tensor name or an end point")

    @property
    def point(self) -> str:
        """The model's key for this value."""
        return self.tensor if self.tensor is not None else self.end_points[0]

    @property
    def names(self) -> tuple[str, ...]:
        return ((self.tensor,) if self.tensor is not None else ()) + self.end_points


class UnknownTap(KeyError):
    """A name that is no tap of the architecture; ``str()`` is one line that says how names look."""

    def __str__(self) -> str:
        return self.args[0]


class Taps:
    """An architecture's taps in network order; every name (tensor or end point) once."""

    def __init__(self, arch: str, taps: Iterable[Tap]):
        self.arch = arch
        self.taps = tuple(taps)
        self._by_name: dict[str, Tap] = {}
        for tap in self.taps:
            for name in tap.names:
                if name in self._by_name:
                    raise ValueError(f"{arch}: tap name {name!r} given twice")
                self._by_name[name] = tap

    def __iter__(self):
        return iter(self.taps)

    def __len__(self) -> int:
        return len(self.taps)

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def _lookup(self, name: str) -> Tap | None:
        if not isinstance(name, str):
            return None
        if name.endswith(OUTPUT_SUFFIX):
            name = name[:-len(OUTPUT_SUFFIX)]
        return self._by_name.get(name)

    def resolve(self, name: str) -> Tap:
        """The tap a tensor name (with or without ``:0``) or an end-point name denotes;
        ``UnknownTap`` naming an example of each kind otherwise."""
        tap = self._lookup(name)
        if tap is None:
            example = next(t for t in self.taps if t.tensor is not None)
            raise UnknownTap(f"{name!r} is no feature tap of {self.arch}: give a TF-Slim graph "
                             f"tensor name (e.g. {example.tensor!r}) or an end point (e.g. "
                             f"{self.taps[-1].end_points[0]!r}); the README's \"TF tensor "
                             "names as feature taps\" lists them")
        return tap

    def point(self, name: str) -> str:
        """The model's key for ``name`` (a name the model's own walk uses)."""
        return self.resolve(name).point

    def tensors(self) -> tuple[str, ...]:
        return tuple(tap.tensor for tap in self.taps if tap.tensor is not None)


def slim_op(end_point: str) -> str:
    """The op that makes an Inception end point's tensor in TF-Slim's graph, from the end
    point's kind as its name says: a conv's ReLU, a max pool, a block's concat."""
    for prefix, op in (("Conv2d_", "Relu"), ("MaxPool_", "MaxPool"), ("Mixed_", "concat")):
        if end_point.startswith(prefix):
            return f"{end_point}/{op}"
    raise ValueError(f"no TF-Slim op rule for the end point {end_point!r}")


def base_scope(root: str) -> str:
    """Where TF-Slim's Inception nets put their trunk's ops: ``inception_v3(scope=root)``
    opens the variable scope ``root`` and calls ``inception_v3_base(scope=<that scope>)``,
    which re-enters it, and TF1 opens a second name scope of the same name inside the
    first (the variables stay ``root/...``): ``InceptionV3/InceptionV3``. The heads
    (``AuxLogits``, ``Logits``) are built in the outer one."""
    return f"{root}/{root}"


def inception_op_scope(scope: str) -> str:
    """The name scope of the ops that use the variables of ``scope`` in an Inception graph:
    the trunk's under ``base_scope`` (``InceptionV3/Conv2d_1a_3x3`` ->
    ``InceptionV3/InceptionV3/Conv2d_1a_3x3``), the heads' (``AuxLogits``, ``Logits``) where
    their variables are."""
    root, _, below = scope.partition("/")
    if below.split("/", 1)[0] in ("AuxLogits", "Logits"):
        return scope
    return f"{base_scope(root)}/{below}"


def inception_taps(arch: str, root: str, end_points: Iterable[str], *,
                   heads: dict[str, str | None]) -> Taps:
    """The taps of an Inception net, one per end point in ``end_points`` (network order): a
    head's (``heads``: its tensor below ``root``, or None) or else a trunk end point's
    (``slim_op``'s op under ``base_scope``)."""
    scope = base_scope(root)
    return Taps(arch, [
        Tap(f"{scope}/{slim_op(name)}" if name not in heads
            else None if heads[name] is None else f"{root}/{heads[name]}", (name,))
        for name in end_points])
