"""Verification: a ported file (or an exported graph) against the TF oracle or golden files.

The reference (``reference``: the request, TF's oracle on the checkpoint, or ``goldens``), the
comparison and its bounds (``parity``), the report, and ``run``, which drives a runner: a
function from NHWC images to end points (the PyTorch model, or an ONNX engine). Only the
runners for PyTorch models (and ``gradients``) import torch.
"""
