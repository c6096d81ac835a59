"""PyTorch definitions that reproduce TF-Slim's networks exactly, one folder per architecture.

Each ``models/<name>/`` holds ``spec.py`` (torch-free: the TF scope -> module table, end points
and eval config the converter uses), ``model.py`` (the PyTorch definition) and ``oracle.py``
(the TensorFlow reference it is verified against). Names here are imported on first use, so
that the torch-free parts (``models.spec``, ``models.folding``) never import torch.
"""
from importlib import import_module

_HOMES = {
    "InceptionV3": "models.inception_v3.model",
    "InceptionResNetV2": "models.inception_resnet_v2.model",
    "create_model": "models.loading",
    "model_for_state_dict": "models.loading",
    "deploy_model": "models.deploy",
    "gradient_model": "models.deploy",
    "fold_batch_norm": "models.folding",
    "architectures": "models.spec",
    "get_architecture": "models.spec",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
