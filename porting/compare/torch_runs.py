"""The foreign weights run (torch): in our exact network, and in the file's own network
(timm's, torchvision's), each as a ``porting.verify.run.Runner``."""
from __future__ import annotations

import functools

import numpy as np
import torch

from models.loading import create_model
from models.spec import Architecture
from models.spec.foreign import ForeignLayout
from porting.compare.foreign import Mapped
from porting.verify.torch_runner import torch_end_points


def in_our_network(spec: Architecture, mapped: Mapped):
    """A runner of our model of ``spec`` holding the foreign tensors (every end point)."""
    layout = mapped.layout
    model = create_model(spec, num_classes=layout.num_classes, aux_logits=layout.aux)
    state = model.state_dict()
    for key in state:
        if key in mapped.tensors:
            state[key] = torch.from_numpy(np.ascontiguousarray(mapped.tensors[key],
                                                               dtype=np.float32))
    model.load_state_dict(state, strict=True)
    return functools.partial(torch_end_points, model.eval())


def in_its_network(layout: ForeignLayout, tensors: dict[str, np.ndarray]):
    """A runner of the project's own network holding the file's tensors ({"Logits"}); a
    string saying why when it cannot be built or the file does not load into it."""
    try:
        model = layout.builder()(layout.num_classes)
    except Exception as err:  # a project not installed, or one that fails to import here
        return f"cannot build {layout.name} ({type(err).__name__}: {str(err)[:120]})"
    state = model.state_dict()
    missing = [key for key in state if key not in tensors
               and not key.endswith("num_batches_tracked")]
    if missing:
        return f"the file does not fill {layout.name}: no {', '.join(missing[:3])}"
    for key in state:
        if key in tensors:
            if tuple(tensors[key].shape) != tuple(state[key].shape):
                return f"{key} is {list(tensors[key].shape)} in the file, " \
                       f"{list(state[key].shape)} in {layout.name}"
            state[key] = torch.from_numpy(np.ascontiguousarray(tensors[key]))
    model.load_state_dict(state, strict=True)
    model.eval()

    def run(images_nhwc: np.ndarray) -> dict:
        with torch.inference_mode():
            out = model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
        if isinstance(out, (tuple, list)):  # (logits, aux logits): timm's with its aux head
            out = out[0]
        return {"Logits": out.numpy()}
    return run
