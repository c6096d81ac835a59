"""The port, end to end: source -> reader -> name map and transforms -> state dict -> writer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from porting.convert import Conversion, PortOptions, convert
from porting.readers import open_reader
from porting.sources import CheckpointSource
from porting.writer import Written, write_hashed


@dataclass(frozen=True)
class PortResult:
    source: CheckpointSource
    variable_count: int
    conversion: Conversion
    written: Written


def port_checkpoint(src: str | Path, dst: str | Path, options: PortOptions = PortOptions(),
                    reader: str = "tf", force: bool = False) -> PortResult:
    """Convert the checkpoint at ``src`` and write ``dst``'s hashed sibling; see the CLI."""
    checkpoint = open_reader(src, reader)
    conversion = convert(checkpoint, options)
    written = write_hashed(conversion.state_dict, dst, force=force)
    return PortResult(checkpoint.source, len(checkpoint.variables()), conversion, written)
