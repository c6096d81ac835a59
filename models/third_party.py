"""timm and torchvision, imported where the pinned stack can import them.

The stack this project pins (constraints.txt) has torch 2.13.0's CPU build and torchvision
0.28.0, the torchvision release made for torch 2.13.0. PyPI's build of it is a CUDA build: its
C++ ops library (``torchvision/_C.so``) links libtorch_cuda and does not load beside torch's CPU
build, so ``import torchvision`` (and ``import timm``, which imports it) fails, registering fake
kernels for ``torchvision::nms`` and ``qnms`` (``_meta_registrations``), two ops that library
would have defined. The model definitions used here (timm's and torchvision's Inception v3,
Inception v4, Inception-ResNet-v2, VGG) need none of its ops: declaring the two schemas lets the
import finish. Where the library loads (a matching torchvision), nothing is declared. Used by
``release`` (timm's distance), ``compare`` (the file's own network) and the tests.
"""
from __future__ import annotations

import functools

_DECLARED = []  # the Library declaring the two schemas; alive as long as the process


@functools.lru_cache(maxsize=1)
def torchvision_models():
    """``torchvision.models``."""
    import torch

    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARED.append(library)
        import torchvision
    return torchvision.models


def timm():
    """The ``timm`` package (it imports torchvision: ``torchvision_models`` first)."""
    torchvision_models()
    import timm

    return timm
