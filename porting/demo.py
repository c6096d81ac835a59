"""``make demo``: the main job end to end, port + parity against TensorFlow on real photos.

Ports the adv_inception_v3 release if it is under checkpoints/ (the archive, or its unpacked
checkpoint anywhere below). Otherwise builds a SYNTHETIC TF-Slim checkpoint (TF-Slim's own
graph, random calibrated weights) under out/demo/ and ports that, labelled as such throughout.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from porting.convert import PortOptions
from porting.parity import compare, torch_outputs
from porting.registry import get_release

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "adv_inception_v3"


def find_release(folder: Path = ROOT / "checkpoints") -> Path | None:
    release = get_release(RELEASE)
    archive = folder / release.archive
    if archive.is_file():
        return archive
    return next((p.with_suffix("") for p in sorted(folder.rglob(f"{release.checkpoint}.index"))), None)


def synthetic_source(out: Path) -> Path:
    """The synthetic checkpoint, built once and reused on later runs."""
    from porting.photos import load_photos
    from porting.synthetic import build_synthetic_checkpoint

    prefix = out / f"synthetic_{RELEASE}.ckpt"
    if not Path(f"{prefix}.index").is_file():
        print(f"building a synthetic TF-Slim checkpoint at {prefix} (about a minute) ...", flush=True)
        build_synthetic_checkpoint(prefix, load_photos()[1])
    return prefix


def main() -> int:
    from porting.synthetic import SYNTHETIC_LABEL

    out = ROOT / "out" / "demo"
    src = find_release()
    label = f"the {RELEASE} release" if src else SYNTHETIC_LABEL
    print(f"== port-weights demo on {label}", flush=True)
    if src is None:
        src = synthetic_source(out)
    stem = RELEASE if src.name.startswith(RELEASE) else f"synthetic_{RELEASE}"
    return port_and_check(src, out / f"{stem}.pth", shown_as=f"{src}  [{label}]")


def tf_slim_logits(src: Path, images) -> np.ndarray:
    """TF-Slim's logits for ``images`` on the checkpoint at ``src`` (an archive is unpacked)."""
    from porting.archives import is_archive, unpacked
    from porting.sources import resolve_source
    from porting.tfslim import TFSlimInceptionV3

    with (unpacked(src) if is_archive(src) else contextlib.nullcontext(src)) as checkpoint:
        tf_model = TFSlimInceptionV3.for_checkpoint(resolve_source(checkpoint).prefix)
        try:
            return tf_model(images)["Logits"]
        finally:
            tf_model.close()


def port_and_check(src: Path, dst: Path, shown_as: str) -> int:
    """Port ``src`` with the default options, then compare with TF-Slim on the photos."""
    from porting.photos import load_photos
    from porting.pipeline import port_checkpoint
    from porting.weights import load_ported

    options = PortOptions()  # timm's layout: 1000 classes, aux head
    result = port_checkpoint(src, dst, options, force=True)  # the manifest records the archive
    conversion = result.conversion

    names, images = load_photos()
    background = conversion.source_classes - options.num_classes  # 1 when row 0 was dropped
    reference = tf_slim_logits(src, images)[:, background:]
    model = load_ported(result.written.path)  # the written file, as a user loads it
    parity = compare(torch_outputs(model, images, len(images))["Logits"], reference)

    skipped = "; ".join(f"{n} ({why})" for n, why in conversion.skipped.items()) or "none"
    print(f"source     {shown_as}")
    print(f"variables  {len(conversion.mapped)} mapped, {len(conversion.skipped)} skipped: {skipped}")
    print(f"output     {result.written.path}  ({options.describe()})")
    print(f"sha256     {result.written.sha256}")
    print(f"parity     {len(names)} photos, batch {len(names)}: max |logit diff| "
          f"{parity.max_abs_diff:.2e} (bound {parity.tolerance:.2e}), top-1 agreement "
          f"{parity.top1_agree}/{parity.images}, top-5 {parity.top5_agree}/{parity.images}")
    print(f"verdict    {'PASS' if parity.passed else 'FAIL'}")
    return 0 if parity.passed else 1


if __name__ == "__main__":
    sys.exit(main())
