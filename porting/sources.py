"""Turn what a user passes as ``--src`` into a checkpoint: prefix, ``.index``, ``.data-*`` or folder.

TensorFlow's own reader only takes the prefix and fails on a folder or a ``.index`` path with
"not an sstable (bad magic number)"; we accept all the spellings people actually use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from porting.errors import PortError

V2 = "V2"
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_SUFFIX_RE = re.compile(r"(\.index|\.meta|\.data-\d{5}-of-\d{5})$")


@dataclass(frozen=True)
class CheckpointSource:
    prefix: Path        # what tf.train.load_checkpoint takes
    format: str         # "V2" (TensorBundle)
    files: tuple[Path, ...]  # the files that hold the variables (index first)

    def __str__(self) -> str:
        return str(self.prefix)


def _v2_source(prefix: Path) -> CheckpointSource:
    index = Path(f"{prefix}.index")
    shards = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    shards = [s for s in shards if _DATA_RE.search(s.name)]
    if not shards:
        raise PortError(f"{index}: checkpoint has no data file ({prefix.name}.data-*-of-*)")
    return CheckpointSource(prefix, V2, (index, *shards))


def _checkpoints_in(folder: Path) -> list[Path]:
    return sorted(Path(str(p)[: -len(".index")]) for p in folder.glob("*.index"))


def resolve_source(src: str | Path) -> CheckpointSource:
    """Find the checkpoint a user means by ``src``; raise PortError naming the path if none."""
    path = Path(src)
    if path.is_dir():
        found = _checkpoints_in(path)
        if len(found) != 1:
            what = "no checkpoint (*.index)" if not found else (
                f"{len(found)} checkpoints ({', '.join(p.name for p in found)}); pass one prefix")
            raise PortError(f"{path}: folder holds {what}")
        return _v2_source(found[0])
    prefix = Path(_SUFFIX_RE.sub("", str(path)))
    if Path(f"{prefix}.index").is_file():
        return _v2_source(prefix)
    if path.exists():
        raise PortError(f"{path}: not a TensorFlow checkpoint (no {prefix.name}.index beside it)")
    raise PortError(f"{path}: no such checkpoint (looked for {prefix}.index)")
