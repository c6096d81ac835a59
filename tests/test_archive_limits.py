"""Release archives as --src: size, member-count and ratio limits checked while streaming, only
the members a reader needs unpacked, the gzip CRC checked, stale temporary folders removed.

Fast (no TensorFlow): archives are built here, at most a few MB on disk; bombs are zeros that
compress ~1000:1, generated while compressing, never written uncompressed."""
from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from porting.read import archives
from porting.read.archives import DEFAULT_MAX_BYTES, unpacked
from porting.cli import main
from porting.errors import PortError


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced on demand."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, 1 << 20)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _tar_gz(path: Path, files: dict[str, bytes | int], level: int = 6) -> Path:
    """A .tar.gz with ``files``: name -> content, or -> a number of zero bytes."""
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        for name, data in files.items():
            if isinstance(data, int):
                tar.addfile(_info(name, data), _Zeros(data))
            else:
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
    return path


CHECKPOINT = {"model.ckpt.index": b"index", "model.ckpt.data-00000-of-00001": b"data"}


@pytest.fixture
def tmpdir_(tmp_path, monkeypatch) -> Path:
    """A private $TMPDIR, so that what the archive code leaves behind can be listed exactly."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def written(monkeypatch) -> dict[str, int]:
    """Bytes the archive code writes, per file name (it writes with the builtin ``open``)."""
    sizes: dict[str, int] = {}

    class Counting(io.FileIO):
        def write(self, data) -> int:
            n = super().write(data)
            sizes[Path(self.name).name] = sizes.get(Path(self.name).name, 0) + n
            return n

    def counting_open(path, mode="r", *args, **kwargs):
        if "x" in mode or "w" in mode:
            return Counting(path, mode.replace("b", ""))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(archives, "open", counting_open, raising=False)
    return sizes


def _refusal(archive: Path, **limits) -> str:
    with pytest.raises(PortError) as err:
        with unpacked(archive, **limits):
            pass
    message = str(err.value)
    assert message.startswith(f"{archive}: ") and len(message.splitlines()) == 1
    return message


# 1. limits ---------------------------------------------------------------------------------

def test_zero_bomb_is_refused_by_ratio_before_it_is_written(tmp_path, tmpdir_, written):
    """40 MiB of zeros in a ~40 KB archive: the old code wrote all of it to $TMPDIR."""
    archive = _tar_gz(tmp_path / "bomb.tar.gz",
                      {"model.ckpt.index": b"index", "model.ckpt.data-00000-of-00001": 40 << 20},
                      level=9)
    assert archive.stat().st_size < 100_000
    message = _refusal(archive)
    assert "refused: unpacks to more than 200 times its compressed size" in message
    assert sum(written.values()) < 1 << 20, written
    assert list(tmpdir_.iterdir()) == []


def test_default_size_limit_refuses_a_declared_10_gib_member_at_once(tmp_path, tmpdir_,
                                                                    written):
    """A header declaring 10 GiB is refused from the header, whatever follows it."""
    header = _info("model.ckpt.data-00000-of-00001", 10 << 30).tobuf(tarfile.PAX_FORMAT)
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(gzip.compress(header + bytes(8192)))
    message = _refusal(archive)
    assert message == (f"{archive}: refused: unpacks to more than 4.0 GiB "
                       "(--max-unpacked-bytes raises the limit)")
    assert DEFAULT_MAX_BYTES == 4 << 30
    assert written == {} and list(tmpdir_.iterdir()) == []


def test_size_limit_stops_writing_where_it_is_crossed(tmp_path, tmpdir_, written):
    """Incompressible members (the ratio is no help): nothing past max_bytes is written."""
    noise = {f"part{i}.data-0000{i}-of-00003": os.urandom(600 << 10) for i in range(3)}
    archive = _tar_gz(tmp_path / "big.tar.gz", noise)
    message = _refusal(archive, max_bytes=1 << 20)
    assert message == (f"{archive}: refused: unpacks to more than 1.0 MiB "
                       "(--max-unpacked-bytes raises the limit)")
    assert sum(written.values()) <= 1 << 20 and list(tmpdir_.iterdir()) == []
    with unpacked(archive, max_bytes=4 << 20) as folder:  # raised: the same archive unpacks
        assert sorted(p.name for p in folder.iterdir()) == sorted(noise)


def test_member_count_limit(tmp_path, tmpdir_, written):
    files = {**CHECKPOINT, **{f"junk/{i:03}": b"x" for i in range(63)}}
    archive = _tar_gz(tmp_path / "many.tar.gz", files)
    message = _refusal(archive)
    assert message == f"{archive}: refused: holds more than 64 members (releases hold at most 3)"
    assert list(tmpdir_.iterdir()) == []
    assert "more than 2 members" in _refusal(archive, max_members=2)
    with unpacked(archive, max_members=65) as folder:
        assert len(list((folder / "junk").iterdir())) == 63


def test_zeros_after_the_end_of_archive_marker_count(tmp_path, tmpdir_):
    """The stream is read to its end, so a bomb hidden after the tar's end marker is caught."""
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        for name, data in CHECKPOINT.items():
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    archive = tmp_path / "tail.tar.gz"
    with gzip.open(archive, "wb", compresslevel=9) as out:
        out.write(body.getvalue())
        zeros = bytes(1 << 20)
        for _ in range(40):
            out.write(zeros)
    assert "refused: unpacks to more than 200 times" in _refusal(archive)
    assert list(tmpdir_.iterdir()) == []


def test_a_real_release_is_far_inside_the_limits(tmp_path, tmpdir_):
    """Weights are floats, which compress ~1.1:1; the ratio exemption covers tiny archives."""
    weights = os.urandom(3 << 20)
    archive = _tar_gz(tmp_path / "release.tar.gz",
                      {"model.ckpt.index": b"index", "model.ckpt.data-00000-of-00001": weights,
                       "model.ckpt.meta": b"graph"})
    with unpacked(archive) as folder:
        assert (folder / "model.ckpt.data-00000-of-00001").read_bytes() == weights
    tiny = _tar_gz(tmp_path / "tiny.tar.gz", {"model.ckpt": 100_000})  # ~1000:1 but < 1 MiB
    with unpacked(tiny) as folder:
        assert (folder / "model.ckpt").stat().st_size == 100_000


def test_limit_refusal_through_the_cli_is_one_line(tmp_path, tmpdir_):
    archive = _tar_gz(tmp_path / "bomb.tar.gz", {"model.ckpt": 40 << 20}, level=9)
    result = CliRunner().invoke(main, ["--src", str(archive), "--dst", str(tmp_path / "m.pth")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {archive}: refused: unpacks to more than 200 ")
    assert list(tmpdir_.iterdir()) == [] and not list(tmp_path.glob("m*"))


# 2. only the needed members, one pass ------------------------------------------------------

def test_only_the_members_a_reader_needs_are_unpacked(tmp_path, tmpdir_, written):
    archive = _tar_gz(tmp_path / "release.tar.gz",
                      {**{f"wrap/{n}": d for n, d in CHECKPOINT.items()},
                       "wrap/model.ckpt.meta": 50_000, "wrap/checkpoint": b'model_checkpoint_path'})
    with unpacked(archive) as folder:
        assert folder.name == "wrap"
        assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT)
    assert set(written) == set(CHECKPOINT)


def test_an_archive_of_only_skipped_members_names_them(tmp_path, tmpdir_):
    archive = _tar_gz(tmp_path / "graph.tar.gz", {"model.ckpt.meta": b"graph"})
    message = _refusal(archive)
    assert "no checkpoint" in message and "model.ckpt.meta" in message
    assert list(tmpdir_.iterdir()) == []


def test_the_archive_is_read_once_front_to_back(tmp_path, tmpdir_, monkeypatch):
    archive = _tar_gz(tmp_path / "release.tar.gz", {**CHECKPOINT, "model.ckpt.meta": 200_000})
    seeks = []
    real_seek = gzip.GzipFile.seek

    def seek(self, offset, whence=0):
        seeks.append((offset, whence))
        return real_seek(self, offset, whence)

    monkeypatch.setattr(gzip.GzipFile, "seek", seek)
    with unpacked(archive) as folder:
        assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT)
    assert seeks == []


def test_hostile_member_after_written_ones_leaves_nothing(tmp_path, tmpdir_):
    evil = tarfile.TarInfo("link")
    evil.type, evil.linkname = tarfile.SYMTYPE, "/etc"
    archive = tmp_path / "late.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in CHECKPOINT.items():
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        tar.addfile(evil)
    assert "refused: member 'link' is a symbolic link" in _refusal(archive)
    assert list(tmpdir_.iterdir()) == []


# 3. the gzip trailer -----------------------------------------------------------------------

def _corrupt_trailer(archive: Path, at: int) -> None:
    data = bytearray(archive.read_bytes())
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("at, says", [(-8, "CRC check failed"), (-1, "Incorrect length")])
def test_a_bad_gzip_trailer_is_refused(tmp_path, tmpdir_, at, says):
    archive = _tar_gz(tmp_path / "release.tar.gz", CHECKPOINT)
    with unpacked(archive):
        pass
    _corrupt_trailer(archive, at)
    message = _refusal(archive)
    assert message.startswith(f"{archive}: not a readable tar archive: ") and says in message
    assert list(tmpdir_.iterdir()) == []


def test_a_truncated_gzip_stream_is_refused(tmp_path, tmpdir_):
    archive = _tar_gz(tmp_path / "release.tar.gz", CHECKPOINT)
    archive.write_bytes(archive.read_bytes()[:-8])  # the trailer lost, the tar intact
    assert "not a readable tar archive: " in _refusal(archive)
    assert list(tmpdir_.iterdir()) == []


# 4. temporary folders ----------------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_of_dead_processes_are_removed_and_nothing_else(tmp_path, tmpdir_):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = tmpdir_ / f"port-weights-{dead}-abcd_123"
        (stale / "wrap").mkdir(parents=True)
        (stale / "wrap" / "model.ckpt.index").write_bytes(b"left by a SIGKILLed port")
        outside = tmp_path / "target"
        outside.mkdir()
        (outside / "keep").write_bytes(b"")
        kept = [tmpdir_ / f"port-weights-{live.pid}-abcd_123",
                tmpdir_ / f"port-weights-{os.getpid()}-abcd_123",
                tmpdir_ / f"port-weights-{dead}-abc",
                tmpdir_ / f"port-weights-{dead}-abcd_1234",
                tmpdir_ / f"port-weights-{dead}-ABCD_123",
                tmpdir_ / f"port-weights-0{dead}-abcd_123",
                tmpdir_ / f"xport-weights-{dead}-abcd_123",
                tmpdir_ / "port-weights-abcd_123"]
        for folder in kept:
            folder.mkdir()
        link = tmpdir_ / f"port-weights-{dead}-link_123"
        link.symlink_to(outside)
        file = tmpdir_ / f"port-weights-{dead}-file_123"
        file.write_bytes(b"")
        archive = _tar_gz(tmp_path / "release.tar.gz", CHECKPOINT)
        with unpacked(archive) as folder:
            mine = folder
            assert folder.name.startswith(f"port-weights-{os.getpid()}-")
            assert archives._TEMP_RE.fullmatch(folder.name)
        assert not stale.exists() and not mine.exists()
        assert all(folder.is_dir() for folder in kept)
        assert link.is_symlink() and (outside / "keep").exists() and file.is_file()
    finally:
        live.kill()
        live.wait()


def test_a_sigkilled_port_is_cleaned_by_the_next_run(tmp_path, tmpdir_):
    archive = _tar_gz(tmp_path / "release.tar.gz", CHECKPOINT)
    script = ("import os, signal, tempfile, sys\n"
              f"tempfile.tempdir = {str(tmpdir_)!r}\n"
              "from porting.read.archives import unpacked\n"
              f"with unpacked({str(archive)!r}):\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert killed.wait() == -9
    left, lock = sorted(tmpdir_.iterdir())  # the folder and the lock its owner held
    assert left.name.startswith(f"port-weights-{killed.pid}-") and left.is_dir()
    assert lock.name == left.name + ".lock" and lock.is_file()
    with unpacked(archive):
        assert left not in list(tmpdir_.iterdir())
    assert list(tmpdir_.iterdir()) == []


def test_a_huge_member_header_is_refused_before_it_is_buffered(tmp_path, tmpdir_):
    """A 2 MiB pax record: tarfile would read all of it into memory; refused at 1 MiB."""
    info = _info("model.ckpt.index", 5)
    info.pax_headers = {"comment": os.urandom(1 << 20).hex()}  # incompressible-ish: no ratio
    archive = tmp_path / "header.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"index"))
    assert "refused: a member's header is larger than 1.0 MiB" in _refusal(archive)
    assert list(tmpdir_.iterdir()) == []


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:bz2", ".tar.gz"),
                                          ("w:xz", ".tgz")])
def test_other_compressions_still_unpack(tmp_path, tmpdir_, mode, suffix):
    """As before (tarfile's "r:*"): plain tar, and bzip2 / xz whatever the name says."""
    archive = tmp_path / f"release{suffix}"
    with tarfile.open(archive, mode) as tar:
        for name, data in {**CHECKPOINT, "model.ckpt.meta": b"graph"}.items():
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    with unpacked(archive) as folder:
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == CHECKPOINT
    assert list(tmpdir_.iterdir()) == []
