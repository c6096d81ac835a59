"""PyTorch model definitions that reproduce TensorFlow originals exactly.

Names are imported on first use, so that the torch-free parts (``models.folding``,
``models.layout``) can be used by the converter without importing torch.
"""
from importlib import import_module

_HOMES = {
    "END_POINTS": "models.inception_v3",
    "InceptionV3": "models.inception_v3",
    "model_for_state_dict": "models.inception_v3",
    "deploy_model": "models.deploy",
    "fold_batch_norm": "models.folding",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
