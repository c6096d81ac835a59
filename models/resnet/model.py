"""TF-Slim's ResNet v1 and v2 in PyTorch, computing what ``tf_slim.nets.resnet_v1``/``resnet_v2``
compute for ANY input size (not only 224/299).

TF's padding, reproduced:
- ``conv2d_same`` (the root 7x7/2 and each unit's 3x3 ``conv2``): stride 1 is TF's SAME, stride
  > 1 pads explicitly, (k - 1) // 2 before and the rest after, then a VALID conv. For the odd
  kernels here both are the symmetric ``padding=(k - 1) // 2`` of ``nn.Conv2d``, whatever the
  input size.
- ``pool1``, a 3x3/2 max pool with TF's SAME padding (``resnet_arg_scope``): the pad depends on
  the input size and is asymmetric where its total is odd (0 before, 1 after on a 150 or 112
  map; 1 and 1 on 113), padded with -inf: ``models.layers.tf_same_max_pool``.
- The identity shortcut of a strided unit: a 1x1 max pool of stride 2, i.e. every other row
  and column from the first (``models.layers.subsample``), matching the strided 3x3 ``conv2``
  (ceil(size / 2) both ways).
- Each block strides on its LAST unit (TF-Slim's ``resnet_v*_block``), not its first.

Batch norms: gamma learned, eps 1e-5 (``resnet_arg_scope``). v1: every conv has one. v2: the
``preact`` and ``postnorm`` batch norms stand alone (``--fold-bn`` keeps them; only conv + BN
pairs fold), the root conv, the projection shortcuts and ``conv3`` are biased convs.

``forward`` gives the class scores ([N, classes]; 1001 keeps TF's background class of the v2
releases at index 0). ``forward_end_points`` gives the spec's TF-Slim end points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import conv_bn_factory, subsample, tf_same_max_pool
from models.resnet.spec import BN_EPS, FEATURES, ROOT_CHANNELS, Unit, units
from models.taps import TapsMixin


class BottleneckV1(nn.Module):
    """``bottleneck_v1``: relu(shortcut(x) + conv3(conv2(conv1(x)))), conv3 and the projection
    shortcut without ReLU."""

    SCOPE = "bottleneck_v1"

    def __init__(self, unit: Unit, conv):
        super().__init__()
        self.stride = unit.stride
        self.shortcut = (conv(unit.in_chs, unit.out_chs, 1, stride=unit.stride, relu=False)
                         if unit.projects else None)
        self.conv1 = conv(unit.in_chs, unit.bottleneck, 1)
        self.conv2 = conv(unit.bottleneck, unit.bottleneck, 3, stride=unit.stride, padding=1)
        self.conv3 = conv(unit.bottleneck, unit.out_chs, 1, relu=False)

    def forward(self, x: torch.Tensor, tap=None, scope: str = "") -> torch.Tensor:
        """``tap`` (``models.taps``): the sum as ``<scope>/add``, the unit's output (its end
        point) as ``<scope>``."""
        shortcut = subsample(x, self.stride) if self.shortcut is None else self.shortcut(x)
        x = shortcut + self.conv3(self.conv2(self.conv1(x)))
        if tap is None:
            return F.relu(x)
        return tap(scope, F.relu(tap(f"{scope}/add", x)))


class BottleneckV2(nn.Module):
    """``bottleneck_v2``: preact = relu(bn(x)); shortcut(preact) or the subsampled x, plus
    conv3(conv2(conv1(preact))); conv3 and the shortcut are biased convs, no BN, no ReLU."""

    SCOPE = "bottleneck_v2"

    def __init__(self, unit: Unit, conv, device=None):
        super().__init__()
        self.stride = unit.stride
        self.preact = nn.BatchNorm2d(unit.in_chs, eps=BN_EPS, device=device)
        self.shortcut = (nn.Conv2d(unit.in_chs, unit.out_chs, 1, stride=unit.stride,
                                   device=device) if unit.projects else None)
        self.conv1 = conv(unit.in_chs, unit.bottleneck, 1)
        self.conv2 = conv(unit.bottleneck, unit.bottleneck, 3, stride=unit.stride, padding=1)
        self.conv3 = nn.Conv2d(unit.bottleneck, unit.out_chs, 1, device=device)

    def forward(self, x: torch.Tensor, tap=None, scope: str = "") -> torch.Tensor:
        """``tap`` (``models.taps``): the pre-activation as ``<scope>/preact/Relu``, the unit's
        output (its end point, TF's ``<scope>/add``) as ``<scope>``."""
        preact = F.relu(self.preact(x))
        if tap is not None:
            preact = tap(f"{scope}/preact/Relu", preact)
        shortcut = subsample(x, self.stride) if self.shortcut is None else self.shortcut(preact)
        x = shortcut + self.conv3(self.conv2(self.conv1(preact)))
        return x if tap is None else tap(scope, x)


class Block(nn.Module):
    """TF-Slim's ``blockN``: its units ``unit_1``, ``unit_2``, ... in order."""

    def __init__(self, block_units: list[nn.Module]):
        super().__init__()
        for index, unit in enumerate(block_units, 1):
            self.add_module(f"unit_{index}", unit)

    def forward(self, x: torch.Tensor, tap=None, prefix: str = "") -> torch.Tensor:
        """``tap`` (``models.taps``): each unit's values under ``<prefix>/<unit>/<its scope>``."""
        for name, unit in self.named_children():
            x = unit(x) if tap is None else unit(x, tap, f"{prefix}/{name}/{unit.SCOPE}")
        return x


class ResNet(TapsMixin, nn.Module):
    """A TF-Slim ResNet for inference; the subclasses below fix the version and depth.

    Args:
        num_classes: 1001 keeps TF-Slim's background class at index 0 (v2); 1000 is timm's
            layout (and v1's own).
        aux_logits: must be False (ResNets have no auxiliary head); taken so that every
            architecture is built alike.
        fold_bn: deploy variant with the conv batch norms folded into conv weights and biases.
        device: where to allocate the weights; "meta" gives the layout alone, in milliseconds.
    """

    version: int
    depth: int

    def __init_subclass__(cls, version: int, depth: int, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.version, cls.depth = version, depth
        cls.__doc__ = f"TF-Slim's resnet_v{version}_{depth} (see ``ResNet``)."

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, fold_bn: bool = False,
                 device=None):
        super().__init__()
        if aux_logits:
            raise ValueError("ResNets have no AuxLogits head")
        self.num_classes = num_classes
        self.fold_bn = fold_bn
        self.AuxLogits = None  # no auxiliary head (the attribute every architecture has)
        self.root = f"resnet_v{self.version}_{self.depth}"
        conv = conv_bn_factory(fold_bn, device, eps=BN_EPS)
        if self.version == 1:
            self.conv1 = conv(3, ROOT_CHANNELS, 7, stride=2, padding=3)
        else:
            self.conv1 = nn.Conv2d(3, ROOT_CHANNELS, 7, stride=2, padding=3, device=device)
        by_block: dict[int, list[nn.Module]] = {}
        for unit in units(self.depth):
            by_block.setdefault(unit.block, []).append(
                BottleneckV1(unit, conv) if self.version == 1 else BottleneckV2(unit, conv, device))
        for block, block_units in by_block.items():
            self.add_module(f"block{block}", Block(block_units))
        self.postnorm = (nn.BatchNorm2d(FEATURES, eps=BN_EPS, device=device)
                         if self.version == 2 else None)
        self.fc = nn.Linear(FEATURES, num_classes, device=device)

    def blocks(self) -> list[tuple[str, Block]]:
        return [(name, module) for name, module in self.named_children()
                if isinstance(module, Block)]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        if self.postnorm is not None:
            x = F.relu(self.postnorm(x))
        return self.fc(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images, preprocessed as the spec's eval config says -> class scores."""
        x = tf_same_max_pool(self.conv1(x), 3, 2)
        for _, block in self.blocks():
            x = block(x)
        return self._head(x)

    def _walk(self, x: torch.Tensor, tap) -> None:
        """The forward pass through ``tap`` at every value of the spec's taps (``models.taps``:
        ``taps`` and ``forward_end_points``): the root conv, pool1, each unit's values, v2's
        postnorm ReLU, ``Logits``."""
        x = tap(f"{self.root}/conv1", self.conv1(x))
        x = tap(f"{self.root}/pool1/MaxPool", tf_same_max_pool(x, 3, 2))
        for name, block in self.blocks():
            x = block(x, tap, f"{self.root}/{name}")
        if self.postnorm is not None:
            x = tap(f"{self.root}/postnorm/Relu", F.relu(self.postnorm(x)))
        tap("Logits", self.fc(x.mean((2, 3))))


class ResNet50V1(ResNet, version=1, depth=50): ...
class ResNet101V1(ResNet, version=1, depth=101): ...
class ResNet152V1(ResNet, version=1, depth=152): ...
class ResNet50V2(ResNet, version=2, depth=50): ...
class ResNet101V2(ResNet, version=2, depth=101): ...
class ResNet152V2(ResNet, version=2, depth=152): ...
