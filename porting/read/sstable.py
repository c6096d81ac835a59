"""The LevelDB table ("SSTable") that TensorFlow checkpoints are stored in, and protobuf wire decoding.

Both checkpoint formats keep their index (V2) or everything (V1) in such a table: data blocks of
prefix-compressed sorted keys, an index block pointing at them, a 48-byte footer ending in a magic
number. Every block carries a masked CRC-32C, checked before anything in it is trusted.

Failures raise ``FormatError`` without a file name; the checkpoint reader adds the file and tensor.
"""
from __future__ import annotations

import bisect
import os
import stat
from pathlib import Path

import cramjam
import google_crc32c
import numpy as np

from porting import files

TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
MAX_BLOCK_SIZE = 1 << 31  # a snappy header claiming more is corrupt, not a real block
# Snappy expands at most 64 bytes from a 3-byte copy (21.3:1): a header claiming more than this
# many times the compressed block is corrupt, and is refused before the buffer is allocated
MAX_SNAPPY_RATIO = 22
_CRC_MASK_DELTA = 0xA282EAD8


class FormatError(Exception):
    """Bytes that are not what the format says they must be; ``path`` if not the obvious file."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


def crc32c(data, start: int = 0) -> int:
    """CRC-32C of any bytes-like object, continuing from ``start`` (google_crc32c only takes
    read-only buffers, hence the read-only numpy view; it copies nothing)."""
    view = np.frombuffer(data, np.uint8)
    view.flags.writeable = False
    return google_crc32c.extend(start, view)


def unmask_crc(masked: int) -> int:
    rotated = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def read_varint(buf, pos: int, end: int | None = None) -> tuple[int, int]:
    """(unsigned value, position after it) of the base-128 varint at ``buf[pos]``."""
    end = len(buf) if end is None else end
    value = shift = 0
    while shift < 70:
        if pos >= end:
            raise FormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise FormatError("varint overflows 64 bits")
            return value, pos
        shift += 7
    raise FormatError("varint longer than 10 bytes")


def as_int64(value: int) -> int:
    """A protobuf int64 field's varint (two's complement in 64 bits) as a Python int."""
    return value - (1 << 64) if value >= 1 << 63 else value


# --- protobuf wire format -------------------------------------------------------------------

def parse_message(buf) -> dict[int, list]:
    """Field number -> values of a protobuf message, in wire order.

    Varint and fixed-width fields give ints, length-delimited ones memoryviews (sub-messages,
    strings and packed repeated scalars alike: the schema, i.e. the caller, decides which).
    """
    buf = memoryview(buf)
    fields: dict[int, list] = {}
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise FormatError("protobuf field number 0")
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise FormatError("truncated protobuf fixed-width field")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if length > end - pos:
                raise FormatError("protobuf field runs past its message")
            value = buf[pos:pos + length]
            pos += length
        else:
            raise FormatError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def last(fields: dict[int, list], number: int, default=0):
    """A singular field: protobuf keeps the last occurrence."""
    values = fields.get(number)
    return values[-1] if values else default


def scalar(fields: dict[int, list], number: int, default: int = 0) -> int:
    value = last(fields, number, default)
    if not isinstance(value, int):
        raise FormatError(f"protobuf field {number} should be a number")
    return value


def submessage(fields: dict[int, list], number: int) -> dict[int, list]:
    value = last(fields, number, b"")
    if isinstance(value, int):
        raise FormatError(f"protobuf field {number} should be a message")
    return parse_message(value)


def repeated_varints(values: list) -> list[int]:
    """A repeated varint field, packed or not."""
    out = []
    for value in values:
        if isinstance(value, int):
            out.append(value)
            continue
        pos = 0
        while pos < len(value):
            item, pos = read_varint(value, pos)
            out.append(item)
    return out


def repeated_fixed(values: list, dtype: np.dtype) -> np.ndarray:
    """A repeated fixed32/fixed64 field (float, double, complex parts), packed or not."""
    dtype = np.dtype(dtype)
    bits = np.dtype(f"<u{dtype.itemsize}")
    parts = []
    for value in values:
        if isinstance(value, int):
            parts.append(np.array([value], bits).view(dtype))
        elif len(value) % dtype.itemsize:
            raise FormatError(f"packed field of {len(value)} bytes is not a whole number of {dtype}")
        else:
            parts.append(np.frombuffer(value, dtype))
    return np.concatenate(parts) if parts else np.empty(0, dtype)


# --- the table --------------------------------------------------------------------------------

def open_regular(path: Path):
    """``path`` opened for binary reading if it is a regular file (``porting.files``' input
    rule); FormatError if it is not, the OSError of the open otherwise."""
    try:
        return files.open_regular(path)
    except files.NotRegular:
        raise FormatError("not a regular file", Path(path)) from None


def has_table_magic(path: Path) -> bool:
    """Whether ``path`` is a regular file that ends like an SSTable (cheap: reads 8 bytes)."""
    try:
        with open_regular(path) as f:
            size = f.seek(0, os.SEEK_END)
            if size < FOOTER_SIZE:
                return False
            f.seek(size - len(TABLE_MAGIC))
            return f.read(len(TABLE_MAGIC)) == TABLE_MAGIC
    except (OSError, FormatError):
        return False


def read_exact(path: Path, offset: int, size: int, what: str) -> bytearray:
    """``size`` bytes at ``offset`` of ``path`` (a regular file) into a fresh writable buffer."""
    with open_regular(path) as f:
        available = max(0, f.seek(0, os.SEEK_END) - offset)
        if size > available:  # checked first: a corrupt size must not allocate gigabytes
            raise FormatError(f"{what} truncated: wanted {size} bytes at offset {offset}, "
                              f"file has {available}", path)
        buf = bytearray(size)
        f.seek(offset)
        if f.readinto(buf) != size:
            raise FormatError(f"{what} truncated while reading", path)
    return buf


def _block_handle(buf, pos: int, end: int | None = None) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos, end)
    size, pos = read_varint(buf, pos, end)
    return (offset, size), pos


def parse_block(contents) -> list[tuple[bytes, memoryview]]:
    """(key, value) entries of one block's contents (after decompression)."""
    contents = memoryview(contents)
    if len(contents) < 4:
        raise FormatError("block shorter than its restart count")
    restarts = int.from_bytes(contents[-4:], "little")
    if restarts > (len(contents) - 4) // 4:
        raise FormatError(f"block claims {restarts} restart points, more than fit")
    end = len(contents) - 4 - 4 * restarts
    restart_list = np.frombuffer(contents[end:-4], "<u4").tolist()
    restart_offsets = set(restart_list)

    entries, key, pos, starts = [], b"", 0, set()
    while pos < end:
        at = pos
        starts.add(at)
        shared, pos = read_varint(contents, pos, end)
        unshared, pos = read_varint(contents, pos, end)
        value_len, pos = read_varint(contents, pos, end)
        if shared > len(key) or unshared + value_len > end - pos:
            raise FormatError("block entry runs past its block")
        if at in restart_offsets and shared:
            raise FormatError("block entry at a restart point shares a prefix")
        key = key[:shared] + bytes(contents[pos:pos + unshared])
        pos += unshared
        entries.append((key, contents[pos:pos + value_len]))
        pos += value_len
    # TensorFlow's reader seeks by binary search over the restart points and starts a scan at
    # the first one: each must be an entry's start, in order, the first at 0, or it would see
    # other entries than a scan from the start does (none at all when there is no restart).
    if not restart_offsets <= (starts or {0}):  # an empty block's writer still puts one at 0
        raise FormatError("block restart point outside its entries")
    if any(a >= b for a, b in zip(restart_list, restart_list[1:])):
        raise FormatError("block restart points out of order")
    if entries and restart_list[:1] != [0]:
        raise FormatError("block has entries before its first restart point")
    return entries


class Table:
    """One SSTable file: the index is read at open, data blocks on demand (positional reads)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            info = self.path.stat()
        except OSError as err:
            raise FormatError(f"cannot read: {err.strerror}") from err
        if not stat.S_ISREG(info.st_mode):
            raise FormatError("not a regular file")
        self.file_size = info.st_size
        if self.file_size < FOOTER_SIZE:
            raise FormatError(f"not an SSTable: {self.file_size} bytes, shorter than a table footer")
        footer = read_exact(self.path, self.file_size - FOOTER_SIZE, FOOTER_SIZE, "footer")
        if footer[-8:] != TABLE_MAGIC:
            raise FormatError("not an SSTable (bad magic number)")
        _, pos = _block_handle(footer, 0, FOOTER_SIZE - 8)  # metaindex: TF leaves it empty
        index_handle, _ = _block_handle(footer, pos, FOOTER_SIZE - 8)
        index = []
        for separator, value in self._block(index_handle, "index block"):
            handle, used = _block_handle(value, 0)
            if used != len(value):
                raise FormatError("index entry is not a block handle")
            index.append((separator, handle))
        if [s for s, _ in index] != sorted(s for s, _ in index):
            raise FormatError("index block keys out of order")
        self._separators = [separator for separator, _ in index]
        self._handles = [handle for _, handle in index]
        self._cached: tuple[tuple[int, int], list] | None = None  # reads often hit one block

    def _block(self, handle: tuple[int, int], what: str) -> list[tuple[bytes, memoryview]]:
        offset, size = handle
        if offset + size + BLOCK_TRAILER_SIZE > self.file_size - FOOTER_SIZE:
            raise FormatError(f"{what} at {offset}+{size} runs past the end of the file")
        raw = read_exact(self.path, offset, size + BLOCK_TRAILER_SIZE, what)
        stored = int.from_bytes(raw[-4:], "little")
        if unmask_crc(stored) != crc32c(memoryview(raw)[:-4]):
            raise FormatError(f"{what} at offset {offset}: checksum mismatch")
        kind, contents = raw[size], memoryview(raw)[:size]
        if kind == SNAPPY_COMPRESSION:
            try:
                claimed = cramjam.snappy.decompress_raw_len(contents)
                if claimed > min(MAX_BLOCK_SIZE, MAX_SNAPPY_RATIO * len(contents) + 16):
                    raise FormatError(f"{what} at offset {offset}: implausible snappy size "
                                      f"({claimed:,} bytes from {len(contents):,})")
                contents = memoryview(cramjam.snappy.decompress_raw(contents))
            except cramjam.DecompressionError as err:
                raise FormatError(f"{what} at offset {offset}: bad snappy data ({err})") from err
        elif kind != NO_COMPRESSION:
            raise FormatError(f"{what} at offset {offset}: unknown compression type {kind}")
        return parse_block(contents)

    def _data_block(self, i: int) -> list[tuple[bytes, memoryview]]:
        handle = self._handles[i]
        if self._cached is None or self._cached[0] != handle:
            entries = self._block(handle, "data block")
            keys = [key for key, _ in entries]
            if any(a >= b for a, b in zip(keys, keys[1:])) or (
                    keys and keys[-1] > self._separators[i]):
                raise FormatError(f"data block at offset {handle[0]}: keys out of order")
            self._cached = (handle, entries)
        return self._cached[1]

    def items(self):
        """Every (key, value) of the table, in key order."""
        for i in range(len(self._handles)):
            yield from self._data_block(i)

    def get(self, key: bytes) -> memoryview | None:
        """The value stored under ``key``, or None."""
        i = bisect.bisect_left(self._separators, key)  # first block whose keys reach ``key``
        if i == len(self._separators):
            return None
        for candidate, value in self._data_block(i):
            if candidate == key:
                return value
        return None
