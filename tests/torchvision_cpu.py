"""torchvision's model definitions (and timm, which imports torchvision) beside the CPU build of
torch that the suite runs on.

PyPI's torchvision 0.28.0 (the release made for torch 2.13.0) is built with CUDA: its C++ ops
library (``torchvision/_C.so``) links libtorch_cuda and does not load beside torch's CPU build
(the Makefile installs it from local disk). torchvision then fails at import, registering fake
kernels for ``torchvision::nms`` and ``qnms`` (``_meta_registrations``), two ops its library
would have defined. Its models need none of its ops: declaring the two schemas lets the import
finish. Where the library does load, nothing is declared.
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
