"""Inception v3 that computes exactly what TF-Slim's ``inception_v3`` computes at inference.

Reference: tf_slim/nets/inception_v3.py (same graph as tensorflow/models research/slim), from
"Rethinking the Inception Architecture for Computer Vision", Szegedy et al., 2015.

Differences from timm's and torchvision's definitions, all needed for TF parity:
- the 3x3 average pools inside the blocks exclude the zero padding from the mean
  (TF's SAME average pooling); timm/torchvision count it, which moves logits by up to ~1.0;
- batch norm uses eps=1e-3 and TF-Slim has no gamma, so ``bn.weight`` is all ones;
- the classifier may have 1001 outputs (row 0 = TF-Slim's "background" class).

State-dict keys are identical to timm's / torchvision's ``inception_v3`` so a ported file loads
there too (with ``num_classes`` and ``aux_logits`` set to match).

Input size: the network is defined for 299x299 inputs, where the last feature map is 8x8 and
TF-Slim's ``Logits/AvgPool_1a_8x8`` is a plain 8x8 VALID average. We always use the global mean
of the last feature map. That is TF-Slim's graph exactly whenever the map is 8x8 or smaller
(TF then shrinks its kernel to the map size). On larger inputs TF-Slim's fixed 8x8/stride-2
window either averages only the top-left corner (9x9 map) or produces a spatial grid that its
squeeze rejects; there we match TF-Slim's ``global_pool=True`` variant (and timm) instead.
The aux head is defined for a 17x17 Mixed_6e map (inputs 299..329): its 5x5 conv is VALID, and
a global mean stands after it, as in timm.

``fold_bn=True`` builds the deploy variant: every conv carries a bias and no batch norm
(``porting`` folds the statistics into the weights, ``models.folding`` has the math;
``models.deploy`` folds a loaded model and makes it fast). The converter's view of this model
(TF scope -> module table, end points, eval config) is ``models.inception_v3.spec``.
"""
from __future__ import annotations

import torch
from torch import nn

from models.inception_v3.spec import AUX_INPUT, BN_EPS
from models.layers import (AuxHead, BasicConv2d, conv_bn_factory, inception_stem,
                           max_pool_3x3_s2, tf_same_avg_pool)
from models.taps import TapsMixin

class InceptionA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_chs: int, pool_chs: int, conv=BasicConv2d):
        super().__init__()
        self.branch1x1 = conv(in_chs, 64, 1)
        self.branch5x5_1 = conv(in_chs, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.pool = tf_same_avg_pool()
        self.branch_pool = conv(in_chs, pool_chs, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(self.pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """Grid reduction 35->17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_chs: int, conv=BasicConv2d):
        super().__init__()
        self.branch3x3 = conv(in_chs, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            max_pool_3x3_s2(x),
        ], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b..6e)."""

    def __init__(self, in_chs: int, chs_7x7: int, conv=BasicConv2d):
        super().__init__()
        c7 = chs_7x7
        self.branch1x1 = conv(in_chs, 192, 1)
        self.branch7x7_1 = conv(in_chs, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(in_chs, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.pool = tf_same_avg_pool()
        self.branch_pool = conv(in_chs, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        d7 = self.branch7x7dbl_3(self.branch7x7dbl_2(d7))
        d7 = self.branch7x7dbl_5(self.branch7x7dbl_4(d7))
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17->8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_chs: int, conv=BasicConv2d):
        super().__init__()
        self.branch3x3_1 = conv(in_chs, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(in_chs, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(b7)),
            max_pool_3x3_s2(x),
        ], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b, 7c)."""

    def __init__(self, in_chs: int, conv=BasicConv2d):
        super().__init__()
        self.branch1x1 = conv(in_chs, 320, 1)
        self.branch3x3_1 = conv(in_chs, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(in_chs, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.pool = tf_same_avg_pool()
        self.branch_pool = conv(in_chs, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(self.pool(x)),
        ], 1)


class InceptionV3(TapsMixin, nn.Module):
    """TF-Slim Inception v3 for inference; see the module docstring for what "exact" covers.

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

        self.Conv2d_1a_3x3 = conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_chs=32, conv=conv)
        self.Mixed_5c = InceptionA(256, pool_chs=64, conv=conv)
        self.Mixed_5d = InceptionA(288, pool_chs=64, conv=conv)
        self.Mixed_6a = InceptionB(288, conv=conv)
        self.Mixed_6b = InceptionC(768, chs_7x7=128, conv=conv)
        self.Mixed_6c = InceptionC(768, chs_7x7=160, conv=conv)
        self.Mixed_6d = InceptionC(768, chs_7x7=160, conv=conv)
        self.Mixed_6e = InceptionC(768, chs_7x7=192, conv=conv)
        self.AuxLogits = (AuxHead(768, num_classes, ("conv0", "conv1", "fc"), conv, device)
                          if aux_logits else None)
        self.Mixed_7a = InceptionD(768, conv=conv)
        self.Mixed_7b = InceptionE(1280, conv=conv)
        self.Mixed_7c = InceptionE(2048, conv=conv)
        self.fc = nn.Linear(2048, num_classes, device=device)

    def _stem(self, x, tap=None):
        """Layers up to MaxPool_5a_3x3, each end point through ``tap`` when given."""
        return inception_stem(x, (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3,
                                  self.Conv2d_3b_1x1, self.Conv2d_4a_3x3), tap)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> Mixed_7c feature map."""
        x = self._stem(x)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> logits (dropout is the identity at inference)."""
        return self.fc(self.forward_features(x).mean((2, 3)))

    def _walk(self, x: torch.Tensor, tap) -> None:
        """The forward pass through ``tap`` at every value of ``spec.TAPS`` (``models.taps``:
        ``taps`` and ``forward_end_points``); the aux head runs only when asked for."""
        x = self._stem(x, tap)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = tap(name, getattr(self, name)(x))
            if name == AUX_INPUT and self.AuxLogits is not None and tap.wants("AuxLogits"):
                tap("AuxLogits", self.AuxLogits(x))
        x = tap("PreLogits", x.mean((2, 3), keepdim=True))
        tap("Logits", self.fc(x.flatten(1)))
