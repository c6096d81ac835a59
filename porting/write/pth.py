"""torch.save's file format, written from numpy arrays without importing torch.

Importing torch costs a port more time than reading, converting and writing the weights put
together, so the converter writes the format itself. A ``.pth`` (torch's zipfile serialization)
is an uncompressed zip archive whose records sit under ``archive/``, in this order:

  data.pkl                  pickle, protocol 2, of an ``OrderedDict`` of tensors; each tensor is
                            ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
                            OrderedDict())``, each storage the persistent id ``("storage",
                            torch.<Type>Storage, key, "cpu", numel)``, keys "0", "1", ... in
                            pickling order
  .format_version           "1"
  .storage_alignment        "64"
  byteorder                 "little"
  data/<key>                the storage's raw little-endian bytes, one record per tensor
  version                   "3\\n"
  .data/serialization_id    40 decimal digits

As torch writes it (PyTorchStreamWriter over miniz): the data of every record starts at a
multiple of 64 bytes, padded by an extra field "FB" of 'Z's in its local header; local headers
set flags 0x0808 (sizes in a data descriptor after the data; UTF-8 names) and zero times; the
archive ends with a zip64 end-of-central-directory record and locator, then the classic one.

The file is byte for byte what ``torch.save`` (torch 2.13, as pinned) writes for the same
state dict, except for the first 20 digits of the serialization id and hence that record's
CRC-32 (in its data descriptor and its central directory entry): tests/test_pth.py checks it.
torch derives those digits from libstdc++ ``std::hash`` values of the record names, combined in
``unordered_set`` iteration order; ours are a sha256 of the record names. The last 20 digits,
the records' CRC-32s combined, are torch's. No reader checks the id. Files of 4 GiB or more,
where torch switches to zip64 headers, are refused.
"""
from __future__ import annotations

import hashlib
import math
import struct
import zlib
from typing import BinaryIO, Mapping

import numpy as np

ALIGNMENT = 64
CHUNK = 1 << 20  # bytes of a record's data checksummed and written at a time
FILE_FORMAT_VERSION = 3  # caffe2::serialize::kMinProducedFileFormatVersion: "version" record
STORAGE_TYPES = {np.dtype("<f4"): "FloatStorage", np.dtype("<f8"): "DoubleStorage",
                 np.dtype("<i8"): "LongStorage"}
_U32_MAX = 0xFFFFFFFF
_U64 = (1 << 64) - 1


class _Pickler:
    """The protocol-2 opcodes Python's pickler emits for a state dict of tensors, memo and all:
    an object is memoized (PUT) when first written and fetched (GET) when it recurs. The only
    recurring objects here are the globals and the strings "storage" and "cpu"."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self._memo_size = 0
        self._shared: dict[tuple, int] = {}  # recurring object -> its memo index

    def _put(self) -> int:
        index, self._memo_size = self._memo_size, self._memo_size + 1
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)
        return index

    def _get_shared(self, key: tuple) -> bool:
        """GET ``key`` if it was written before; False if the caller must write it now."""
        index = self._shared.get(key)
        if index is not None:
            self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)
        return index is not None

    def global_(self, module: str, name: str) -> None:
        if not self._get_shared(("global", module, name)):
            self.out += f"c{module}\n{name}\n".encode()
            self._shared[("global", module, name)] = self._put()

    def string(self, text: str, shared: bool = False) -> None:
        if shared and self._get_shared(("str", text)):
            return
        data = text.encode("utf8")
        self.out += b"X" + struct.pack("<I", len(data)) + data
        index = self._put()
        if shared:
            self._shared[("str", text)] = index

    def int_(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += b"K" + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += b"M" + struct.pack("<H", value)
        elif -(1 << 31) <= value < (1 << 31):
            self.out += b"J" + struct.pack("<i", value)
        else:
            raise ValueError(f"integer {value} needs LONG1, which a state dict here never has")

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"  # EMPTY_TUPLE is never memoized
            return
        if len(values) > 3:
            self.out += b"("  # MARK
        for value in values:
            self.int_(value)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")
        self._put()

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE
        self._put()

    def tensor(self, key: str, storage_type: str, shape: tuple[int, ...], numel: int) -> None:
        """``_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict())``."""
        strides = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK for the arguments, MARK for the persistent id
        self.string("storage", shared=True)
        self.global_("torch", storage_type)
        self.string(key)
        self.string("cpu", shared=True)
        self.int_(numel)
        self.out += b"t"  # TUPLE
        self._put()
        self.out += b"QK\x00"  # BINPERSID; storage offset 0
        self.int_tuple(shape)
        self.int_tuple(strides)
        self.out += b"\x89"  # requires_grad: NEWFALSE
        self.empty_ordered_dict()  # backward hooks
        self.out += b"t"
        self._put()
        self.out += b"R"
        self._put()


def pickle_state_dict(state_dict: Mapping[str, np.ndarray]) -> bytes:
    """data.pkl for ``state_dict``: storages keyed "0", "1", ... in the dict's order."""
    pickler = _Pickler()
    pickler.empty_ordered_dict()
    items = list(state_dict.items())
    for start in range(0, len(items), 1000):  # pickle's SETITEMS batches hold 1000 items
        batch = items[start:start + 1000]
        pickler.out += b"(" if len(batch) > 1 else b""
        for offset, (name, array) in enumerate(batch):
            pickler.string(name)
            pickler.tensor(str(start + offset), STORAGE_TYPES[array.dtype], array.shape, array.size)
        pickler.out += b"u" if len(batch) > 1 else b"s"
    pickler.out += b"."
    return bytes(pickler.out)


def _hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit size_t."""
    return (seed ^ (value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2))) & _U64


class _ZipWriter:
    """Stored (uncompressed) zip records, laid out exactly as torch's PyTorchStreamWriter."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self._offset = 0
        self._entries: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset

    def _write(self, data) -> None:
        self._file.write(data)
        self._offset += len(data)

    def record(self, name: str, data: bytes | np.ndarray) -> None:
        """Add a record; ``data`` is bytes or a uint8 array."""
        full = f"archive/{name}".encode("utf8")
        end = self._offset + 30 + len(full) + 4 + ALIGNMENT + len(data) + 16  # at most
        if end >= _U32_MAX:
            raise ValueError(f"{name}: the file would reach 4 GiB, where torch switches to zip64 "
                             "headers, which this writer does not write")
        start = self._offset + 30 + len(full) + 4
        padding = -start % ALIGNMENT
        header_offset = self._offset
        self._write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0,
                                len(full), 4 + padding) + full
                    + b"FB" + struct.pack("<H", padding) + b"Z" * padding)
        # The CRC-32 goes in the data descriptor after the data (flags 0x08), so it is computed
        # as the data passes, a chunk at a time: each chunk is checksummed and written (and
        # hashed, by a hashing file) while it is in the CPU's cache, not in a pass over memory
        # each.
        crc, view = 0, memoryview(data)
        for chunk_start in range(0, len(view), CHUNK):
            chunk = view[chunk_start:chunk_start + CHUNK]
            crc = zlib.crc32(chunk, crc)
            self._write(chunk)
        self._entries.append((full, crc, len(data), header_offset))
        self._write(struct.pack("<IIII", 0x08074B50, crc, len(data), len(data)))

    def _serialization_id(self) -> bytes:
        """40 digits: a sha256 of the record names where torch has its std::hash (see the
        module docstring), then the records' CRC-32s combined as torch combines them."""
        names = b"\n".join(sorted(full.removeprefix(b"archive/") for full, *_ in self._entries))
        combined_crc = 0
        for _, crc, _, _ in self._entries:
            combined_crc = _hash_combine(combined_crc, crc)
        names_hash = int.from_bytes(hashlib.sha256(names).digest()[:8], "little")
        return f"{names_hash:020d}{combined_crc:020d}".encode()

    def finish(self) -> None:
        """The serialization id record, as torch ends every file, then the central directory."""
        self.record(".data/serialization_id", self._serialization_id())
        directory_start = self._offset
        if len(self._entries) > 0xFFFF or directory_start + 46 * len(self._entries) + sum(
                len(full) for full, *_ in self._entries) >= _U32_MAX:
            raise ValueError("the archive needs zip64 fields, which this writer does not write")
        for full, crc, size, header_offset in self._entries:
            self._write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, 0x0808, 0, 0, 0,
                                    crc, size, size, len(full), 0, 0, 0, 0, 0, header_offset)
                        + full)
        count, size = len(self._entries), self._offset - directory_start
        zip64_record = self._offset
        self._write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x002D, 0, 0, count,
                                count, size, directory_start))
        self._write(struct.pack("<IIQI", 0x07064B50, 0, zip64_record, 1))
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size,
                                directory_start, 0))


def raw_bytes(array: np.ndarray) -> np.ndarray:
    """An array's bytes in memory order, as a flat uint8 view (copied only if not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def save_state_dict(state_dict: Mapping[str, np.ndarray], file: BinaryIO) -> None:
    """Write ``state_dict`` (name -> C-contiguous little-endian float32, float64 or int64 array)
    to ``file`` as torch.save would; ``torch.load(..., weights_only=True)`` reads it back.

    Empty arrays are refused: torch writes their records without a data descriptor, a layout
    this writer leaves out because no ported model has an empty tensor.
    """
    for name, array in state_dict.items():
        if array.dtype not in STORAGE_TYPES or not array.flags.c_contiguous or not array.size:
            raise ValueError(f"{name}: {array.dtype} array of shape {list(array.shape)} "
                             f"(C-contiguous: {array.flags.c_contiguous}) is not one this "
                             "writer stores")
    zip_file = _ZipWriter(file)
    zip_file.record("data.pkl", pickle_state_dict(state_dict))
    zip_file.record(".format_version", b"1")
    zip_file.record(".storage_alignment", str(ALIGNMENT).encode())
    zip_file.record("byteorder", b"little")
    for key, array in enumerate(state_dict.values()):
        zip_file.record(f"data/{key}", raw_bytes(array))
    zip_file.record("version", f"{FILE_FORMAT_VERSION}\n".encode())
    zip_file.finish()
