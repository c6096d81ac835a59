"""The native checkpoint reader against TensorFlow's, on checkpoints TensorFlow writes here."""
from __future__ import annotations

import shutil
from pathlib import Path

import cramjam
import numpy as np
import pytest

from porting.errors import PortError
from porting.readers import open_reader
from porting.sources import V1, V2, resolve_source
from porting.sstable import FOOTER_SIZE, TABLE_MAGIC, Table, crc32c, read_varint

ml_dtypes = pytest.importorskip("ml_dtypes")

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


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: dtype, shape and bytes (strings: element by element)."""
    a, b = np.asarray(a), np.asarray(b)
    if b.dtype.kind == "S":  # TF returns a scalar string as bytes
        b = np.array(b.item(), object)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(type(x) is bytes and x == y for x, y in zip(a.ravel(), b.ravel()))
    return a.tobytes() == b.tobytes()


def _tf_values(tf, prefix) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {n: reader.get_tensor(n) for n in sorted(reader.get_variable_to_shape_map())}


def _write_checkpoints(tf, root: Path) -> dict[str, Path]:
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


@pytest.fixture(scope="session")
def tf():
    from porting.tfslim import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tf):
    return _write_checkpoints(tf, tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="session")
def expected(tf, checkpoints):
    """Every value as TensorFlow reads it from the V2 checkpoint."""
    return _tf_values(tf, checkpoints["v2"])


def test_snappy_copies_really_are_snappy(checkpoints):
    for name in ("v2_snappy", "v1_snappy"):
        path = checkpoints[name]
        path = Path(f"{path}.index") if name.startswith("v2") else path
        data = path.read_bytes()
        offset, pos = read_varint(data, len(data) - FOOTER_SIZE)
        size, _ = read_varint(data, pos)
        assert data[offset + size] == 1


def test_the_checkpoints_hold_what_tensorflow_saved(expected):
    for name, value in VALUES.items():
        assert _same(value, expected[name]), name
    assert expected[PARTITIONED].shape == (10, 4)


@pytest.mark.parametrize("flavour", ["v2", "v2_sharded", "v2_snappy"])
def test_v2_is_bit_identical_to_tensorflow(tf, checkpoints, flavour):
    reader = open_reader(checkpoints[flavour], "native")
    assert reader.source.format == V2
    tf_values = _tf_values(tf, checkpoints[flavour])
    assert list(reader.variables()) == sorted(tf_values)
    for name, value in tf_values.items():
        got = reader.read(name)
        assert _same(got, value), name
        info = reader.variables()[name]
        assert (info.dtype, info.shape) == (got.dtype, got.shape), name


def test_sharded_v2_really_has_two_shards(checkpoints):
    source = resolve_source(checkpoints["v2_sharded"])
    assert len(source.files) == 3  # index + 2 data files


@pytest.mark.parametrize("flavour", ["v1", "v1_sharded", "v1_snappy"])
def test_v1_matches_the_v2_values(checkpoints, expected, flavour):
    reader = open_reader(checkpoints[flavour], "native")
    assert reader.source.format == V1
    names = sorted(set(expected) - V1_UNSUPPORTED)
    assert list(reader.variables()) == names
    for name in names:
        assert _same(reader.read(name), expected[name]), name


def test_v1_agrees_with_tensorflows_own_v1_reader(tf, checkpoints):
    """Where TF's V1 reader works at all (it refuses sliced tensors and several dtypes)."""
    native = open_reader(checkpoints["v1"], "native")
    tf_reader = tf.train.load_checkpoint(str(checkpoints["v1"]))
    compared = 0
    for name in native.variables():
        try:
            value = tf_reader.get_tensor(name)
        except tf.errors.UnimplementedError:
            continue
        assert _same(native.read(name), value), name
        compared += 1
    assert compared >= 10


def test_sharded_v1_is_found_from_its_prefix_folder_and_a_shard(checkpoints):
    prefix = checkpoints["v1_sharded"]
    shards = sorted(prefix.parent.glob("model.ckpt-*-of-*"))
    assert len(shards) == 2
    for spelling in (prefix, prefix.parent, shards[1]):
        source = resolve_source(spelling)
        assert (source.format, source.files, source.prefix) == (V1, tuple(shards), prefix)


@pytest.mark.parametrize("flavour,spelling", [
    ("v2", "{p}"), ("v2", "{p}.index"), ("v2", "{p}.data-00000-of-00001"), ("v2", "{d}"),
    ("v1", "{p}"), ("v1", "{d}")])
def test_source_spellings(checkpoints, flavour, spelling):
    prefix = checkpoints[flavour]
    source = resolve_source(spelling.format(p=prefix, d=prefix.parent))
    assert source.prefix == prefix and source.format == flavour.upper()


def test_a_folder_with_a_v1_and_a_v2_checkpoint_is_ambiguous(tmp_path, checkpoints):
    shutil.copy(checkpoints["v1"], tmp_path / "a.ckpt")
    for f in checkpoints["v2"].parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(PortError, match="2 checkpoints"):
        resolve_source(tmp_path)


def test_reading_is_lazy(checkpoints, monkeypatch):
    """Opening touches the index only; a read touches only its own tensor's bytes."""
    import porting.native_reader as native

    reads = []
    real = native.read_exact
    monkeypatch.setattr(native, "read_exact",
                        lambda path, offset, size, what: reads.append(size) or real(
                            path, offset, size, what))
    reader = open_reader(checkpoints["v2"], "native")
    assert reads == []
    reader.read("float/f64")
    assert reads == [7 * 8]


def test_missing_shard_is_one_clean_line(tmp_path, checkpoints):
    for f in checkpoints["v2_sharded"].parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    missing = tmp_path / "model.ckpt.data-00001-of-00002"
    missing.unlink()
    reader = open_reader(tmp_path / "model.ckpt", "native")
    errors = []
    for name in reader.variables():
        try:
            reader.read(name)
        except PortError as err:
            errors.append(str(err))
    assert errors and all(e.startswith(f"{missing}: ") and "\n" not in e for e in errors)


def test_bad_checksum_names_file_and_tensor(tmp_path, checkpoints):
    for f in checkpoints["v2"].parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    reader = open_reader(tmp_path / "model.ckpt", "native")
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    entry = reader._format.entries[b"float/f64"]
    raw[entry.offset] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(PortError, match=rf"^{data}: float/f64: checksum mismatch$"):
        reader.read("float/f64")
