"""How a TF model was evaluated and what its outputs mean (timm's "pretrained cfg"), as data."""
from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class EvalConfig:
    """How the TF model was evaluated, and what its outputs mean (timm's pretrained cfg).

    ``method`` names the preprocessing; ``porting.preprocess`` implements each from these
    numbers alone:

    - ``"inception"`` (TF-Slim's ``inception_preprocessing``): pixels scaled to [0, 1], a
      central crop of ``crop_fraction`` of the image, resized (``interpolation``) to
      ``input_size``, then ``(x - mean) / std``;
    - ``"vgg"`` (TF-Slim's ``vgg_preprocessing``): the [0, 255] pixels resized
      (``interpolation``) so that the shorter side is ``resize_side``, a central crop of
      ``input_size``, then ``(x - 255 mean) / (255 std)`` (TF's plain ``x - means``, the
      [0, 255] means being ``255 mean``, with ``std`` = 1/255).

    ``mean`` and ``std`` are per channel on pixels scaled to [0, 1] for every method, as timm
    states them; timm's own eval transform (the alternative ``porting.preprocess`` offers)
    resizes the shorter side to ``floor(input_size / crop_fraction)``, then centre-crops.
    """
    method: str               # "inception" or "vgg": TF-Slim's preprocessing module
    input_size: int
    crop_fraction: float      # inception: central crop before resizing (timm: its crop_pct)
    resize_side: int | None   # vgg: the shorter side's length before the central crop
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float]
    num_classes: int          # as TF-Slim trained it
    label_offset: int         # leading outputs that are not ImageNet-1k classes (TF's background)
    classifier: str           # module of the main classifier
    recipe: str               # the preprocessing, in words, with its source
    color: str = "RGB"


def inception_eval(classifier: str) -> EvalConfig:
    """TF-Slim's ``inception_preprocessing`` eval recipe, which its Inception networks share,
    on ImageNet with the background class (1001 outputs)."""
    return EvalConfig(
        method="inception", input_size=299, crop_fraction=0.875, resize_side=None,
        interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        value_range=(-1.0, 1.0), num_classes=1001, label_offset=1, classifier=classifier,
        recipe="TF-Slim inception_preprocessing (eval): central_crop(0.875), TF1 "
               "resize_bilinear (align_corners=False, half_pixel_centers=False) to 299x299, "
               "(x - 0.5) * 2",
    )


def vgg_eval(classifier: str) -> EvalConfig:
    """TF-Slim's ``vgg_preprocessing`` eval recipe, which its releases converted from Caffe
    (ResNet v1, VGG-16/19) were evaluated with: 1000 classes, no background. Mean and std apply
    to pixels scaled to [0, 1], as everywhere here: mean/255 and std 1/255 are TF's plain
    ``x - mean`` on [0, 255] pixels."""
    means = (123.68, 116.78, 103.94)
    return EvalConfig(
        method="vgg", input_size=224, crop_fraction=224 / 256, resize_side=256,
        interpolation="bilinear", mean=tuple(m / 255 for m in means), std=(1 / 255,) * 3,
        value_range=(-max(means), 255 - min(means)),
        num_classes=1000, label_offset=0, classifier=classifier,
        recipe="TF-Slim vgg_preprocessing (eval): resize the shorter side to 256 (TF1 "
               "resize_bilinear, align_corners=False), central crop 224x224, subtract the "
               "RGB means (123.68, 116.78, 103.94) from the [0, 255] pixels",
    )


@dataclass(frozen=True)
class ClassLayout:
    """Which outputs of a classifier are which classes: the one place the background-class
    rule lives (convert, verify, export metadata, predict, the model card and the oracles).

    ``source`` classes come from the checkpoint, ``background`` of them lead (TF-Slim's class 0,
    "background", where the checkpoint has the architecture's trained classes), and the port
    keeps ``outputs`` of them: all, or all but the background. Two quantities follow, with
    different names because they mean different things:

    - ``dropped``: leading source classes the port leaves out (compare with ``TF[:, dropped:]``);
    - ``offset``: leading outputs of the port before ImageNet-1k class 0 (its label offset).
    """
    source: int
    background: int
    outputs: int

    @classmethod
    def of(cls, config: EvalConfig, outputs: int, source: int | None = None) -> "ClassLayout":
        """The layout of ``outputs`` classes made from a checkpoint of ``source`` classes
        (default: the architecture's trained classes); ValueError if they cannot be."""
        source = config.num_classes if source is None else source
        background = config.label_offset if source == config.num_classes else 0
        if outputs not in (source, source - background):
            raise ValueError(f"{outputs} classes cannot be made from {source}")
        return cls(source, background, outputs)

    @property
    def dropped(self) -> int:
        return self.source - self.outputs

    @property
    def offset(self) -> int:
        return self.background - self.dropped

    def class_index(self, output: int) -> int | None:
        """The ImageNet-1k index of output ``output``, None for a background output."""
        return None if output < self.offset else output - self.offset
