"""Write a state dict as ``<stem>-<sha256[:8]>.pth``: reproducible, atomic, torch.hub-compatible.

torch.save embeds the archive name in the zip and defaults it to the file's stem, so the same
tensors saved under two names differ byte for byte. We serialise to memory (archive name fixed
by torch to "archive"), hash those bytes, and only then write them under their final name.

``safetensors`` files are written by a small writer of the documented layout (8-byte
little-endian header length, JSON header, tensor bytes back to back) with a fixed key order,
so that they are byte-reproducible too; the safetensors package reads them (see the tests).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from porting.errors import PortError


@dataclass(frozen=True)
class Written:
    path: Path
    sha256: str
    unchanged: bool  # an identical file was already there


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def serialize(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def serialize_safetensors(state_dict, metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    chunks, offset = [], 0
    for name, tensor in state_dict.items():
        array = tensor.detach().contiguous().numpy()
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf8")
    text += b" " * (-len(text) % 8)  # tensor data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def hashed_path(dst: Path, sha256: str) -> Path:
    """``dir/name.pth`` -> ``dir/name-1a2b3c4d.pth`` (torch.hub's check_hash naming)."""
    return dst.with_name(f"{dst.stem}-{sha256[:8]}{dst.suffix or '.pth'}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_hashed(state_dict, dst: str | Path, force: bool = False, fmt: str = "pth",
                 metadata: dict[str, str] | None = None) -> Written:
    """Serialise ``state_dict`` and store it as the hashed sibling of ``dst``.

    ``fmt`` "safetensors" writes ``NAME-<sha256[:8]>.safetensors`` with ``metadata`` in its
    header; "pth" has no place for metadata.
    """
    dst = Path(dst)
    if fmt == "safetensors":
        payload = serialize_safetensors(state_dict, metadata or {})
        dst = dst.with_suffix(".safetensors")
    else:
        payload = serialize(state_dict)
    sha256 = hashlib.sha256(payload).hexdigest()
    final = hashed_path(dst, sha256)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if final.is_file() and sha256_file(final) == sha256:
                return Written(final, sha256, unchanged=True)
            if not force:
                raise PortError(f"{final}: exists with different contents; pass --force to replace it")
        atomic_write(final, payload)
    except OSError as err:
        raise PortError(f"{err.filename or final}: cannot write: {err.strerror or err}") from err
    return Written(final, sha256, unchanged=False)
