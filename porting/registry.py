"""The release family, from ``checkpoints/registry.json`` (a data file maintainers edit).

Each entry names its ``architecture`` (a folder under ``models/``); how the checkpoint is
evaluated (crop, size, mean/std, classes) is that architecture's eval config."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from porting.errors import PortError

REGISTRY_PATH = Path(__file__).resolve().parent.parent / "checkpoints" / "registry.json"


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

    The registry lives in the source tree (checkpoints/); where the package was installed
    without it, ports still work and simply name no release.
    """
    if not REGISTRY_PATH.is_file():
        return None
    for release in load_registry().values():
        if file_name in (release.archive, release.checkpoint) and \
                release.architecture == architecture:
            return release
    return None
