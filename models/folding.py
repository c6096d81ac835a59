"""Batch-norm folding, in numpy: the converter uses it without importing torch, the model's
``BasicConv2d.fold_bn_`` on its own tensors."""
from __future__ import annotations

import numpy as np

def fold_batch_norm(weight: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                    gamma: np.ndarray | None = None, *, eps: float,
                    dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of the one conv that computes conv(x, weight) followed by inference BN.

    ``weight`` is [out, in, kh, kw] (PyTorch's OIHW). y = gamma * (conv(x, W) - mean) /
    sqrt(var + eps) + beta, with gamma = 1 when None (TF-Slim's Inception batch norm has none);
    ``eps`` is the architecture's, as its table states it.
    Computed in float64 and rounded once, to ``dtype`` (default: ``weight``'s), so folding adds
    no float32 error of its own. Both results are C-contiguous.
    """
    dtype = np.dtype(dtype or weight.dtype)
    scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    if gamma is not None:
        scale = np.asarray(gamma, np.float64) * scale
    folded_weight = np.asarray(weight, np.float64) * scale[:, None, None, None]
    folded_bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return (np.ascontiguousarray(folded_weight, dtype=dtype),
            np.ascontiguousarray(folded_bias, dtype=dtype))
