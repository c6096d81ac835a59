"""``make demo``: the main job end to end, port + parity against TensorFlow on real photos.

Ports the adv_inception_v3 release if it is under checkpoints/ (the archive, or its unpacked
checkpoint anywhere below). Otherwise builds a SYNTHETIC checkpoint with the architecture's
oracle (for Inception v3: TF-Slim's own graph, random calibrated weights) under out/demo/ and
ports that, labelled as such throughout. ``python -m porting.demo RELEASE`` does the same for
another release of the registry.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from models.calibration import synthetic_label
from models.spec import get_architecture
from porting.convert import PortOptions
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from porting.releases.registry import get_release

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "adv_inception_v3"


def find_release(name: str, folder: Path = ROOT / "checkpoints") -> Path | None:
    release = get_release(name)
    archive = folder / release.archive
    if archive.is_file():
        return archive
    pattern = f"{release.checkpoint}.index" if release.format == "V2" else release.checkpoint
    found = next(iter(sorted(folder.rglob(pattern))), None)
    return found.with_suffix("") if found is not None and release.format == "V2" else found


def synthetic_source(out: Path, name: str) -> Path:
    """The synthetic checkpoint of release ``name``'s architecture, built once and reused."""
    from porting.verify.photos import load_photos

    spec = get_architecture(get_release(name).architecture)
    prefix = out / f"synthetic_{name}.ckpt"
    if not Path(f"{prefix}.index").is_file():
        print(f"building a synthetic TF-Slim checkpoint at {prefix} (about a minute) ...", flush=True)
        spec.oracle_module().build_synthetic_checkpoint(prefix, load_photos(config=spec.eval)[1])
    return prefix


def main(name: str = RELEASE) -> int:
    release = get_release(name)
    out = ROOT / "out" / "demo"
    src = find_release(name)
    label = f"the {name} release" if src else synthetic_label(release.architecture)
    print(f"== port-weights demo on {label}", flush=True)
    if src is None:
        src = synthetic_source(out, name)
    stem = name if src.name.startswith(name) else f"synthetic_{name}"
    return port_and_check(src, out / f"{stem}.pth", shown_as=f"{src}  [{label}]")


def reference_logits(src: Path, images) -> np.ndarray:
    """The TF reference's logits for ``images`` on the checkpoint at ``src`` (an archive is
    unpacked for the while)."""
    from porting.convert import architecture_of
    from porting.read.open import open_source

    with open_source(src) as opened:
        spec = architecture_of(opened.reader, PortOptions())
        tf_model = spec.oracle_module().Reference.for_checkpoint(opened.reader.source.prefix)
        try:
            return tf_model(images, ("Logits",))["Logits"]
        finally:
            tf_model.close()


def port_and_check(src: Path, dst: Path, shown_as: str) -> int:
    """Port ``src`` with the default options, then compare with the TF reference on the photos."""
    from porting.verify.photos import load_photos
    from porting.pipeline import port_checkpoint
    from porting.weights import load_ported

    options = PortOptions()  # timm's layout: 1000 classes, aux head
    result = port_checkpoint(src, dst, options, force=True)  # the manifest records the archive
    conversion = result.conversion

    names, images = load_photos(config=conversion.architecture.eval)
    dropped = conversion.classes.dropped
    reference = reference_logits(src, images)[:, dropped:]  # TF's background left out
    model = load_ported(result.written.path)  # the written file, as a user loads it
    parity = compare(torch_outputs(model, images, len(images))["Logits"], reference)

    skipped = "; ".join(f"{n} ({why})" for n, why in conversion.skipped.items()) or "none"
    print(f"source     {shown_as}")
    print(f"model      {conversion.architecture.title} ({conversion.architecture.name})")
    print(f"variables  {len(conversion.mapped)} mapped, {len(conversion.skipped)} skipped: {skipped}")
    print(f"output     {result.written.path}  ({options.describe()})")
    print(f"sha256     {result.written.sha256}")
    print(f"parity     {len(names)} photos, batch {len(names)}: max |logit diff| "
          f"{parity.max_abs_diff:.2e} (bound {parity.tolerance:.2e}), top-1 agreement "
          f"{parity.top1_agree}/{parity.images}, top-5 {parity.top5_agree}/{parity.images}")
    print(f"verdict    {'PASS' if parity.passed else 'FAIL'}")
    return 0 if parity.passed else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
