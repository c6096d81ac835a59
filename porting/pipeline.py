"""The port, end to end: source -> reader -> name map and transforms -> state dict -> writer.

Architecture-free: the architecture comes from the checkpoint's variables (or ``--arch``), and
everything it decides is in its ``models/<name>/spec.py``. Every output gets a manifest beside
it, and a model card on request. Nothing here imports torch or TensorFlow (unless
``--reader tf`` asks for TensorFlow's reader).
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models.spec import Architecture
from porting.errors import PortError
from porting.read.api import CheckpointReader
from porting.read.archives import DEFAULT_MAX_BYTES
from porting.convert import Conversion, PortOptions, convert
from porting.files import Outputs
from porting.write.card import model_card
from porting.write.manifest import (Manifest, OutputRecord, PortOptionsRecord, SourceRecord,
                                    ToolRecord, VariablesRecord, hash_source_files, sidecar,
                                    source_record, stage_sidecar, tool_version)
from porting.read.open import open_bundle, open_source
from porting.releases.registry import release_for
from porting.read.sources import CheckpointSource
from porting.write.hashed import FORMATS, Written, output_format, write_hashed


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
    converted = convert_source(src, options, reader, max_unpacked_bytes, step, pins)
    # All outputs are staged, then renamed into place together, the weights last.
    step(PORT_STAGES[2])
    with Outputs(converted.inputs) as outputs:
        result = _stage(converted, dst, fmt, outputs, force, card)
        outputs.commit(last=result.written.path)
    return result


@dataclass(frozen=True)
class BundleEntry:
    """One checkpoint of a bundle, as ported (its state dict already written and let go)."""
    source: CheckpointSource  # for an archive: its files as they were while unpacked
    architecture: Architecture
    root_scope: str | None    # the renamed root scope, if the checkpoint is a renamed copy
    options: PortOptions      # as applied
    written: Written
    manifest: Path
    card: Path | None


def bundle_output_name(source: CheckpointSource) -> str:
    """The output name of a bundle's checkpoint: its prefix's name, less a ``.ckpt`` suffix
    (``adv_inception_v3_rename.ckpt`` -> ``adv_inception_v3_rename``)."""
    return source.prefix.name.removesuffix(".ckpt") or source.prefix.name


def port_bundle(src: str | Path, dst_dir: str | Path, options: PortOptions = PortOptions(),
                reader: str = "native", force: bool = False, fmt: str = "pth",
                card: bool = False, max_unpacked_bytes: int = DEFAULT_MAX_BYTES,
                progress: Callable[[int, int, CheckpointSource], None] | None = None
                ) -> list[BundleEntry]:
    """Port every checkpoint of the folder or archive ``src`` (``open_bundle``) into
    ``dst_dir``, each to ``<bundle_output_name>-<sha256[:8]>.pth`` with its manifest (and card):
    all of them or, on any error, none. ``progress(i, count, checkpoint)`` is called before
    each one."""
    dst_dir = Path(dst_dir)
    if dst_dir.exists() and not dst_dir.is_dir():
        raise PortError(f"{dst_dir}: --all writes into a folder; this is not one")
    suffix = FORMATS[fmt]
    with open_bundle(src, max_unpacked_bytes) as bundle:
        names = [bundle_output_name(source) for source in bundle.checkpoints]
        twice = sorted(name for name, count in Counter(names).items() if count > 1)
        if twice:
            raise PortError(f"{src}: several checkpoints would be written as {twice[0]}"
                            f"{suffix}; port them one at a time")
        inputs = (*(f for source in bundle.checkpoints for f in source.files),
                  *([bundle.archive] if bundle.archive else []))
        entries = []
        with Outputs(inputs) as outputs:
            for i, (source, name) in enumerate(zip(bundle.checkpoints, names)):
                if progress:
                    progress(i, len(names), source)
                checkpoint = bundle.reader(source, reader)
                try:
                    converted = _convert(checkpoint, src, bundle.archive,
                                         source.prefix.name, options)
                finally:
                    if hasattr(checkpoint, "close"):
                        checkpoint.close()
                result = _stage(converted, dst_dir / f"{name}{suffix}", fmt, outputs, force,
                                card)
                conversion = result.conversion
                entries.append(BundleEntry(result.source, conversion.architecture,
                                           conversion.renamed_root, conversion.options,
                                           result.written, result.manifest, result.card))
                del converted, result, conversion  # the state dict is written: let it go
            outputs.commit(last=[entry.written.path for entry in entries])
    return entries


@dataclass(frozen=True)
class Converted:
    """A source read and converted, with what its manifest records (``convert_source``)."""
    source: CheckpointSource  # for an archive: its files as they were while unpacked
    archive: Path | None
    published_name: str       # the archive's or checkpoint's name (``OpenedSource``)
    variable_count: int
    conversion: Conversion
    record: SourceRecord
    mapped: dict[str, str]    # stored variable name -> target
    inputs: tuple[Path, ...]  # the files read: never an output's name
    reader: str               # the reader's kind, as recorded

    @property
    def options_record(self) -> PortOptionsRecord:
        spec, options = self.conversion.architecture, self.conversion.options
        return PortOptionsRecord(
            architecture=spec.name, num_classes=options.num_classes, aux=options.aux,
            fold_bn=options.fold_bn, ema=options.ema, reader=self.reader)

    def safetensors_header(self) -> dict[str, str]:
        """What a ``.safetensors`` file of it carries in its header."""
        spec = self.conversion.architecture
        return {"format": "pt", "model": f"{spec.name} ({spec.package}, TF-Slim exact)",
                "source": self.published_name, "options": self.conversion.options.describe()}

    def manifest(self, written: Written, fmt: str, header: dict[str, str] | None) -> Manifest:
        """The manifest of ``written``, the converted state dict in ``fmt``."""
        return Manifest(
            tool=ToolRecord(version=tool_version()), source=self.record,
            output=OutputRecord(file=written.path.name, format=fmt, bytes=written.size,
                                sha256=written.sha256, header_metadata=header),
            options=self.options_record,
            variables=VariablesRecord.of(self.variable_count, self.mapped,
                                         self.conversion.skipped))


def convert_source(src: str | Path, options: PortOptions = PortOptions(), reader: str = "native",
                   max_unpacked_bytes: int = DEFAULT_MAX_BYTES,
                   progress: Callable[[str], None] | None = None,
                   pins: Path | None = None) -> Converted:
    """Read and convert the checkpoint at ``src`` (any source ``port`` takes); see the CLI.
    ``progress`` and ``pins`` as ``port_checkpoint`` takes them."""
    step = progress or (lambda stage: None)
    step(PORT_STAGES[0])
    with open_source(src, reader, options.arch, max_unpacked_bytes) as opened:
        step(PORT_STAGES[1])
        return _convert(opened.reader, src, opened.archive, opened.published_name, options,
                        pins)


def _convert(checkpoint: CheckpointReader, given, archive: Path | None, published_name: str,
             options: PortOptions, pins: Path | None = None) -> Converted:
    with ThreadPoolExecutor(max_workers=1) as hasher:
        # Hashing the source for the manifest runs beside the conversion (hashlib and file
        # reads release the GIL), taking it off the wall time of a port.
        hashed_files = hasher.submit(hash_source_files, checkpoint.source, archive)
        conversion = convert(checkpoint, options)
        release = release_for(published_name, conversion.architecture.name)
        source = source_record(given, checkpoint.source, hashed_files.result(), release,
                               conversion.source_classes, conversion.renamed_root, pins)
    mapped = {checkpoint.stored_name(name): target for name, target in conversion.mapped.items()}
    inputs = (*checkpoint.source.files, *([archive] if archive else []))
    return Converted(checkpoint.source, archive, published_name, len(checkpoint.variables()),
                     conversion, source, mapped, inputs, checkpoint.kind)


def _stage(converted: Converted, dst, fmt: str, outputs: Outputs, force: bool,
           card: bool) -> PortResult:
    """Stage the weights of ``converted`` as ``dst``'s hashed sibling, with its manifest (and
    card), in ``outputs``; the caller commits."""
    header = converted.safetensors_header() if fmt == "safetensors" else None
    written = write_hashed(converted.conversion.state_dict, dst, outputs, force=force, fmt=fmt,
                           metadata=header)
    manifest = converted.manifest(written, fmt, header)
    manifest_path = sidecar(written.path, ".json")
    manifest = stage_sidecar(outputs, manifest_path, manifest, written.sha256, force)
    card_path = sidecar(written.path, ".md") if card else None
    if card_path:
        stage_sidecar(outputs, card_path, model_card(manifest), written.sha256, force)
    return PortResult(converted.source, converted.archive, converted.variable_count,
                      converted.conversion, written, manifest_path, card_path)
