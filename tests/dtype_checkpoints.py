"""Small checkpoints of every dtype and layout, written by TensorFlow, for the native reader's tests.

Flavours: V2, V2 sharded over two devices, V2 with a Snappy-compressed index, V1, V1 sharded,
V1 with Snappy blocks; all hold the same values (``VALUES`` plus a partitioned variable).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cramjam
import ml_dtypes
import numpy as np

from porting.read.sstable import FOOTER_SIZE, TABLE_MAGIC, Table, crc32c

VALUES = {
    "float/f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7 - 0.5,
    "float/f64": np.linspace(-1, 1, 7),
    "float/f16": np.array([1.5, -2, 65504, 6e-8], np.float16),
    "float/bf16": np.array([1.5, -2, 3e38], ml_dtypes.bfloat16),
    "int/i8": np.array([-128, 5, 127], np.int8),
    "int/u8": np.array([0, 255], np.uint8),
    "int/i16": np.array([-30000, 2], np.int16),
    "int/u16": np.array([65535, 1], np.uint16),
    "int/i32": np.array([[-2**31, 7], [2**31 - 1, 0]], np.int32),
    "int/u32": np.array([2**32 - 1], np.uint32),
    "int/i64": np.array([-2**63, 2**62], np.int64),
    "int/u64": np.array([2**64 - 1], np.uint64),
    "bool": np.array([True, False, True]),
    "complex/c64": np.array([1 + 2j, -3j], np.complex64),
    "complex/c128": np.array([[1 + 2j], [np.pi]], np.complex128),
    "scalar/f32": np.float32(3.25),
    "scalar/i64": np.int64(-7),
    "scalar/string": np.array(b"hello", object),
    "strings": np.array([[b"ab", b""], [b"\x00\xff" * 3, bytes(range(256)) * 5]], object),
    "empty": np.zeros((0, 3), np.float32),
}
V1_UNSUPPORTED = {"float/bf16", "int/u32", "int/u64"}  # TF's V1 writer refuses them
PARTITIONED = "part/weights"  # 10 x 4, in 3 slices along dim 0


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: dtype, shape and bytes (strings: element by element)."""
    a, b = np.asarray(a), np.asarray(b)
    if b.dtype.kind == "S":  # TF returns a scalar string as bytes
        b = np.array(b.item(), object)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(type(x) is bytes and x == y for x, y in zip(a.ravel(), b.ravel()))
    return a.tobytes() == b.tobytes()


def write_checkpoints(tf, root: Path) -> dict[str, Path]:
    """Every flavour, from one session so that all hold the same values."""
    paths = {}
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.Variable(value, name=name) for name, value in VALUES.items()}
        parts = list(tf.compat.v1.get_variable(
            PARTITIONED, shape=[10, 4], initializer=tf.compat.v1.random_normal_initializer(seed=1),
            partitioner=tf.compat.v1.fixed_size_partitioner(3)))
        with tf.device("/cpu:1"):  # a second virtual CPU: sharded saves write one file per device
            other = tf.compat.v1.Variable(np.arange(5, dtype=np.float32), name="other_device")
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            v1_vars = [v for n, v in variables.items() if n not in V1_UNSUPPORTED] + parts + [other]
            for name, version, var_list, sharded in [
                    ("v2", "V2", [*variables.values(), *parts, other], False),
                    ("v2_sharded", "V2", [*variables.values(), *parts, other], True),
                    ("v1", "V1", v1_vars, False),
                    ("v1_sharded", "V1", v1_vars, True)]:
                saver = tf.compat.v1.train.Saver(
                    var_list, sharded=sharded,
                    write_version=getattr(tf.compat.v1.train.SaverDef, version))
                paths[name] = root / name / "model.ckpt"
                paths[name].parent.mkdir()
                saver.save(sess, str(paths[name]), write_meta_graph=False, write_state=False)
    paths["v2_snappy"] = root / "v2_snappy" / "model.ckpt"
    paths["v2_snappy"].parent.mkdir()
    for f in paths["v2"].parent.iterdir():
        shutil.copy(f, paths["v2_snappy"].parent / f.name)
    snappy_reencode(Path(f"{paths['v2_snappy']}.index"))
    paths["v1_snappy"] = root / "v1_snappy" / "model.ckpt"
    paths["v1_snappy"].parent.mkdir()
    shutil.copy(paths["v1"], paths["v1_snappy"])
    snappy_reencode(paths["v1_snappy"])
    return paths


# --- a Snappy re-encoder, as TF 1.x-era writers produced --------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block_contents(entries) -> bytes:
    """A block with a restart point at every entry (no shared prefixes): valid, if not small."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + bytes(value)
    for offset in restarts:
        body += offset.to_bytes(4, "little")
    return bytes(body + len(restarts).to_bytes(4, "little"))


def _snappy_block(contents: bytes) -> bytes:
    stored = bytes(cramjam.snappy.compress_raw(contents)) + b"\x01"
    return stored + _mask(crc32c(stored)).to_bytes(4, "little")


def snappy_reencode(path: Path) -> None:
    """Rewrite an SSTable with every block Snappy-compressed (type byte 1, fresh crc)."""
    table = Table(path)
    out, index = bytearray(), []
    for i in range(len(table._handles)):
        entries = table._data_block(i)
        handle = (len(out), 0)
        out += _snappy_block(_block_contents(entries))
        handle = (handle[0], len(out) - handle[0] - 5)
        index.append((table._separators[i], _varint(handle[0]) + _varint(handle[1])))
    meta_at = len(out)
    out += _snappy_block(_block_contents([]))
    index_at = len(out)
    out += _snappy_block(_block_contents(index))
    footer = (_varint(meta_at) + _varint(index_at - meta_at - 5)
              + _varint(index_at) + _varint(len(out) - index_at - 5))
    out += footer.ljust(FOOTER_SIZE - 8, b"\x00") + TABLE_MAGIC
    path.write_bytes(bytes(out))
