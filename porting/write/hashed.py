"""Write a state dict as ``<stem>-<sha256[:8]>.pth``: reproducible, atomic, torch.hub-compatible.

The file is serialised into a temporary file beside its destination (``porting.write.pth`` writes
torch.save's format without importing torch, its zip archive always named "archive"), hashed
as the bytes pass, and staged under its final, hashed name in the command's ``Outputs``
(``porting.files``), which renames it into place with its manifest and card.

``safetensors`` files are written by a small writer of the documented layout (8-byte
little-endian header length, JSON header, tensor bytes back to back) with a fixed key order,
so that they are byte-reproducible too; the safetensors package reads them (see the tests).
"""
from __future__ import annotations

import hashlib
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from porting.errors import PortError
from porting.files import Outputs, sha256_file
from porting.write.pth import CHUNK, raw_bytes, save_state_dict


@dataclass(frozen=True)
class Written:
    path: Path
    sha256: str
    unchanged: bool  # an identical file was already there
    size: int        # bytes


FORMATS = {"pth": ".pth", "safetensors": ".safetensors"}
_SAFETENSORS_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}


def save_safetensors(state_dict, metadata: dict[str, str], file) -> None:
    """Write ``state_dict`` (name -> C-contiguous little-endian numpy array) to ``file``."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name, array in state_dict.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf8")
    text += b" " * (-len(text) % 8)  # tensor data 8-byte aligned, as the reference writer does
    file.write(struct.pack("<Q", len(text)) + text)
    for array in state_dict.values():
        file.write(raw_bytes(array))


def output_format(dst: str | Path, fmt: str | None) -> str:
    """``fmt`` if given, else the format ``dst``'s suffix names, else "pth"."""
    return fmt or ("safetensors" if Path(dst).suffix == FORMATS["safetensors"] else "pth")


def hashed_path(dst: Path, sha256: str) -> Path:
    """``dir/name.pth`` -> ``dir/name-1a2b3c4d.pth`` (torch.hub's check_hash naming)."""
    return dst.with_name(f"{dst.stem}-{sha256[:8]}{dst.suffix or '.pth'}")


class _HashingWriter:
    """Passes writes through to a file while a second thread hashes them, a chunk at a time: no
    second pass over the output, and the hashing runs beside the writing (hashlib and file
    writes release the GIL). The data of a write must not change afterwards (the writers hand
    in fresh bytes and the state dict's arrays); ``sha256()`` waits for the hashing."""

    def __init__(self, file, hasher: ThreadPoolExecutor):
        self._file = file
        self._hasher = hasher
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            chunk = view[start:start + CHUNK]
            self._hasher.submit(self._digest.update, chunk)  # one worker: hashed in order
            self._file.write(chunk)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self._file.flush()

    def sha256(self) -> str:
        self._hasher.shutdown(wait=True)
        return self._digest.hexdigest()


def write_hashed(state_dict, dst: str | Path, outputs: Outputs, force: bool = False,
                 fmt: str | None = None, metadata: dict[str, str] | None = None) -> Written:
    """Stage ``state_dict`` (name -> numpy array) in ``outputs`` as the hashed sibling of ``dst``.

    ``fmt`` (default: see ``output_format``) "safetensors" writes
    ``NAME-<sha256[:8]>.safetensors`` with ``metadata`` in its header; "pth" has no place for
    metadata. Either is streamed straight into the temporary file and hashed on the way: no
    second copy of the weights in memory. An identical file already there is left as it is;
    one with other contents is replaced only with ``force``.
    """
    dst, fmt = Path(dst), output_format(dst, fmt)
    if dst.name in ("", ".", ".."):
        raise PortError(f"{str(dst)!r}: --dst needs a file name")
    if dst.suffix not in ("", *FORMATS.values()):  # a .json or .md name would meet its sidecar
        raise PortError(f"{dst}: output name must end in {FORMATS[fmt]}")
    dst = dst.with_suffix(FORMATS[fmt])
    outputs.make_folder(dst.parent)
    staged, written = stage_weights(state_dict, dst, outputs, fmt, metadata)
    written = settle_hashed(outputs, dst, written.sha256, written.size, force)
    staged.path = written.path
    if written.unchanged:
        outputs.drop(written.path)
    return written


def stage_weights(state_dict, path: Path, outputs: Outputs, fmt: str,
                  metadata: dict[str, str] | None = None):
    """(the staged file, ``Written``): ``state_dict`` in ``fmt`` staged in ``outputs`` for
    ``path``, streamed straight into the temporary file and hashed on the way (in a second
    thread, beside the writing; its tail beside the fsync)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        with outputs.stream_into(path) as staged:
            hashing = _HashingWriter(staged.file, hasher)
            if fmt == "safetensors":
                save_safetensors(state_dict, metadata or {}, hashing)
            else:
                save_state_dict(state_dict, hashing)
        sha256, size = hashing.sha256(), hashing.size
    return staged, Written(path, sha256, unchanged=False, size=size)


def settle_hashed(outputs: Outputs, dst: Path, sha256: str, size: int, force: bool) -> Written:
    """Where the file with ``sha256`` goes: ``hashed_path(dst, sha256)``, the rule of every
    file named after its contents (weights, ONNX graphs). An identical file already there is
    left as it is (``unchanged``: stage nothing), one with other contents is replaced only with
    ``force``; the caller stages the file under ``Written.path`` otherwise. A derived name:
    a link, a stream or a device there is refused (``porting.files.check_derived``), never
    followed, written through or replaced."""
    final = hashed_path(dst, sha256)
    outputs.check(final, derived=True)
    if final.exists():
        if final.is_file() and sha256_file(final) == sha256:
            return Written(final, sha256, unchanged=True, size=size)
        if not force:
            raise exists_with_other_contents(final)
    return Written(final, sha256, unchanged=False, size=size)


def exists_with_other_contents(path: Path) -> PortError:
    """The one-line error for an output that would replace another file without ``--force``."""
    return PortError(f"{path}: exists with different contents; pass --force to replace it")
