"""What every checkpoint reader offers: list variables cheaply, read one on demand.

Readers: ``porting.read.native`` (TF checkpoints, no TensorFlow), ``porting.read.tf``
(TensorFlow's own, the reference) and ``porting.read.keras_h5`` (Keras HDF5 weights, presented under
TF-Slim's variable names). ``porting.read.open.open_source`` picks one for a ``--src``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from porting.read.sources import CheckpointSource


@dataclass(frozen=True)
class VariableInfo:
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no int64 overflow


class CheckpointReader(Protocol):
    source: CheckpointSource
    kind: str  # which implementation read the file, as the manifest records it

    def variables(self) -> Mapping[str, VariableInfo]:
        """name -> dtype and shape, read from the index only."""

    def read(self, name: str) -> np.ndarray:
        """The full value of one variable; raises PortError naming the file on bad data."""

    def stored_name(self, name: str) -> str:
        """What the file itself calls variable ``name`` (readers may present other names)."""
