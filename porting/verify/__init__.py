"""Verification: a ported file (or an exported graph) against the TF oracle or golden files.

``request`` (what was asked), ``reference`` (the goldens or TF's oracle on the checkpoint, and
the class rule: whether a file can be a port of it), ``goldens`` (the HDF5 golden files),
``parity`` (the comparison and its bounds), ``report`` (what a verification says) and ``run``
(the one driver: any subject's runs against the reference, the manifest updated) form a
torch-free core. ``torch_runner`` runs a ported file in PyTorch and ``gradients`` compares its
input gradients with TF's: only they import torch. ``porting.onnx.verify`` brings the other
subject, an exported graph in its engines. ``photos``: the default images.
"""
