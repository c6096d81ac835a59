"""Download a release archive: resumable (HTTP Range into ``NAME.part``), retried, verified.

The final file appears (by rename) only once it is complete and, when a digest is expected,
verified; a digest mismatch removes the ``.part`` too, so a bad download leaves nothing behind.
"""
from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from porting.errors import PortError
from porting.files import cannot_write, sha256_file

CHUNK = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
_CONTROL_OR_SPACE_RE = re.compile("[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    verified: bool   # an expected digest was given and matched
    unchanged: bool  # the file was already there


class _Retryable(Exception):
    """A transfer failure worth another try (network trouble, server error, short body)."""


class _Progress:
    """A one-line progress bar, redrawn at most every 0.2 s."""

    def __init__(self, label: str, stream: TextIO):
        self.label, self.stream, self.last = label, stream, 0.0

    def update(self, done: int, total: int | None, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        mib = f"{done / 2**20:.1f}"
        if total:
            filled = 30 * done // total
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {mib}/{total / 2**20:.1f} MiB"
        else:
            line = f"{mib} MiB"
        self.stream.write(f"\r{self.label} {line}" + ("\n" if final else ""))
        self.stream.flush()


def _invalid_url(url: str) -> PortError:
    shown = url if url.isprintable() else repr(url)  # one line, whatever the URL holds
    return PortError(f"{shown}: not a valid URL")


def _request(url: str) -> urllib.request.Request:
    """The GET request for ``url``; PortError if it is not a URL urllib can fetch."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "port-weights"})
        _ = urllib.parse.urlsplit(url).port  # a port that is no number raises
    except ValueError as err:  # "unknown url type", "Invalid IPv6 URL", "Port could not be cast"
        raise _invalid_url(url) from err
    if request.type not in ("file", "data") and not request.host:  # "http://", "ftp:///x"
        raise _invalid_url(url)
    if _CONTROL_OR_SPACE_RE.search(url):  # what http.client refuses (InvalidURL)
        raise _invalid_url(url)
    return request


def _open(url: str, offset: int, timeout: float):
    try:
        request = _request(url)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # the .part is not a prefix we can extend: start again
            return None
        if err.code >= 500 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code} {err.reason}") from err
        raise PortError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (ValueError, http.client.InvalidURL) as err:  # bad port, control characters, ...
        raise _invalid_url(url) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # network trouble, or a malformed answer (BadStatusLine, RemoteDisconnected, ...)
        raise _Retryable(str(getattr(err, "reason", None) or err or type(err).__name__)) from err


def _transfer(url: str, part: Path, timeout: float, progress: _Progress) -> None:
    """Extend ``part`` towards the full file with one request; raise _Retryable if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:
        part.unlink()
        raise _Retryable("server refused to resume; starting again")
    with response:
        total = None
        if response.status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise PortError(f"{url}: server answered a range request with "
                                f"{response.headers.get('Content-Range')!r}")
            total = None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the whole file, whatever we asked for
            offset = 0
            if response.headers.get("Content-Length"):
                total = int(response.headers["Content-Length"])
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            done = offset
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _Retryable(f"transfer cut at {done} bytes: {err!r}") from err
                if not chunk:
                    break
                out.write(chunk)  # a local write error is not retried (see download)
                done += len(chunk)
                progress.update(done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise _Retryable(f"transfer cut at {done} of {total} bytes")
        progress.update(done, total, final=True)


def download(url: str, dest: Path, expected_sha256: str | None = None, *, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0, stream: TextIO | None = None) -> Fetched:
    """Fetch ``url`` to ``dest``; resume a ``dest.part`` left by an earlier attempt."""
    stream = stream or sys.stderr
    expected = _checked_sha256(expected_sha256) if expected_sha256 else None
    if dest.exists():
        digest = sha256_file(dest)
        if expected and digest != expected:
            raise PortError(f"{dest}: already there, but its sha256 is {digest}, expected "
                            f"{expected}; delete it to download again")
        return Fetched(dest, digest, verified=bool(expected), unchanged=True)

    _request(url)  # a malformed URL is refused before anything is created
    part = dest.with_name(dest.name + ".part")
    progress = _Progress(dest.name, stream)
    for attempt in range(retries + 1):
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _transfer(url, part, timeout, progress)
            break
        except OSError as err:  # the network's errors are _Retryable by now: this one is local
            raise cannot_write(part, err) from err
        except _Retryable as err:
            if attempt == retries:
                raise PortError(f"{url}: download failed after {retries + 1} attempts: {err} "
                                f"(partial data kept in {part}; rerun to resume)") from err
            delay = backoff * 2 ** attempt
            stream.write(f"\n{dest.name}: {err}; retrying in {delay:g} s\n")
            time.sleep(delay)

    digest = sha256_file(part)
    if expected and digest != expected:
        part.unlink()
        raise PortError(f"{dest}: sha256 mismatch: got {digest}, expected {expected} "
                        f"(from {url}); nothing was kept")
    os.replace(part, dest)
    return Fetched(dest, digest, verified=bool(expected), unchanged=False)


def _checked_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise PortError(f"sha256 {value!r}: expected 64 hex digits")
    return value.lower()
