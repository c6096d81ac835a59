"""PyTorch building blocks that every TF-Slim architecture here shares.

Each is the PyTorch side of one layer kind of ``models.spec`` (its TF variables, keys and
transform are declared there, torch-free):
- ``BasicConv2d``: ``conv_bn`` and ``conv_bn_gamma``, TF-Slim's ``conv2d`` with batch norm
  and ReLU (or without ReLU, where TF-Slim passes ``activation_fn=None``);
- ``nn.BatchNorm2d``: ``bn``, a batch norm of its own (ResNet v2's ``preact``/``postnorm``);
- a plain ``nn.Conv2d`` with bias: ``conv_bias`` (e.g. Inception-ResNet's residual "up" convs);
- ``nn.Linear``: the classifiers (``conv_classifier`` and ``fc_classifier``).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.folding import fold_batch_norm


class BasicConv2d(nn.Module):
    """Conv (no bias) -> batch norm -> ReLU: TF-Slim's ``conv2d`` with a batch norm
    (``relu=False``: no activation, TF-Slim's ``activation_fn=None``).

    Folded (``fold_bn=True``): conv with bias (-> ReLU), the batch norm merged into the conv.
    TF-Slim's Inception batch norms have no gamma, so there ``bn.weight`` holds ones. ``eps`` is
    the architecture's batch-norm epsilon, as its spec's table states it.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size, stride=1, padding=0,
                 fold_bn: bool = False, device=None, *, eps: float, relu: bool = True):
        super().__init__()
        self.relu = relu
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding,
                              bias=fold_bn, device=device)
        self.bn = nn.Identity() if fold_bn else nn.BatchNorm2d(out_chs, eps=eps, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x

    @torch.no_grad()
    def fold_bn_(self) -> None:
        """Merge the batch norm into the conv, in place: the ``fold_bn=True`` layout."""
        bn, weight = self.bn, self.conv.weight
        # float64 in and out of numpy (any dtype, any device), rounded once to the model's dtype
        folded = fold_batch_norm(*(t.detach().to("cpu", torch.float64).numpy() for t in (
            weight, bn.bias, bn.running_mean, bn.running_var, bn.weight)), eps=bn.eps)
        self.conv.weight, self.conv.bias = (
            nn.Parameter(torch.from_numpy(t).to(weight.device, weight.dtype)) for t in folded)
        self.bn = nn.Identity()


def conv_bn_factory(fold_bn: bool, device=None, *, eps: float):
    """``conv(in, out, kernel, ...)`` building a ``BasicConv2d`` plain or folded, on ``device``."""
    return functools.partial(BasicConv2d, fold_bn=fold_bn, device=device, eps=eps)


class AuxHead(nn.Module):
    """TF-Slim's Inception AuxLogits head, which Inception v3, v4 and Inception-ResNet-v2 share:
    5x5/3 VALID average pool, 1x1 conv (128), 5x5 VALID conv (768), classifier. TF's 5x5 conv
    takes the pooled map's size as its kernel; with a 5x5 map that is the flatten we do as a
    spatial mean, which keeps larger inputs running (as timm does).

    ``names``: the attribute names of the 1x1 conv, the 5x5 conv and the classifier, which are
    the head's state-dict keys in each architecture's layout (timm's names where timm has it).
    """

    def __init__(self, in_chs: int, num_classes: int, names: tuple[str, str, str],
                 conv=BasicConv2d, device=None):
        super().__init__()
        self.names = names
        conv_1x1, conv_5x5, classifier = names
        setattr(self, conv_1x1, conv(in_chs, 128, 1))
        setattr(self, conv_5x5, conv(128, 768, 5))
        setattr(self, classifier, nn.Linear(768, num_classes, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_1x1, conv_5x5, classifier = (getattr(self, name) for name in self.names)
        x = conv_5x5(conv_1x1(F.avg_pool2d(x, 5, stride=3)))
        return classifier(x.mean((2, 3)))


def tf_same_avg_pool() -> nn.AvgPool2d:
    """3x3/1 SAME average pool as TF computes it: padded zeros are not counted in the mean."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


def tf_same_max_pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF's ``max_pool(padding='SAME')`` for any input size: the output is ceil(size / stride)
    and the padding that needs, pad_total = max((out - 1) * stride + kernel - size, 0), goes
    pad_total // 2 before and the rest AFTER (asymmetric when odd), padded with -inf (a pad
    never wins the max). PyTorch's symmetric ``padding`` differs wherever pad_total is odd,
    e.g. 3x3/2 on 150 or 112 (pads 0 before, 1 after), and agrees on 113 (1 and 1)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), kernel, stride)


def subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TF-Slim's ``resnet_utils.subsample``: a 1x1 max pool of ``stride`` (every stride-th
    row and column from the first; no padding, as a 1x1 window needs none)."""
    return x if stride == 1 else x[:, :, ::stride, ::stride]


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """TF-Slim's 3x3/2 VALID max pool (stem and grid reductions)."""
    return F.max_pool2d(x, 3, stride=2)


def inception_stem(x: torch.Tensor, convs, tap=None) -> torch.Tensor:
    """The stem TF-Slim's Inception v3 and Inception-ResNet-v2 share, up to ``MaxPool_5a_3x3``:
    ``convs`` are the models' Conv2d_1a_3x3, 2a, 2b, 3b and 4a; each end point goes through
    ``tap(name, value)`` (``models.taps``) under TF-Slim's name when given."""
    conv_1a, conv_2a, conv_2b, conv_3b, conv_4a = convs
    for name, layer in (
        ("Conv2d_1a_3x3", conv_1a), ("Conv2d_2a_3x3", conv_2a), ("Conv2d_2b_3x3", conv_2b),
        ("MaxPool_3a_3x3", max_pool_3x3_s2), ("Conv2d_3b_1x1", conv_3b),
        ("Conv2d_4a_3x3", conv_4a), ("MaxPool_5a_3x3", max_pool_3x3_s2),
    ):
        x = layer(x)
        if tap is not None:
            x = tap(name, x)
    return x
