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
# Each is found as a guard that takes only the arguments numpy's and Python's own pickles pass:
# memory is only ever allocated for bytes the file holds.
MAX_DEPTH = 16  # containers nested in a zoo file: two (node -> parameter -> array)
PLAIN = (str, bytes, int, float, bool, type(None))


class Refused(pickle.UnpicklingError):
    """What the pickle asked for, refused unrun (``str``: what it would call, in words)."""


class _NdarrayClass:
    """``numpy.ndarray`` as a pickle names it: an argument of ``_reconstruct`` only. Called
    itself it would allocate an array of any shape that no byte of the file backs."""

    def __call__(self, *args, **kwargs):
        raise Refused("numpy.ndarray (an array no byte of the file holds)")


NDARRAY = _NdarrayClass()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as numpy's pickles call it: an empty ndarray, which the
    pickle's BUILD then fills from its own bytes (numpy checks their length)."""
    if subtype is not NDARRAY or not isinstance(shape, tuple) or len(shape) != 1 \
            or shape[0] != 0 or not isinstance(dtype, bytes):
        raise Refused(f"numpy's _reconstruct on {shape!r} (an array no byte of the file "
                      "holds)")
    return np._core.multiarray._reconstruct(np.ndarray, shape, dtype)


def _latin1(text, encoding, *errors):
    """``_codecs.encode`` as Python's protocol-2 pickles spell bytes: latin-1, one byte per
    character; any other codec (hex, nested) could grow the bytes without bound."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors:
        raise Refused(f"_codecs.encode to {encoding!r} (bytes are pickled as latin-1)")
    return codecs.encode(text, encoding)


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class ArraysOnly(pickle.Unpickler):
    """An unpickler that finds only ``ALLOWED`` globals and no persistent ids."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}, which builds no array") from None

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
        raise PortError(f"{path}: refused: its pickle would call {err}; nothing was run") \
            from err
    except Exception as err:  # a damaged pickle: numpy and pickle raise many kinds
        raise PortError(f"{path}: unreadable pickle ({type(err).__name__})") from err
    if not (isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ()):
        raise PortError(f"{path}: its pickle holds {type(loaded).__name__}, not an array")
    content = loaded.item()
    if not isinstance(content, dict):
        raise PortError(f"{path}: holds {type(content).__name__}, not a dict of arrays")
    check_tree(path, content)
    _check_plain(path, content)
    return content


def check_tree(path, value) -> None:
    """PortError unless the containers (dicts, lists, tuples) of an unpickled ``value`` form a
    tree at most ``MAX_DEPTH`` deep: a pickle's memo can put one container in many places, so
    that walking it as a tree (every reader of nested weights does) visits exponentially many
    nodes from a few bytes. Walked once, so its cost is the file's size."""
    seen, todo = set(), [(value, 0)]
    while todo:
        value, depth = todo.pop()
        if not isinstance(value, (dict, list, tuple)):
            continue
        if depth > MAX_DEPTH:
            raise PortError(f"{path}: nested more than {MAX_DEPTH} deep")
        if id(value) in seen:
            raise PortError(f"{path}: refused: holds one {type(value).__name__} in several "
                            "places (a pickle's shared reference; weights files hold a tree)")
        seen.add(id(value))
        items = value.values() if isinstance(value, dict) else value
        todo.extend((item, depth + 1) for item in items)


def _check_plain(path, value) -> None:
    """PortError unless ``value`` (a tree: ``check_tree``) is made of dicts, lists, tuples,
    plain values and numeric arrays only."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, bytes)):
                raise PortError(f"{path}: a key of type {type(key).__name__}")
            _check_plain(path, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(path, item)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise PortError(f"{path}: an array of {value.dtype}, not numbers")
    elif not isinstance(value, (*PLAIN, np.generic)):
        raise PortError(f"{path}: holds a {type(value).__name__}")
