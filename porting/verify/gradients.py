"""Gradient parity: the port must be as exact backwards as forwards, which is what adversarial
use of adv_inception_v3 (attacks, adversarial training, transfer studies) relies on.

Checked on the input gradient of the summed true-label cross-entropy of the Logits:
max |g_torch - g_tf| / max |g_tf| <= the relative bound, and one FGSM step made in each framework
(eps = 4/255 on the [-1, 1] scale, i.e. 2/255 of the pixel range) gets the same top-1 from both
frameworks' models.

The bound depends on precision. In float64 the gradients agree to ~5e-14, so 1e-10 proves the
backward pass exact. In float32 input gradients are chaotic: a ReLU whose input is within
rounding of zero switches its whole path on or off, and with millions of units some always do.
Measured on the synthetic checkpoint: PyTorch's own float32 gradient moves by 2.6% (max-relative)
when the input moves by one ulp, and each framework's float32 gradient is 2.7-3.5% from the
float64 one; TF vs PyTorch in float32 is 3.0%. So float32 gets a 0.1 bound (a noise-floor check,
not an exactness proof; that is --float64's job) plus the FGSM agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from porting.verify.parity import FGSM_PIXELS  # the bounds live with the others, torch-free


@dataclass(frozen=True)
class GradientParity:
    relative_error: float       # max |g_torch - g_tf| / max |g_tf|
    relative_tolerance: float
    sign_agreement: float       # fraction of gradient components whose signs agree
    torch_fgsm_agree: int       # FGSM images made by PyTorch that TF classifies the same
    tf_fgsm_agree: int          # FGSM images made by TF that PyTorch classifies the same
    fooled: int                 # images whose FGSM image (PyTorch's) changed the top-1
    images: int

    @property
    def passed(self) -> bool:
        return (self.relative_error <= self.relative_tolerance
                and self.torch_fgsm_agree == self.tf_fgsm_agree == self.images)

    def __str__(self) -> str:
        return (f"input gradient relative error {self.relative_error:.3g} "
                f"(bound {self.relative_tolerance:.3g}), signs agree {self.sign_agreement:.4%}; "
                f"FGSM step 2/255 of the pixel range: PyTorch's images same top-1 in TF "
                f"{self.torch_fgsm_agree}/{self.images}, TF's in PyTorch "
                f"{self.tf_fgsm_agree}/{self.images} ({self.fooled} fooled)")


def fgsm(images: np.ndarray, gradient: np.ndarray, epsilon: float,
         value_range: tuple[float, float]) -> np.ndarray:
    """One signed-gradient step of ``epsilon`` (in the input's scale) up the loss, kept in the
    input's ``value_range``."""
    return np.clip(images + epsilon * np.sign(gradient), *value_range).astype(images.dtype)


def torch_loss_gradient(model: torch.nn.Module, images_nhwc: np.ndarray,
                        labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, d loss / d images NHWC) for the summed softmax cross-entropy of ``labels``.

    Only the input gradient is computed: the parameters' gradients (~27M numbers) are neither
    computed nor accumulated into their ``.grad``."""
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, torch.from_numpy(labels), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return logits.detach().numpy(), grad.permute(0, 2, 3, 1).numpy()


def _torch_top1(model, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).argmax(1).numpy()


def gradient_parity(model: torch.nn.Module, tf_model, images: np.ndarray, *, dropped: int,
                    relative_tolerance: float, labels: np.ndarray | None = None,
                    batch_size: int = 2, progress=None) -> GradientParity:
    """Compare input gradients and cross-apply FGSM images between ``model`` and ``tf_model``
    (the architecture's TF ``Reference``). ``dropped=1`` when the model dropped TF's background
    class (``ClassLayout.dropped``); ``labels`` index the model's classes and default to TF's
    top-1."""
    from models.spec import architecture_of_model

    prep = architecture_of_model(model).eval  # the step is 2/255 of the pixels, whatever the scale
    step = dict(epsilon=FGSM_PIXELS / prep.std[0], value_range=prep.value_range)
    worst_diff = max_grad = 0.0
    same_sign = torch_agree = tf_agree = fooled = 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if labels is None:
            batch_labels = tf_model(batch, ("Logits",))["Logits"][:, dropped:].argmax(1)
        else:
            batch_labels = labels[start:start + batch_size]
        batch_labels = np.asarray(batch_labels, np.int64)
        _, g_tf = tf_model.loss_gradient(batch, batch_labels, dropped)
        _, g_pt = torch_loss_gradient(model, batch, batch_labels)
        worst_diff = max(worst_diff, float(np.abs(g_pt - g_tf).max()))
        max_grad = max(max_grad, float(np.abs(g_tf).max()))
        same_sign += int((np.sign(g_pt) == np.sign(g_tf)).sum())

        adv_pt, adv_tf = fgsm(batch, g_pt, **step), fgsm(batch, g_tf, **step)
        pt_on_pt = _torch_top1(model, adv_pt)
        tf_logits = tf_model(np.concatenate([adv_pt, adv_tf]), ("Logits",))["Logits"][:, dropped:]
        tf_on_pt, tf_on_tf = np.split(tf_logits.argmax(1), 2)
        torch_agree += int((tf_on_pt == pt_on_pt).sum())
        tf_agree += int((_torch_top1(model, adv_tf) == tf_on_tf).sum())
        fooled += int((pt_on_pt != batch_labels).sum())
        if progress is not None:
            progress(start + len(batch), len(images))
    return GradientParity(
        relative_error=worst_diff / max_grad if max_grad else (0.0 if worst_diff == 0 else np.inf),
        relative_tolerance=relative_tolerance,
        sign_agreement=same_sign / images.size,
        torch_fgsm_agree=torch_agree, tf_fgsm_agree=tf_agree, fooled=fooled, images=len(images))
