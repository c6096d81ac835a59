"""The port, end to end: source -> reader -> name map and transforms -> state dict -> writer.

``src`` may also be a release archive (unpacked into a temporary folder for the duration of
the conversion) or Keras HDF5 weights (``porting.keras_h5``). Every output gets a manifest
beside it, and a model card on request.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from porting.archives import is_archive, unpacked
from porting.convert import Conversion, PortOptions, convert
from porting.manifest import (build_manifest, hash_source_files, model_card, sidecar,
                              source_record, write_json, write_text)
from porting.readers import open_reader
from porting.registry import release_for
from porting.sources import CheckpointSource
from porting.writer import Written, output_format, write_hashed


@dataclass(frozen=True)
class PortResult:
    source: CheckpointSource  # for an archive: its files as they were while unpacked
    archive: Path | None
    variable_count: int
    conversion: Conversion
    written: Written
    manifest: Path
    card: Path | None


def port_checkpoint(src: str | Path, dst: str | Path, options: PortOptions = PortOptions(),
                    reader: str = "native", force: bool = False, fmt: str | None = None,
                    card: bool = False) -> PortResult:
    """Convert the checkpoint at ``src`` and write ``dst``'s hashed sibling; see the CLI."""
    fmt = output_format(dst, fmt)
    archive = Path(src) if is_archive(src) else None
    with (unpacked(archive) if archive else contextlib.nullcontext(src)) as checkpoint_src, \
            ThreadPoolExecutor(max_workers=1) as hasher:
        checkpoint = open_reader(checkpoint_src, reader)
        # Hashing the source for the manifest runs beside the conversion (hashlib and file
        # reads release the GIL), taking it off the wall time of a port.
        hashed_files = hasher.submit(hash_source_files, checkpoint.source, archive)
        conversion = convert(checkpoint, options)
        source_name = (archive or checkpoint.source.prefix).name  # as published, not as spelled
        release = release_for(source_name)
        source = source_record(src, checkpoint.source, hashed_files.result(), release,
                               conversion.source_classes)
    header = {"format": "pt", "model": "inception_v3 (models.inception_v3, TF-Slim exact)",
              "source": source_name,
              "options": options.describe()} \
        if fmt == "safetensors" else None
    written = write_hashed(conversion.state_dict, dst, force=force, fmt=fmt, metadata=header)

    mapped = {checkpoint.stored_name(name): target for name, target in conversion.mapped.items()}
    options_record = {"num_classes": options.num_classes, "aux": options.aux,
                      "fold_bn": options.fold_bn, "ema": options.ema, "reader": checkpoint.kind}
    manifest = build_manifest(source, written.path, fmt, written.sha256, header, options_record,
                              len(checkpoint.variables()), mapped, conversion.skipped)
    manifest_path = sidecar(written.path, ".json")
    write_json(manifest_path, manifest)
    card_path = sidecar(written.path, ".md") if card else None
    if card_path:
        write_text(card_path, model_card(manifest))
    return PortResult(checkpoint.source, archive, len(checkpoint.variables()), conversion,
                      written, manifest_path, card_path)
