"""The converter zoo's ``.npy`` files: a 0-d object array holding a dict of TF node names ->
{parameter: array}, which ``np.load(allow_pickle=True)`` would unpickle, running whatever the
pickle asks for. Here the pickle is read by an unpickler that builds numpy arrays and plain
containers only; any other global it names is refused before anything is called.
"""
from __future__ import annotations

import codecs
import io
import pickle

import numpy as np
from numpy.lib import format as npy_format

from porting.errors import PortError
from porting.files import read_input

MAX_BYTES = 4 << 30  # a zoo file is the checkpoint's size (the largest, IRv2's, ~230 MB)
# What numpy's own pickles of arrays name (numpy 1.x spells its core "numpy.core"), and the one
# function Python 2 era pickles use to spell bytes. Nothing else is ever looked up.
_reconstruct = np._core.multiarray._reconstruct
_scalar = np._core.multiarray.scalar
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
PLAIN = (str, bytes, int, float, bool, type(None))


class Refused(pickle.UnpicklingError):
    pass


class ArraysOnly(pickle.Unpickler):
    """An unpickler that finds only ``ALLOWED`` globals and no persistent ids."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise Refused("a persistent id")


def load_pickled_dict(path) -> dict:
    """The dict a zoo ``.npy`` file holds, its arrays and plain values only; PortError naming
    the file for anything else (a pickle naming any other callable is refused unrun)."""
    data = read_input(path, MAX_BYTES, "pickled .npy file")
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        header = (npy_format.read_array_header_1_0 if version == (1, 0)
                  else npy_format.read_array_header_2_0)
        shape, _, dtype = header(stream)
    except (ValueError, EOFError) as err:
        raise PortError(f"{path}: not a .npy file ({err})") from err
    if dtype != np.dtype(object) or shape != ():
        raise PortError(f"{path}: a .npy array of {dtype} {list(shape)}, not a pickled dict of "
                        "arrays (the converter zoo's layout)")
    try:
        loaded = ArraysOnly(stream, encoding="latin1").load()
    except Refused as err:
        raise PortError(f"{path}: refused: its pickle would call {err}, which builds no array; "
                        "nothing was run") from err
    except Exception as err:  # a damaged pickle: numpy and pickle raise many kinds
        raise PortError(f"{path}: unreadable pickle ({type(err).__name__})") from err
    if not (isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ()):
        raise PortError(f"{path}: its pickle holds {type(loaded).__name__}, not an array")
    content = loaded.item()
    if not isinstance(content, dict):
        raise PortError(f"{path}: holds {type(content).__name__}, not a dict of arrays")
    _check_plain(path, content)
    return content


def _check_plain(path, value, depth: int = 0) -> None:
    """PortError unless ``value`` is made of dicts, lists, tuples, plain values and numeric
    arrays only."""
    if depth > 16:
        raise PortError(f"{path}: nested more than 16 deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, bytes)):
                raise PortError(f"{path}: a key of type {type(key).__name__}")
            _check_plain(path, item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(path, item, depth + 1)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise PortError(f"{path}: an array of {value.dtype}, not numbers")
    elif not isinstance(value, (*PLAIN, np.generic)):
        raise PortError(f"{path}: holds a {type(value).__name__}")
