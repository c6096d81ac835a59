"""Hostile ``--src`` paths: FIFOs where checkpoint files should be, folders that cannot be
listed, prefixes TensorFlow would glob, truncated data under ``--reader tf``.

Each is bad input: one line on stderr and exit 1 (or the right values), never a hang, an exit 70
or a process killed by TensorFlow. Commands that could hang or abort run in subprocesses with a
timeout, so a regression fails the test instead of stalling or killing the test run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import porting
import pytest
from dtype_checkpoints import same

from porting.errors import PortError
from porting.read.open import open_reader, open_source
from porting.read.sources import resolve_source

CODE_ROOT = Path(porting.__file__).resolve().parents[1]  # subprocesses run the code under test


def run_python(args: list[str], tmp_path: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT), "TMPDIR": str(_tmpdir(tmp_path))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_python(["-m", "porting.cli", *args], tmp_path)


def _tmpdir(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir(exist_ok=True)
    return folder


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (
        run.returncode, run.stderr[-2000:])
    return lines[0]


def copy_checkpoint(prefix: Path, folder: Path, name: str | None = None) -> Path:
    """The files of checkpoint ``prefix`` copied into ``folder``, renamed to prefix ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = name or prefix.name
    for f in prefix.parent.iterdir():
        shutil.copy(f, folder / (name + f.name[len(prefix.name):]))
    return folder / name


# --- FIFOs and devices: refused by os.stat before anything opens them ---------------------------

@pytest.mark.parametrize("flavour,fifo_suffix,src_suffix", [
    ("v2", ".data-00000-of-00001", ""),            # the data shard (port used to hang here)
    ("v2", ".data-00000-of-00001", "/.."),          # same, --src is the folder
    ("v2", ".data-00000-of-00001", ".data-00000-of-00001"),  # --src is the FIFO itself
    ("v2", ".index", ""),
    ("v1", "", ""),                                 # a V1 checkpoint file
    ("v1_sharded", "-00001-of-00002", ""),          # one shard of a sharded V1 checkpoint
])
def test_fifo_in_place_of_a_checkpoint_file_is_refused(checkpoints, tmp_path, flavour,
                                                       fifo_suffix, src_suffix):
    prefix = copy_checkpoint(checkpoints[flavour], tmp_path / "ckpt")
    fifo = Path(f"{prefix}{fifo_suffix}")
    fifo.unlink()
    os.mkfifo(fifo)
    src = str(prefix.parent) if src_suffix == "/.." else f"{prefix}{src_suffix}"
    dst = tmp_path / "out" / "model.pth"
    run = run_cli(["port", "--src", src, "--dst", str(dst)], tmp_path)  # bounded: timeout=60
    line = one_error_line(run)
    assert line == f"error: {fifo}: not a regular file (a FIFO); a checkpoint file must be one"
    assert not (tmp_path / "out").exists()


def test_a_device_as_data_shard_is_refused(checkpoints, tmp_path):
    prefix = copy_checkpoint(checkpoints["v2"], tmp_path / "ckpt")
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.unlink()
    shard.symlink_to("/dev/zero")  # endless: hashing it would never finish
    with pytest.raises(PortError, match=rf"^{shard}: not a regular file \(a character device\)"):
        resolve_source(prefix)


def test_native_reads_refuse_a_fifo_swapped_in_after_resolving(checkpoints, tmp_path):
    """The readers' own opens check too (os.stat, then fstat on a non-blocking descriptor)."""
    prefix = copy_checkpoint(checkpoints["v2"], tmp_path / "ckpt")
    reader = open_reader(prefix, "native")
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(PortError, match=rf"^{shard}: float/f64: not a regular file$"):
        reader.read("float/f64")


# --- paths that cannot be looked at: one line, exit 1, never an OSError (exit 70) --------------

def test_a_folder_that_cannot_be_listed_is_one_line(checkpoints, tmp_path, monkeypatch):
    folder = copy_checkpoint(checkpoints["v1"], tmp_path / "ckpt").parent

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(PortError, match=rf"^{folder}: cannot read: Permission denied$"):
        resolve_source(folder)


@pytest.mark.parametrize("src", ["{long}", "{long}/model.ckpt", "{file}/model.ckpt"])
def test_unusable_src_paths_exit_1_with_one_line(tmp_path, src):
    (tmp_path / "file").write_bytes(b"not a folder")
    src = src.format(long=tmp_path / ("x" * 300), file=tmp_path / "file")
    run = run_cli(["port", "--src", src, "--dst", str(tmp_path / "out.pth")], tmp_path)
    line = one_error_line(run)
    assert line.startswith(f"error: {src}")
    assert not (tmp_path / "out.pth").exists()


# --- --reader tf: prefixes TensorFlow would glob, truncated data -------------------------------

@pytest.mark.parametrize("flavour", ["v2", "v2_sharded", "v1"])
def test_tf_reader_takes_a_prefix_with_glob_metacharacters(tf, checkpoints, tmp_path,
                                                           monkeypatch, flavour):
    monkeypatch.setattr(tempfile, "tempdir", str(_tmpdir(tmp_path)))
    prefix = copy_checkpoint(checkpoints[flavour], tmp_path / "run[1]", "model[a]*?.ckpt")
    native = open_reader(prefix, "native")
    with open_source(prefix, "tf") as opened:
        tf_reader = opened.reader
        assert tf_reader.kind == "tf"
        readable = 0
        for name in native.variables():
            try:
                value = tf_reader.read(name)
            except PortError as err:  # TF's V1 reader refuses sliced tensors and some dtypes
                assert flavour == "v1" and "\n" not in str(err), str(err)
                continue
            assert same(native.read(name), value), name
            readable += 1
        assert readable >= 10
        assert len(list(_tmpdir(tmp_path).iterdir())) == 1  # the link folder, while open
    assert list(_tmpdir(tmp_path).iterdir()) == []  # the link folder is gone


def test_tf_reader_failing_to_open_leaves_no_links(tf, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(_tmpdir(tmp_path)))
    prefix = copy_checkpoint(checkpoints["v2"], tmp_path / "x", "m[0].ckpt")

    def refuse(prefix):
        raise tf.errors.NotFoundError(None, None, f"nothing at {prefix}\nsecond line")

    monkeypatch.setattr(tf.train, "load_checkpoint", refuse)
    with pytest.raises(PortError, match=rf"^{prefix}.index: unreadable checkpoint index: "
                                        rf"nothing at {prefix}$".replace("[", r"\[")):
        open_reader(prefix, "tf")
    assert list(_tmpdir(tmp_path).iterdir()) == []


TF_READ_ALL = """
import sys
from porting.errors import PortError
from porting.read.open import open_source
for prefix, damaged in zip(sys.argv[1::2], sys.argv[2::2]):
    outcomes = []
    with open_source(prefix, "tf") as opened:
        for name in opened.reader.variables():
            try:
                opened.reader.read(name)
                outcomes.append("ok")
            except PortError as err:
                assert "\\n" not in str(err) and str(err).startswith(damaged), str(err)
                outcomes.append("error")
    print(" ".join(outcomes))
"""


def test_tf_reader_on_damaged_data_fails_cleanly(checkpoints, tmp_path):
    """TensorFlow raises IndexError on a short read, then aborts the process on the next
    lookup; a flipped byte is a DataLossError. Both are PortErrors, and the process lives.
    (One subprocess for both cases: importing TensorFlow is most of the time.)"""
    args = []
    for damage in ("truncate", "flip"):
        prefix = copy_checkpoint(checkpoints["v2"], tmp_path / damage)
        shard = Path(f"{prefix}.data-00000-of-00001")
        data = bytearray(shard.read_bytes())
        if damage == "truncate":
            del data[100:]
        else:
            data[len(data) // 2] ^= 0x10
        shard.write_bytes(bytes(data))
        args += [str(prefix), str(shard)]
    run = run_python(["-c", TF_READ_ALL, *args], tmp_path)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    for outcomes in map(str.split, run.stdout.splitlines()):
        assert "error" in outcomes and "ok" in outcomes and len(outcomes) == 22, outcomes
    assert len(run.stdout.splitlines()) == 2
    assert list(_tmpdir(tmp_path).iterdir()) == []


def test_tf_cli_on_truncated_data_is_one_line(checkpoints, tmp_path):
    """``port --reader tf`` stops at the architecture check on these test checkpoints before
    reading tensors; ``inspect`` reads the index, so truncate the index itself."""
    prefix = copy_checkpoint(checkpoints["v2"], tmp_path / "ckpt")
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[:-10])
    run = run_cli(["inspect", str(prefix), "--reader", "tf"], tmp_path)
    assert one_error_line(run).startswith(f"error: {index}: ")


def test_tf_readable_prefix_for_the_oracles(tf, checkpoints, tmp_path, monkeypatch):
    """What ``verify --src`` needs: a prefix TensorFlow reads as the checkpoint's files."""
    from porting.read.tf import tf_readable_prefix

    monkeypatch.setattr(tempfile, "tempdir", str(_tmpdir(tmp_path)))
    plain = resolve_source(checkpoints["v2"])
    with tf_readable_prefix(plain) as prefix:
        assert prefix == str(plain.prefix)
    source = resolve_source(copy_checkpoint(checkpoints["v2"], tmp_path / "a[b]", "m?.ckpt"))
    with tf_readable_prefix(source) as prefix:
        reader = tf.train.load_checkpoint(prefix)
        assert same(reader.get_tensor("float/f64"), open_reader(source.prefix).read("float/f64"))
    assert list(_tmpdir(tmp_path).iterdir()) == []
