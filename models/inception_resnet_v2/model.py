"""Inception-ResNet-v2 that computes exactly what TF-Slim's ``inception_resnet_v2`` computes at
inference.

Reference: tensorflow/models research/slim/nets/inception_resnet_v2.py (the same graph as
research/adv_imagenet_models/inception_resnet_v2.py, which the adversarially trained checkpoints
were saved from), from "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning", Szegedy, Ioffe, Vanhoucke, Alemi, 2016 (arXiv:1602.07261).

What "exact" covers: the same layers, in the same order, with TF's padding arithmetic.
- Stride-2 convs and max pools, and the stem's Conv2d_2a/3b/4a, are VALID (no padding); every
  stride-1 conv is SAME, which for odd kernels (1x1, 3x3, 5x5, 1x7, 7x1, 1x3, 3x1) is the
  symmetric padding ``k // 2`` per axis.
- Mixed_5b's 3x3/1 SAME average pool leaves the zero padding out of the mean (TF's SAME average
  pooling, ``count_include_pad=False``).
- Residual blocks: ``x = relu(x + scale * up(concat(branches)))`` with the "up" 1x1 conv a plain
  conv with bias (no batch norm, no activation); scales 0.17 (10 x Block35), 0.10 (20 x Block17),
  0.20 (9 x Block8), then a final Block8 with scale 1.0 and *no* ReLU.
- Batch norm uses eps=1e-3 and TF-Slim's has no gamma, so ``bn.weight`` is all ones.
- The classifier may have 1001 outputs (row 0 = TF-Slim's "background" class).

Differences from timm's ``inception_resnet_v2``: none in the function. timm's state-dict keys are
used here (``conv2d_1a``, ``mixed_5b``, ``repeat.N``, ``repeat_1.N``, ``repeat_2.N``, ``block8``,
``conv2d_7b``, ``classif``, ...), and timm's average pool also excludes the padding, so with the
same weights timm computes the same logits. timm has no aux head; ours is ``AuxLogits.*``, after
``conv2d_7b`` and before ``classif`` in the state dict, so a file without it (``aux_logits=False``,
1000 classes) loads into timm as it is.

Input size: the network is defined for 299x299 inputs (Conv2d_7b_1x1 is 8x8). TF-Slim's
``Logits/AvgPool_1a_8x8`` takes the map's own size as its kernel, so the global mean used here is
TF's graph for any input size (75 px and up). The aux head is TF's graph when its 5x5/3 VALID
average pool yields a 5x5 map, i.e. PreAuxLogits is 17..19 px (inputs 299..346 px): TF-Slim gives
``Conv2d_2a_5x5`` the pooled map's size as its kernel, and a 5x5 kernel only fits there. We keep
the 5x5 VALID conv and take a spatial mean after it, so larger inputs still run (as timm does
for Inception v3's aux head); TF has no counterpart for those sizes. Below 299 px the aux head
does not run (``forward`` never uses it).

``fold_bn=True`` builds the deploy variant: every ``BasicConv2d`` carries a conv bias and no
batch norm (``porting`` folds the statistics into the weights, ``models.folding`` has the math;
``models.deploy`` folds a loaded model and makes it fast). The up convs are unchanged by folding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.inception_resnet_v2.spec import BEFORE, BLOCKS, BN_EPS, FINAL_BLOCK, ROOT
from models.layers import (AuxHead, BasicConv2d, conv_bn_factory, inception_stem,
                           max_pool_3x3_s2, tf_same_avg_pool)
from models.spec import base_scope
from models.taps import TapsMixin

class Mixed5b(nn.Module):
    """35x35x192 -> 35x35x320: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool 3x3/1 SAME-1x1."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(192, 96, 1)
        self.branch1 = nn.Sequential(conv(192, 48, 1), conv(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(conv(192, 64, 1), conv(64, 96, 3, padding=1),
                                     conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(tf_same_avg_pool(), conv(192, 64, 1))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class _Residual(nn.Module):
    """``x = act(x + scale * up(concat(branches(x))))``, TF-Slim's ``net += scale * up``."""

    scale: float
    relu: bool
    conv2d: nn.Conv2d

    def _branches(self, x) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x, tap=None, scope: str = ""):
        """``tap`` (``models.taps``): the sum goes through it as ``<scope>/add`` and the ReLU's
        output as ``<scope>/Relu``, TF-Slim's ops (the ReLU then leaves the sum intact)."""
        x = x + self.scale * self.conv2d(torch.cat(self._branches(x), 1))
        if tap is not None:
            x = tap(f"{scope}/add", x)
        if not self.relu:
            return x
        if tap is None:
            return F.relu(x, inplace=True)
        return tap(f"{scope}/Relu", F.relu(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, relu={self.relu}"


class Block35(_Residual):
    """35x35x320 residual block (``Repeat/block35_N``): 1x1 | 1x1-3x3 | 1x1-3x3-3x3, up 128->320."""

    def __init__(self, scale: float, conv=BasicConv2d, device=None):
        super().__init__()
        self.scale, self.relu = scale, True
        self.branch0 = conv(320, 32, 1)
        self.branch1 = nn.Sequential(conv(320, 32, 1), conv(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(conv(320, 32, 1), conv(32, 48, 3, padding=1),
                                     conv(48, 64, 3, padding=1))
        self.conv2d = nn.Conv2d(128, 320, 1, device=device)

    def _branches(self, x):
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Mixed6a(nn.Module):
    """Grid reduction 35->17 (320 -> 1088): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2, all VALID."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(conv(320, 256, 1), conv(256, 256, 3, padding=1),
                                     conv(256, 384, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), max_pool_3x3_s2(x)], 1)


class Block17(_Residual):
    """17x17x1088 residual block (``Repeat_1/block17_N``): 1x1 | 1x1-1x7-7x1, up 384->1088."""

    def __init__(self, scale: float, conv=BasicConv2d, device=None):
        super().__init__()
        self.scale, self.relu = scale, True
        self.branch0 = conv(1088, 192, 1)
        self.branch1 = nn.Sequential(conv(1088, 128, 1), conv(128, 160, (1, 7), padding=(0, 3)),
                                     conv(160, 192, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(384, 1088, 1, device=device)

    def _branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class Mixed7a(nn.Module):
    """Grid reduction 17->8 (1088 -> 2080): 1x1-3x3/2 | 1x1-3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = nn.Sequential(conv(1088, 256, 1), conv(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(conv(1088, 256, 1), conv(256, 288, 3, padding=1),
                                     conv(288, 320, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x),
                          max_pool_3x3_s2(x)], 1)


class Block8(_Residual):
    """8x8x2080 residual block (``Repeat_2/block8_N``; the final ``Block8`` has scale 1.0 and no
    ReLU): 1x1 | 1x1-1x3-3x1, up 448->2080."""

    def __init__(self, scale: float, relu: bool = True, conv=BasicConv2d, device=None):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.branch0 = conv(2080, 192, 1)
        self.branch1 = nn.Sequential(conv(2080, 192, 1), conv(192, 224, (1, 3), padding=(0, 1)),
                                     conv(224, 256, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(448, 2080, 1, device=device)

    def _branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class InceptionResNetV2(TapsMixin, nn.Module):
    """TF-Slim Inception-ResNet-v2 for inference; see the module docstring for what "exact" covers.

    Args:
        num_classes: 1001 keeps TF-Slim's background class at index 0; 1000 is timm's layout.
        aux_logits: build the AuxLogits head (returned by ``forward_end_points`` only).
        fold_bn: deploy variant with batch norm folded into conv weights and biases.
        device: where to allocate the weights; "meta" gives the layout alone, in milliseconds.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, fold_bn: bool = False,
                 device=None):
        super().__init__()
        self.num_classes = num_classes
        self.fold_bn = fold_bn

        conv = conv_bn_factory(fold_bn, device, eps=BN_EPS)

        self.conv2d_1a = conv(3, 32, 3, stride=2)
        self.conv2d_2a = conv(32, 32, 3)
        self.conv2d_2b = conv(32, 64, 3, padding=1)
        self.conv2d_3b = conv(64, 80, 1)
        self.conv2d_4a = conv(80, 192, 3)
        self.mixed_5b = Mixed5b(conv=conv)
        self.repeat = nn.Sequential(*(Block35(0.17, conv=conv, device=device) for _ in range(10)))
        self.mixed_6a = Mixed6a(conv=conv)
        self.repeat_1 = nn.Sequential(*(Block17(0.10, conv=conv, device=device)
                                        for _ in range(20)))
        self.mixed_7a = Mixed7a(conv=conv)
        self.repeat_2 = nn.Sequential(*(Block8(0.20, conv=conv, device=device) for _ in range(9)))
        self.block8 = Block8(1.0, relu=False, conv=conv, device=device)
        self.conv2d_7b = conv(2080, 1536, 1)
        self.AuxLogits = (AuxHead(1088, num_classes, ("conv2d_1b", "conv2d_2a", "classif"), conv,
                                  device) if aux_logits else None)
        self.classif = nn.Linear(1536, num_classes, device=device)

    def _stem(self, x, tap=None):
        """Layers up to MaxPool_5a_3x3, each end point through ``tap`` when given."""
        return inception_stem(x, (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b,
                                  self.conv2d_3b, self.conv2d_4a), tap)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> the Conv2d_7b_1x1 feature map."""
        x = self._stem(x)
        x = self.mixed_6a(self.repeat(self.mixed_5b(x)))
        x = self.mixed_7a(self.repeat_1(x))
        return self.conv2d_7b(self.block8(self.repeat_2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> logits (dropout is the identity at inference)."""
        return self.classif(self.forward_features(x).mean((2, 3)))

    def _walk(self, x: torch.Tensor, tap) -> None:
        """The forward pass through ``tap`` at every value of ``spec.TAPS`` (``models.taps``:
        ``taps`` and ``forward_end_points``); the aux head runs only when asked for."""
        scope = base_scope(ROOT)
        x = self._stem(x, tap)
        for repeat, block, module, _ in BLOCKS:
            name = BEFORE[repeat]  # the grid reduction before the repeat: mixed_5b's module
            x = tap(name, getattr(self, name.lower())(x))
            for i, unit in enumerate(getattr(self, module), 1):
                x = unit(x, tap, f"{scope}/{repeat}/{block}_{i}")
            if name == "Mixed_6a" and self.AuxLogits is not None and tap.wants("AuxLogits"):
                tap("AuxLogits", self.AuxLogits(x))
        x = self.block8(x, tap, f"{scope}/{FINAL_BLOCK}")
        x = tap("Conv2d_7b_1x1", self.conv2d_7b(x))
        x = tap("PreLogitsFlatten", x.mean((2, 3)))
        tap("Logits", self.classif(x))
