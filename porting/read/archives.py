"""Release archives (``.tar.gz``) and zip files as ``--src``: checked member by member, the
members a checkpoint reader needs unpacked into a temporary folder that is removed afterwards.

We do not trust ``tarfile``'s extraction filters alone: every member must be a regular file or a
folder with a relative name that stays inside the target, or the whole archive is refused.
Files are written by us (exclusive create), never by ``extract``, and only regular files and
folders are ever created, so no member can make a later one land outside the target.

The archive is read once, front to back (``tarfile`` stream mode over our own decompressor, no
random access), and every check happens before or while writing: a refused archive leaves
nothing behind (the temporary folder goes with the error). Limits, each a one-line PortError
naming the archive and the limit:

* total unpacked bytes (``max_bytes``, default ``DEFAULT_MAX_BYTES`` = 4 GiB): the largest
  release, Inception-ResNet-v2, unpacks to about 230 MB; 4 GiB is more than ten times that
  (room for bigger checkpoints of the family) yet still a bound that a laptop's ``$TMPDIR``
  survives. Counted on the decompressed tar stream (headers, skipped members and
  anything after the end-of-archive marker included) and checked against each member's
  declared size before a byte of it is written;
* members (``max_members``, default 64): releases hold one to three;
* compression ratio (``max_ratio``, default 200:1, bytes unpacked per byte of archive):
  checkpoint floats compress about 1.1:1, so anything far beyond is a decompression bomb. Tiny
  archives are exempt up to ``RATIO_EXEMPT_BYTES`` (1 MiB), since a tar's zero padding alone
  compresses ~100:1;
* each member's header (pax / GNU long-name records) at most ``MAX_HEADER_BYTES``, so that a
  forged header cannot make ``tarfile`` buffer gigabytes in memory;
* each member's path at most ``MAX_DEPTH`` (16) folders deep: releases nest one; a path 1200
  folders deep would overflow the recursion of creating, finding and removing its folders.

Only what a checkpoint reader needs is written: graphs (``.meta``, and the ``eval.graph`` /
``train.graph`` of the 2017 ResNet v2 releases; never read by a port) and
the ``checkpoint`` state file of a training folder are read past, not unpacked (``SKIPPED_*``);
everything else (``*.index``, ``*.data-?????-of-?????``, V1 table files, and any other file) is
unpacked as before.

Zip files (bundles of checkpoints passed around by attack code) are held to the same limits
and member rules: the end-of-central-directory record's member count and directory size are
checked before ``zipfile`` parses the directory (``MAX_ZIP_ENTRY_BYTES`` per member), every
member's declared size is counted against the limits before a byte of it is written, the bytes
actually written are counted too (``zipfile`` checks each member's CRC-32 at its end), and a
member that is a link (Unix mode in its external attributes), a device, encrypted, or there
twice refuses the whole file.

The gzip stream is read to its very end, past the tar end-of-archive marker, so that Python's
``gzip`` module checks the trailer's CRC32 and length: a damaged archive is refused, not half
read.

The temporary folder is ``$TMPDIR/port-weights-<pid>-XXXXXXXX`` (``<pid>`` the owning process),
beside its lock file ``port-weights-<pid>-XXXXXXXX.lock``, which the owner holds (``flock``) while
it lives. Each ``unpacked()`` call first removes such folders whose owner is gone: the lock is
free and no process ``<pid>`` exists here (``porting.files.stale``; a port that was SIGKILLed
cannot clean up after itself). A live owner in another PID namespace sharing the folder holds
its lock, so its folder is kept although its PID means nothing here. Folders of other users,
and names that do not match exactly, are never touched.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from porting.errors import PortError, first_line
from porting.files import hold, open_input, pid_alive, release, stale

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

DEFAULT_MAX_BYTES = 4 << 30    # total unpacked bytes; the largest release unpacks to ~230 MB
DEFAULT_MAX_MEMBERS = 64       # releases hold 1 to 3 members
DEFAULT_MAX_RATIO = 200        # unpacked : compressed; checkpoint floats compress ~1.1:1
RATIO_EXEMPT_BYTES = 1 << 20   # the ratio is not held against archives unpacking to less
MAX_HEADER_BYTES = 1 << 20     # one member's header records (pax, GNU long names)
MAX_DEPTH = 16                 # folders above a member; releases nest at most one
MAX_ZIP_ENTRY_BYTES = 8192     # one member's central-directory entry (46 bytes + a path name)

SKIPPED_NAMES = frozenset({"checkpoint"})  # the CheckpointState file of a training folder
SKIPPED_SUFFIXES = (".meta", ".graph")    # MetaGraphDef / GraphDef files: never read by a port

TEMP_PREFIX = "port-weights-"
_TEMP_RE = re.compile(r"port-weights-([1-9][0-9]{0,9})-[a-z0-9_]{8}")  # as mkdtemp names them
_CHUNK = 1 << 20


def is_archive(src) -> bool:
    return str(src).endswith(ARCHIVE_SUFFIXES)


def is_skipped(name: str) -> bool:
    """Whether a member is read past rather than unpacked (no checkpoint reader needs it)."""
    base = PurePosixPath(name).name
    return base in SKIPPED_NAMES or base.endswith(SKIPPED_SUFFIXES)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


class _Unreadable(Exception):
    """The archive's bytes are damaged (decompressor error, CRC mismatch, truncation)."""


def _check_total(archive: Path, total: int, compressed_size: int, max_bytes: int,
                 max_ratio: float) -> None:
    """Refuse if ``total`` unpacked bytes would cross a limit: ``max_bytes``, or ``max_ratio``
    times the archive's ``compressed_size`` (beyond ``RATIO_EXEMPT_BYTES``)."""
    if total > max_bytes:
        raise PortError(f"{archive}: refused: unpacks to more than "
                        f"{_size(max_bytes)} (--max-unpacked-bytes raises the limit)")
    if total > RATIO_EXEMPT_BYTES and total > max_ratio * compressed_size:
        raise PortError(f"{archive}: refused: unpacks to more than {max_ratio:g} "
                        f"times its compressed size ({_size(compressed_size)}); "
                        "checkpoint weights compress about 1.1:1")


class _LimitedStream:
    """The decompressed tar stream, counted: PortError as soon as a limit is crossed."""

    def __init__(self, archive: Path, raw: BinaryIO, compressed_size: int, max_bytes: int,
                 max_ratio: float):
        self.archive, self.raw = archive, raw
        self.max_bytes, self.max_ratio = max_bytes, max_ratio
        self.compressed_size = max(compressed_size, 1)
        self.count = 0
        self.header_limit: int | None = None  # while tarfile reads a member's header

    def check(self, total: int) -> None:
        """Refuse if ``total`` unpacked bytes would cross a limit."""
        _check_total(self.archive, total, self.compressed_size, self.max_bytes, self.max_ratio)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK
        try:
            data = self.raw.read(min(size, _CHUNK))
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise _Unreadable(first_line(err)) from err
        self.count += len(data)
        self.check(self.count)
        if self.header_limit is not None and self.count > self.header_limit:
            raise PortError(f"{self.archive}: refused: a member's header is larger than "
                            f"{_size(MAX_HEADER_BYTES)}")
        return data

    def drain(self) -> None:
        """Read to the end of the stream (for gzip: so that its CRC32 trailer is checked)."""
        while self.read(_CHUNK):
            pass


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` decompressed by its magic number (gzip, bzip2, xz), or as is (a plain tar)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"of tar type {member.type!r}"


def _safe_parts(archive: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path components, or PortError if it is not a plain file or folder inside."""
    if not ((member.isreg() and not member.issparse()) or member.isdir()):
        raise PortError(f"{archive}: refused: member {member.name!r} is {_member_kind(member)}")
    return _inside(archive, member.name, member.isdir())


def _inside(archive: Path, name: str, is_dir: bool) -> tuple[str, ...]:
    """The path components of a member named ``name``, or PortError if the name leads outside
    the target (absolute, ``..``, backslashes, NUL) or lies more than ``MAX_DEPTH`` deep."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise PortError(f"{archive}: refused: member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts) or "\\" in name or "\0" in name:
        raise PortError(f"{archive}: refused: member {name!r} points outside the archive")
    depth = len(path.parts) - (0 if is_dir else 1)
    if depth > MAX_DEPTH:
        shown = name if len(name) <= 80 else f"{name[:60]}...{name[-16:]}"
        raise PortError(f"{archive}: refused: member {shown!r} is {depth} folders deep (at most "
                        f"{MAX_DEPTH})")
    return path.parts


def _check_members(archive: Path, count: int, max_members: int) -> None:
    if count > max_members:
        raise PortError(f"{archive}: refused: holds more than {max_members} members "
                        "(releases hold at most 3)")


def _copy(data: BinaryIO, path: Path) -> None:
    with open(path, "xb") as out:
        while chunk := data.read(_CHUNK):
            out.write(chunk)


def _discard(data: BinaryIO) -> None:
    while data.read(_CHUNK):
        pass


def _unpack(archive: Path, target: Path, max_bytes: int, max_members: int,
            max_ratio: float) -> None:
    """Stream ``archive`` once, writing the members a reader needs under ``target``."""
    with open_input(archive, "archive") as raw, _decompressed(raw) as plain:
        stream = _LimitedStream(archive, plain, os.fstat(raw.fileno()).st_size, max_bytes,
                                max_ratio)
        stream.header_limit = MAX_HEADER_BYTES + tarfile.RECORDSIZE
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # reads the first header
            seen, count, written, skipped = set(), 0, 0, []
            while True:
                stream.header_limit = stream.count + MAX_HEADER_BYTES + tarfile.RECORDSIZE
                member = tar.next()
                stream.header_limit = None
                if member is None:
                    break
                count += 1
                _check_members(archive, count, max_members)
                parts = _safe_parts(archive, member)
                if not parts:  # the archive's root "." entry
                    continue
                if member.isreg() and parts in seen:
                    raise PortError(f"{archive}: refused: member {member.name!r} appears twice")
                seen.add(parts)
                path = target.joinpath(*parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                stream.check(stream.count + member.size)  # declared size, before writing
                data = tar.extractfile(member)
                if is_skipped(member.name):
                    skipped.append(member.name)
                    _discard(data)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                _copy(data, path)
                written += 1
        stream.drain()  # past the end-of-archive marker: gzip checks its CRC32 at the end
    _any_written(archive, written, skipped)


def is_zip(path: Path) -> bool:
    """Whether ``path`` (a regular file) starts like a zip file (a local file header, or the
    end record of an empty one)."""
    with open_input(path, "archive") as raw:
        return raw.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _zip_directory(archive: Path, raw: BinaryIO, size: int) -> tuple[int, int]:
    """(members, central-directory bytes) as the end-of-central-directory record declares them
    (its zip64 record where the classic one overflows), read before ``zipfile`` parses the
    directory, so that a forged count cannot make it build millions of entries."""
    tail_size = min(size, 22 + 0xFFFF)  # the record, and a comment of at most 64 KiB
    raw.seek(size - tail_size)
    tail = raw.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise _Unreadable("no end-of-central-directory record")
    members, directory = struct.unpack_from("<HI", tail, at + 10)
    if (members == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 \
            and tail[at - 20: at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", tail, at - 12)
        if offset + 56 > size:
            raise _Unreadable("zip64 end record beyond the file")
        raw.seek(offset)
        record = raw.read(56)
        if record[:4] != b"PK\x06\x06":
            raise _Unreadable("no zip64 end-of-central-directory record")
        members, directory = struct.unpack_from("<QQ", record, 32)
    raw.seek(0)
    return members, directory


_ZIP_REFUSED = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"),
                (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _zip_member_is_dir(archive: Path, info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is a folder; PortError if it is neither a folder nor a plain file
    (its Unix mode, where the zip records one, says a link or a device) or is encrypted."""
    mode = info.external_attr >> 16
    for test, what in _ZIP_REFUSED:
        if mode and test(mode):
            raise PortError(f"{archive}: refused: member {info.filename!r} is {what}")
    if info.flag_bits & 0x1:
        raise PortError(f"{archive}: refused: member {info.filename!r} is encrypted")
    return info.is_dir() or bool(mode and stat.S_ISDIR(mode))


def _unpack_zip(archive: Path, target: Path, max_bytes: int, max_members: int,
                max_ratio: float) -> None:
    """Check every member of the zip ``archive``, then write those a reader needs under
    ``target`` (the limits and rules of the module docstring)."""
    with open_input(archive, "archive") as raw:
        size = os.fstat(raw.fileno()).st_size
        members, directory = _zip_directory(archive, raw, size)
        _check_members(archive, members, max_members)
        if directory > max(members, 1) * MAX_ZIP_ENTRY_BYTES:
            raise PortError(f"{archive}: refused: its central directory ({_size(directory)}) is "
                            f"larger than {members} members need")
        with zipfile.ZipFile(raw) as zipped:
            infos = zipped.infolist()
            _check_members(archive, len(infos), max_members)
            seen, total, plan = set(), 0, []
            for info in infos:  # every member checked before anything is written
                is_dir = _zip_member_is_dir(archive, info)
                parts = _inside(archive, info.filename.rstrip("/") if is_dir else
                                info.filename, is_dir)
                if not parts:
                    continue
                if parts in seen:
                    raise PortError(f"{archive}: refused: member {info.filename!r} appears "
                                    "twice")
                seen.add(parts)
                if is_dir or is_skipped(info.filename):
                    plan.append((info, parts, is_dir))
                    continue
                total += info.file_size
                _check_total(archive, total, size, max_bytes, max_ratio)
                plan.append((info, parts, is_dir))
            written, skipped, count = 0, [], 0
            for info, parts, is_dir in plan:
                path = target.joinpath(*parts)
                if is_dir:
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                if is_skipped(info.filename):
                    skipped.append(info.filename)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as data, open(path, "xb") as out:
                    while chunk := data.read(_CHUNK):
                        count += len(chunk)
                        _check_total(archive, count, size, max_bytes, max_ratio)
                        out.write(chunk)
                written += 1
    _any_written(archive, written, skipped)


def check_stored_zip(path: Path, file: BinaryIO) -> None:
    """PortError unless the open ``file`` (``path``), if a zip (``torch.save``'s ``.pth``), holds
    only stored members whose declared sizes its own bytes cover: ``torch.save`` never
    compresses, and ``torch.load`` inflates each member whole into memory before any check,
    so one deflated member of zeros would make gigabytes from a few kilobytes. The file is
    left at its start."""
    start = file.read(4)
    file.seek(0)
    if start != b"PK\x03\x04":
        return
    size = os.fstat(file.fileno()).st_size
    try:
        members, _ = _zip_directory(path, file, size)
        if members > size // 46:  # a central-directory entry takes at least 46 bytes
            raise _Unreadable(f"declares {members} members")
        with zipfile.ZipFile(file) as zipped:
            infos = zipped.infolist()
    except (_Unreadable, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        raise PortError(f"{path}: not a readable zip file: {first_line(err)}") from err
    finally:
        file.seek(0)
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise PortError(f"{path}: refused: member {info.filename!r} is compressed, which "
                            "torch.save never does (it would be inflated whole into memory)")
    if sum(info.file_size for info in infos) > size:
        raise PortError(f"{path}: refused: its members declare more bytes than the file holds")


def _any_written(archive: Path, written: int, skipped: list[str]) -> None:
    if not written:
        if skipped:
            raise PortError(f"{archive}: archive holds no checkpoint (only "
                            f"{', '.join(skipped)}, which a port does not read)")
        raise PortError(f"{archive}: archive holds no files")


def _checkpoint_folder(root: Path) -> Path:
    """Where the checkpoint files are: the root, or the one folder an archive wraps them in."""
    while len(entries := list(root.iterdir())) == 1 and entries[0].is_dir():
        root = entries[0]
    return root


def remove_stale_folders(root: str | Path | None = None) -> list[Path]:
    """Remove ``port-weights-<pid>-XXXXXXXX`` folders (ours, by uid) under ``root`` (default
    ``$TMPDIR``) whose owner is gone (see the module docstring), with their lock files;
    return the folders removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = list(root.glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return removed
    for path in candidates:
        match = _TEMP_RE.fullmatch(path.name)
        if not match:
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        pid, lock = int(match.group(1)), _lock_of(path)
        if os.path.lexists(lock):
            if not stale(lock, pid):
                continue  # its owner holds the lock: alive, in whatever PID namespace
        elif pid == os.getpid() or pid_alive(pid):
            continue  # no lock (an older version's folder): its process, by PID, lives
        shutil.rmtree(path, ignore_errors=True)  # another run may be removing it as well
        with contextlib.suppress(OSError):
            os.unlink(lock)
        removed.append(path)
    return removed


def _lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


@contextlib.contextmanager
def _owned_folder() -> Iterator[Path]:
    """A new private folder ``$TMPDIR/port-weights-<pid>-XXXXXXXX``, its lock held while it
    exists; removed (with its lock file) when the block ends."""
    while True:
        fd, lock = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".lock")
        lock = Path(lock)
        try:
            hold(lock, fd)
        except FileNotFoundError:  # swept before it was held: make another
            continue
        finally:
            os.close(fd)
        folder = lock.with_suffix("")
        try:
            os.mkdir(folder, 0o700)
            break
        except FileExistsError:  # the name's lock was free, a folder of that name was not
            release(lock)
            lock.unlink(missing_ok=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        release(lock)
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def unpacked(archive: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
             max_members: int = DEFAULT_MAX_MEMBERS,
             max_ratio: float = DEFAULT_MAX_RATIO) -> Iterator[Path]:
    """Unpack ``archive`` into a temporary folder; yield the folder holding its checkpoint.

    PortError (nothing left behind) if the archive is unreadable, holds a member that is not a
    plain file or folder inside it, or crosses a limit: more than ``max_bytes`` unpacked
    (``--max-unpacked-bytes``), more than ``max_members`` members, or more than ``max_ratio``
    bytes unpacked per byte of archive. See the module's docstring for the defaults."""
    archive = Path(archive)
    open_input(archive, "archive").close()  # a regular file (one line otherwise), before any work
    zipped = is_zip(archive)
    remove_stale_folders()
    with _owned_folder() as tmp:
        try:
            (_unpack_zip if zipped else _unpack)(archive, Path(tmp), max_bytes, max_members,
                                                 max_ratio)
        except (_Unreadable, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
                zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as err:
            what = "zip file" if zipped else "tar archive"
            raise PortError(f"{archive}: not a readable {what}: {first_line(err)}") from err
        except OSError as err:
            raise PortError(f"{archive}: cannot unpack: {err.strerror or err}") from err
        yield _checkpoint_folder(Path(tmp))
