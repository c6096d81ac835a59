"""``release``: a port as a folder a model hub hosts as it is (``porting.write.hub``).

The source (a downloaded release by name, or any checkpoint ``port`` takes) is converted to
timm's layout: 1000 ImageNet classes (TF-Slim's background row dropped where the release has
it: TF's class index = index + 1), no aux head (timm's models have none), batch norm kept. The
folder holds ``model.safetensors`` (``pytorch_model.bin`` too on request), ``config.json``,
``README.md`` and the port's manifest ``model.json``.

The output rules are ``porting.files``': the folder is staged beside ``--dst`` under a private
temporary name, every file written into it through ``Outputs``, then renamed into place whole,
so ``--dst`` holds all of it or none (a failure, SIGTERM or Ctrl-C removes the staged folder; a
later run removes one a killed process left). An existing ``--dst`` must be new, an empty
folder or a release folder (its files only, with its manifest): one with the same bytes is left
as it is; one of the same weights is refreshed (the parity ``verify`` recorded in its manifest
carried into the new config and card); one of other weights is replaced only with ``--force``;
any other folder is refused, ``--force`` or not.

Where the architecture's timm model does not compute TF's logits (``TimmFacts.computes_tf``),
the distance is measured here, on the photos, against the TF-exact model, and recorded in
``config.json`` and the card (needs torch and timm; ``--no-timm-distance`` skips it, and the
card says it was not measured).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from porting.convert import PortOptions
from porting.errors import PortError, first_line
from porting.files import (Outputs, check_folder_target, place_folder, sha256_file,
                           staged_folder)
from porting.pipeline import Converted, convert_source
from porting.read.archives import DEFAULT_MAX_BYTES
from porting.releases.registry import download_dir, get_release, load_registry
from porting.write.hashed import exists_with_other_contents, stage_weights
from porting.write.hub import (CARD, CONFIG, TORCH_WEIGHTS, WEIGHTS, HubConfig, hub_config,
                               release_card)
from porting.write.manifest import (FileRecord, ManifestError, ParityRecord, read_manifest,
                                    sidecar)

MANIFEST = sidecar(Path(WEIGHTS), ".json").name  # model.json: `verify --weights` updates it
FOLDER_FILES = (WEIGHTS, TORCH_WEIGHTS, CONFIG, CARD, MANIFEST)
# timm's layout: ImageNet-1k's classes without TF-Slim's background, no aux head
HUB_CLASSES = 1000


@dataclass(frozen=True)
class ReleaseFolder:
    folder: Path
    converted: Converted
    config: HubConfig
    files: tuple[FileRecord, ...]  # what the folder holds, in the order written
    state: str                     # "written", "unchanged", "refreshed" or "replaced"


def release_archive(name: str) -> Path:
    """The downloaded archive of release ``name`` (``fetch`` puts it there); PortError if the
    name is no release or the archive is not there."""
    release = get_release(name)
    path = download_dir() / release.archive
    if not path.exists():
        raise PortError(f"{path}: release {name!r} is not downloaded; fetch it first: "
                        f"port-weights fetch {name}")
    return path


def _existing(folder: Path):
    """The manifest of the release folder at ``folder``, None if there is nothing there (or an
    empty folder); PortError for a folder this command did not write."""
    if not folder.is_dir():
        return None
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    if not entries:
        return None
    foreign = [entry.name for entry in entries if entry.name not in FOLDER_FILES
               or not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode)]
    if foreign or not (folder / MANIFEST).is_file():
        what = f"holds {foreign[0]}" if foreign else f"has no {MANIFEST}"
        raise PortError(f"{folder}: refused: not a release folder ({what}); give a new or "
                        "empty folder")
    try:
        return read_manifest(folder / MANIFEST)
    except ManifestError as err:
        raise PortError(f"{folder}: refused: not a release folder ({err.reason} in "
                        f"{MANIFEST})") from err


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(os.listdir(a))
    return names == sorted(os.listdir(b)) and all(
        sha256_file(a / name) == sha256_file(b / name) for name in names)


def measure_timm_distance(spec, state_dict) -> ParityRecord:
    """How far timm's model of ``spec`` (``TimmFacts.model``) is from the TF-exact model with
    ``state_dict`` (numpy), on the photos preprocessed by the architecture's recipe: max |logit
    diff|, its bound, top-1 and top-5 agreement, figures rounded to 3 significant digits (the
    same bytes on every run). Needs torch, timm and the photos (scikit-image)."""
    try:
        import torch
        from models.third_party import timm
        from porting.verify.photos import load_photos

        timm = timm()

        names, images = load_photos(config=spec.eval)
    except (ImportError, RuntimeError) as err:  # torchvision, which timm imports, may fail
        raise PortError(f"measuring timm's {spec.timm.model} needs torch, timm and "
                        f"scikit-image's photos ({first_line(err)}); install "
                        "'tf-porting[torch,tf]' and timm, or pass --no-timm-distance (the "
                        "card then says it was not measured)") from err
    from models.loading import model_for_state_dict
    from porting.verify.parity import compare

    tensors = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    ours = model_for_state_dict(tensors)
    theirs = timm.create_model(spec.timm.model, pretrained=False,
                               num_classes=ours.state_dict()[f"{spec.eval.classifier}.weight"]
                               .shape[0])
    theirs.load_state_dict(tensors, strict=True)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        reference, candidate = ours(batch).numpy(), theirs.eval()(batch).numpy()
    record = ParityRecord.of(compare(candidate, reference),
                             f"tf-porting's TF-exact {spec.model.rpartition(':')[2]}, "
                             f"{len(names)} photos")
    return dataclasses.replace(record, max_abs_diff=float(f"{record.max_abs_diff:.3g}"),
                               tolerance=float(f"{record.tolerance:.3g}"))


def make_release(src: str | Path, dst: str | Path, *, torch_weights: bool = False,
                 ema: bool = False, arch: str | None = None, reader: str = "native",
                 allow_nonfinite: bool = False, max_unpacked_bytes: int = DEFAULT_MAX_BYTES,
                 force: bool = False, timm_distance: bool | None = None) -> ReleaseFolder:
    """Write the release folder ``dst`` of the checkpoint at ``src``; see the module docstring.
    ``timm_distance``: measure timm's distance (default: where timm's model differs)."""
    dst = Path(dst)
    check_folder_target(dst, (src,))  # before any work; again with every file read
    _existing(dst)
    options = PortOptions(num_classes=HUB_CLASSES, aux=False, ema=ema, arch=arch,
                          allow_nonfinite=allow_nonfinite)
    converted = convert_source(src, options, reader, max_unpacked_bytes)
    check_folder_target(dst, converted.inputs)
    existing = _existing(dst)
    spec = converted.conversion.architecture
    state_dict = converted.conversion.state_dict
    if timm_distance is None:
        timm_distance = spec.timm is not None and not spec.timm.computes_tf
    if timm_distance and spec.timm is None:
        raise PortError(f"{spec.name}: no timm model has its keys; nothing to measure "
                        "(leave out --timm-distance)")
    distance = measure_timm_distance(spec, state_dict) if timm_distance else None
    release = load_registry().get(converted.record.release) if converted.record.release \
        else None
    header = converted.safetensors_header()
    with staged_folder(dst) as tmp, Outputs(converted.inputs) as outputs:
        _, written = stage_weights(state_dict, tmp / WEIGHTS, outputs, "safetensors", header)
        files = [FileRecord(name=WEIGHTS, bytes=written.size, sha256=written.sha256)]
        if torch_weights:
            _, bin_written = stage_weights(state_dict, tmp / TORCH_WEIGHTS, outputs, "pth")
            files.append(FileRecord(name=TORCH_WEIGHTS, bytes=bin_written.size,
                                    sha256=bin_written.sha256))
        manifest = converted.manifest(dataclasses.replace(written, path=Path(WEIGHTS)),
                                      "safetensors", header)
        same_weights = existing is not None and existing.output.sha256 == written.sha256
        if same_weights and existing.parity:  # what verify recorded there stays true
            manifest = manifest.with_parity(existing.parity)
        config = hub_config(spec, manifest, release, tuple(files), distance)
        payloads = {MANIFEST: manifest.to_json(), CONFIG: config.to_json(),
                    CARD: release_card(config, dst.name).encode("utf8")}
        for name, payload in payloads.items():
            outputs.add(tmp / name, payload, derived=True)
            files.append(FileRecord(name=name, bytes=len(payload),
                                    sha256=hashlib.sha256(payload).hexdigest()))
        outputs.commit(last=tmp / WEIGHTS)
        if existing is not None and _same_files(tmp, dst):
            state = "unchanged"
        else:
            if existing is not None and not (same_weights or force):
                raise exists_with_other_contents(dst)
            state = "written" if existing is None else "refreshed" if same_weights \
                else "replaced"
            place_folder(tmp, dst, replace=existing is not None)
    return ReleaseFolder(dst, converted, config, tuple(files), state)

