"""TensorFlow's own checkpoint reader (``tf.train.load_checkpoint``): the reference that
``--reader tf`` cross-checks the native reader with."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from porting.errors import PortError, first_line
from porting.reader_api import VariableInfo
from porting.sources import CheckpointSource
from porting.tf_runtime import import_tensorflow


class TFReader:
    kind = "tf"

    def __init__(self, source: CheckpointSource):
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
