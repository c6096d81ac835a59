"""The port, end to end: source -> reader -> name map and transforms -> state dict -> writer.

Architecture-free: the architecture comes from the checkpoint's variables (or ``--arch``), and
everything it decides is in its ``models/<name>/spec.py``. Every output gets a manifest beside
it, and a model card on request. Nothing here imports torch or TensorFlow (unless
``--reader tf`` asks for TensorFlow's reader).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from porting.read.archives import DEFAULT_MAX_BYTES
from porting.convert import Conversion, PortOptions, convert
from porting.files import Outputs
from porting.write.card import model_card
from porting.write.manifest import (Manifest, OutputRecord, PortOptionsRecord, ToolRecord,
                                    VariablesRecord, hash_source_files, sidecar, source_record,
                                    stage_sidecar, tool_version)
from porting.read.open import open_source
from porting.releases.registry import release_for
from porting.read.sources import CheckpointSource
from porting.write.hashed import Written, output_format, write_hashed


# What a port does, in order (``port_checkpoint``'s ``progress``)
PORT_STAGES = ("reading", "converting", "writing")


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
                    card: bool = False, max_unpacked_bytes: int = DEFAULT_MAX_BYTES,
                    progress: Callable[[str], None] | None = None,
                    pins: Path | None = None) -> PortResult:
    """Convert the checkpoint at ``src`` and write ``dst``'s hashed sibling; see the CLI.

    ``progress(stage)`` is called as each of ``PORT_STAGES`` begins. ``pins``: the folder of
    the ``releases.lock`` whose pins vouch for a release archive (default: ``fetch``'s,
    ``registry.download_dir()``)."""
    step = progress or (lambda stage: None)
    fmt = output_format(dst, fmt)
    step(PORT_STAGES[0])
    with open_source(src, reader, options.arch, max_unpacked_bytes) as opened, \
            ThreadPoolExecutor(max_workers=1) as hasher:
        step(PORT_STAGES[1])
        checkpoint = opened.reader
        # Hashing the source for the manifest runs beside the conversion (hashlib and file
        # reads release the GIL), taking it off the wall time of a port.
        hashed_files = hasher.submit(hash_source_files, checkpoint.source, opened.archive)
        conversion = convert(checkpoint, options)
        options = conversion.options
        release = release_for(opened.published_name, conversion.architecture.name)
        source = source_record(src, checkpoint.source, hashed_files.result(), release,
                               conversion.source_classes, pins)
        variables = checkpoint.variables()
        mapped = {checkpoint.stored_name(name): target
                  for name, target in conversion.mapped.items()}
        inputs = (*checkpoint.source.files, *([opened.archive] if opened.archive else []))
    spec = conversion.architecture
    header = {"format": "pt", "model": f"{spec.name} ({spec.package}, TF-Slim exact)",
              "source": opened.published_name, "options": options.describe()} \
        if fmt == "safetensors" else None
    options_record = PortOptionsRecord(
        architecture=spec.name, num_classes=options.num_classes, aux=options.aux,
        fold_bn=options.fold_bn, ema=options.ema, reader=checkpoint.kind)
    # All outputs are staged, then renamed into place together, the weights last.
    step(PORT_STAGES[2])
    with Outputs(inputs) as outputs:
        written = write_hashed(conversion.state_dict, dst, outputs, force=force, fmt=fmt,
                               metadata=header)
        manifest = Manifest(
            tool=ToolRecord(version=tool_version()), source=source,
            output=OutputRecord(file=written.path.name, format=fmt, bytes=written.size,
                                sha256=written.sha256, header_metadata=header),
            options=options_record,
            variables=VariablesRecord.of(len(variables), mapped, conversion.skipped))
        manifest_path = sidecar(written.path, ".json")
        manifest = stage_sidecar(outputs, manifest_path, manifest, written.sha256, force)
        card_path = sidecar(written.path, ".md") if card else None
        if card_path:
            stage_sidecar(outputs, card_path, model_card(manifest), written.sha256, force)
        outputs.commit(last=written.path)
    return PortResult(checkpoint.source, opened.archive, len(variables), conversion,
                      written, manifest_path, card_path)
