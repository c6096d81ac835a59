"""Opening ``--src``: the one place where what a user passed becomes a checkpoint reader.

``open_source(src, reader, arch)`` takes a release archive (``porting.read.archives``: checked, then
unpacked into a temporary folder for as long as the reader is used), Keras HDF5 weights
(``porting.read.keras_h5``) or a TF checkpoint in any spelling ``porting.read.sources`` resolves (prefix,
``.index``, ``.data-*``, V1 file, folder), read by the native reader (no TensorFlow) or by
TensorFlow's own (``--reader tf``). ``open_bundle(src)`` takes a folder or archive holding
several checkpoints (``port --all``) and finds each.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from porting.read.archives import DEFAULT_MAX_BYTES, is_archive, unpacked
from porting.errors import PortError
from porting.read.keras_h5 import KerasReader, is_keras_h5
from porting.read.native import NativeReader
from porting.read.api import CheckpointReader
from porting.read.sources import CheckpointSource, checkpoints_in, holds, resolve_source


def _tf_reader(source) -> CheckpointReader:
    from porting.read.tf import TFReader  # imports TensorFlow

    return TFReader(source)


READERS = {"native": NativeReader, "tf": _tf_reader}


@dataclass(frozen=True)
class OpenedSource:
    given: str                 # --src as the user wrote it
    reader: CheckpointReader   # for an archive: over its unpacked files, while open
    archive: Path | None       # the release archive, when --src was one

    @property
    def published_name(self) -> str:
        """The source's name as published (archive or checkpoint), not as spelled."""
        return (self.archive or self.reader.source.prefix).name


def open_reader(path, reader: str = "native", arch: str | None = None) -> CheckpointReader:
    """A reader for a checkpoint (any spelling) or Keras weights; archives need ``open_source``.
    ``arch`` forces the architecture of Keras weights (checkpoints name theirs in their
    variables)."""
    if is_keras_h5(path):
        if reader != "native":
            raise PortError(f"{path}: --reader {reader} reads TensorFlow checkpoints; Keras HDF5 "
                            "weights are read with h5py (leave --reader out)")
        return KerasReader(path, arch)
    return READERS[reader](resolve_source(path))


@contextlib.contextmanager
def open_source(src, reader: str = "native", arch: str | None = None,
                max_unpacked_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[OpenedSource]:
    """A reader for ``src``, valid inside the ``with`` block; PortError naming the file if
    ``src`` is none of the accepted sources. An archive may unpack to ``max_unpacked_bytes``."""
    archive = Path(src) if is_archive(src) else None
    with (unpacked(archive, max_unpacked_bytes) if archive
          else contextlib.nullcontext(src)) as path:
        if archive and len(found := checkpoints_in(path)) != 1:  # name the archive, not the
            raise PortError(f"{archive}: archive holds {holds(found)}")  # folder it unpacked to
        opened = open_reader(path, reader, arch)
        try:
            yield OpenedSource(str(src), opened, archive)
        finally:
            if hasattr(opened, "close"):
                opened.close()


@dataclass(frozen=True)
class OpenedBundle:
    given: str                             # --src as the user wrote it
    archive: Path | None                   # the archive, when --src was one
    checkpoints: tuple[CheckpointSource, ...]  # for an archive: its unpacked files, while open

    def reader(self, checkpoint: CheckpointSource, reader: str = "native") -> CheckpointReader:
        return READERS[reader](checkpoint)


@contextlib.contextmanager
def open_bundle(src, max_unpacked_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[OpenedBundle]:
    """The checkpoints of a folder or archive (``checkpoints_in``; an archive unpacked under
    its limits for the ``with`` block); PortError naming ``src`` if it is neither or holds
    none."""
    archive = Path(src) if is_archive(src) else None
    if archive is None and not Path(src).is_dir():
        raise PortError(f"{src}: not a folder or archive of checkpoints (--all ports each "
                        "checkpoint of one; leave it out to port a single checkpoint)")
    with (unpacked(archive, max_unpacked_bytes) if archive
          else contextlib.nullcontext(Path(src))) as folder:
        try:
            found = checkpoints_in(folder)
        except OSError as err:
            raise PortError(f"{err.filename or src}: cannot read: {err.strerror or err}") from None
        if not found:
            raise PortError(f"{src}: {'archive' if archive else 'folder'} holds {holds(found)}")
        yield OpenedBundle(str(src), archive, tuple(found))
