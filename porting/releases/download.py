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

Hostile servers and folders are expected:

- the ``.part`` is this process's own file: created fresh (exclusive create, links not
  followed); one found there is extended only if it is a regular file with one link (a planted
  symbolic or hard link to another file is refused, that file untouched). While a download
  runs, its process holds the ``.part``'s lock (``flock``): a second fetch of the same archive
  into the same folder waits for it, then finds the archive there;
- a body may hold at most ``max_bytes`` (``DEFAULT_MAX_BYTES``; a declared length over it is
  refused before reading), and the whole download, retries included, must end within
  ``deadline`` seconds (``DEFAULT_DEADLINE``): a server that trickles a byte at a time, or
  never stops, is cut off. Each read also has its own ``timeout``;
- however the download ends (a failure, a full disk, SIGTERM or Ctrl-C), a ``.part`` that a
  later run can resume (its validator or a digest vouches for it) is kept, and any other is
  removed with its validator: nothing is left that nothing resumes;
- a stored validator that could not be sent back as a header (control characters) vouches for
  nothing: the ``.part`` starts again from zero;
- ``keep_partial=False`` (what ``porting.loader`` asks: its cache holds only whole files)
  keeps no ``.part`` once the call ends, resumable or not.

``copy_archive`` takes an archive from a local folder (a mirror) by the same rules: through the
held ``.part``, capped, verified, renamed into place, nothing kept on failure. Progress is drawn
with tqdm when stderr is a terminal (``porting.progress``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from porting.errors import PortError
from porting.files import cannot_write, open_input, read_input, sha256_file, write_text
from porting.progress import Progress

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 2 << 30    # the releases' archives are 90-240 MB
DEFAULT_DEADLINE = 3600.0      # seconds for a whole download, retries included
_VALIDATOR_BYTES = 4096
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


def _transfer(url: str, part: Path, out, timeout: float, deadline: float, max_bytes: int,
              progress: Progress, expected: str | None) -> bool:
    """Extend ``part`` (open as ``out``) towards the full file with one request; raise
    _Retryable if cut short. Returns whether the body's end was checked against a length the
    server declared."""
    marker = _validator_file(part)
    validator = _stored_validator(part)
    offset = os.fstat(out.fileno()).st_size if _resumable(part, expected) else 0
    response = _open(url, offset, validator, min(timeout, _left(deadline)))
    if response is None:
        _restart(out, part)
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
                _restart(out, part)
                raise _Retryable(f"the file changed on the server ({current}, was {validator}); "
                                 "starting again")
            total = None if match.group(2) == "*" else int(match.group(2))
        else:  # 200: the whole file, whatever we asked for (with If-Range: it changed)
            offset = 0
            total = declared
        if total is not None and total > max_bytes:
            raise _TooLarge(f"{url}: the server declares {total:,} bytes; at most "
                            f"{max_bytes:,} are downloaded")
        if offset == 0:  # the old validator goes first: it vouched for bytes now dropped
            marker.unlink(missing_ok=True)
        out.seek(offset)
        out.truncate()
        if offset == 0 and current and _header_safe(current):  # vouches for the .part now
            write_text(marker, current + "\n")
        done = offset
        while True:
            if time.monotonic() > deadline:
                raise _TooSlow(f"{url}: not complete after the download's deadline "
                               f"({done:,} bytes)")
            try:
                chunk = response.read1(min(CHUNK, max_bytes + 1 - done))  # what has come
            except (OSError, http.client.HTTPException) as err:
                raise _Retryable(f"transfer cut at {done} bytes: {err!r}") from err
            if not chunk:
                break
            out.write(chunk)  # a local write error is not retried (see download)
            done += len(chunk)
            if done > max_bytes:
                raise _TooLarge(f"{url}: the body runs past {max_bytes:,} bytes; at most "
                                f"{max_bytes:,} are downloaded")
            progress.update(done, total)
        out.flush()
        os.fsync(out.fileno())
        if total is not None and done != total:
            raise _Retryable(f"transfer cut at {done} of {total} bytes")
        progress.update(done, total, final=True)
        return total is not None or bool(getattr(response, "chunked", False))


def download(url: str, dest: Path, expected_sha256: str | None = None, *, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0, stream: TextIO | None = None,
             pinned_in: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
             deadline: float = DEFAULT_DEADLINE, keep_partial: bool = True,
             progress: bool | None = None) -> Fetched:
    """Fetch ``url`` to ``dest``; resume a ``dest.part`` left by an earlier attempt when its
    validator or ``expected_sha256`` can vouch for it. ``pinned_in`` names where the expected
    digest comes from, for the error messages. See the module docstring for the limits.

    ``keep_partial=False``: a download that fails keeps no ``.part`` at all, resumable or not
    (retries within this call still resume). ``progress``: draw a bar on ``stream`` (None:
    when it is a terminal; ``porting.progress``)."""
    stream = stream or sys.stderr
    expected = _checked_sha256(expected_sha256) if expected_sha256 else None
    _request(url)  # a malformed URL is refused before anything is created
    ends = time.monotonic() + deadline
    return _into_part(dest, expected, pinned_in, stream, lambda part, out: _fetch_into(
        url, dest, part, out, expected, pinned_in, retries, backoff, timeout, ends, max_bytes,
        stream, keep_partial, progress))


def _into_part(dest: Path, expected: str | None, pinned_in: str | None, stream: TextIO,
               fill) -> Fetched:
    """``dest`` as it is (``already_there``), else ``fill(part, out)`` with ``dest``'s
    ``.part`` held (``_claimed``); a ``.part`` that another process finished (or dropped)
    while this one waited sends it round again."""
    part = dest.with_name(dest.name + ".part")
    while True:
        if os.path.lexists(dest):
            return already_there(dest, expected, pinned_in)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise cannot_write(dest, err) from err
        with _claimed(part, stream) as out:
            if out is not None:
                return fill(part, out)


def copy_archive(source: Path, dest: Path, expected_sha256: str | None = None, *,
                 stream: TextIO | None = None, pinned_in: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, progress: bool | None = None) -> Fetched:
    """``download`` from a local folder (a mirror of the archives): ``source`` copied to
    ``dest`` under the same rules (a regular file, at most ``max_bytes``, through the held
    ``.part``, verified, renamed into place; nothing kept on failure)."""
    stream = stream or sys.stderr
    expected = _checked_sha256(expected_sha256) if expected_sha256 else None

    def fill(part: Path, out) -> Fetched:
        try:
            _copy_part(source, part, out, max_bytes, Progress(dest.name, stream, progress))
            return _settle(part, out, dest, expected, pinned_in, str(source),
                           length_checked=True)
        except BaseException:
            with contextlib.suppress(OSError):
                _discard(part)
            raise

    return _into_part(dest, expected, pinned_in, stream, fill)


def _copy_part(source: Path, part: Path, out, max_bytes: int, progress: Progress) -> None:
    with open_input(source, "mirrored archive") as src:
        total = os.fstat(src.fileno()).st_size
        if total > max_bytes:
            raise PortError(f"{source}: {total:,} bytes; at most {max_bytes:,} are copied")
        out.seek(0)
        out.truncate()
        done = 0
        try:
            while chunk := src.read(min(CHUNK, max_bytes + 1 - done)):
                out.write(chunk)
                done += len(chunk)
                if done > max_bytes:
                    raise PortError(f"{source}: grew past {max_bytes:,} bytes while copied")
                progress.update(done, total)
            out.flush()
            os.fsync(out.fileno())
        except OSError as err:
            raise cannot_write(part, err) from err
        finally:
            progress.end_line()


def already_there(dest: Path, expected: str | None, pinned_in: str | None) -> Fetched:
    """The archive already at ``dest``, checked against ``expected`` (if given)."""
    expected = _checked_sha256(expected) if expected else None
    digest = sha256_file(dest)  # a regular file, or a one-line refusal
    if expected and digest != expected:
        source = f" (pinned in {pinned_in})" if pinned_in else ""
        raise PortError(f"{dest}: already there, but its sha256 is {digest}, expected "
                        f"{expected}{source}; delete it to download again")
    return Fetched(dest, digest, verified=bool(expected), unchanged=True)


@contextlib.contextmanager
def _claimed(part: Path, stream: TextIO):
    """The ``.part`` opened for reading and writing, its lock held: created fresh (exclusive,
    no link followed), or one left by an earlier run if it is a regular file with one link.
    Yields None when the ``.part`` another fetch held is gone once it could be taken."""
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        try:
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:  # ELOOP: a symbolic link; ENXIO: a FIFO without a writer
            raise PortError(f"{part}: refused: not a regular file this tool made "
                            f"({err.strerror or err}); remove it to download again") from err
    except OSError as err:
        raise cannot_write(part, err) from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            what = "a hard link" if stat.S_ISREG(info.st_mode) else "not a regular file"
            raise PortError(f"{part}: refused: {what}, not a partial download this tool made; "
                            "remove it to download again")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.write(f"{part.name[:-len('.part')]}: another fetch is downloading it; "
                         "waiting\n")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            still_ours = os.stat(part, follow_symlinks=False).st_ino == info.st_ino
        except FileNotFoundError:
            still_ours = False
        if not still_ours:
            yield None
            return
        with os.fdopen(os.dup(fd), "r+b") as out:
            yield out
    finally:
        os.close(fd)


def _fetch_into(url: str, dest: Path, part: Path, out, expected: str | None,
                pinned_in: str | None, retries: int, backoff: float, timeout: float,
                deadline: float, max_bytes: int, stream: TextIO, keep_partial: bool,
                progress: bool | None) -> Fetched:
    bar = Progress(dest.name, stream, progress)
    try:
        length_checked = _download_part(url, part, out, expected, retries, backoff, timeout,
                                        deadline, max_bytes, bar, stream, keep_partial)
    finally:
        bar.end_line()  # whatever is printed next (an error) starts a line of its own
    try:
        return _settle(part, out, dest, expected, pinned_in, url, length_checked)
    except BaseException:  # SIGTERM while hashing: nothing resumes a whole file's .part
        if not keep_partial:
            with contextlib.suppress(OSError):
                _discard(part)
        raise


def _settle(part: Path, out, dest: Path, expected: str | None, pinned_in: str | None,
            origin: str, length_checked: bool) -> Fetched:
    """The whole file in ``part`` (open as ``out``) hashed, checked against ``expected`` and
    renamed to ``dest``; PortError, and nothing kept, on a mismatch."""
    out.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: out.read(CHUNK), b""):
        digest.update(chunk)
    digest = digest.hexdigest()
    if expected and digest != expected:
        _discard(part)
        source = f" (pinned in {pinned_in})" if pinned_in else ""
        raise PortError(f"{dest}: sha256 mismatch: got {digest}, expected {expected}{source} "
                        f"(from {origin}); nothing was kept")
    if os.path.lexists(dest):  # planted while we downloaded: never replaced
        _discard(part)
        raise PortError(f"{dest}: appeared during the download; nothing was kept")
    os.replace(part, dest)
    _validator_file(part).unlink(missing_ok=True)
    return Fetched(dest, digest, verified=bool(expected), unchanged=False,
                   length_checked=length_checked)


class _TooLarge(PortError):
    """The body is larger than the download may be."""


class _TooSlow(PortError):
    """The download's deadline passed."""


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _download_part(url: str, part: Path, out, expected: str | None, retries: int,
                   backoff: float, timeout: float, deadline: float, max_bytes: int,
                   progress: Progress, stream: TextIO, keep_partial: bool = True) -> bool:
    """Bring ``part`` to the whole file, with retries; returns ``_transfer``'s length_checked.
    However this ends other than in success, a ``.part`` nothing could resume is removed."""
    try:
        for attempt in range(retries + 1):
            try:
                return _transfer(url, part, out, timeout, deadline, max_bytes, progress,
                                 expected)
            except OSError as err:  # the network's errors are _Retryable by now: a local one
                raise cannot_write(part, err) from err
            except _Retryable as err:
                if attempt == retries or time.monotonic() > deadline:
                    raise PortError(f"{url}: download failed after {attempt + 1} attempt"
                                    f"{'s' * bool(attempt)}: {err} "
                                    f"({_kept(part, expected, keep_partial)})") from err
                delay = min(backoff * 2 ** attempt, _left(deadline))
                progress.end_line()
                stream.write(f"{part.name[:-len('.part')]}: {err}; retrying in {delay:g} s\n")
                time.sleep(delay)
        raise AssertionError("unreachable")
    except (_TooLarge, _TooSlow) as err:
        resumable = keep_partial and isinstance(err, _TooSlow)
        raise PortError(f"{err} ({_kept(part, expected, resumable)})") from err
    except BaseException:  # a local failure, SIGTERM, Ctrl-C: keep only what can resume
        _kept(part, expected, keep_partial)
        raise


def _kept(part: Path, expected: str | None, resumable: bool = True) -> str:
    """Keep ``part`` if a later run can resume it, else remove it; say which, in words."""
    if resumable and part.exists() and os.path.getsize(part) and _resumable(part, expected):
        return f"partial data kept in {part}; rerun to resume"
    with contextlib.suppress(OSError):
        _discard(part)
    return "nothing was kept" + ("" if not resumable else
                                 ": the server gave no validator to resume against")


def _header_safe(value: str) -> bool:
    """Whether ``value`` can be sent back as an If-Range header."""
    return value.isascii() and value.isprintable()


def _stored_validator(part: Path) -> str | None:
    """The validator kept beside ``part``, or None (none, unreadable, or not sendable as a
    header: then the ``.part`` it should vouch for starts again from zero)."""
    marker = _validator_file(part)
    if not os.path.lexists(marker):
        return None
    try:
        text = read_input(marker, _VALIDATOR_BYTES, "download validator").decode("ascii")
    except (PortError, UnicodeDecodeError):
        text = ""
    value = text.strip()
    if not value or not _header_safe(value):
        marker.unlink(missing_ok=True)
        return None
    return value


def _restart(out, part: Path) -> None:
    """Drop what ``part`` holds (and its validator): the next try starts from zero."""
    out.seek(0)
    out.truncate()
    _validator_file(part).unlink(missing_ok=True)


def _checked_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise PortError(f"sha256 {value!r}: expected 64 hex digits")
    return value.lower()
