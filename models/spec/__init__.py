"""What the converter knows about an architecture, as data and without torch.

Every architecture is one folder under ``models/`` whose ``spec.py`` defines ``SPEC``, an
``Architecture``: the one table from TF-Slim variable scopes to PyTorch modules (with each
layer's kind and shape, in the model's state-dict order), the TF-Slim end points, and the
evaluation config (timm's "pretrained cfg": input size, crop, interpolation, mean/std, classes,
label offset, classifier name). ``architectures()`` finds the folders; nothing outside them
names an architecture.

A layer kind is defined once, here: which TF variables live under its scope, which PyTorch keys
it fills (plain and with batch norm folded), the shape rule between the two and the transform.
The tests check each table against its PyTorch model's ``state_dict()`` for every variant.
"""
from models.spec.architecture import Architecture, KerasAdapter, KerasMismatch, TimmFacts
from models.spec.config import ClassLayout, EvalConfig, inception_eval, vgg_eval
from models.spec.discovery import (UnknownArchitecture, architecture_of_model,
                                   architecture_of_state_dict, architectures, folders,
                                   get_architecture, representatives)
from models.spec.kinds import (BUFFERS, KINDS, BatchNorm, ConvBias, ConvBN, LayerKind,
                               layer_kind, make_kind)
from models.spec.taps import (Tap, Taps, UnknownTap, base_scope, inception_op_scope,
                              inception_taps, slim_op)
from models.spec.table import AUX_SCOPE, EMA_SUFFIX, Layer, table, with_root
