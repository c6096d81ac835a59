"""The release family, from ``porting/data/registry.json`` (package data maintainers edit, so
that an installed wheel knows the releases too).

Each entry names its ``architecture`` (a folder under ``models/``); how the checkpoint is
evaluated (crop, size, mean/std, classes) is that architecture's eval config.

A digest nobody has pinned in the registry can be pinned locally, on first use: ``fetch --pin``
writes the sha256 it saw to ``releases.lock`` in the download folder (``download_dir()``), as
``{release: {"archive": name, "sha256": hex, "url": url}}``. ``pinned_sha256`` is what later
fetches and ports check: the registry's digest, else the lock's."""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from porting.errors import PortError
from porting.files import read_input, write_json

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "data" / "registry.json"
LOCK_NAME = "releases.lock"
LOCK_BYTES = 1 << 20  # a pin is ~200 bytes
# Where releases are downloaded to and looked for: checkpoints/ in the working folder (the
# repository's own when run from its root, as `make demo` does), or $PORT_WEIGHTS_CHECKPOINTS.
DOWNLOADS_ENV = "PORT_WEIGHTS_CHECKPOINTS"


@dataclass(frozen=True)
class Release:
    name: str
    architecture: str         # the folder under models/ whose spec ports it
    title: str
    date: str
    url: str
    archive: str              # file name of the published .tar.gz
    members: tuple[str, ...]  # what the archive holds
    checkpoint: str           # the checkpoint inside: a V2 prefix or a V1 file
    format: str               # "V1" or "V2"
    num_classes: int
    background_class: int | None
    aux_logits: bool
    paper: str
    sha256: str | None        # of the archive; None until a maintainer pins it
    sha256_note: str


@lru_cache(maxsize=None)
def load_registry(path: Path = REGISTRY_PATH) -> dict[str, Release]:
    try:
        data = json.loads(path.read_text())
        return {name: Release(name=name, **{**entry, "members": tuple(entry["members"])})
                for name, entry in data["releases"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PortError(f"{path}: unreadable release registry: {err}") from err


def get_release(name: str) -> Release:
    releases = load_registry()
    if name not in releases:
        raise PortError(f"{REGISTRY_PATH}: no release named {name!r} "
                        f"(known: {', '.join(sorted(releases))})")
    return releases[name]


def release_for(file_name: str, architecture: str) -> Release | None:
    """The release of ``architecture`` whose archive or checkpoint is called ``file_name``, if
    any (a checkpoint of another architecture under a release's name is not that release).
    Whether it *is* the release is a matter of digests (``pinned_sha256``), not names.
    """
    for release in load_registry().values():
        if file_name in (release.archive, release.checkpoint) and \
                release.architecture == architecture:
            return release
    return None


def download_dir() -> Path:
    """Where ``fetch`` downloads archives unless told otherwise, and where the lock lives:
    ``$PORT_WEIGHTS_CHECKPOINTS``, else ``checkpoints/`` in the working folder."""
    return Path(os.environ.get(DOWNLOADS_ENV) or "checkpoints")


def lock_path() -> Path:
    return download_dir() / LOCK_NAME


def read_lock() -> dict[str, dict[str, str]]:
    """The local pins: {release: {"archive", "sha256", "url"}}; {} when there is no lock."""
    path = lock_path()
    try:
        data = json.loads(read_input(path, LOCK_BYTES, "release lock"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        for name, entry in data.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("archive"), str)
                    and isinstance(entry.get("url"), str) and isinstance(entry.get("sha256"), str)
                    and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
                raise ValueError(f"entry {name!r} is not "
                                 '{"archive": NAME, "sha256": 64 lowercase hex digits, "url": URL}')
    except PortError:
        if not os.path.lexists(path):
            return {}
        raise
    except RecursionError as err:
        raise PortError(f"{path}: unreadable release lock: nested too deeply") from err
    except OSError as err:
        raise PortError(f"{path}: unreadable release lock: {err.strerror or err}") from err
    except ValueError as err:
        raise PortError(f"{path}: unreadable release lock: {err}") from err
    return data


def pin(release: Release, sha256: str, url: str) -> Path:
    """Record ``sha256`` as the digest of ``release``'s archive in the lock; returns the lock.

    A read-modify-write under an exclusive lock on the lock's folder (``flock``), the file
    replaced atomically: concurrent pins of different releases all land."""
    path = lock_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise PortError(f"{path}: cannot write: {err.strerror or err}") from err
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        lock = read_lock()
        lock[release.name] = {"archive": release.archive, "sha256": sha256.lower(), "url": url}
        write_json(path, dict(sorted(lock.items())))
    finally:
        os.close(folder)
    return path


def pinned(name: str) -> tuple[str, Path] | None:
    """(sha256, the file that pins it) for release ``name``'s archive: the registry's digest,
    else the lock's (a lock entry for another archive name than the registry's is not a pin of
    this archive); None when neither pins one."""
    release = get_release(name)
    if release.sha256:
        return release.sha256.lower(), REGISTRY_PATH
    entry = read_lock().get(name)
    if entry and entry["archive"] == release.archive:
        return entry["sha256"], lock_path()
    return None


def pinned_sha256(name: str) -> str | None:
    """The sha256 release ``name``'s archive must have: registry digest, else lock digest."""
    found = pinned(name)
    return found[0] if found else None
