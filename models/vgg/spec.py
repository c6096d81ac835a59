"""TF-Slim's VGG-16 and VGG-19 (``tf_slim.nets.vgg.vgg_16`` / ``vgg_19``) as the converter sees
them: two architectures (``SPECS``), one per root scope, their tables generated from the block
layout below.

The net, as TF-Slim builds it under ``vgg_arg_scope``: five blocks ``conv1``..``conv5`` of 3x3
SAME convs with biases and ReLU (64, 128, 256, 512, 512 channels; 2, 2, 3, 3, 3 convs for VGG-16,
2, 2, 4, 4, 4 for VGG-19), each block followed by a 2x2/2 VALID max pool ``pool1``..``pool5``;
then ``fc6``, a 7x7 VALID conv to 4096 with ReLU, ``fc7`` a 1x1 conv to 4096 with ReLU, and
``fc8`` a 1x1 conv to 1000 classes without activation (dropout between them is off in
inference), squeezed to [N, 1000]. No batch norm, no auxiliary head, no background class (the
2016-08-28 releases were converted from the VGG group's Caffe models). VGG preprocessing at
224 px (``models.spec.vgg_eval``, shared with ResNet v1).

State-dict keys are torchvision's ``vgg16`` / ``vgg19``: ``features.N`` counts every conv, ReLU
and pool module, and the head is ``classifier.0`` (fc6), ``classifier.3`` (fc7) and
``classifier.6`` (fc8), ``nn.Linear`` layers. A ported file loads strictly into
``torchvision.models.vgg16()`` and computes TF's logits at 224 px, where torchvision's
``AdaptiveAvgPool2d((7, 7))`` is the identity on pool5's 7x7 map.

fc6 as a Linear: TF's kernel [7, 7, 512, 4096] (HWIO) covers the whole 7x7x512 map, and torch
flattens that map in (channel, height, width) order; so the kernel goes HWIO -> OIHW and then
reshapes to [4096, 25088] (``conv_as_linear``, a kind only VGG needs, registered here). TF's own
(height, width, channel) order gives a matrix of the same shape that computes something else.

``--fold-bn``: there is no batch norm to fold, so a VGG port is the same file with or without
it, and its manifest records ``fold_bn: false`` (what was applied, as ``aux`` for nets without
an aux head).

End points (``verify``): every one TF-Slim's dict holds, under its names: each conv's ReLU output
(``vgg_16/conv3/conv3_3``, the layers transfer attacks take features from), each pool, ``fc6``
and ``fc7`` ([N, 1, 1, 4096]), and the class scores as ``Logits`` (TF-Slim's ``vgg_16/fc8``,
squeezed). Maps of every conv make golden files large (VGG-16 at 224 px: ~60 MB of float32
per image, 36 MB gzipped, measured).
"""
from __future__ import annotations

import numpy as np

from models.spec import Architecture, ConvBias, Tap, Taps, layer_kind, table, vgg_eval

CONVS = {"vgg_16": (2, 2, 3, 3, 3), "vgg_19": (2, 2, 4, 4, 4)}  # 3x3 convs per block
WIDTHS = (64, 128, 256, 512, 512)  # each block's channels
FC_WIDTH = 4096
POOL5_SIZE = 7  # pool5's map at 224 px, fc6's kernel: 224 / 2**5
PAPER = ("Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image "
         "Recognition. arXiv:1409.1556")


@layer_kind("conv_as_linear")
class ConvAsLinear(ConvBias):
    """A biased conv whose kernel covers its whole input map (VGG's fc6: 7x7 VALID on pool5's
    7x7 map; fc7: 1x1 on a 1x1 map) as ``nn.Linear`` over torch's flattening of that map,
    (channel, height, width): TF's HWIO kernel -> OIHW -> [out, in * kh * kw]. The table gives
    the conv's shape (``7x7 512 4096``); TF's variables are ``conv_bias``'s."""

    def layout(self, module, shape, classes, folded):
        out_chs, in_chs, kh, kw = shape
        return [(f"{module}.weight", (out_chs, in_chs * kh * kw)), (f"{module}.bias", (out_chs,))]

    def tensors(self, module, v, folded, drop):
        kernel = v["weight"]
        kh, kw, in_chs, out_chs = kernel.shape
        taps = kernel.reshape(kh * kw, in_chs, out_chs)
        weight = np.empty((out_chs, in_chs, kh * kw), "<f4")
        # The HWIO -> OIHW copy, one input channel at a time: numpy walks the output in order,
        # reading one element from each of the kh * kw taps per output row. For one channel
        # those are 49 rows of fc6's kernel (16 KB each), which stay in cache while the 4096
        # output rows pass through them; with 8 channels at a time (392 rows, 392 pages) the
        # caches and the TLB thrash: fc6's 400 MB took 0.13-0.35 s this way, 0.4-1.2 s with 8
        # (bench/port_speed.py; one strided copy of all of it took 1.4-1.7 s).
        for channel in range(in_chs):
            weight[:, channel] = taps[:, channel].T
        return {f"{module}.weight": weight.reshape(out_chs, -1),
                f"{module}.bias": np.ascontiguousarray(v["bias"], "<f4")}


def block_layout(name: str) -> list[tuple[int, int, int]]:
    """(block, conv, index in ``features``) of every conv, in network order: torchvision's
    ``features`` holds conv, ReLU, conv, ReLU, ..., pool per block."""
    found, index = [], 0
    for block, count in enumerate(CONVS[name], 1):
        for conv in range(1, count + 1):
            found.append((block, conv, index))
            index += 2  # conv, ReLU
        index += 1  # pool
    return found


def _rows(name: str) -> str:
    rows, in_chs = [], 3
    for block, conv, index in block_layout(name):
        out_chs = WIDTHS[block - 1]
        rows.append(f"conv{block}/conv{block}_{conv}  features.{index}  conv_bias  "
                    f"3x3 {in_chs} {out_chs}")
        in_chs = out_chs
    rows += [f"fc6  classifier.0  conv_as_linear  {POOL5_SIZE}x{POOL5_SIZE} {in_chs} {FC_WIDTH}",
             f"fc7  classifier.3  conv_as_linear  1x1 {FC_WIDTH} {FC_WIDTH}",
             f"fc8  classifier.6  conv_classifier  {FC_WIDTH}"]
    return "\n".join(rows)


def end_points(name: str) -> tuple[str, ...]:
    """TF-Slim's end points of ``name`` in network order (see the module docstring)."""
    names = []
    for block, conv, _ in block_layout(name):
        names.append(f"{name}/conv{block}/conv{block}_{conv}")
        if conv == CONVS[name][block - 1]:
            names.append(f"{name}/pool{block}")
    return (*names, f"{name}/fc6", f"{name}/fc7", "Logits")


def taps(name: str) -> Taps:
    """Every end point with its tensor in TF-Slim's graph: a conv's or fc's ReLU, a pool's max
    pool, and fc8's squeeze (``Logits``, and TF-Slim's own end point ``<root>/fc8``)."""
    def tensor(end_point: str) -> str:
        if end_point == "Logits":
            return f"{name}/fc8/squeezed"
        return f"{end_point}/{'MaxPool' if end_point.rsplit('/', 1)[1].startswith('pool') else 'Relu'}"

    def names(end_point: str) -> tuple[str, ...]:
        return (end_point, f"{name}/fc8") if end_point == "Logits" else (end_point,)

    return Taps(name, [Tap(tensor(end_point), names(end_point)) for end_point in end_points(name)])


def _spec(name: str) -> Architecture:
    depth = name.rsplit("_", 1)[1]
    return Architecture(
        name=name,
        title=f"VGG-{depth}",
        tf_root=name,
        layers=tuple(table(name, _rows(name), bn_eps=None)),  # no batch norm
        end_points=end_points(name),
        classifier_end_points=("Logits",),
        eval=vgg_eval("classifier.6"),
        model=f"models.vgg.model:VGG{depth}",
        oracle="models.vgg.oracle",
        oracle_name="TF-Slim",
        paper=PAPER,
        torchvision_keys=f"vgg{depth}",
        taps=taps(name),
    )


SPECS = tuple(_spec(name) for name in CONVS)  # VGG-16 first: the one the benchmarks run
