"""The native checkpoint reader against TensorFlow's, on checkpoints TensorFlow writes here."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ckpt_tools import read_all
from dtype_checkpoints import PARTITIONED, V1_UNSUPPORTED, VALUES, same

from porting.errors import PortError
from porting.read.open import open_reader
from porting.read.sources import V1, V2, resolve_source
from porting.read.sstable import FOOTER_SIZE, read_varint


@pytest.fixture(scope="session")
def expected(tf, checkpoints):
    """Every value as TensorFlow reads it from the V2 checkpoint."""
    return read_all(checkpoints["v2"])


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
        assert same(value, expected[name]), name
    assert expected[PARTITIONED].shape == (10, 4)


@pytest.mark.parametrize("flavour", ["v2", "v2_sharded", "v2_snappy"])
def test_v2_is_bit_identical_to_tensorflow(tf, checkpoints, flavour):
    reader = open_reader(checkpoints[flavour], "native")
    assert reader.source.format == V2
    reference = read_all(checkpoints[flavour])
    assert list(reader.variables()) == sorted(reference)
    for name, value in reference.items():
        got = reader.read(name)
        assert same(got, value), name
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
        assert same(reader.read(name), expected[name]), name


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
        assert same(native.read(name), value), name
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
    import porting.read.native as native

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
