"""Getting a release's archive into a folder: where from (the official URL, a mirror, or
nothing at all when offline) and which digest it must have. One code path for ``port-weights
fetch`` and ``porting.loader.load``.

- **Mirror** (``mirror=`` or ``$PORT_WEIGHTS_MIRROR``): a base URL (``https://host/path``: the
  archive is ``BASE/<archive name>``) or a local folder of archives (a path, or a ``file://``
  URL), for hosts that no longer serve the archives. A folder is copied from, under the
  download's rules (regular files only, capped, verified, nothing kept on failure).
- **Offline** (``offline=True`` or ``$PORT_WEIGHTS_OFFLINE=1``): the network is never touched.
  An archive already in the folder is checked against its pinned digest, a mirror *folder*
  may still be copied from, and anything else is a one-line error naming the archive that is
  missing and where it was looked for.
- **Digest**: ``sha256=`` if given, else the registry's, else the one pinned in the
  ``releases.lock`` of ``lock_folder`` (``registry.pinned``). Pinning a digest seen for the
  first time (trust on first use) is the caller's: ``fetch --pin`` pins at once, ``load`` once
  the archive has ported.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from porting.errors import PortError
from porting.releases import registry
from porting.releases.download import Fetched, already_there, copy_archive, download

MIRROR_ENV = "PORT_WEIGHTS_MIRROR"
OFFLINE_ENV = "PORT_WEIGHTS_OFFLINE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Mirror:
    """Where archives are taken from instead of their official URLs: a base URL or a folder."""
    url: str | None = None
    folder: Path | None = None

    @classmethod
    def parse(cls, value: str | os.PathLike) -> Mirror:
        text = os.fspath(value)
        scheme = urllib.parse.urlsplit(text).scheme.lower()
        if scheme == "file":
            return cls(folder=Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)))
        if scheme in ("http", "https"):
            return cls(url=text.rstrip("/"))
        if scheme and len(scheme) > 1:  # "C:" is no scheme; "ftp:" is one we do not speak
            raise PortError(f"mirror {text!r}: neither an http(s) URL nor a folder")
        return cls(folder=Path(text))

    def location(self, archive: str) -> str:
        return f"{self.url}/{urllib.parse.quote(archive)}" if self.url else \
            str(self.folder / archive)


def mirror_setting(value: str | os.PathLike | None = None) -> Mirror | None:
    """The mirror ``value`` names, else ``$PORT_WEIGHTS_MIRROR``'s; None when neither is set."""
    if value is None:
        value = os.environ.get(MIRROR_ENV) or None
    return Mirror.parse(value) if value else None


def offline_setting(value: bool | None = None) -> bool:
    """``value``, else what ``$PORT_WEIGHTS_OFFLINE`` says (1/true/yes/on; 0/false/no/off or
    unset: online); PortError for another word there."""
    if value is not None:
        return bool(value)
    word = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if word not in _TRUE + _FALSE:
        raise PortError(f"${OFFLINE_ENV}={word!r}: expected one of "
                        f"{', '.join(w for w in _TRUE + _FALSE if w)}")
    return word in _TRUE


@dataclass(frozen=True)
class FetchedRelease:
    release: registry.Release
    fetched: Fetched
    origin: str               # the URL or mirrored file it came from (where it was, if there)
    expected: str | None      # the digest it was checked against
    pinned_in: str | None     # where that digest comes from (None: given by the caller)


def fetch_release(release: registry.Release, folder: Path, *, url: str | None = None,
                  sha256: str | None = None, mirror: Mirror | None = None,
                  offline: bool = False, lock_folder: Path | None = None,
                  keep_partial: bool = True, progress: bool | None = None,
                  stream: TextIO | None = None) -> FetchedRelease:
    """``release``'s archive in ``folder`` (``folder/<archive name>``), fetched unless it is
    there, verified against its digest (see the module docstring). ``url`` overrides the
    mirror and the registry's URL."""
    if sha256:
        expected, pinned_in = sha256, None
    else:
        found = registry.pinned(release.name, lock_folder)
        expected, pinned_in = (found[0], str(found[1])) if found else (None, None)
    dest = Path(folder) / release.archive
    mirror_folder = mirror.folder if mirror and not url else None
    if mirror_folder is not None:
        source = mirror_folder / release.archive
        if offline and not os.path.lexists(dest) and not os.path.lexists(source):
            raise _missing(release, dest, source)
        fetched = copy_archive(source, dest, expected, stream=stream, pinned_in=pinned_in,
                               progress=progress)
        return FetchedRelease(release, fetched, str(source), expected, pinned_in)
    origin = url or (mirror.location(release.archive) if mirror else release.url)
    if offline:
        if not os.path.lexists(dest):
            raise _missing(release, dest)
        return FetchedRelease(release, already_there(dest, expected, pinned_in), str(dest),
                              expected, pinned_in)
    fetched = download(origin, dest, expected, stream=stream, pinned_in=pinned_in,
                       keep_partial=keep_partial, progress=progress)
    return FetchedRelease(release, fetched, origin, expected, pinned_in)


def _missing(release: registry.Release, dest: Path, mirrored: Path | None = None) -> PortError:
    where = f"{dest.parent}" + (f" nor in the mirror folder {mirrored.parent}" if mirrored else "")
    return PortError(f"offline: release {release.name}'s archive {release.archive} is not in "
                     f"{where}; fetch it while online, or set a mirror folder holding it "
                     f"(--mirror DIR or ${MIRROR_ENV})")
