"""Inception v4 that computes exactly what TF-Slim's ``inception_v4`` computes at inference.

Reference: tensorflow/models research/slim/nets/inception_v4.py (arg scope
``inception_utils.inception_arg_scope``), from "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", Szegedy, Ioffe, Vanhoucke, Alemi, 2016 (arXiv:1602.07261).

What "exact" covers: the same layers, in the same order, with TF's padding arithmetic.
- Every stride-2 conv and max pool is VALID, as are the stem's ``Conv2d_2a_3x3`` and Mixed_4a's
  ``Conv2d_1a_3x3`` convs; every other conv is stride-1 SAME, which for the odd kernels here
  (1x1, 3x3, 1x7, 7x1, 1x3, 3x1) is the symmetric padding ``k // 2`` per axis. So unlike ResNet's
  ``conv2d_same`` there is no asymmetric padding anywhere.
- Each block's 3x3/1 SAME average pool leaves the zero padding out of the mean (TF's SAME
  average pooling, ``count_include_pad=False``).
- Batch norm uses eps=1e-3 and TF-Slim's has no gamma, so ``bn.weight`` is all ones.
- The Inception-C blocks concatenate their 1x3 and 3x1 convs (in that order) inside Branch_1
  and Branch_2.
- The classifier may have 1001 outputs (row 0 = TF-Slim's "background" class).

Differences from timm's ``inception_v4``: none in the function. The state-dict keys are timm's
(``features.0``..``features.21``, ``last_linear``), its average pools exclude the padding too,
so with the same weights timm computes the same logits (to float32 rounding: the tests measure
it). timm has no aux head; ours is ``AuxLogits.*``, between ``features`` and ``last_linear``, so
a file without it (``aux_logits=False``) loads into timm as it is.

Input size: the network is defined for 299x299 inputs (Mixed_7d is 8x8). TF-Slim's
``Logits/AvgPool_1a`` takes the map's own size as its kernel, so the global mean used here is
TF's graph for any input size. The aux head is TF's graph where Mixed_6h's 5x5/3 VALID average
pool yields a 5x5 map (Mixed_6h 17..19 px): TF-Slim gives ``Conv2d_2a`` the pooled map's size as
its kernel, which the release's 5x5 kernel fits only there. We keep the 5x5 VALID conv and take
a spatial mean after it, so larger inputs still run (as timm does for Inception v3's aux head);
TF has no counterpart for those sizes.

``fold_bn=True`` builds the deploy variant: every conv carries a bias and no batch norm
(``porting`` folds the statistics into the weights, ``models.folding`` has the math;
``models.deploy`` folds a loaded model and makes it fast). The converter's view of this model
(TF scope -> module table, end points, eval config) is ``models.inception_v4.spec``.
"""
from __future__ import annotations

import torch
from torch import nn

from models.inception_v4.spec import AUX_INPUT, BN_EPS, FEATURE_END_POINTS
from models.layers import (AuxHead, BasicConv2d, conv_bn_factory, max_pool_3x3_s2,
                           tf_same_avg_pool)
from models.taps import TapsMixin


class _Concat(nn.Module):
    """A block whose output concatenates its branches' outputs on channels, in TF-Slim's order."""

    def branches(self, x) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


class Mixed3a(_Concat):
    """147x147x64 -> 73x73x160: max pool 3x3/2 | conv 3x3/2 (both VALID)."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.conv = conv(64, 96, 3, stride=2)

    def branches(self, x):
        return [max_pool_3x3_s2(x), self.conv(x)]


class Mixed4a(_Concat):
    """73x73x160 -> 71x71x192: 1x1-3x3 VALID | 1x1-1x7-7x1-3x3 VALID."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = nn.Sequential(conv(160, 64, 1), conv(64, 96, 3))
        self.branch1 = nn.Sequential(conv(160, 64, 1), conv(64, 64, (1, 7), padding=(0, 3)),
                                     conv(64, 64, (7, 1), padding=(3, 0)), conv(64, 96, 3))

    def branches(self, x):
        return [self.branch0(x), self.branch1(x)]


class Mixed5a(_Concat):
    """71x71x192 -> 35x35x384: conv 3x3/2 | max pool 3x3/2 (both VALID)."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.conv = conv(192, 192, 3, stride=2)

    def branches(self, x):
        return [self.conv(x), max_pool_3x3_s2(x)]


class InceptionA(_Concat):
    """35x35x384 (Mixed_5b..5e): 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | avg pool-1x1."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(384, 96, 1)
        self.branch1 = nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(conv(384, 64, 1), conv(64, 96, 3, padding=1),
                                     conv(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(tf_same_avg_pool(), conv(384, 96, 1))

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]


class ReductionA(_Concat):
    """35 -> 17, 384 -> 1024 channels (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(conv(384, 192, 1), conv(192, 224, 3, padding=1),
                                     conv(224, 256, 3, stride=2))

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), max_pool_3x3_s2(x)]


class InceptionB(_Concat):
    """17x17x1024 (Mixed_6b..6h): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(1024, 384, 1)
        self.branch1 = nn.Sequential(conv(1024, 192, 1), conv(192, 224, (1, 7), padding=(0, 3)),
                                     conv(224, 256, (7, 1), padding=(3, 0)))
        self.branch2 = nn.Sequential(conv(1024, 192, 1), conv(192, 192, (7, 1), padding=(3, 0)),
                                     conv(192, 224, (1, 7), padding=(0, 3)),
                                     conv(224, 224, (7, 1), padding=(3, 0)),
                                     conv(224, 256, (1, 7), padding=(0, 3)))
        self.branch3 = nn.Sequential(tf_same_avg_pool(), conv(1024, 128, 1))

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]


class ReductionB(_Concat):
    """17 -> 8, 1024 -> 1536 channels (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = nn.Sequential(conv(1024, 192, 1), conv(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(conv(1024, 256, 1), conv(256, 256, (1, 7), padding=(0, 3)),
                                     conv(256, 320, (7, 1), padding=(3, 0)),
                                     conv(320, 320, 3, stride=2))

    def branches(self, x):
        return [self.branch0(x), self.branch1(x), max_pool_3x3_s2(x)]


class InceptionC(_Concat):
    """8x8x1536 (Mixed_7b..7d): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x1-1x3-(1x3, 3x1) | avg pool-1x1."""

    def __init__(self, conv=BasicConv2d):
        super().__init__()
        self.branch0 = conv(1536, 256, 1)
        self.branch1_0 = conv(1536, 384, 1)
        self.branch1_1a = conv(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = conv(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = conv(1536, 384, 1)
        self.branch2_1 = conv(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = conv(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = conv(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = conv(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(tf_same_avg_pool(), conv(1536, 256, 1))

    def branches(self, x):
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return [self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1),
                self.branch2_3a(b2), self.branch2_3b(b2), self.branch3(x)]


class InceptionV4(TapsMixin, nn.Module):
    """TF-Slim Inception v4 for inference; see the module docstring for what "exact" covers.

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
        self.features = nn.Sequential(
            conv(3, 32, 3, stride=2),          # Conv2d_1a_3x3
            conv(32, 32, 3),                   # Conv2d_2a_3x3
            conv(32, 64, 3, padding=1),        # Conv2d_2b_3x3
            Mixed3a(conv), Mixed4a(conv), Mixed5a(conv),
            *(InceptionA(conv) for _ in range(4)),
            ReductionA(conv),
            *(InceptionB(conv) for _ in range(7)),
            ReductionB(conv),
            *(InceptionC(conv) for _ in range(3)),
        )
        self.AuxLogits = (AuxHead(1024, num_classes, ("conv2d_1b", "conv2d_2a", "last_linear"), conv,
                                  device) if aux_logits else None)
        self.last_linear = nn.Linear(1536, num_classes, device=device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> Mixed_7d feature map."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images scaled to [-1, 1] -> logits (dropout is the identity at inference)."""
        return self.last_linear(self.features(x).mean((2, 3)))

    def _walk(self, x: torch.Tensor, tap) -> None:
        """The forward pass through ``tap`` at every value of ``spec.TAPS`` (``models.taps``:
        ``taps`` and ``forward_end_points``); the aux head runs only when asked for."""
        for name, block in zip(FEATURE_END_POINTS, self.features):
            x = tap(name, block(x))
            if name == AUX_INPUT and self.AuxLogits is not None and tap.wants("AuxLogits"):
                tap("AuxLogits", self.AuxLogits(x))
        x = tap("PreLogitsFlatten", x.mean((2, 3)))
        tap("Logits", self.last_linear(x))
