"""Every file the tool writes goes through here: staged beside its destination, renamed into
place whole, and one error line naming the file when the disk says no.

Also the sha256 of a file, which manifests, goldens and downloads record.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from porting.errors import PortError


def cannot_write(path, err: OSError) -> PortError:
    """The one-line error for a failed write: ``PATH: cannot write: REASON``."""
    return PortError(f"{path}: cannot write: {err.strerror or err}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_beside(path: Path) -> tuple[int, Path]:
    """(open descriptor, name) of a new private file beside ``path``: the same file system, so
    that ``move_into_place`` is an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def move_into_place(tmp: Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp's are private), rename it."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@contextlib.contextmanager
def staged(path: Path):
    """Yields (file object, temporary path) beside ``path``; removed unless ``commit`` renamed it."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        tmp.unlink(missing_ok=True)


def commit(f, tmp: Path, path: Path) -> None:
    """Flush and fsync a staged file, then rename it to ``path``."""
    f.flush()
    os.fsync(f.fileno())
    move_into_place(tmp, path)


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` whole or not at all; PortError naming it on failure."""
    try:
        with staged(path) as (f, tmp):
            f.write(payload)
            commit(f, tmp, path)
    except OSError as err:
        raise cannot_write(path, err) from err


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf8"))


def write_json(path: Path, document: dict) -> None:
    import json

    write_text(path, json.dumps(document, indent=2) + "\n")
