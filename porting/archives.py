"""Release archives (``.tar.gz``) as ``--src``: checked member by member, unpacked into a
temporary folder that is removed afterwards.

We do not trust ``tarfile``'s extraction filters alone: every member must be a regular file or a
folder with a relative name that stays inside the target, or the whole archive is refused
before anything is written. Files are written by us (exclusive create), never by ``extract``.
"""
from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from porting.errors import PortError, first_line

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(src) -> bool:
    return str(src).endswith(ARCHIVE_SUFFIXES)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return f"of tar type {member.type!r}"


def _safe_parts(archive: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path components, or PortError if it is not a plain file or folder inside."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        raise PortError(f"{archive}: refused: member {name!r} is {_member_kind(member)}")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise PortError(f"{archive}: refused: member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts) or "\\" in name or "\0" in name:
        raise PortError(f"{archive}: refused: member {name!r} points outside the archive")
    return path.parts


def _checked_members(archive: Path, tar: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, tuple]]:
    members, seen = [], set()
    for member in tar.getmembers():
        parts = _safe_parts(archive, member)
        if not parts:  # the archive's root "." entry
            continue
        if member.isreg() and parts in seen:
            raise PortError(f"{archive}: refused: member {member.name!r} appears twice")
        seen.add(parts)
        members.append((member, parts))
    if not any(m.isreg() for m, _ in members):
        raise PortError(f"{archive}: archive holds no files")
    return members


def _unpack(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = _checked_members(archive, tar)  # all checked before anything is written
        for member, parts in members:
            path = target.joinpath(*parts)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as data, open(path, "xb") as out:
                shutil.copyfileobj(data, out, 1 << 20)


def _checkpoint_folder(root: Path) -> Path:
    """Where the checkpoint files are: the root, or the one folder an archive wraps them in."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return _checkpoint_folder(entries[0])
    return root


@contextlib.contextmanager
def unpacked(archive: str | Path) -> Iterator[Path]:
    """Unpack ``archive`` into a temporary folder; yield the folder holding its checkpoint."""
    archive = Path(archive)
    if not archive.is_file():
        raise PortError(f"{archive}: no such archive")
    with tempfile.TemporaryDirectory(prefix="port-weights-") as tmp:
        try:
            _unpack(archive, Path(tmp))
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise PortError(f"{archive}: not a readable tar archive: {first_line(err)}") from err
        except OSError as err:
            raise PortError(f"{archive}: cannot unpack: {err.strerror or err}") from err
        yield _checkpoint_folder(Path(tmp))
