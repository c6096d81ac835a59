"""PyTorch model definitions that reproduce TensorFlow originals exactly."""
from models.deploy import deploy_model
from models.inception_v3 import END_POINTS, InceptionV3, fold_batch_norm, model_for_state_dict

__all__ = ["END_POINTS", "InceptionV3", "deploy_model", "fold_batch_norm", "model_for_state_dict"]
