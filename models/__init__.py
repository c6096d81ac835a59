"""PyTorch model definitions that reproduce TensorFlow originals exactly."""
from models.inception_v3 import END_POINTS, InceptionV3, model_for_state_dict

__all__ = ["END_POINTS", "InceptionV3", "model_for_state_dict"]
