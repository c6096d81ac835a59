"""Download a release archive: resumable (HTTP Range into ``NAME.part``), retried, verified.

The final file appears (by rename) only once it is complete and, when a digest is expected,
verified; a digest mismatch removes the ``.part`` too, so a bad download leaves nothing behind.

A ``.part`` is extended only when something can vouch that it is a prefix of today's file:

- the validator the server gave with it (a strong ETag, else Last-Modified), kept beside it in
  ``NAME.part.validator`` and sent back as ``If-Range``: a server that answers 200 instead of
  206 says the file changed, and the download starts again from zero (as it does when a 206
  names another ETag than the stored one: a server that ignored If-Range);
- or an expected digest, which rejects a spliced file at the end.

With neither, the download starts from zero, and a failed one keeps nothing. A body is checked
against the length the server declared (Content-Length, Content-Range, chunked framing); with
no length and no digest, a connection closed early is indistinguishable from the end of the
file, which ``Fetched.length_checked`` reports.
"""
from __future__ import annotations

import contextlib
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
from porting.files import cannot_write, sha256_file, write_text

CHUNK = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
_CONTROL_OR_SPACE_RE = re.compile("[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    verified: bool   # an expected digest was given and matched
    unchanged: bool  # the file was already there
    # the body's end was checked against a length the server declared (Content-Length,
    # Content-Range or chunked framing); False for a file that was already there
    length_checked: bool = False


class _Retryable(Exception):
    """A transfer failure worth another try (network trouble, server error, short body)."""


class _Progress:
    """A one-line progress bar, redrawn at most every 0.2 s."""

    def __init__(self, label: str, stream: TextIO):
        self.label, self.stream, self.last = label, stream, 0.0
        self.open = False  # a progress line is drawn and not yet ended

    def end_line(self) -> None:
        """End a drawn progress line, so that what is printed next starts a line of its own."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False

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
        self.open = not final


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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


def _open(url: str, offset: int, validator: str | None, timeout: float):
    try:
        request = _request(url)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
            if validator:  # "send the rest only if it is still this file, else all of it"
                request.add_header("If-Range", validator)
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        reason = _one_line(err.reason)
        if err.code == 416:  # the .part is not a prefix we can extend: start again
            return None
        if err.code >= 500 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code} {reason}") from err
        if 300 <= err.code < 400 and "infinite loop" in reason:  # urllib's words for both
            raise PortError(f"{url}: redirect loop (or more than "
                            f"{urllib.request.HTTPRedirectHandler.max_redirections} redirects)"
                            ) from err
        raise PortError(f"{url}: HTTP {err.code} {reason}") from err
    except (ValueError, http.client.InvalidURL) as err:  # bad port, control characters, ...
        raise _invalid_url(url) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # network trouble, or a malformed answer (BadStatusLine, RemoteDisconnected, ...)
        raise _Retryable(_one_line(getattr(err, "reason", None) or err or type(err).__name__)
                         ) from err


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _validator(headers) -> str | None:
    """What identifies this version of the file, for If-Range: a strong ETag (If-Range takes no
    weak one), else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag.strip()
    modified = headers.get("Last-Modified")
    return modified.strip() if modified else None


def _changed(stored: str, headers) -> bool:
    """Whether an answer names another version than the ``stored`` validator (compared with the
    header of its kind; an answer without that header names none)."""
    value = headers.get("ETag" if stored.startswith('"') else "Last-Modified")
    return value is not None and value.strip() != stored


def _discard(part: Path) -> None:
    """Remove a ``.part`` and its validator."""
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _content_length(url: str, headers) -> int | None:
    values = headers.get_all("Content-Length") or []
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].strip().isdigit():
        shown = values[0] if len(values) == 1 else ", ".join(values)
        raise PortError(f"{url}: the server sent a malformed Content-Length {shown!r}")
    return int(values[0])


def _resumable(part: Path, expected: str | None) -> bool:
    """Whether ``part`` may be extended: its validator is known, or a digest will check it."""
    return bool(expected) or _validator_file(part).exists()


def _transfer(url: str, part: Path, timeout: float, progress: _Progress,
              expected: str | None) -> bool:
    """Extend ``part`` towards the full file with one request; raise _Retryable if cut short.
    Returns whether the body's end was checked against a length the server declared."""
    marker = _validator_file(part)
    validator = (marker.read_text().strip() or None) if marker.exists() else None
    offset = part.stat().st_size if part.exists() and _resumable(part, expected) else 0
    response = _open(url, offset, validator, timeout)
    if response is None:
        _discard(part)
        raise _Retryable("server refused to resume; starting again")
    with response:
        total = None
        declared = _content_length(url, response.headers)  # a malformed one is refused
        current = _validator(response.headers)
        if response.status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise PortError(f"{url}: server answered a range request with "
                                f"{response.headers.get('Content-Range')!r}")
            if validator and _changed(validator, response.headers):  # If-Range ignored
                _discard(part)
                raise _Retryable(f"the file changed on the server ({current}, was {validator}); "
                                 "starting again")
            total = None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the whole file, whatever we asked for (with If-Range: it changed)
            offset = 0
            total = declared
        if offset == 0:  # the old validator goes first: it vouched for bytes now dropped
            marker.unlink(missing_ok=True)
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            if offset == 0 and current:  # what vouches for this .part from now on
                write_text(marker, current + "\n")
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
        return total is not None or bool(getattr(response, "chunked", False))


def download(url: str, dest: Path, expected_sha256: str | None = None, *, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0, stream: TextIO | None = None,
             pinned_in: str | None = None) -> Fetched:
    """Fetch ``url`` to ``dest``; resume a ``dest.part`` left by an earlier attempt when its
    validator or ``expected_sha256`` can vouch for it. ``pinned_in`` names where the expected
    digest comes from, for the error messages."""
    stream = stream or sys.stderr
    expected = _checked_sha256(expected_sha256) if expected_sha256 else None
    source = f" (pinned in {pinned_in})" if pinned_in else ""
    if dest.exists():
        digest = sha256_file(dest)
        if expected and digest != expected:
            raise PortError(f"{dest}: already there, but its sha256 is {digest}, expected "
                            f"{expected}{source}; delete it to download again")
        return Fetched(dest, digest, verified=bool(expected), unchanged=True)

    _request(url)  # a malformed URL is refused before anything is created
    part = dest.with_name(dest.name + ".part")
    progress = _Progress(dest.name, stream)
    try:
        length_checked = _download_part(url, part, expected, retries, backoff, timeout,
                                        progress, stream)
    finally:
        progress.end_line()  # whatever is printed next (an error) starts a line of its own

    digest = sha256_file(part)
    if expected and digest != expected:
        _discard(part)
        raise PortError(f"{dest}: sha256 mismatch: got {digest}, expected {expected}{source} "
                        f"(from {url}); nothing was kept")
    os.replace(part, dest)
    _validator_file(part).unlink(missing_ok=True)
    return Fetched(dest, digest, verified=bool(expected), unchanged=False,
                   length_checked=length_checked)


def _download_part(url: str, part: Path, expected: str | None, retries: int, backoff: float,
                   timeout: float, progress: _Progress, stream: TextIO) -> bool:
    """Bring ``part`` to the whole file, with retries; returns ``_transfer``'s length_checked."""
    for attempt in range(retries + 1):
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            return _transfer(url, part, timeout, progress, expected)
        except OSError as err:  # the network's errors are _Retryable by now: this one is local
            raise cannot_write(part, err) from err
        except _Retryable as err:
            if attempt == retries:
                if part.exists() and _resumable(part, expected):
                    kept = f"partial data kept in {part}; rerun to resume"
                else:  # nothing could vouch for it on a rerun: it would start from zero
                    with contextlib.suppress(OSError):
                        _discard(part)
                    kept = "nothing was kept: the server gave no validator to resume against"
                raise PortError(f"{url}: download failed after {retries + 1} attempts: {err} "
                                f"({kept})") from err
            delay = backoff * 2 ** attempt
            progress.end_line()
            stream.write(f"{part.name[:-len('.part')]}: {err}; retrying in {delay:g} s\n")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _checked_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise PortError(f"sha256 {value!r}: expected 64 hex digits")
    return value.lower()
