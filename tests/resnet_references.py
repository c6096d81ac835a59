"""TF-Slim's side of tests/test_resnet.py, run in a process of its own beside the suite.

    python tests/resnet_references.py OUTDIR

For each ResNet (the order of ``ARCHS``): the photos at the test's two input sizes, a synthetic
checkpoint written by TF-Slim's own ``resnet_v*`` (V1 format, as the releases), and TF-Slim's
graph restored from that file: its logits at batch 10 and at batch 1 (each of the first
``BATCH_1_IMAGES`` photos on its own) at both sizes, and for ResNet-50 v2 every end point of
two photos. Saved as ``OUTDIR/<arch>/<arch>.ckpt`` and ``reference.npz``, then ``done`` is
written. Building TF-Slim's graph is Python-bound (~20 s per ResNet-152 graph); run beside the
rest of the suite at the lowest priority, it takes the CPU the suite leaves idle (~0.8 of a
core on average: the suite's own processes keep ~1.2 of the 2 busy) instead of the suite's
time.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

ARCHS = ["resnet_v2_50", "resnet_v1_50", "resnet_v2_101", "resnet_v1_101", "resnet_v2_152",
         "resnet_v1_152"]
FULL_SIZE = {"resnet_v2_50": (299, 301), "resnet_v1_50": (224, 225)}
REDUCED_SIZE = (128, 129)
BATCH_1_IMAGES = 3
END_POINT_IMAGES = 2


def sizes(name: str) -> tuple[int, int]:
    return FULL_SIZE.get(name, REDUCED_SIZE)


def tf_logits(reference, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([reference(images[i:i + batch], ("Logits",))["Logits"]
                           for i in range(0, len(images), batch)])


def build(name: str, folder: Path) -> None:
    from models.spec import get_architecture
    from porting.photos import load_photos

    spec = get_architecture(name)
    oracle = spec.oracle_module()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for size in sizes(name):
        arrays[f"images/{size}"] = load_photos(
            config=dataclasses.replace(spec.eval, input_size=size))[1]
    checkpoint = oracle.build_synthetic_checkpoint(
        folder / f"{name}.ckpt", arrays[f"images/{sizes(name)[0]}"], v1_format=True)
    reference = oracle.Reference.for_checkpoint(checkpoint)
    try:
        for size in sizes(name):
            images = arrays[f"images/{size}"]
            arrays[f"logits/{size}/10"] = tf_logits(reference, images, len(images))
            arrays[f"logits/{size}/1"] = tf_logits(reference, images[:BATCH_1_IMAGES], 1)
        if name == "resnet_v2_50":
            out = reference(arrays[f"images/{sizes(name)[0]}"][:END_POINT_IMAGES], spec.end_points)
            arrays.update({f"end_points/{key}": value for key, value in out.items()})
    finally:
        reference.close()
    np.savez(folder / "reference.npz", **arrays)
    (folder / "done").write_text("ok\n")


def main(outdir: str) -> None:
    import os

    os.nice(19)  # idle time only: the suite's own tests go first
    for name in ARCHS:
        build(name, Path(outdir) / name)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages
    main(sys.argv[1])
