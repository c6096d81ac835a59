"""TF-Slim's VGG-16 and VGG-19 in PyTorch, with torchvision's module layout (``vgg16`` /
``vgg19``: ``features`` and ``classifier`` ``nn.Sequential``s, so the state-dict keys are the
same), computing what ``tf_slim.nets.vgg`` computes.

TF's layers, reproduced:
- the 3x3 SAME convs of stride 1: TF pads 1 on each side, ``nn.Conv2d(padding=1)``;
- the 2x2/2 VALID max pools: ``nn.MaxPool2d(2, 2)`` (floor(size / 2) both ways);
- ``fc6``, a 7x7 VALID conv over pool5's 7x7 map: one output position, the ``nn.Linear`` of
  the flattened map (``models.vgg.spec``: ``conv_as_linear``); ``fc7`` and ``fc8``, 1x1 convs
  on a 1x1 map: Linear layers; dropout is off in inference on both sides.

Input sizes: TF-Slim's graph needs pool5's map to be 7x7 (224 to 255 px; otherwise fc6 leaves
a map its ``spatial_squeeze`` refuses), and so does this model, which says so instead of
averaging (torchvision's ``AdaptiveAvgPool2d((7, 7))``, the identity at 224 px, computes
something TF does not elsewhere; it has no parameters, so files load into torchvision's model
all the same).

``forward`` gives the class scores [N, 1000] (no background class). ``forward_end_points``
gives TF-Slim's end points under its names (``models.vgg.spec.end_points``).
"""
from __future__ import annotations

import torch
from torch import nn

from models.taps import TapsMixin
from models.vgg.spec import CONVS, FC_WIDTH, POOL5_SIZE, WIDTHS, block_layout, end_points


class VGG(TapsMixin, nn.Module):
    """A TF-Slim VGG for inference; the subclasses below fix the depth.

    Args:
        num_classes: 1000, the releases' classes (TF-Slim's VGGs have no background class).
        aux_logits: must be False (VGG has no auxiliary head); taken so that every
            architecture is built alike.
        fold_bn: kept as given and changes nothing: VGG has no batch norm to fold.
        device: where to allocate the weights; "meta" gives the layout alone, in milliseconds.
    """

    arch: str  # TF-Slim's root scope and the architecture's name: "vgg_16"

    def __init_subclass__(cls, arch: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.arch = arch
        cls.__doc__ = f"TF-Slim's {arch} (see ``VGG``)."

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, fold_bn: bool = False,
                 device=None):
        super().__init__()
        if aux_logits:
            raise ValueError("VGG has no AuxLogits head")
        self.num_classes = num_classes
        self.fold_bn = fold_bn
        self.AuxLogits = None  # no auxiliary head (the attribute every architecture has)
        layers, in_chs = [], 3
        for block, count in enumerate(CONVS[self.arch]):
            for _ in range(count):
                layers += [nn.Conv2d(in_chs, WIDTHS[block], 3, padding=1, device=device),
                           nn.ReLU(inplace=True)]
                in_chs = WIDTHS[block]
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_chs * POOL5_SIZE ** 2, FC_WIDTH, device=device), nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(FC_WIDTH, FC_WIDTH, device=device), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(FC_WIDTH, num_classes, device=device))
        # features index -> TF-Slim's end point: each conv's ReLU, each pool
        names = iter(end_points(self.arch))
        self._feature_end_points = {}
        for block, conv, index in block_layout(self.arch):
            self._feature_end_points[index + 1] = next(names)
            if conv == CONVS[self.arch][block - 1]:
                self._feature_end_points[index + 2] = next(names)

    @staticmethod
    def _flatten(x: torch.Tensor) -> torch.Tensor:
        """pool5's map [N, 512, 7, 7] -> [N, 25088] in torch's (channel, height, width) order,
        what fc6's weight was laid out for."""
        if tuple(x.shape[-2:]) != (POOL5_SIZE, POOL5_SIZE):
            raise ValueError(f"VGG's fc6 takes a {POOL5_SIZE}x{POOL5_SIZE} pool5 map (224 to 255 "
                             f"px inputs, as TF-Slim's graph); got {x.shape[-2]}x{x.shape[-1]}")
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW images, preprocessed as the spec's eval config says -> class scores."""
        return self.classifier(self._flatten(self.features(x)))

    def _walk(self, x: torch.Tensor, tap) -> None:
        """The forward pass through ``tap`` at every end point (``models.taps``: ``taps`` and
        ``forward_end_points``; fc6 and fc7 as [N, 4096, 1, 1], TF's 1x1 maps)."""
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._feature_end_points:
                x = tap(self._feature_end_points[index], x)
        x = self.classifier[:2](self._flatten(x))
        tap(f"{self.arch}/fc6", x[:, :, None, None])
        x = self.classifier[2:5](x)
        tap(f"{self.arch}/fc7", x[:, :, None, None])
        tap("Logits", self.classifier[5:](x))


class VGG16(VGG, arch="vgg_16"): ...
class VGG19(VGG, arch="vgg_19"): ...
