"""TF-Slim's ResNet v1 and v2 (``tf_slim.nets.resnet_v1`` / ``resnet_v2``, depths 50/101/152)
as the converter sees them: six architectures (``SPECS``), one per root scope
(``resnet_v2_50``, ...), their tables generated from the block layout below.

Both versions stack bottleneck units in four blocks; TF-Slim puts each block's stride on its
LAST unit (``resnet_v*_block``: ``[stride 1] * (n - 1) + [stride]``). A unit whose input has
fewer channels than its output (each block's first) projects its shortcut with a 1x1 conv;
the others take the identity, subsampled by a 1x1 max pool where the unit strides.

- v1 (``bottleneck_v1``, the 2016-08-28 releases converted from Caffe): every conv has a batch
  norm with gamma, eps 1e-5; relu(shortcut + conv3(conv2(conv1(x)))). VGG preprocessing at
  224 px, 1000 classes (no background).
- v2 (``bottleneck_v2``, pre-activation, the 2017-04-14 releases): ``preact`` batch norm + ReLU
  first; ``shortcut`` and ``conv3`` are biased convs without batch norm; the root ``conv1`` is a
  biased conv without batch norm or ReLU; a ``postnorm`` batch norm + ReLU before the pool.
  Inception preprocessing at 299 px, 1001 classes (background at 0).

End points: TF-Slim's dict (``outputs_collections``) has the root ``conv1``, every unit, every
block, the logits and their softmax, and every conv inside a unit. ``verify`` compares the root
conv, every unit and block, and the class scores (``Logits``: TF-Slim's ``<root>/logits``
squeezed to [N, classes], as its later ``spatial_squeeze`` does); the convs inside a unit are
left out (4 more maps per unit would make a ResNet-152 golden file ~5x larger, and a unit's
output already names where a port diverges).
"""
from __future__ import annotations

from dataclasses import dataclass

from models.spec import Architecture, Tap, Taps, inception_eval, table, vgg_eval

BN_EPS = 1e-5  # resnet_arg_scope's batch_norm_epsilon
UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # units per block
BASE_DEPTHS = (64, 128, 256, 512)  # each block's bottleneck width; its output is 4x that
STRIDES = (2, 2, 2, 1)  # each block's stride, on its last unit
ROOT_CHANNELS = 64
FEATURES = 2048


@dataclass(frozen=True)
class Unit:
    block: int        # 1-based, as TF-Slim's scope ``block1``
    index: int        # 1-based, as ``unit_1``
    in_chs: int
    bottleneck: int
    out_chs: int
    stride: int

    @property
    def scope(self) -> str:
        return f"block{self.block}/unit_{self.index}"

    @property
    def module(self) -> str:
        return f"block{self.block}.unit_{self.index}"

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a 1x1 conv (channels change) rather than the identity."""
        return self.in_chs != self.out_chs


def units(depth: int) -> list[Unit]:
    """Every bottleneck unit of a ResNet of ``depth``, in network order."""
    found, in_chs = [], ROOT_CHANNELS
    for block, (count, base, stride) in enumerate(zip(UNITS[depth], BASE_DEPTHS, STRIDES), 1):
        for index in range(1, count + 1):
            found.append(Unit(block, index, in_chs, base, 4 * base,
                              stride if index == count else 1))
            in_chs = 4 * base
    return found


def _v1_rows(depth: int) -> str:
    rows = ["conv1  conv1  conv_bn_gamma  7x7 3 64"]
    for u in units(depth):
        scope = f"{u.scope}/bottleneck_v1"
        if u.projects:
            rows.append(f"{scope}/shortcut {u.module}.shortcut conv_bn_gamma 1x1 {u.in_chs} {u.out_chs}")
        rows += [f"{scope}/conv1 {u.module}.conv1 conv_bn_gamma 1x1 {u.in_chs} {u.bottleneck}",
                 f"{scope}/conv2 {u.module}.conv2 conv_bn_gamma 3x3 {u.bottleneck} {u.bottleneck}",
                 f"{scope}/conv3 {u.module}.conv3 conv_bn_gamma 1x1 {u.bottleneck} {u.out_chs}"]
    rows.append(f"logits  fc  conv_classifier  {FEATURES}")
    return "\n".join(rows)


def _v2_rows(depth: int) -> str:
    rows = ["conv1  conv1  conv_bias  7x7 3 64"]
    for u in units(depth):
        scope = f"{u.scope}/bottleneck_v2"
        rows.append(f"{scope}/preact {u.module}.preact bn {u.in_chs}")
        if u.projects:
            rows.append(f"{scope}/shortcut {u.module}.shortcut conv_bias 1x1 {u.in_chs} {u.out_chs}")
        rows += [f"{scope}/conv1 {u.module}.conv1 conv_bn_gamma 1x1 {u.in_chs} {u.bottleneck}",
                 f"{scope}/conv2 {u.module}.conv2 conv_bn_gamma 3x3 {u.bottleneck} {u.bottleneck}",
                 f"{scope}/conv3 {u.module}.conv3 conv_bias 1x1 {u.bottleneck} {u.out_chs}"]
    rows += [f"postnorm  postnorm  bn  {FEATURES}", f"logits  fc  conv_classifier  {FEATURES}"]
    return "\n".join(rows)


def end_points(version: int, depth: int) -> tuple[str, ...]:
    """The TF-Slim end points verify compares, in network order (see the module docstring)."""
    root = f"resnet_v{version}_{depth}"
    names = [f"{root}/conv1"]
    for u in units(depth):
        names.append(f"{root}/{u.scope}/bottleneck_v{version}")
        if u.index == UNITS[depth][u.block - 1]:
            names.append(f"{root}/block{u.block}")
    return (*names, "Logits")


def taps(version: int, depth: int) -> Taps:
    """TF-Slim's tensors, network order: the root conv (v1: its ReLU; v2: its biased conv),
    ``pool1``; per unit v1 the residual sum before its ReLU and the ReLU (the unit's end point),
    v2 the pre-activation's ReLU and the sum (the unit's end point; v2 has no ReLU after it);
    a block's end point is its last unit's tensor; v2's ``postnorm`` ReLU; ``Logits``
    (``<root>/logits`` squeezed, an end point only)."""
    root = f"resnet_v{version}_{depth}"
    found = [Tap(f"{root}/conv1/{'Relu' if version == 1 else 'BiasAdd'}", (f"{root}/conv1",)),
             Tap(f"{root}/pool1/MaxPool", ())]
    for u in units(depth):
        scope = f"{root}/{u.scope}/bottleneck_v{version}"
        last = u.index == UNITS[depth][u.block - 1]
        unit_end_points = (scope, *((f"{root}/block{u.block}",) if last else ()))
        if version == 1:
            found += [Tap(f"{scope}/add", ()), Tap(f"{scope}/Relu", unit_end_points)]
        else:
            found += [Tap(f"{scope}/preact/Relu", ()), Tap(f"{scope}/add", unit_end_points)]
    if version == 2:
        found.append(Tap(f"{root}/postnorm/Relu", ()))
    return Taps(root, [*found, Tap(None, ("Logits",))])


_PAPERS = {
    1: "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. arXiv:1512.03385",
    2: "He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. arXiv:1603.05027",
}


def _spec(version: int, depth: int) -> Architecture:
    root = f"resnet_v{version}_{depth}"
    rows = _v1_rows(depth) if version == 1 else _v2_rows(depth)
    return Architecture(
        name=root,
        title=f"ResNet-{depth} v{version}",
        tf_root=root,
        layers=tuple(table(root, rows, bn_eps=BN_EPS)),
        end_points=end_points(version, depth),
        classifier_end_points=("Logits",),
        eval=vgg_eval("fc") if version == 1 else inception_eval("fc"),
        model=f"models.resnet.model:ResNet{depth}V{version}",
        oracle="models.resnet.oracle",
        oracle_name="TF-Slim",
        paper=_PAPERS[version],
        taps=taps(version, depth),
    )


# ResNet-50 v2 first: the one the benchmarks run (``models.spec.representatives``)
SPECS = tuple(_spec(version, depth) for version in (2, 1) for depth in UNITS)
