"""A ported ``.pth`` file back into a model, with one clear error line for a bad file."""
from __future__ import annotations

from pathlib import Path

import torch

from models.inception_v3 import InceptionV3, model_for_state_dict
from porting.errors import PortError


def load_ported(path: str | Path) -> InceptionV3:
    """The eval-mode model whose layout (classes, aux head, folding) the file's state dict has.

    ``.pth`` files load with ``weights_only=True`` (a weights file must never run code on load);
    ``.safetensors`` files with safetensors.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise PortError(f"{path}: no such weights file") from err
    except Exception as err:  # torch and safetensors raise many kinds for a damaged file
        raise PortError(f"{path}: not a PyTorch weights file ({type(err).__name__})") from err
    if not isinstance(state_dict, dict) or "fc.weight" not in state_dict:
        raise PortError(f"{path}: not an Inception v3 state dict (no fc.weight)")
    try:
        return model_for_state_dict(state_dict)
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen keys
        lines = str(err).splitlines()  # "Error(s) in loading state_dict ...", then the details
        raise PortError(f"{path}: does not fit Inception v3: {lines[-1].strip()}") from err
