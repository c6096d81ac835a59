"""Fast CPU inference from a ported model of any architecture here, with the same logits (see
README, "the deploy path").

``deploy_model`` returns a copy of the model that computes ``forward`` only:
- batch norm folded into the convs (``fold_batch_norm``: float64 math, rounded once);
- channels_last (NHWC) activations, the layout oneDNN's convolutions run fastest in;
- each conv + bias + ReLU run as one oneDNN primitive, its weight reordered once per input shape
  into oneDNN's blocked layout. Eager PyTorch reorders conv weights on every call; at batch 1
  that alone cost ~15% of the run time.
The AuxLogits head is dropped (``forward`` never uses it). Works for every model built from
``models.layers.BasicConv2d`` (conv + BN, with or without ReLU), plain convs (Inception-ResNet's
up convs, ResNet v2's biased convs: they keep their bias and run in channels_last as they are)
and batch norms of their own (ResNet v2's pre-activations: kept, in channels_last).

On a CPU shared with other processes, run with ``OMP_WAIT_POLICY=PASSIVE`` set before torch
loads: libgomp's default spin-waiting makes every op wait for the thread that lost its core
(several times slower; ``bench/deploy_under_load.py``).

Not used: ``torch.compile`` (with weight freezing) measured no faster here, slower at batch 1,
and costs 45-70 s of compilation and a C++ compiler; TorchScript freezing was slower too.

``gradient_model`` is the copy for input gradients (iterative attacks): folded and channels_last
too, but with autograd, which ``deploy_model``'s fused oneDNN primitives have none of. Its
speed also depends on the allocator: ``retain_freed_memory`` (``bench/gradient_speed.py``).
Not used for gradients either: ``torch.compile`` of the forward + backward took ~4 min to
compile Inception v3 on 2 loaded cores and then ran slower than eager; a custom autograd
function around ``ConvReLU`` (backward: ReLU mask, then oneDNN's backward-data convolution)
used the same CPU time as the channels_last folded model.
"""
from __future__ import annotations

import copy
import ctypes
import platform

import torch
from torch import nn

from models.layers import BasicConv2d
from models.loading import model_for_state_dict


class ConvReLU(nn.Module):
    """A folded ``BasicConv2d`` as one oneDNN conv + bias (+ ReLU) primitive.

    oneDNN's preferred weight layout depends on the input shape, so the reordered weight is
    cached per shape: one extra copy of the layer's weight for each shape seen.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = True):
        super().__init__()
        self.activation = "relu" if relu else "none"
        self.weight = conv.weight.detach()
        self.bias = conv.bias.detach()
        self.args = (conv.padding, conv.stride, conv.dilation, conv.groups)
        self.packed: dict[torch.Size, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.packed.get(x.shape)
        if weight is None:
            weight = self.packed[x.shape] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, *self.args, input_size=list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, self.bias, *self.args, self.activation, [], "")


def _channels_last_input(module, args):
    return (args[0].contiguous(memory_format=torch.channels_last),)


def folded_model(model_or_state_dict: nn.Module | dict[str, torch.Tensor]) -> nn.Module:
    """An eval-mode copy of a ported model (plain or folded) or of a ported state dict, every
    batch norm folded into its conv and the AuxLogits head dropped: plain PyTorch modules only,
    what ``deploy_model`` speeds up and ``porting.onnx.trace`` writes to ONNX. The input model is
    left untouched."""
    if isinstance(model_or_state_dict, nn.Module):
        model = copy.deepcopy(model_or_state_dict)
    else:
        model = model_for_state_dict(model_or_state_dict)
    model.AuxLogits = None
    for module in model.modules():
        if isinstance(module, BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            module.fold_bn_()
    model.fold_bn = True
    return model.eval().requires_grad_(False)


def _channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its weights and every input in channels_last (NHWC) memory order."""
    model = model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


def gradient_model(model_or_state_dict: nn.Module | dict[str, torch.Tensor]) -> nn.Module:
    """A copy of a ported model (plain or folded) or of a ported state dict for fast gradients
    with respect to the input: ``folded_model`` (batch norms folded, no AuxLogits, parameters
    frozen, so autograd records the path back to the input and nothing for the ~20-140M
    weights) in channels_last, oneDNN's fastest layout on CPU. Its input gradients are the
    plain model's up to float32 rounding (the folded weights are rounded once); tested against
    TF-Slim's ``tf.gradients`` in ``tests/test_gradients.py``.

    Pass the input with ``requires_grad=True`` (or use
    ``porting.verify.gradients.torch_loss_gradient``); for the speed measured in
    ``bench/gradient_speed.py``, also call ``retain_freed_memory()`` once. The input model is
    left untouched.
    """
    return _channels_last(folded_model(model_or_state_dict))


# glibc's mallopt parameters (<malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep the memory PyTorch frees for reuse, for the rest of the process;
    True if it now does (glibc only; elsewhere nothing changes and this returns False).

    glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
    and unmaps it on free, so each large activation and gradient of a batch is new memory that
    the kernel zero-fills page by page on first touch: measured on Inception v3's input
    gradient at batch 16 on 2 threads, 0.15-0.4 s of system time per batch, 7-15% of the run
    (TF's session, in the same process: ~0.03 s). Here ``mmap`` is turned off (``M_MMAP_MAX``
    0) and the heap is never trimmed (``M_TRIM_THRESHOLD`` -1), so freed blocks stay in the
    heap for the next ones: in a loop that repeats the same shapes (an attack's iterations)
    the heap settles after a batch or two and the system time goes to ~0 (measured: 1.8 GiB
    resident, steady, against 1.1-1.5 GiB). A heap is not a pool: small blocks allocated
    between large ones can still leave a large request no free block that fits. The cost:
    the process keeps its peak heap until it exits. Computed values are unchanged.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))


def deploy_model(model_or_state_dict: nn.Module | dict[str, torch.Tensor]) -> nn.Module:
    """A fast inference copy of a ported model (plain or folded) or of a ported state dict.

    Call it under ``torch.inference_mode()`` or ``torch.no_grad()``. The input model is left
    untouched; the result has no AuxLogits and is not meant to be saved.
    """
    model = _channels_last(folded_model(model_or_state_dict))
    if not torch.backends.mkldnn.is_available():
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, BasicConv2d):
                setattr(parent, name, ConvReLU(child.conv, child.relu))
    return model
