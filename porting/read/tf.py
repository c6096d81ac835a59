"""TensorFlow's own checkpoint reader (``tf.train.load_checkpoint``): the reference that
``--reader tf`` cross-checks the native reader with.

TensorFlow's reader is not safe on hostile files: on some malformed but CRC-valid indexes, and
on any read after a truncated data shard, it fails a C++ CHECK and aborts the whole process
(SIGABRT, no Python exception). So the native reader vets everything first: the index (every
block's CRC, every entry parsed) when the checkpoint opens, and each tensor's bytes (bounds and
CRC) before TensorFlow reads them; whatever it refuses is its one-line PortError, and
TensorFlow never sees it. Every exception TensorFlow itself raises becomes a PortError too;
after one other than a clean refusal (an unsupported dtype, a missing tensor) the TF reader is
not used again: a failed read leaves TensorFlow's BundleReader in a state where the next lookup
aborts the process.

TensorFlow globs the prefix it is given (``[`` is a character class), and cannot be told to
take it literally: its V2 reader globs ``PREFIX.index`` to tell V2 from V1, then opens the
files by their literal names, so no escaping satisfies both. A prefix with glob
metacharacters is therefore given to TensorFlow as a temporary folder of symbolic links with
plain names (nothing is copied), removed by ``close``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from porting.errors import PortError, first_line
from porting.read.native import NativeReader
from porting.read.api import VariableInfo
from porting.read.sources import V2, CheckpointSource
from models.tf_runtime import import_tensorflow

GLOB_METACHARACTERS = frozenset("[]*?\\{}")
_LINK_PREFIX = "ckpt"


def needs_link_farm(prefix) -> bool:
    """Whether TensorFlow would glob ``prefix`` into something else than the file itself."""
    return any(c in GLOB_METACHARACTERS for c in str(prefix))


def link_farm(source: CheckpointSource) -> tuple[Path, Path]:
    """(folder, prefix TensorFlow can take): symbolic links with plain names to every file of
    ``source``, in a fresh temporary folder the caller removes."""
    folder = Path(tempfile.mkdtemp(prefix="tf-ckpt-links-"))
    try:
        if needs_link_farm(folder):
            raise PortError(f"{folder}: the temporary folder's path has glob metacharacters "
                            "TensorFlow would misread; set TMPDIR to a plain path")
        stem = source.prefix.name
        for path in source.files:
            if not path.name.startswith(stem):
                raise PortError(f"{path}: not named after its checkpoint prefix {stem}")
            os.symlink(os.path.abspath(path), folder / (_LINK_PREFIX + path.name[len(stem):]))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, folder / _LINK_PREFIX


@contextlib.contextmanager
def tf_readable_prefix(source: CheckpointSource) -> Iterator[str]:
    """A prefix string ``tf.train.load_checkpoint`` (or a Saver) reads as ``source``'s files,
    valid inside the ``with`` block: the prefix itself, or a link farm's for a prefix with
    glob metacharacters. For the TF oracles (``verify --src``), which take a prefix."""
    if not needs_link_farm(source.prefix):
        yield str(source.prefix)
        return
    folder, linked = link_farm(source)
    try:
        yield str(linked)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TFReader:
    kind = "tf"

    def __init__(self, source: CheckpointSource):
        self.source = source
        self._where = f"{source.prefix}.data-*" if source.format == V2 else str(source.prefix)
        self._native = NativeReader(source)  # PortError on any malformed block or entry
        self._native.check_index()
        tf = import_tensorflow()
        # Refusals that leave TF's reader usable; after any other failure it is not used again.
        self._clean_refusals = (tf.errors.UnimplementedError, tf.errors.NotFoundError)
        self._folder: Path | None = None
        self._broken: str | None = None  # set once TensorFlow has failed: never call it again
        tf_prefix = str(source.prefix)
        if needs_link_farm(source.prefix):
            self._folder, linked = link_farm(source)
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
            tf_prefix = str(linked)
        self._tf_prefix = tf_prefix
        try:
            try:
                self._reader = tf.train.load_checkpoint(tf_prefix)
                shapes = self._reader.get_variable_to_shape_map()
                dtypes = self._reader.get_variable_to_dtype_map()
                self._variables = {
                    name: VariableInfo(np.dtype(dtypes[name].as_numpy_dtype),
                                       tuple(int(d) for d in shape))
                    for name, shape in sorted(shapes.items())}
            except MemoryError:
                raise PortError(f"{source.files[0]}: too large for TensorFlow's reader") from None
            except Exception as err:  # OpError, and IndexError/ValueError/... from its bindings
                raise PortError(f"{source.files[0]}: unreadable checkpoint index: "
                                f"{self._message(err)}") from err
        except BaseException:
            self.close()
            raise

    def _message(self, err: Exception) -> str:
        """TensorFlow's first line, naming the real prefix rather than the link farm's."""
        text = first_line(err)
        return text.replace(self._tf_prefix, str(self.source.prefix)) if self._folder else text

    def variables(self) -> Mapping[str, VariableInfo]:
        return self._variables

    def read(self, name: str) -> np.ndarray:
        if name not in self._variables:
            raise PortError(f"{self.source.files[0]}: no variable {name}")
        if self._broken is not None:
            raise PortError(f"{self._where}: cannot read {name}: TensorFlow's "
                            f"reader failed earlier ({self._broken})")
        if name in self._native.variables():
            self._native.read(name)  # bounds and CRC: PortError naming file and tensor, before TF
        try:
            return np.asarray(self._reader.get_tensor(name))
        except MemoryError:
            raise PortError(f"{self._where}: {name}: too large to read into "
                            "memory") from None
        except Exception as err:  # OpError, IndexError (OUT_OF_RANGE), ValueError, ...
            if not isinstance(err, self._clean_refusals):
                self._broken = f"{name}: {self._message(err)}"
            raise PortError(f"{self._where}: cannot read {name}: "
                            f"{self._message(err)}") from err

    def stored_name(self, name: str) -> str:
        return name

    def close(self) -> None:
        """Remove the link farm, if any (TensorFlow's reader cannot read after this)."""
        if self._folder is not None:
            self._cleanup()
            self._folder = None
