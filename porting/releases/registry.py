"""The release family: every TF-Slim checkpoint this tool ports, assembled from the release
lists the architecture folders keep beside their specs (``models/<folder>/releases.json``, as
timm keeps pretrained configs beside each model), so that an installed wheel knows the releases
too (package data).

Each release names its ``architecture``, and what that architecture's spec owns is not repeated
per release: classes (and TF-Slim's background class), the aux head, input size and
preprocessing come from its eval config (``models.spec.get_architecture(...).eval``). A release
list records the rest: title, date, official URL, archive name and members, the checkpoint
inside, its format, the paper, and the archive's sha256 (null until a maintainer has checked
one). A folder lists only its own architectures' releases; a release name is listed once in the
whole family (a second listing is an error naming both files).

A digest nobody has pinned in the registry can be pinned locally, on first use: ``fetch --pin``
writes the sha256 it saw to ``releases.lock`` in the download folder (``download_dir()``), as
``{release: {"archive": name, "sha256": hex, "url": url}}``. ``pinned_sha256`` is what later
fetches and ports check: the registry's digest, else the lock's."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import models
from models.spec import Architecture, ClassLayout, folders, get_architecture
from porting.errors import PortError
from porting.files import locked_folder, read_input, write_json

RELEASES_FILE = "releases.json"  # an architecture folder's release list, beside its spec.py
# Where the registry lives, as messages name it: every folder's release list.
REGISTRY = Path(models.__file__).resolve().parent / "*" / RELEASES_FILE
LOCK_NAME = "releases.lock"
LOCK_BYTES = 1 << 20  # a pin is ~200 bytes
# Where releases are downloaded to and looked for: checkpoints/ in the working folder (the
# repository's own when run from its root, as `make demo` does), or $PORT_WEIGHTS_CHECKPOINTS.
DOWNLOADS_ENV = "PORT_WEIGHTS_CHECKPOINTS"


@dataclass(frozen=True)
class Release:
    name: str
    architecture: str         # the spec that ports it (models/<folder>/spec.py)
    title: str
    date: str
    url: str
    archive: str              # file name of the published .tar.gz
    members: tuple[str, ...]  # what the archive holds
    checkpoint: str           # the checkpoint inside: a V2 prefix or a V1 file
    format: str               # "V1" or "V2"
    paper: str
    sha256: str | None        # of the archive; None until a maintainer pins it
    sha256_note: str
    listed_in: Path           # the folder's releases.json that lists it (and pins its digest)
    # The license the checkpoint is published under, as a model hub names it: TF-Slim's model
    # zoo publishes its checkpoints with tensorflow/models, under the Apache License 2.0 (as
    # timm's ports of them say); a release list may state another ("license" in its entry).
    license: str = "apache-2.0"

    # The class facts are the architecture's: read from its spec, never listed per release.
    @property
    def spec(self) -> Architecture:
        return get_architecture(self.architecture)

    @property
    def classes(self) -> ClassLayout:
        """The published classifier's classes (all outputs kept)."""
        config = self.spec.eval
        return ClassLayout.of(config, config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.classes.source

    @property
    def background_class(self) -> int | None:
        """The index of TF-Slim's "background" class, None where the classifier has none."""
        return 0 if self.classes.background else None

    @property
    def aux_logits(self) -> bool:
        return self.spec.has_aux


def release_lists() -> tuple[Path, ...]:
    """Every architecture folder's release list (``models/<folder>/releases.json``), in folder
    order; a folder without releases has none."""
    lists = (Path(resources.files(package)) / RELEASES_FILE for package in folders())
    return tuple(path for path in lists if path.is_file())


def _read_list(path: Path) -> dict[str, Release]:
    """The releases of one folder's list; PortError naming the file if it is unreadable or
    names an architecture of another folder (or none)."""
    try:
        data = json.loads(path.read_text())
        releases = {name: Release(name=name, listed_in=path,
                                  **{**entry, "members": tuple(entry["members"])})
                    for name, entry in data["releases"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PortError(f"{path}: unreadable release registry: {err}") from err
    ours = {spec.name for package, specs in folders().items()
            if package.rpartition(".")[2] == path.parent.name for spec in specs}
    for release in releases.values():
        if release.architecture not in ours:
            raise PortError(f"{path}: unreadable release registry: release {release.name!r} "
                            f"names architecture {release.architecture!r}, not one of this "
                            f"folder's ({', '.join(sorted(ours)) or 'none'})")
    return releases


@lru_cache(maxsize=None)
def load_registry(paths: tuple[Path, ...] | None = None) -> dict[str, Release]:
    """Every release, by name, from ``paths`` (default: every folder's list, ``release_lists``);
    PortError naming both files if two lists hold the same release name."""
    releases: dict[str, Release] = {}
    for path in release_lists() if paths is None else paths:
        for name, release in _read_list(path).items():
            if name in releases:
                raise PortError(f"{path}: release {name!r} is listed twice: in "
                                f"{releases[name].listed_in} and here")
            releases[name] = release
    return releases


def unknown_release(name: str, releases: dict[str, Release], problem: str | None = None
                    ) -> PortError:
    """The one-line error for a release name the registry lacks (``problem``: what the line
    says first), the closest names suggested before the list of all."""
    import difflib

    close = difflib.get_close_matches(name, sorted(releases), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return PortError(f"{problem or f'{REGISTRY}: no release named {name!r}'} ({hint}known: "
                     f"{', '.join(sorted(releases))})")


def get_release(name: str) -> Release:
    releases = load_registry()
    if name not in releases:
        raise unknown_release(name, releases)
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


def lock_path(folder: Path | None = None) -> Path:
    """The lock in ``folder`` (default ``download_dir()``; ``porting.loader`` keeps its own, in
    its cache)."""
    return (download_dir() if folder is None else Path(folder)) / LOCK_NAME


def read_lock(folder: Path | None = None) -> dict[str, dict[str, str]]:
    """The local pins: {release: {"archive", "sha256", "url"}}; {} when there is no lock."""
    path = lock_path(folder)
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


def pin(release: Release, sha256: str, url: str, folder: Path | None = None) -> Path:
    """Record ``sha256`` as the digest of ``release``'s archive in the lock of ``folder``
    (``lock_path``); returns the lock.

    A read-modify-write under an exclusive lock on the lock's folder (``locked_folder``), the
    file replaced atomically: concurrent pins of different releases all land."""
    path = lock_path(folder)
    with locked_folder(path.parent):
        lock = read_lock(folder)
        lock[release.name] = {"archive": release.archive, "sha256": sha256.lower(), "url": url}
        write_json(path, dict(sorted(lock.items())))
    return path


def pinned(name: str, folder: Path | None = None) -> tuple[str, Path] | None:
    """(sha256, the file that pins it) for release ``name``'s archive: the registry's digest,
    else the lock's in ``folder`` (``lock_path``; a lock entry for another archive name than
    the registry's is not a pin of this archive); None when neither pins one."""
    release = get_release(name)
    if release.sha256:
        return release.sha256.lower(), release.listed_in
    entry = read_lock(folder).get(name)
    if entry and entry["archive"] == release.archive:
        return entry["sha256"], lock_path(folder)
    return None


def pinned_sha256(name: str, folder: Path | None = None) -> str | None:
    """The sha256 release ``name``'s archive must have: registry digest, else the digest of
    the lock in ``folder`` (``lock_path``)."""
    found = pinned(name, folder)
    return found[0] if found else None
