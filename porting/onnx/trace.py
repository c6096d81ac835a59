"""A ported model of any architecture here as an ONNX graph: BN folded, dynamic batch.

What is exported is ``models.deploy.folded_model``: the TF-exact PyTorch definition with every
batch norm folded into its conv (float64 math, rounded once: the numbers ``port --fold-bn``
writes) and no AuxLogits head. Not ``deploy_model``'s copy: its oneDNN ops
(``mkldnn._convolution_pointwise``) have no ONNX form, and ONNX Runtime and OpenVINO fuse
conv + bias + ReLU and pick their own weight layouts anyway.

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs no onnxscript, and
two exports of the same weights give the same bytes (tested). Each ``AvgPool2d`` with
``count_include_pad=False`` becomes an ONNX ``AveragePool`` with ``count_include_pad=0`` and
its padding in ``pads``, which is TF's SAME average pool (``porting.onnx.graph`` checks that).
"""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from models.deploy import folded_model
from models.spec import architecture_of_model

INPUT_NAME = "images"
OPSET = 17
BATCH_AXIS = "batch"


class _EndPoints(nn.Module):
    """``forward_end_points`` as a tuple, in the architecture's end-point order."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x):
        out = self.model.forward_end_points(x)
        return tuple(out[name] for name in self.names)


def _end_point_names(folded: nn.Module, input_size: int) -> tuple[str, ...]:
    """Every TF-Slim end point the folded model has, in network order (no AuxLogits: the
    export drops the aux head)."""
    with torch.inference_mode():
        have = folded.forward_end_points(torch.zeros(1, 3, input_size, input_size))
    return tuple(name for name in architecture_of_model(folded).end_points if name in have)


def input_size_refused(model: nn.Module, input_size: int) -> str | None:
    """Why ``model``'s architecture cannot take ``input_size`` x ``input_size`` images (its
    forward refuses them: VGG's fc6 wants a 7x7 map), None if it can. Shapes only: the
    architecture's layout on the meta device runs in milliseconds and allocates nothing."""
    from models.loading import create_model

    layout = create_model(architecture_of_model(model), model.num_classes, aux_logits=False,
                          device="meta").eval()
    try:
        with torch.no_grad():
            layout(torch.zeros(1, 3, input_size, input_size, device="meta"))
    except (ValueError, RuntimeError) as err:  # the model's own refusal, or torch's on shapes
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def export_onnx(model_or_state_dict, input_size: int, opset: int = OPSET,
                end_points: bool = False) -> tuple[bytes, tuple[str, ...]]:
    """(serialised ONNX model, its output names) of the folded copy of a ported model or state
    dict. Input ``images``: [batch, 3, input_size, input_size] float32 NCHW, batch dynamic;
    outputs ``Logits`` [batch, classes] (with ``end_points``: every end point, 4-D ones NCHW)."""
    model = folded_model(model_or_state_dict)
    names = _end_point_names(model, input_size) if end_points else ("Logits",)
    module = _EndPoints(model, names) if end_points else model
    dynamic = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *names)}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(1, 3, input_size, input_size),), buffer,
                          dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    return buffer.getvalue(), names
