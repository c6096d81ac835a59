"""Turn what a user passes as ``--src`` into a checkpoint: prefix, ``.index``, ``.data-*`` or folder.

TensorFlow's own reader only takes the prefix and fails on a folder or a ``.index`` path with
"not an sstable (bad magic number)"; we accept all the spellings people actually use. V1
checkpoints are one SSTable file (``model.ckpt``), or several (``model.ckpt-00000-of-00002``)
when saved sharded; they are recognised by the table's magic number.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from porting.errors import PortError
from porting.read.sstable import has_table_magic

V1, V2 = "V1", "V2"
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_SUFFIX_RE = re.compile(r"(\.index|\.meta|\.data-\d{5}-of-\d{5})$")
_V1_SHARD_RE = re.compile(r"-\d{5}-of-(\d{5})$")


@dataclass(frozen=True)
class CheckpointSource:
    prefix: Path        # what tf.train.load_checkpoint takes
    format: str         # "V2" (TensorBundle) or "V1" (SavedTensorSlices)
    files: tuple[Path, ...]  # the files that hold the variables (V2: index first)

    def __str__(self) -> str:
        return str(self.prefix)


def data_shard_path(prefix: Path, shard: int, count: int) -> Path:
    """The name TensorFlow gives shard ``shard`` of ``count`` of a V2 checkpoint's data."""
    return Path(f"{prefix}.data-{shard:05d}-of-{count:05d}")


def data_shard_of(path: Path) -> tuple[int, int]:
    """(shard, count) of a V2 data file's name, as ``_v2_source`` found it."""
    match = _DATA_RE.search(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a data shard's name")
    return int(match.group(1)), int(match.group(2))


def _is_regular(path: Path) -> bool:
    """Whether ``path`` (after symlinks) is a regular file; False if it does not exist. Only
    ``os.stat``: opening a FIFO blocks until a writer comes, and a device may never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _exists(path: Path) -> bool:
    """Whether anything (file, folder, FIFO, device, dangling link) is at ``path``."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def require_regular(paths) -> None:
    """PortError naming the first of ``paths`` that is not a regular file (checked with
    ``os.stat`` before anything opens them: a FIFO or device would hang a reader)."""
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise PortError(f"{path}: cannot read: {err.strerror}") from None
        if not stat.S_ISREG(mode):
            raise PortError(f"{path}: not a regular file ({_kind(mode)}); a checkpoint file must be one")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _v2_source(prefix: Path) -> CheckpointSource:
    index = Path(f"{prefix}.index")
    require_regular([index])
    shards = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}.data-*-of-*"))
    shards = [s for s in shards if _DATA_RE.search(s.name)]
    if not shards:
        raise PortError(f"{index}: checkpoint has no data file ({prefix.name}.data-*-of-*)")
    require_regular(shards)
    return CheckpointSource(prefix, V2, (index, *shards))


def _v1_shards(prefix: Path) -> list[Path]:
    """The files of a V1 checkpoint saved sharded, ``prefix-0000i-of-0000N``."""
    shards = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}-?????-of-?????"))
    shards = [s for s in shards if _V1_SHARD_RE.search(s.name)]
    require_regular(shards)  # before has_table_magic opens them
    return [s for s in shards if has_table_magic(s)]


def _v1_source(path: Path) -> CheckpointSource:
    """A V1 checkpoint from one of its files or the prefix of its shards."""
    if (match := _V1_SHARD_RE.search(path.name)) and _is_regular(path):
        prefix = path.with_name(path.name[: match.start()])
        return CheckpointSource(prefix, V1, tuple(_v1_shards(prefix)))
    if _is_regular(path):
        return CheckpointSource(path, V1, (path,))
    return CheckpointSource(path, V1, tuple(_v1_shards(path)))


def _is_v1_file(path: Path) -> bool:
    return _is_regular(path) and not _SUFFIX_RE.search(path.name) and has_table_magic(path)


def checkpoints_in(folder: Path) -> list[CheckpointSource]:
    """Every checkpoint in ``folder`` (not below it): V2 by their ``.index``, V1 by their table
    magic; each file regular (``require_regular``). What a bundle (``port --all``) ports."""
    found = [_v2_source(Path(str(p)[: -len(".index")])) for p in sorted(folder.glob("*.index"))]
    v1 = {_v1_source(p).prefix: _v1_source(p) for p in sorted(folder.iterdir()) if _is_v1_file(p)}
    return found + list(v1.values())


def holds(found: list[CheckpointSource]) -> str:
    """What a folder (or archive) holds when it is not exactly one checkpoint, in words."""
    if not found:
        return "no checkpoint (*.index or V1 file)"
    names = ", ".join(c.prefix.name for c in found)
    return f"{len(found)} checkpoints ({names}); pass one prefix, or port them all with --all"


def resolve_source(src: str | Path) -> CheckpointSource:
    """Find the checkpoint a user means by ``src``; raise PortError naming the path if none.

    Every file of the result is a regular file (FIFOs and devices are refused before anything
    opens them); a path that cannot be looked at (a folder that cannot be listed, a name too
    long) is a PortError too, never an OSError."""
    try:
        return _resolve(Path(src))
    except OSError as err:
        raise PortError(f"{err.filename or src}: cannot read: {err.strerror or err}") from None


def _resolve(path: Path) -> CheckpointSource:
    if path.is_dir():
        found = checkpoints_in(path)
        if len(found) != 1:
            raise PortError(f"{path}: folder holds {holds(found)}")
        return found[0]
    prefix = Path(_SUFFIX_RE.sub("", str(path)))
    if _exists(Path(f"{prefix}.index")):  # a FIFO or device there is refused, not skipped
        return _v2_source(prefix)
    if _exists(path) and not _is_regular(path):  # not a folder (above): a FIFO, a device...
        require_regular([path])
    if _is_v1_file(path) or (not _exists(path) and _v1_shards(path)):
        return _v1_source(path)
    if _exists(path):
        raise PortError(f"{path}: not a TensorFlow checkpoint (no {prefix.name}.index beside it, "
                        "and not a V1 checkpoint file)")
    raise PortError(f"{path}: no such checkpoint (looked for {prefix}.index)")
