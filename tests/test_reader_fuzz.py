"""Mutated checkpoints: the native reader returns the right tensors or one clean PortError.

Two seeded corpora. The first: flipped bytes, truncations and zeroed ranges in index and data
files of V2 checkpoints (plain and Snappy) and V1 files; the CRCs catch most of them. The
second: mutated table contents (entry values, keys, block bytes, the index block, the footer's
handles) with every block CRC, handle and the footer recomputed afterwards, so that the parsers
behind the checksums see them; values must then equal what TensorFlow reads from the same
file, and ``--reader tf`` must not let TensorFlow abort the process on them.

Work is bounded by counts (mutations, bytes read), never by wall-clock time.
"""
from __future__ import annotations

import concurrent.futures
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import cramjam
import numpy as np
import porting
import pytest
from dtype_checkpoints import _block_contents, _mask, _varint, same

import porting.read.native
import porting.read.sstable
from porting.errors import PortError
from porting.read.open import open_reader
from porting.read.sstable import FOOTER_SIZE, TABLE_MAGIC, Table, crc32c

MUTATIONS_PER_FILE = 45
TARGETS = [("v2", ".index"), ("v2", ".data-00000-of-00001"), ("v2_snappy", ".index"),
           ("v1", ""), ("v1_snappy", "")]


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "zero", "tail"])
    at = rng.randrange(len(out))
    if kind == "flip":
        out[at] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[at:]
    elif kind == "zero":
        end = min(len(out), at + rng.randint(1, 64))
        out[at:end] = bytes(end - at)
    else:  # the footer and last blocks are where a reader is most fragile
        at = max(0, len(out) - rng.randint(1, 60))
        out[at] ^= 0xFF
    return f"{kind}@{at}", bytes(out)


def _read_everything(prefix: Path) -> dict[str, np.ndarray]:
    reader = open_reader(prefix, "native")
    return {name: reader.read(name) for name in reader.variables()}


class ReadMeter:
    """Counts the reads the native reader makes (every read goes through ``read_exact``)."""

    def __init__(self, monkeypatch):
        self.calls = self.bytes = 0
        real = porting.read.sstable.read_exact

        def counted(path, offset, size, what):
            self.calls += 1
            self.bytes += size
            return real(path, offset, size, what)

        monkeypatch.setattr(porting.read.sstable, "read_exact", counted)
        monkeypatch.setattr(porting.read.native, "read_exact", counted)

    def reset(self) -> None:
        self.calls = self.bytes = 0


def _checkpoint_bytes(prefix: Path) -> int:
    return sum(f.stat().st_size for f in prefix.parent.iterdir())


# A mutant may make the reader read more than once, never without bound: reading everything
# from an intact checkpoint here takes < 70 reads and < 4 x its size (V1 re-reads blocks).
MAX_READS_PER_CASE = 400
MAX_BYTES_FACTOR = 16


def test_mutated_checkpoints_read_right_or_fail_cleanly(checkpoints, tmp_path, monkeypatch):
    rng = random.Random(20240601)
    outcomes = {"identical": 0, "error": 0}
    meter = ReadMeter(monkeypatch)
    for flavour, suffix in TARGETS:
        original = checkpoints[flavour]
        expected = _read_everything(original)
        target_name = original.name + suffix
        data = (original.parent / target_name).read_bytes()
        for i in range(MUTATIONS_PER_FILE):
            what, mutated = _mutate(data, rng)
            case = tmp_path / f"{flavour}{suffix}-{i}"
            case.mkdir()
            for f in original.parent.iterdir():
                shutil.copy(f, case / f.name)
            (case / target_name).write_bytes(mutated)
            meter.reset()
            try:
                got = _read_everything(case / original.name)
            except PortError as err:
                message = str(err)
                assert "\n" not in message and message.startswith(str(case)), (what, message)
                outcomes["error"] += 1
                continue
            finally:
                assert meter.calls <= MAX_READS_PER_CASE, (flavour, suffix, what, meter.calls)
                assert meter.bytes <= MAX_BYTES_FACTOR * _checkpoint_bytes(original), (
                    flavour, suffix, what, meter.bytes)
            assert got.keys() == expected.keys(), (flavour, suffix, what)
            for name, value in expected.items():
                assert same(got[name], value), (flavour, suffix, what, name)
            outcomes["identical"] += 1
    assert sum(outcomes.values()) >= 200
    assert outcomes["error"] > 100  # the corpus really exercises the checks


@pytest.mark.parametrize("size", [0, 1, 47, 48])
def test_tiny_files_are_not_checkpoints(tmp_path, size):
    path = tmp_path / "model.ckpt.index"
    path.write_bytes(b"\x57" * size)
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(PortError, match=rf"^{path}: "):
        open_reader(tmp_path / "model.ckpt", "native")


# --- mutants behind valid checksums ---------------------------------------------------------

CRC_VALID_MUTANTS = 200
CLI_MUTANTS = 20  # of which at most CLI_MUTANTS_NATIVE_OK import TensorFlow (seconds each)
CLI_MUTANTS_NATIVE_OK = 1
CRC_TARGETS = [("v2", ".index"), ("v2_snappy", ".index"), ("v2_sharded", ".index"),
               ("v1", ""), ("v1_snappy", "")]
CODE_ROOT = Path(porting.__file__).resolve().parents[1]  # subprocesses run the code under test


def _stored_block(contents: bytes, snappy: bool) -> bytes:
    body = bytes(cramjam.snappy.compress_raw(contents)) if snappy else bytes(contents)
    body += b"\x01" if snappy else b"\x00"
    return body + _mask(crc32c(body)).to_bytes(4, "little")


def _table_bytes(blocks: list[bytes], separators: list[bytes], snappy: bool, rng=None) -> bytes:
    """An SSTable of data blocks ``blocks`` (contents), with fresh CRCs, handles and footer;
    ``rng`` mutates the index block's contents or the footer's handles before they are sealed."""
    out, index = bytearray(), []
    for separator, contents in zip(separators, blocks):
        at = len(out)
        out += _stored_block(contents, snappy)
        index.append((separator, _varint(at) + _varint(len(out) - at - 5)))
    meta_at = len(out)
    out += _stored_block(_block_contents([]), snappy)
    index_contents = _block_contents(index)
    if rng is not None and rng.random() < 0.5:
        index_contents = _mutate_bytes(index_contents, rng)
    index_at = len(out)
    out += _stored_block(index_contents, snappy)
    handles = [meta_at, index_at - meta_at - 5, index_at, len(out) - index_at - 5]
    if rng is not None and rng.random() >= 0.5:
        which = rng.randrange(4)
        handles[which] = rng.choice([0, 1, handles[which] + rng.randint(-8, 8), 2**63, 2**64 - 1])
        handles[which] = max(0, handles[which])
    footer = b"".join(_varint(h) for h in handles)[:FOOTER_SIZE - 8]
    return bytes(out + footer.ljust(FOOTER_SIZE - 8, b"\x00") + TABLE_MAGIC)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    if not out:
        return bytes([rng.randrange(256)])
    at = rng.randrange(len(out))
    kind = rng.choice(["flip", "byte", "truncate", "insert", "delete", "varint"])
    if kind == "flip":
        out[at] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        out[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif kind == "truncate":
        del out[at:]
    elif kind == "insert":
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif kind == "delete":
        del out[at:at + rng.randint(1, 4)]
    else:  # a huge or overlong varint where one was
        out[at:at + 1] = rng.choice([b"\xff" * 10 + b"\x01", b"\xff\xff\xff\xff\x0f",
                                     b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"])
    return bytes(out)


def _crc_valid_mutant(path: Path, rng: random.Random) -> tuple[str, bytes]:
    """The table at ``path`` with one thing changed behind valid checksums."""
    table = Table(path)
    snappy = Path(path).read_bytes()[table._handles[0][0] + table._handles[0][1]] == 1
    blocks = [[(key, bytes(value)) for key, value in table._data_block(i)]
              for i in range(len(table._handles))]
    separators = list(table._separators)
    layer = rng.choice(["value", "value", "value", "header", "key", "entries", "block",
                        "block", "index"])
    b = rng.randrange(len(blocks))
    entries = blocks[b]
    if layer in ("value", "header", "key"):
        i = 0 if layer == "header" else rng.randrange(len(entries))
        key, value = entries[i]
        if layer == "key":
            key = _mutate_bytes(key, rng)
        else:
            value = _mutate_bytes(value, rng)
        entries[i] = (key, value)
    elif layer == "entries":  # drop, duplicate or swap entries
        i, j = rng.randrange(len(entries)), rng.randrange(len(entries))
        what = rng.choice(["drop", "dup", "swap"])
        if what == "drop":
            del entries[i]
        elif what == "dup":
            entries.insert(i, entries[i])
        else:
            entries[i], entries[j] = entries[j], entries[i]
        layer = f"entries:{what}"
    contents = [_block_contents(e) for e in blocks]
    if layer == "block":
        contents[b] = _mutate_bytes(contents[b], rng)
    if layer not in ("block", "index"):  # keep separators valid: the block's last key
        separators = [e[-1][0] if e else s for e, s in zip(blocks, separators)]
    return f"{layer}@block{b}", _table_bytes(contents, separators, snappy,
                                             rng if layer == "index" else None)


TF_READ_MUTANTS = """
import pickle, sys
from porting.errors import PortError
from porting.read.open import open_reader
results = {}
for case in sys.argv[2:]:
    try:
        reader = open_reader(case, "tf")
    except PortError as err:
        results[case] = ("error", str(err))
        continue
    values = {}
    for name in reader.variables():
        try:
            values[name] = reader.read(name)
        except PortError as err:
            values[name] = ("error", str(err))
    reader.close()
    results[case] = ("values", values)
with open(sys.argv[1], "wb") as f:
    pickle.dump(results, f)
"""


def _subprocess_env(tmp_path: Path) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(CODE_ROOT), "TMPDIR": str(tmp_path / "tmp")}


def test_crc_valid_mutants_read_like_tensorflow_or_fail_cleanly(checkpoints, tmp_path,
                                                                monkeypatch):
    rng = random.Random(20260601)
    meter = ReadMeter(monkeypatch)
    accepted = []  # (case prefix, native values)
    refused_at_open, refused_at_read = [], []  # case prefixes
    for i in range(CRC_VALID_MUTANTS):
        flavour, suffix = CRC_TARGETS[i % len(CRC_TARGETS)]
        original = checkpoints[flavour]
        target = original.parent / (original.name + suffix)
        if flavour == "v1_sharded":
            target = sorted(original.parent.iterdir())[0]
        what, mutated = _crc_valid_mutant(target, rng)
        case = tmp_path / f"{i:03d}-{flavour}"
        case.mkdir()
        for f in original.parent.iterdir():
            shutil.copy(f, case / f.name)
        (case / target.name).write_bytes(mutated)
        meter.reset()
        stage = "open"
        try:
            reader = open_reader(case / original.name, "native")
            stage = "read"
            got = {name: reader.read(name) for name in reader.variables()}
        except PortError as err:
            message = str(err)
            assert "\n" not in message and message.startswith(str(case)), (what, message)
            (refused_at_open if stage == "open" else refused_at_read).append(case / original.name)
        else:
            accepted.append((case / original.name, got))
        finally:
            assert meter.calls <= MAX_READS_PER_CASE, (case, what, meter.calls)
            assert meter.bytes <= MAX_BYTES_FACTOR * _checkpoint_bytes(original), (case, what)
    assert len(refused_at_open) > 50 and len(accepted) > 10, (
        len(refused_at_open), len(refused_at_read), len(accepted))

    # TensorFlow, through --reader tf, in one process: on every mutant the native reader reads,
    # the same values; on those it refuses while reading, a PortError for those tensors. The
    # process must survive all of them (a TF abort would kill it: SIGABRT, no pickle).
    out = tmp_path / "tf.pickle"
    originals = {flavour: checkpoints[flavour] for flavour, _ in CRC_TARGETS}
    batch = [sys.executable, "-c", TF_READ_MUTANTS, str(out), *map(str, originals.values()),
             *(str(case) for case, _ in accepted), *map(str, refused_at_read)]
    # And the command line, on mutants whose index the native reader refuses (TensorFlow, given
    # them, aborted the process on many) and one it accepts (which imports TensorFlow, the
    # slow part): exit 1 with one line, or 0; never killed by a signal.
    chosen = refused_at_open[:CLI_MUTANTS - CLI_MUTANTS_NATIVE_OK] + [
        case for case, _ in accepted[:CLI_MUTANTS_NATIVE_OK]]
    commands = [batch] + [[sys.executable, "-m", "porting.cli", "inspect", str(case), "--reader",
                           "tf"] for case in chosen]

    def run_one(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env=_subprocess_env(tmp_path))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the two slow ones start first
        finished = list(pool.map(run_one, [commands[0], commands[-1], *commands[1:-1]]))
    run, runs = finished[0], dict(zip([chosen[-1], *chosen[:-1]], finished[1:]))
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    with open(out, "rb") as f:
        tf_results = pickle.load(f)
    # TF's V1 reader refuses sliced tensors and several dtypes even on intact files.
    refused_by_tf = {flavour: {name for name, value in tf_results[str(prefix)][1].items()
                               if isinstance(value, tuple)}
                     for flavour, prefix in originals.items()}
    assert not refused_by_tf["v2"] and refused_by_tf["v1"]
    differences = []
    for case, native in accepted:
        kind, tf_values = tf_results[str(case)]
        if kind != "values":
            differences.append((case, "TF refuses the file", tf_values))
            continue
        if tf_values.keys() != native.keys():
            differences.append((case, "names differ", sorted(set(tf_values) ^ set(native))))
            continue
        flavour = case.parent.name.split("-", 1)[1]
        for name, value in native.items():
            if isinstance(tf_values[name], tuple):
                if name not in refused_by_tf[flavour]:
                    differences.append((case, name, tf_values[name]))
            elif not same(value, tf_values[name]):
                differences.append((case, name, "values differ"))
    assert not differences, "\n".join(map(str, differences))
    for case in refused_at_read:
        kind, tf_values = tf_results[str(case)]
        assert kind == "error" or any(isinstance(v, tuple) for v in tf_values.values()), case

    for case, run in runs.items():
        lines = run.stderr.strip().splitlines()
        assert run.returncode in (0, 1), (case, run.returncode, run.stderr[-2000:])
        if run.returncode == 1:
            assert len(lines) == 1 and lines[0].startswith(f"error: {case.parent}"), (case, lines)
    assert list((tmp_path / "tmp").iterdir()) == []  # no link folders left behind
