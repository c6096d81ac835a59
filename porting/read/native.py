"""Read TensorFlow checkpoints without TensorFlow: V2 tensor bundles and V1 SavedTensorSlices.

Only numpy, google-crc32c and cramjam (Snappy blocks). Opening reads the index alone; each
``read`` fetches one tensor with positional reads, so memory stays near one copy of the weights.
Every block and every V2 tensor is checked against its CRC-32C; anything malformed is a
PortError naming the file and the tensor, never a wrong value.

Every count and size the index declares is checked against the files on disk before anything
is allocated for it: the header's number of data shards must name data files beside the index
(``PREFIX.data-*-of-NNNNN``), a tensor's bytes must lie inside its shard (checked when it is
read, so that the tensors before a truncation stay readable), and a tensor assembled from
slices may declare no more elements than its files hold bytes (each stored element takes at
least one), so a few-KB index cannot make a reader allocate gigabytes.

bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays, as TensorFlow returns them; without
ml_dtypes installed they are reported as unreadable (numpy has no bfloat16 of its own).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from porting.errors import PortError
from porting.read.api import VariableInfo
from porting.read.sources import V1, CheckpointSource, data_shard_of, data_shard_path
from porting.read.sstable import (FormatError, Table, as_int64, crc32c, last, parse_message,
                             read_exact, read_varint, repeated_fixed, repeated_varints, scalar,
                             submessage, unmask_crc)

# TensorFlow DataType enum (types.proto) -> little-endian numpy dtype.
_NUMPY_DTYPES = {
    1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 8: "<c8", 9: "<i8", 10: "?",
    17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8",
}
DT_STRING, DT_BFLOAT16, DT_HALF = 7, 14, 19
MAX_RANK = 64  # numpy's limit (TensorFlow's is 254; no checkpoint of the family comes near)
_REF_OFFSET = 100  # DT_FLOAT_REF = 101 etc.: the same data


def _dtype(code: int) -> np.dtype:
    """numpy dtype of a TF DataType code; strings are object arrays of bytes, as TF returns."""
    if _REF_OFFSET < code < 2 * _REF_OFFSET:
        code -= _REF_OFFSET
    if code in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[code])
    if code == DT_STRING:
        return np.dtype(object)
    if code == DT_BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            raise FormatError("bfloat16 tensor: install ml_dtypes to read it") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise FormatError(f"unsupported TensorFlow dtype {code}")


def _shape(fields: dict) -> tuple[int, ...]:
    """A TensorShapeProto's dims (dim=2 {size=1}); unknown rank or sizes cannot be stored."""
    if scalar(fields, 3):
        raise FormatError("shape of unknown rank")
    dims = []
    for dim in fields.get(2, []):
        dim_fields = parse_message(dim)
        _text(dim_fields, 2, "dimension name")
        dims.append(as_int64(scalar(dim_fields, 1)))
    dims = tuple(dims)
    if any(d < 0 for d in dims):
        raise FormatError(f"shape {list(dims)} has an unknown dimension")
    if len(dims) > MAX_RANK:
        raise FormatError(f"shape of rank {len(dims)}; numpy holds at most {MAX_RANK} dimensions")
    return dims


def _text(fields: dict, number: int, what: str) -> str:
    """A proto3 ``string`` field: TensorFlow's protobuf refuses the message if it is not UTF-8."""
    value = last(fields, number, b"")
    if isinstance(value, int):
        raise FormatError(f"{what} should be a string")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} {bytes(value)!r} is not UTF-8") from None


# TensorFlow's tensor bundle versions (tensor_bundle.h): what TF's reader accepts.
_BUNDLE_VERSION, _BUNDLE_MIN_PRODUCER = 1, 0


def _check_version(version: dict) -> None:
    """A VersionDef as TensorFlow's CheckVersions judges it (int32 fields)."""
    producer = _as_int32(scalar(version, 1))
    min_consumer = _as_int32(scalar(version, 2))
    bad = [_as_int32(v) for v in repeated_varints(version.get(3, []))]
    if producer < _BUNDLE_MIN_PRODUCER:
        raise FormatError(f"checkpoint producer version {producer} is too old")
    if min_consumer > _BUNDLE_VERSION:
        raise FormatError(f"checkpoint needs reader version {min_consumer} (this is "
                          f"{_BUNDLE_VERSION})")
    if _BUNDLE_VERSION in bad:
        raise FormatError(f"checkpoint disallows reader version {_BUNDLE_VERSION}")


def _as_int32(value: int) -> int:
    """A protobuf int32 field's varint: two's complement, truncated to 32 bits."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


Extent = tuple[int, int]  # (start, length); length -1 means the whole dimension


def _slice(message) -> tuple[Extent, ...]:
    """A TensorSliceProto: extent=1 {start=1, length=2}; a missing length is the full extent."""
    extents = []
    for extent in parse_message(message).get(1, []):
        fields = parse_message(extent)
        extents.append((as_int64(scalar(fields, 1)), as_int64(scalar(fields, 2, -1))))
    return tuple(extents)


def _ordered_signed(value: int) -> bytes:
    """OrderedCode's SignedNumIncreasing: a length-prefixed two's complement, bytewise sortable."""
    magnitude = ~value if value < 0 else value
    length = magnitude.bit_length() // 7 + 1  # each byte carries 7 payload bits after the header
    header = ((1 << length) - 1) << (7 * length)  # ``length`` leading one bits
    return ((value & ((1 << 8 * length) - 1)) ^ header).to_bytes(length, "big")


def _ordered_unsigned(value: int) -> bytes:
    """OrderedCode's NumIncreasing: one length byte, then big-endian bytes without leading zeros."""
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(payload)]) + payload


def slice_key(name: str, extents: tuple[Extent, ...]) -> bytes:
    """The table key of one slice of a tensor (EncodeTensorNameSlice's layout)."""
    escaped = name.encode().replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    key = _ordered_unsigned(0) + escaped + b"\x00\x01" + _ordered_unsigned(len(extents))
    for start, length in extents:
        key += _ordered_signed(start) + _ordered_signed(length)
    return key


def _slice_index(extents: tuple[Extent, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Numpy index of a slice in the full tensor; raises if it does not fit."""
    if len(extents) != len(shape):
        raise FormatError(f"slice of rank {len(extents)} in a tensor of rank {len(shape)}")
    index = []
    for (start, length), dim in zip(extents, shape):
        stop = dim if length == -1 else start + length
        if not 0 <= start <= stop <= dim or length < -1:
            raise FormatError(f"slice {list(extents)} outside shape {list(shape)}")
        index.append(slice(start, stop))
    return tuple(index)


def check_declared(shape: tuple[int, ...], stored_bytes: int) -> None:
    """FormatError unless a tensor of ``shape`` fits in the ``stored_bytes`` its values come
    from: every stored element takes at least one byte (fixed-width values their width, V1's
    varints and V2's string lengths at least one), so nothing larger is allocated for it."""
    count = math.prod(shape)
    if count > stored_bytes:
        raise FormatError(f"shape {list(shape)} declares {count:,} elements, more than its "
                          f"files hold ({stored_bytes:,} bytes)")


def _whole(extents: tuple[Extent, ...], shape: tuple[int, ...]) -> bool:
    """Whether a slice covers its whole tensor (every extent from 0 to the end)."""
    return len(extents) == len(shape) and all(
        start == 0 and length in (-1, dim) for (start, length), dim in zip(extents, shape))


class _Assembly:
    """A full tensor filled slice by slice; every element must be written exactly once."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], stored_bytes: int):
        check_declared(shape, stored_bytes)  # before allocating: the shape is the index's word
        self.value = np.empty(shape, dtype)
        self.filled = np.zeros(shape, bool)

    def put(self, extents: tuple[Extent, ...], part: np.ndarray) -> None:
        index = _slice_index(extents, self.value.shape) + (Ellipsis,)  # a view, even at rank 0
        target = self.value[index]
        if part.shape != target.shape:
            raise FormatError(f"slice {list(extents)} holds shape {list(part.shape)}, "
                              f"expected {list(target.shape)}")
        if self.filled[index].any():
            raise FormatError(f"slice {list(extents)} overlaps another slice")
        target[...] = part
        self.filled[index] = True

    def result(self) -> np.ndarray:
        if not self.filled.all():
            raise FormatError(f"slices cover only {int(self.filled.sum())} of "
                              f"{self.filled.size} elements")
        return self.value


# --- V2: tensor bundles -----------------------------------------------------------------------

@dataclass(frozen=True)
class _BundleEntry:
    """A BundleEntryProto: where one tensor (or one slice of one) lies in the data shards."""
    dtype: np.dtype
    dtype_code: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    slices: tuple[tuple[Extent, ...], ...]

    @classmethod
    def parse(cls, value) -> "_BundleEntry":
        fields = parse_message(value)
        code = scalar(fields, 1)
        slices = tuple(_slice(s) for s in fields.get(7, []))
        entry = cls(_dtype(code), code, _shape(submessage(fields, 2)), scalar(fields, 3),
                    as_int64(scalar(fields, 4)), as_int64(scalar(fields, 5)), scalar(fields, 6),
                    slices)
        if entry.offset < 0 or entry.size < 0:
            raise FormatError(f"negative offset {entry.offset} or size {entry.size}")
        count = int(np.prod(entry.shape, dtype=object))
        if not slices and entry.dtype != object and entry.size != count * entry.dtype.itemsize:
            raise FormatError(f"{entry.size} bytes stored for {count} x {entry.dtype}")
        return entry


def _strings(raw: bytearray, count: int, expected_crc: int) -> np.ndarray:
    """A V2 string tensor: varint lengths, masked crc of the lengths, then the bytes."""
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = read_varint(raw, pos)
        lengths.append(length)
    if pos + 4 > len(raw):
        raise FormatError("string tensor truncated in its lengths")
    # Both crcs cover each length as a fixed-width little-endian integer, not as its varint.
    fixed = b"".join(n.to_bytes(4 if n < 1 << 32 else 8, "little") for n in lengths)
    lengths_crc = crc32c(fixed)
    if unmask_crc(int.from_bytes(raw[pos:pos + 4], "little")) != lengths_crc:
        raise FormatError("string lengths checksum mismatch")
    body = memoryview(raw)[pos + 4:]
    if sum(lengths) != len(body):
        raise FormatError(f"string lengths add up to {sum(lengths)}, {len(body)} bytes stored")
    if crc32c(body, crc32c(raw[pos:pos + 4], lengths_crc)) != expected_crc:
        raise FormatError("checksum mismatch")
    out, pos = np.empty(count, object), 0
    for i, length in enumerate(lengths):
        out[i] = bytes(body[pos:pos + length])
        pos += length
    return out


class _Bundle:
    def __init__(self, source: CheckpointSource):
        self.index_path = source.files[0]
        self.prefix = source.prefix
        self.table = Table(self.index_path)
        header, self.entries = None, {}
        for key, value in self.table.items():
            if key == b"":
                header = parse_message(value)
                continue
            name = key.decode("utf-8", "replace")
            if key in self.entries:
                raise FormatError(f"{name}: listed twice in the index")
            if not key.startswith(b"\x00"):  # slice keys are binary; tensor names are text
                try:
                    key.decode("utf-8")
                except UnicodeDecodeError:
                    raise FormatError(f"tensor name {key!r} is not UTF-8") from None
            try:
                self.entries[key] = _BundleEntry.parse(value)
            except FormatError as err:
                raise FormatError(f"{name}: {err}") from None
        if header is None:
            raise FormatError("no bundle header (not a V2 checkpoint index)")
        _check_version(submessage(header, 3))
        self.num_shards = _as_int32(scalar(header, 1))
        endianness = scalar(header, 2)
        if endianness not in (0, 1):
            raise FormatError(f"unknown endianness {endianness} in the bundle header")
        self.big_endian = endianness == 1
        # The data files of this header's count beside the index, by shard (a missing one is
        # refused when a tensor in it is read): the count is checked against them, never used
        # to make a list of that length.
        self.shard_sizes = {}
        for path in source.files[1:]:
            shard, of = data_shard_of(path)
            if of == self.num_shards and shard < of:
                self.shard_sizes[shard] = os.stat(path).st_size
        if not self.shard_sizes:
            raise FormatError(f"the bundle header declares {self.num_shards} data shards, but no "
                              f"{self.prefix.name}.data-*-of-{max(self.num_shards, 0):05d} is "
                              "beside the index")
        self.data_bytes = sum(self.shard_sizes.values())
        for key, entry in self.entries.items():
            if not entry.slices and not 0 <= entry.shard < self.num_shards:
                raise FormatError(f"{key.decode('utf-8', 'replace')}: in shard {entry.shard} "
                                  f"of {self.num_shards}")

    def shard(self, index: int) -> Path:
        """The data file of shard ``index`` (of the header's count)."""
        return data_shard_path(self.prefix, index, self.num_shards)

    def variables(self) -> dict[str, VariableInfo]:
        return {key.decode("utf-8", "replace"): VariableInfo(e.dtype, e.shape)
                for key, e in self.entries.items() if not key.startswith(b"\x00")}

    def file_of(self, name: str) -> Path:
        entry = self.entries[name.encode()]
        return self.index_path if entry.slices else self.shard(entry.shard)

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name.encode()]
        if not entry.slices:
            return self._read_stored(entry)
        whole = _Assembly(entry.dtype, entry.shape, self.data_bytes)
        for extents in entry.slices:
            part = self.entries.get(slice_key(name, extents))
            if part is None or part.slices:
                raise FormatError(f"slice {list(extents)} missing from the index")
            if part.dtype_code != entry.dtype_code:
                raise FormatError(f"slice {list(extents)} has dtype {part.dtype}, not {entry.dtype}")
            whole.put(extents, self._read_stored(part))
        return whole.result()

    def _read_stored(self, entry: _BundleEntry) -> np.ndarray:
        path = self.shard(entry.shard)
        if not path.exists():  # anything there but a regular file: read_exact refuses it
            raise FormatError("data shard missing", path)
        raw = read_exact(path, entry.offset, entry.size, "tensor data")
        try:
            if entry.dtype == object:
                count = int(np.prod(entry.shape, dtype=object))
                return _strings(raw, count, unmask_crc(entry.crc)).reshape(entry.shape)
            if crc32c(raw) != unmask_crc(entry.crc):
                raise FormatError("checksum mismatch")
        except FormatError as err:
            raise FormatError(str(err), path) from None
        stored = entry.dtype.newbyteorder(">") if self.big_endian else entry.dtype
        value = np.frombuffer(raw, stored).reshape(entry.shape)
        return value.astype(entry.dtype) if self.big_endian else value


# --- V1: SavedTensorSlices tables -------------------------------------------------------------

# TensorProto field holding the values of each dtype in V1 slices (tensor.proto).
_FIXED_FIELDS = {1: 5, 2: 6, 8: 9, 18: 12}  # float_val, double_val, scomplex_val, dcomplex_val
_VARINT_FIELDS = {3: 7, 4: 7, 5: 7, 6: 7, 17: 7, 9: 10, 10: 11, DT_HALF: 13, DT_BFLOAT16: 13,
                  22: 16, 23: 17}  # int_val, int64_val, bool_val, half_val, uint32/64_val
_STRING_FIELD = 8


def _tensor_values(proto: dict, code: int, dtype: np.dtype, count: int) -> np.ndarray:
    """The *_val field of a V1 slice's TensorProto as a flat array of ``count`` values."""
    code = code - _REF_OFFSET if _REF_OFFSET < code < 2 * _REF_OFFSET else code
    if code == DT_STRING:
        values = np.empty(len(proto.get(_STRING_FIELD, [])), object)
        for i, item in enumerate(proto.get(_STRING_FIELD, [])):
            if isinstance(item, int):
                raise FormatError("string value is not a byte string")
            values[i] = bytes(item)
    elif code in _FIXED_FIELDS:
        parts = dtype.type(0).real.dtype  # complex numbers are stored as (real, imag) pairs
        values = repeated_fixed(proto.get(_FIXED_FIELDS[code], []), parts)
        if dtype.kind == "c":
            if len(values) % 2:
                raise FormatError("complex values with a lone real part")
            values = values.view(dtype)
    elif code in _VARINT_FIELDS:
        raw = np.array(repeated_varints(proto.get(_VARINT_FIELDS[code], [])), np.uint64)
        if code in (DT_HALF, DT_BFLOAT16):  # stored as their 16-bit patterns
            values = raw.astype(np.uint16).view(dtype)
        else:  # two's complement in 64 bits: truncating gives each signed or unsigned width
            values = raw.astype(dtype)
    else:
        raise FormatError(f"dtype {dtype} has no V1 encoding")
    if len(values) != count:
        raise FormatError(f"{len(values)} values stored for {count} elements")
    return values


@dataclass(frozen=True)
class _SlicedTensor:
    code: int
    dtype: np.dtype
    shape: tuple[int, ...]
    parts: tuple[tuple[Table, tuple[Extent, ...]], ...]  # (table holding it, slice)


class _SliceTables:
    def __init__(self, source: CheckpointSource):
        self.tensors: dict[str, _SlicedTensor] = {}
        self._parts: dict[str, list] = {}  # name -> its slices, gathered over the tables
        self.files = source.files
        self.tables: list[Table] = []
        for path in source.files:
            try:
                self.tables.append(Table(path))
                self._add_table(self.tables[-1])
            except FormatError as err:
                raise FormatError(str(err), err.path or path) from None
        self.tensors = {name: _SlicedTensor(t.code, t.dtype, t.shape, tuple(self._parts[name]))
                        for name, t in self.tensors.items()}
        self.stored_bytes = sum(table.file_size for table in self.tables)

    def _add_table(self, table: Table) -> None:
        meta_value = table.get(b"")
        if meta_value is None:
            raise FormatError("no SavedTensorSlices metadata (not a V1 checkpoint)")
        meta = submessage(parse_message(meta_value), 1)
        for saved in meta.get(1, []):
            fields = parse_message(saved)
            raw_name = bytes(last(fields, 1, b""))
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"tensor name {raw_name!r} is not UTF-8") from None
            try:
                code = scalar(fields, 3)
                tensor = _SlicedTensor(code, _dtype(code), _shape(submessage(fields, 2)), ())
                parts = [(table, _slice(s)) for s in fields.get(4, [])]
                known = self.tensors.get(name)
                if known is not None:  # sharded: slices of one tensor in several files
                    if (known.code, known.shape) != (code, tensor.shape):
                        raise FormatError("dtype or shape differs between shards")
            except FormatError as err:
                raise FormatError(f"{name}: {err}") from None
            self.tensors.setdefault(name, tensor)
            self._parts.setdefault(name, []).extend(parts)

    def variables(self) -> dict[str, VariableInfo]:
        return {name: VariableInfo(t.dtype, t.shape) for name, t in sorted(self.tensors.items())}

    def check_blocks(self) -> None:
        """Every block of every table: CRC, decompression, entries, key order."""
        for table in self.tables:
            try:
                for _ in table.items():
                    pass
            except FormatError as err:
                raise FormatError(str(err), err.path or table.path) from None

    def file_of(self, name: str) -> Path:
        parts = self.tensors[name].parts
        return parts[0][0].path if parts else self.files[0]

    def read(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        if len(tensor.parts) == 1 and _whole(tensor.parts[0][1], tensor.shape):
            # One slice holding the whole tensor (how V1 savers store an unpartitioned
            # variable): its values are the tensor, with no assembly copy or coverage mask
            # (VGG's fc6: 400 MB).
            table, extents = tensor.parts[0]
            check_declared(tensor.shape, self.stored_bytes)
            try:
                return self._read_slice(table, name, tensor, extents)
            except FormatError as err:
                raise FormatError(str(err), table.path) from None
        whole = _Assembly(tensor.dtype, tensor.shape, self.stored_bytes)
        for table, extents in tensor.parts:
            try:
                whole.put(extents, self._read_slice(table, name, tensor, extents))
            except FormatError as err:
                raise FormatError(str(err), table.path) from None
        return whole.result()

    @staticmethod
    def _read_slice(table: Table, name: str, tensor: _SlicedTensor,
                    extents: tuple[Extent, ...]) -> np.ndarray:
        value = table.get(slice_key(name, extents))
        if value is None:
            raise FormatError(f"slice {list(extents)} missing")
        saved = submessage(parse_message(value), 2)
        if bytes(last(saved, 1, b"")) != name.encode():
            raise FormatError(f"slice {list(extents)} is stored under another name")
        if _slice(last(saved, 2, b"")) != extents:
            raise FormatError(f"slice {list(extents)} is stored as another slice")
        shape = tuple(s.stop - s.start for s in _slice_index(extents, tensor.shape))
        count = int(np.prod(shape, dtype=object))
        values = _tensor_values(submessage(saved, 3), tensor.code, tensor.dtype, count)
        return values.reshape(shape)


class NativeReader:
    """TensorFlow checkpoints (V2 bundles, V1 single or sharded files) read without TensorFlow."""

    kind = "native"

    def __init__(self, source: CheckpointSource):
        self.source = source
        try:
            self._format = _SliceTables(source) if source.format == V1 else _Bundle(source)
            self._variables = dict(sorted(self._format.variables().items()))
        except FormatError as err:
            raise PortError(f"{err.path or source.files[0]}: {err}") from None
        except OSError as err:
            raise PortError(f"{err.filename or source.files[0]}: cannot read: {err.strerror}") from None

    def variables(self) -> Mapping[str, VariableInfo]:
        return self._variables

    def check_index(self) -> None:
        """Check every block of the index (V2: done at open) or of every V1 table, and parse
        every entry; PortError naming the file on the first fault. ``--reader tf`` runs this
        before TensorFlow sees the files: TF's reader aborts the process on some malformed
        (CRC-valid) indexes instead of raising."""
        if not isinstance(self._format, _SliceTables):
            return  # _Bundle parsed every block and every entry when it opened
        try:
            self._format.check_blocks()
        except FormatError as err:
            raise PortError(f"{err.path or self.source.files[0]}: {err}") from None
        except OSError as err:
            raise PortError(f"{err.filename or self.source.files[0]}: cannot read: {err.strerror}") from None

    def read(self, name: str) -> np.ndarray:
        if name not in self._variables:
            raise PortError(f"{self.source.files[0]}: no variable {name}")
        try:
            return self._format.read(name)
        except FormatError as err:
            raise PortError(f"{err.path or self._format.file_of(name)}: {name}: {err}") from None
        except OSError as err:
            path = err.filename or self._format.file_of(name)
            raise PortError(f"{path}: {name}: cannot read: {err.strerror}") from None
        except MemoryError:
            raise PortError(f"{self._format.file_of(name)}: {name}: too large to read into memory") from None

    def stored_name(self, name: str) -> str:
        return name
