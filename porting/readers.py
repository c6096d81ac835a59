"""Checkpoint readers behind one small interface: list variables cheaply, read one on demand.

``open_reader(src, kind)`` resolves ``src`` (see ``porting.sources``) and returns a reader:
"native" (``porting.native_reader``, no TensorFlow) or "tf" (TensorFlow's own, the reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from porting.errors import PortError, first_line
from porting.sources import CheckpointSource, resolve_source


@dataclass(frozen=True)
class VariableInfo:
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class CheckpointReader(Protocol):
    source: CheckpointSource
    kind: str  # which implementation read the file, as the manifest records it

    def variables(self) -> Mapping[str, VariableInfo]:
        """name -> dtype and shape, read from the index only."""

    def read(self, name: str) -> np.ndarray:
        """The full value of one variable; raises PortError naming the file on bad data."""

    def stored_name(self, name: str) -> str:
        """What the file itself calls variable ``name`` (readers may present other names)."""


class TFReader:
    """TensorFlow's own reader (``tf.train.load_checkpoint``): the reference implementation."""

    kind = "tf"

    def __init__(self, source: CheckpointSource):
        from porting.tfslim import import_tensorflow  # only this reader needs TensorFlow

        tf = import_tensorflow()

        self.source = source
        self._errors = tf.errors.OpError
        try:
            self._reader = tf.train.load_checkpoint(str(source.prefix))
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except self._errors as err:
            raise PortError(f"{source.files[0]}: unreadable checkpoint index: {first_line(err)}") from err
        self._variables = {
            name: VariableInfo(np.dtype(dtypes[name].as_numpy_dtype), tuple(int(d) for d in shape))
            for name, shape in sorted(shapes.items())
        }

    def variables(self) -> Mapping[str, VariableInfo]:
        return self._variables

    def read(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._reader.get_tensor(name))
        except self._errors as err:
            raise PortError(
                f"{self.source.prefix}.data-*: cannot read {name}: {first_line(err)}") from err

    def stored_name(self, name: str) -> str:
        return name


def _native_reader(source: CheckpointSource) -> CheckpointReader:
    from porting.native_reader import NativeReader  # imported late: it builds on VariableInfo

    return NativeReader(source)


READERS = {"native": _native_reader, "tf": TFReader}


def open_reader(src, kind: str = "native") -> CheckpointReader:
    """A reader for ``src``; Keras ``.h5`` weights always get the (h5py) Keras reader."""
    from porting.keras_h5 import KerasReader, is_keras_h5  # it builds on VariableInfo

    if not isinstance(src, CheckpointSource) and is_keras_h5(src):
        return KerasReader(src)
    source = src if isinstance(src, CheckpointSource) else resolve_source(src)
    return READERS[kind](source)
