"""Checkpoint indexes and archives whose declared counts and sizes lie (issue 19: defects 6, 12
and 15's inspect size): a few-KB file must never make a reader allocate gigabytes, run for
minutes or exit 70.

The indexes are written here from scratch (protobuf and SSTable bytes, with valid CRCs; no
TensorFlow), so each lie is exactly the one under test. Commands run through the real command
line in a subprocess under a memory limit (``RLIMIT_AS``) and a timeout: a regression fails the
test instead of exhausting the machine.
"""
from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import cramjam
import numpy as np
import porting
import pytest
from dtype_checkpoints import _block_contents, _mask, _varint
from test_reader_fuzz import _stored_block, _table_bytes

from porting.read.native import slice_key
from porting.read.sstable import FOOTER_SIZE, TABLE_MAGIC, crc32c

CODE_ROOT = Path(porting.__file__).resolve().parents[1]  # subprocesses run the code under test
MEMORY_LIMIT = 2 << 30
TIMEOUT = 120


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """``port-weights ARGS`` in a subprocess: at most 2 GiB of address space, 120 s."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT), "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "porting.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
                          preexec_fn=_limit_memory)


READ = """
import sys
from porting.errors import PortError
from porting.read.open import open_reader
try:
    open_reader(sys.argv[1]).read(sys.argv[2])
except PortError as err:
    sys.exit(f"error: {err}")
"""


def read_variable(tmp_path: Path, src: Path, name: str) -> subprocess.CompletedProcess:
    """The native reader's ``read(name)`` of checkpoint ``src`` in a subprocess, limited like
    ``cli`` (``port`` reads only what its plan accepts, and no plan accepts these shapes)."""
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT)}
    return subprocess.run([sys.executable, "-c", READ, str(src), name], capture_output=True,
                          text=True, timeout=TIMEOUT, env=env, cwd=tmp_path,
                          preexec_fn=_limit_memory)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (
        run.returncode, run.stderr[-2000:])
    return lines[0]


# --- protobuf and tensor bundle bytes ---------------------------------------------------------

def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value & (1 << 64) - 1)


def _bytes(number: int, value: bytes) -> bytes:
    return _key(number, 2) + _varint(len(value)) + value


def _fixed32(number: int, value: int) -> bytes:
    return _key(number, 5) + value.to_bytes(4, "little")


def _shape(dims) -> bytes:
    return b"".join(_bytes(2, _int(1, d)) for d in dims)


def _slice(extents) -> bytes:
    return b"".join(_bytes(1, _int(1, start) + (_int(2, length) if length != -1 else b""))
                    for start, length in extents)


def bundle_entry(shape, data: bytes = b"", offset: int = 0, shard: int = 0, dtype: int = 1,
                 slices=()) -> bytes:
    """A BundleEntryProto: ``data`` (its size and CRC) at ``offset`` of shard ``shard``."""
    return (_int(1, dtype) + _bytes(2, _shape(shape)) + _int(3, shard) + _int(4, offset)
            + _int(5, len(data)) + _fixed32(6, _mask(crc32c(data)))
            + b"".join(_bytes(7, _slice(s)) for s in slices))


def bundle_header(num_shards: int) -> bytes:
    return _int(1, num_shards) + _int(2, 0) + _bytes(3, _int(1, 1))


def write_table(path: Path, entries: dict[bytes, bytes], snappy: bool = False) -> Path:
    """An SSTable of ``entries`` (sorted by key), one data block, fresh CRCs and footer."""
    items = sorted(entries.items())
    path.write_bytes(_table_bytes([_block_contents(items)], [items[-1][0]], snappy))
    return path


def write_bundle(prefix: Path, entries: dict[bytes, bytes], data: bytes, num_shards: int = 1,
                 files: int = 1) -> Path:
    """A V2 checkpoint at ``prefix``: the index (header declaring ``num_shards``) and ``files``
    data shards named for one shard of ``files``, the first holding ``data``."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_table(Path(f"{prefix}.index"), {b"": bundle_header(num_shards), **entries})
    for i in range(files):
        Path(f"{prefix}.data-{i:05d}-of-{files:05d}").write_bytes(data if i == 0 else b"")
    return prefix


WEIGHTS = np.arange(6, dtype="<f4").tobytes()


def plain_bundle(prefix: Path, num_shards: int = 1) -> Path:
    return write_bundle(prefix, {b"w": bundle_entry([2, 3], WEIGHTS)}, WEIGHTS, num_shards)


def test_the_helpers_write_a_checkpoint_the_readers_take(tmp_path):
    from porting.read.open import open_reader

    reader = open_reader(plain_bundle(tmp_path / "ok" / "model.ckpt"))
    np.testing.assert_array_equal(reader.read("w"), np.arange(6, dtype=np.float32).reshape(2, 3))
    run = cli(tmp_path, "inspect", tmp_path / "ok" / "model.ckpt")
    assert run.returncode == 0 and "[2, 3]" in run.stdout and "24" in run.stdout, run.stderr


# --- defect 6: declared counts and sizes against what is on disk -------------------------------

@pytest.mark.parametrize("num_shards", [10 ** 9, 10 ** 8, 100_000, 2])
@pytest.mark.parametrize("command", ["inspect", "port"])
def test_a_header_declaring_more_shards_than_the_files_is_one_line(tmp_path, num_shards,
                                                                   command):
    """43960f2: 10^9 shards ran for minutes and took 2.8 GB (a Path per declared shard); 10^8
    exited 70 (MemoryError) under 2 GiB."""
    prefix = plain_bundle(tmp_path / "ckpt" / "model.ckpt", num_shards)
    assert Path(f"{prefix}.index").stat().st_size < 1000
    args = [prefix] if command == "inspect" else ["--src", prefix, "--dst", tmp_path / "m.pth"]
    line = one_error_line(cli(tmp_path, command, *args))
    assert line == (f"error: {prefix}.index: the bundle header declares {num_shards} data "
                    f"shards, but no model.ckpt.data-*-of-{num_shards:05d} is beside the index")
    assert not (tmp_path / "m.pth").exists()


def test_a_real_index_edited_to_declare_10_9_shards_is_one_line(checkpoints, tmp_path):
    """The issue's case: TensorFlow's own index of a small checkpoint, its header's count set
    to 10^9 behind valid CRCs."""
    from porting.read.sstable import Table
    from test_reader_hostile import copy_checkpoint

    prefix = copy_checkpoint(checkpoints["v2"], tmp_path / "ckpt")
    index = Path(f"{prefix}.index")
    table = Table(index)
    blocks = [[(key, bytes(value)) for key, value in table._data_block(i)]
              for i in range(len(table._handles))]
    header = blocks[0][0]
    assert header[0] == b"" and header[1].startswith(_int(1, 1))  # num_shards = 1
    blocks[0][0] = (b"", _int(1, 10 ** 9) + header[1][len(_int(1, 1)):])
    index.write_bytes(_table_bytes([_block_contents(b) for b in blocks], table._separators,
                                   snappy=False))
    for command in (["inspect", prefix], ["--src", prefix, "--dst", tmp_path / "m.pth"]):
        line = one_error_line(cli(tmp_path, *command))
        assert line == (f"error: {index}: the bundle header declares 1000000000 data shards, but "
                        "no model.ckpt.data-*-of-1000000000 is beside the index")


def test_shards_are_counted_not_listed(tmp_path):
    """The declared count names the files; a shard that is missing is refused when read."""
    from porting.read.open import open_reader

    prefix = tmp_path / "model.ckpt"
    write_bundle(prefix, {b"a": bundle_entry([6], WEIGHTS),
                          b"b": bundle_entry([6], WEIGHTS, shard=1)}, WEIGHTS, num_shards=2)
    Path(f"{prefix}.data-00000-of-00001").rename(f"{prefix}.data-00000-of-00002")
    reader = open_reader(prefix)
    assert not hasattr(reader._format, "shards")
    np.testing.assert_array_equal(reader.read("a"), np.arange(6, dtype=np.float32))
    with pytest.raises(porting.errors.PortError,
                       match=rf"^{prefix}.data-00001-of-00002: b: data shard missing$"):
        reader.read("b")


@pytest.mark.parametrize("offset, size", [(0, 1 << 40), (1 << 62, 24), (20, 24)])
def test_an_entry_past_the_end_of_its_shard_is_refused_before_allocating(tmp_path, offset,
                                                                         size):
    """The entry's bytes must lie inside its shard, checked before a buffer of its size is
    made (held on 43960f2 too; checked when read, so that the tensors before a truncation stay
    readable, as test_reader_hostile's TF cases need)."""
    prefix = tmp_path / "ckpt" / "model.ckpt"
    entry = (_int(1, 1) + _bytes(2, _shape([size // 4])) + _int(3, 0) + _int(4, offset)
             + _int(5, size) + _fixed32(6, 0))
    write_bundle(prefix, {b"w": entry}, WEIGHTS)
    line = one_error_line(read_variable(tmp_path, prefix, "w"))
    available = max(0, len(WEIGHTS) - offset)
    assert line == (f"error: {prefix}.data-00000-of-00001: w: tensor data truncated: wanted "
                    f"{size} bytes at offset {offset}, file has {available}")


def test_a_tensor_of_more_dimensions_than_numpy_holds_is_one_line(tmp_path):
    """Rank 65 (TensorFlow allows 254, numpy 64): 43960f2 raised numpy's ValueError when the
    tensor was read (exit 70)."""
    prefix = write_bundle(tmp_path / "ckpt" / "model.ckpt",
                          {b"w": bundle_entry([1] * 59 + [2, 3], WEIGHTS),
                           b"x": bundle_entry([1] * 63 + [2, 3], WEIGHTS)}, WEIGHTS)
    line = one_error_line(cli(tmp_path, "inspect", prefix))
    assert line == f"error: {prefix}.index: x: shape of rank 65; numpy holds at most 64 dimensions"
    prefix = write_bundle(tmp_path / "ok" / "model.ckpt",
                          {b"w": bundle_entry([1] * 62 + [2, 3], WEIGHTS)}, WEIGHTS)
    assert read_variable(tmp_path, prefix, "w").returncode == 0


def _sliced_bundle(prefix: Path, shape) -> Path:
    """A partitioned variable ``w`` of ``shape`` whose one stored slice is six floats."""
    extents = ((0, 6),) + tuple((0, 1) for _ in shape[1:])
    part = bundle_entry([6] + [1] * (len(shape) - 1), WEIGHTS)
    return write_bundle(prefix, {b"w": bundle_entry(shape, slices=[extents]),
                                 slice_key("w", extents): part}, WEIGHTS)


@pytest.mark.parametrize("shape", [[1 << 29], [1 << 26, 6], [1 << 62, 1 << 62]])
def test_a_sliced_tensor_declaring_more_than_the_files_hold_is_refused_before_allocating(
        tmp_path, shape):
    """43960f2 allocated the declared shape (np.empty, then a mask as large) before reading a
    slice: 2^29 floats are 2 GiB + 512 MiB."""
    prefix = _sliced_bundle(tmp_path / "ckpt" / "model.ckpt", shape)
    line = one_error_line(read_variable(tmp_path, prefix, "w"))
    count = int(np.prod(shape, dtype=object))
    assert line == (f"error: {prefix}.index: w: shape {shape} declares {count:,} elements, more "
                    "than its files hold (24 bytes)"), line


def test_a_sliced_tensor_within_its_files_reads(tmp_path):
    prefix = _sliced_bundle(tmp_path / "ckpt" / "model.ckpt", [6, 1])
    from porting.read.open import open_reader

    np.testing.assert_array_equal(open_reader(prefix).read("w"),
                                  np.arange(6, dtype=np.float32).reshape(6, 1))


def _v1_table(path: Path, name: str, shape, extents) -> Path:
    """A V1 checkpoint (SavedTensorSlices) declaring float tensor ``name`` of ``shape`` stored
    as one slice ``extents`` of six floats."""
    meta = _bytes(1, _bytes(1, name.encode()) + _bytes(2, _shape(shape)) + _int(3, 1)
                  + _bytes(4, _slice(extents)))
    tensor = _key(5, 2) + _varint(len(WEIGHTS)) + WEIGHTS  # float_val, packed
    saved = _bytes(1, name.encode()) + _bytes(2, _slice(extents)) + _bytes(3, tensor)
    return write_table(path, {b"": _bytes(1, meta), slice_key(name, extents): _bytes(2, saved)})


def test_a_v1_tensor_declaring_more_than_its_table_holds_is_refused_before_allocating(tmp_path):
    path = _v1_table(tmp_path / "model.ckpt", "w", [1 << 28, 6], ((0, 1), (0, 6)))
    line = one_error_line(read_variable(tmp_path, path, "w"))
    assert line.startswith(f"error: {path}: w: shape [268435456, 6] declares 1,610,612,736 "
                           "elements, more than its files hold ("), line


def test_a_v1_table_read_back(tmp_path):
    """The V1 builder's control: a table whose slice covers its shape reads right."""
    from porting.read.open import open_reader

    path = _v1_table(tmp_path / "model.ckpt", "w", [1, 6], ((0, 1), (0, 6)))
    np.testing.assert_array_equal(open_reader(path).read("w"),
                                  np.arange(6, dtype=np.float32).reshape(1, 6))


def test_a_snappy_block_claiming_more_than_snappy_can_expand_is_refused(tmp_path):
    """Snappy expands at most ~21:1; a block whose header claims 1.9 GB from a few bytes is
    refused before the buffer is allocated (43960f2 allowed up to 2 GiB per block)."""
    prefix = plain_bundle(tmp_path / "ckpt" / "model.ckpt")
    index = Path(f"{prefix}.index")
    contents = _block_contents(sorted({b"": bundle_header(1),
                                       b"w": bundle_entry([2, 3], WEIGHTS)}.items()))
    lie = bytearray(cramjam.snappy.compress_raw(contents))
    length, used = int(1.9e9), 0
    while lie[used] & 0x80:
        used += 1
    lie[:used + 1] = _varint(length)
    body = bytes(lie) + b"\x01"
    block = body + _mask(crc32c(body)).to_bytes(4, "little")
    meta = _stored_block(_block_contents([]), False)
    index_block = _stored_block(_block_contents([(b"w", _varint(0) + _varint(len(body) - 1))]),
                                False)
    out = block + meta + index_block
    footer = (_varint(len(block)) + _varint(len(meta) - 5) + _varint(len(block) + len(meta))
              + _varint(len(index_block) - 5))
    index.write_bytes(out + footer.ljust(FOOTER_SIZE - 8, b"\x00") + TABLE_MAGIC)
    line = one_error_line(cli(tmp_path, "inspect", prefix))
    assert line.startswith(f"error: {index}: data block at offset 0: implausible snappy size "
                           "(1,900,000,000 bytes from"), line


# --- defect 15 (inspect): sizes in Python integers ---------------------------------------------

def test_inspect_shows_the_bytes_of_a_huge_declared_shape(tmp_path):
    """43960f2 multiplied the dims in int64: [2^62, 2^62] of float32 showed 0 bytes."""
    prefix = _sliced_bundle(tmp_path / "ckpt" / "model.ckpt", [1 << 62, 1 << 62])
    run = cli(tmp_path, "inspect", prefix)
    assert run.returncode == 0, run.stderr
    expected = f"{(1 << 124) * 4:,}"
    row = next(line for line in run.stdout.splitlines() if line.startswith("w "))
    assert expected in row.split(), row
    assert f"{(1 << 124) * 4:,} bytes" in run.stdout


# --- defect 12: archives nested deep, or not files ---------------------------------------------

def test_an_archive_nested_1200_folders_deep_is_one_line(tmp_path):
    """43960f2: RecursionError (exit 70) finding the checkpoint folder."""
    archive = tmp_path / "deep.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("/".join(["a"] * 1200 + ["model.ckpt.index"]))
        info.size = 5
        tar.addfile(info, io.BytesIO(b"index"))
    line = one_error_line(cli(tmp_path, "inspect", archive))
    assert line.startswith(f"error: {archive}: refused: member 'a/a/a/") and \
        line.endswith("model.ckpt.index' is 1200 folders deep (at most 16)"), line
    assert not list((tmp_path / "tmp").iterdir())


def test_an_archive_nested_within_the_limit_is_found(tmp_path):
    from porting.read.archives import MAX_DEPTH, unpacked

    archive = tmp_path / "nested.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("/".join(["a"] * MAX_DEPTH + ["model.ckpt.index"]))
        info.size = 5
        tar.addfile(info, io.BytesIO(b"index"))
    with unpacked(archive) as folder:
        assert [p.name for p in folder.iterdir()] == ["model.ckpt.index"]
        assert len(folder.parts) - len(folder.parents[MAX_DEPTH - 1].parts) == MAX_DEPTH


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_an_archive_path_that_is_not_a_file_is_one_line(tmp_path, kind):
    archive = tmp_path / "release.tar.gz"
    if kind == "folder":
        archive.mkdir()
    elif kind == "fifo":
        os.mkfifo(archive)
    else:
        archive.symlink_to("/dev/zero")
    line = one_error_line(cli(tmp_path, "inspect", archive))
    what = {"folder": "a folder", "fifo": "a pipe", "device": "a character device"}[kind]
    assert line == f"error: {archive}: refused as archive: {what}, not a regular file"
