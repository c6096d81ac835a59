"""Feature taps against TF's tensors fetched by name (tests/test_taps.py and each
architecture's module, which hold the TF references)."""
from __future__ import annotations

import numpy as np
import torch

from porting.verify.parity import compare, tolerance_for

TAP_IMAGES = 2  # photos the taps are compared on


def graph_tensors(reference, images_nhwc: np.ndarray, names) -> dict[str, np.ndarray]:
    """TF's tensors of a ``TFSlimGraph`` reference by graph name (``get_tensor_by_name(name +
    ":0")``, never through the end-point dict), all in one session run."""
    names = tuple(names)
    fetch = [reference.graph.get_tensor_by_name(f"{name}:0") for name in names]
    return dict(zip(names, reference.session.run(fetch, {reference.images: images_nhwc})))


def _nhwc(value: torch.Tensor) -> np.ndarray:
    value = value.detach().numpy()
    return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value


def check_taps(model, spec, images_nhwc: np.ndarray, tf: dict[str, np.ndarray]) -> int:
    """Every name of ``tf`` through ``model.taps`` (one call) within its end point's bound of
    TF's tensor of that name; and, the negative control, each against the next tensor of
    the same shape in the table, which must fail. Returns the number of controls."""
    names = list(tf)
    with torch.no_grad():
        ours = {name: _nhwc(value) for name, value in
                model.taps(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2), names).items()}
    controls = 0
    for i, name in enumerate(names):
        tap = spec.taps.resolve(name)
        bound = tolerance_for(spec, tap.end_points[0] if tap.end_points else name, False)
        parity = compare(ours[name], tf[name], bound)
        assert parity.passed, f"{name}: {parity}"
        neighbour = next((other for other in names[i + 1:]
                          if tf[other].shape == tf[name].shape), None)
        if neighbour is not None:
            control = compare(ours[name], tf[neighbour], bound)
            assert not control.passed, f"{name} passes as {neighbour}: {control}"
            controls += 1
    assert controls, "no neighbour of the same shape: the control cannot fail"
    return controls
