"""A ported .pth/.safetensors file as ``porting.verify.run`` verifies it: loaded into its PyTorch
model, run over NHWC images (end points as numpy, 4-D ones NHWC like TF's), and, with
``--gradients``, its input gradients and FGSM images against TF's. The only module of the
verification that imports torch, with ``gradients``."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from models.spec import Architecture, ClassLayout, architecture_of_model
from porting.errors import PortError
from porting.verify.goldens import Reference
from porting.verify.gradients import gradient_parity
from porting.verify.parity import FLOAT64_RELATIVE_TOLERANCE, GRADIENT_RELATIVE_TOLERANCE, Parity
from porting.verify.reference import OpenedReference
from porting.verify.report import Report
from porting.verify.request import VerifyRequest
from porting.verify.run import Progress, Run, compare_outputs
from porting.weights import load_ported


def torch_outputs(model: torch.nn.Module, images_nhwc: np.ndarray, batch_size: int) -> dict:
    """{"Logits", "AuxLogits"?} as numpy, running ``model`` over NHWC images in batches."""
    chunks: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, len(images_nhwc), batch_size):
            x = torch.from_numpy(images_nhwc[start:start + batch_size]).permute(0, 3, 1, 2)
            if getattr(model, "AuxLogits", None) is not None:
                out = model.forward_end_points(x)
                out = {k: out[k] for k in ("Logits", "AuxLogits")}
            else:
                out = {"Logits": model(x)}
            for name, value in out.items():
                chunks.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in chunks.items()}


def torch_end_points(model: torch.nn.Module, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Every end point of ``model.forward_end_points`` as numpy, 4-D ones NHWC like TF's."""
    with torch.inference_mode():
        out = model.forward_end_points(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
    return {name: (value.permute(0, 2, 3, 1) if value.ndim == 4 else value).numpy()
            for name, value in out.items()}


def compare_end_points(model: torch.nn.Module, images: np.ndarray, reference: Reference, *,
                       dropped: int = 0, float64: bool = False, batch_size: int = 2,
                       progress=None, reference_name: str = "reference") -> dict[str, Parity]:
    """``porting.verify.run.compare_outputs`` of a PyTorch model."""
    return compare_outputs(architecture_of_model(model), functools.partial(torch_end_points, model),
                           images, reference, dropped=dropped, float64=float64,
                           batch_size=batch_size, progress=progress,
                           reference_name=reference_name)


@dataclass
class TorchSubject:
    """A ported file loaded for verification (a ``porting.verify.run.Subject``)."""
    request: VerifyRequest
    model: torch.nn.Module
    spec: Architecture
    num_classes: int
    end_points: tuple[str, ...] | None = None  # all of the architecture's

    @classmethod
    def open(cls, request: VerifyRequest) -> "TorchSubject":
        """``request.weights`` loaded (weights_only) in the request's precision; PortError if
        it cannot be (``--float64`` of a file whose folded weights were rounded to float32)."""
        model = load_ported(request.weights)
        if request.float64 and model.fold_bn:
            raise PortError(f"{request.weights}: --float64 proves the mapping exact, but this "
                            "file's folded weights were rounded to float32 after folding; "
                            "verify it in float32")
        model = model.to(torch.float64 if request.float64 else torch.float32)
        return cls(request, model, architecture_of_model(model), model.num_classes)

    def skipped(self, opened: OpenedReference) -> dict[str, str]:
        if self.model.AuxLogits is not None and not opened.source.aux:
            raise PortError(f"{self.request.weights}: has an AuxLogits head, but "
                            f"{opened.source.checkpoint} has none")
        if self.model.AuxLogits is None and opened.source.aux:
            return {"AuxLogits": "not in the weights file (ported without aux)"}
        return {}

    def runs(self, images: int) -> list[Run]:
        return [Run("end points", self.request.batch_size,
                    lambda: functools.partial(torch_end_points, self.model))]

    def report(self, runs: dict[str, Report], opened: OpenedReference, layout: ClassLayout,
               progress: Progress | None) -> Report:
        """The one run's report, with the gradients' parity when the request asks for it."""
        (report,) = runs.values()
        request, model = self.request, self.model
        if request.gradients:
            if request.label is not None and not 0 <= request.label < model.num_classes:
                raise PortError(f"--label {request.label}: {request.weights} has classes "
                                f"0..{model.num_classes - 1}")
            images = opened.images
            labels = None if request.label is None else np.full(len(images), request.label)
            report.gradients = gradient_parity(
                model, opened.tf_model, images, dropped=layout.dropped, labels=labels,
                relative_tolerance=(FLOAT64_RELATIVE_TOLERANCE if request.float64
                                    else GRADIENT_RELATIVE_TOLERANCE),
                batch_size=request.batch_size,
                progress=None if progress is None else functools.partial(progress, "gradients"))
        return report
