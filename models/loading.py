"""Building the PyTorch model of an architecture, and the model a ported state dict fits."""
from __future__ import annotations

import torch
from torch import nn

from models.spec import Architecture, architecture_of_state_dict


def create_model(spec: Architecture, num_classes: int = 1000, aux_logits: bool = True,
                 fold_bn: bool = False, device=None) -> nn.Module:
    """``spec``'s PyTorch model (e.g. ``models.inception_v3.model.InceptionV3``)."""
    return spec.model_class()(num_classes=num_classes, aux_logits=aux_logits, fold_bn=fold_bn,
                              device=device)


def model_for_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The eval-mode model whose architecture and layout (classes, aux head, folding) match a
    ported state dict, with the state dict loaded strictly.

    The model is built on the meta device and takes the state dict's tensors as its parameters
    and buffers (``load_state_dict(assign=True)``): no random initialisation that the weights
    would overwrite (most of the time of building the model), and no copy. So the model and the
    state dict share memory: change one in place and the other sees it.

    Raises ``models.spec.UnknownArchitecture`` for keys of no architecture here, and
    ``RuntimeError`` (from ``load_state_dict``) for keys or shapes that do not fit it.
    """
    spec, options = architecture_of_state_dict((k, tuple(v.shape)) for k, v in state_dict.items())
    model = create_model(spec, **options, device="meta")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()
