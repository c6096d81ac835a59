"""Every file the tool writes goes through here, under one set of rules:

- staged beside its destination under a temporary name ``.NAME.<pid>.XXXX.tmp`` and renamed
  into place whole; a later run removes temporaries whose process is gone (SIGKILL, power cut),
  told by a lock the writer holds on its temporary while it lives (``flock``), not by its PID,
  which another PID namespace sharing the folder (containers sharing /tmp) cannot see;
- a target that resolves to an input of the command (the weights being verified, the goldens
  being read, a checkpoint file) is refused, and so is an existing target that is not a regular
  file: a symbolic link, a folder, a socket. A character device or a pipe (``/dev/null``) that
  the user names is a stream: written through, never replaced, and so is a name of one of the
  process's own descriptors (``/dev/stdout``, ``/dev/fd/3``), whatever it is open on (a file
  the shell redirected stdout to: written at the descriptor's position, never truncated);
- a name the tool derives (the hashed weights ``NAME-<sha256[:8]>.pth``, their manifest and
  card, an ONNX graph) is never a stream or a link: only a regular file is replaced there
  (``check_derived``; ``Outputs.check(path, derived=True)``);
- two outputs of one command never name the same file (``same_file``);
- ``Outputs`` makes a command's outputs appear together or not at all: all are staged first,
  then renamed in the order staged (weights last), and a failure removes what was renamed;
- one error line naming the file when the disk says no.

Every file the tool reads goes through one rule too (``open_input``): it must be a regular file
(after resolving links), checked on the opened descriptor before a byte is read, so that a FIFO,
a device (``/dev/zero``) or a folder given where a file is expected is refused in one line
instead of blocking or being read forever; ``read_input`` also bounds what it reads.

Also the sha256 of a file, which manifests, goldens and downloads record.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from porting.errors import PortError


def cannot_write(path, err: OSError) -> PortError:
    """The one-line error for a failed write: ``PATH: cannot write: REASON``."""
    return PortError(f"{path}: cannot write: {err.strerror or err}")


# --- inputs --------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


class NotRegular(OSError):
    """What ``open_regular`` refuses: something other than a regular file (``kind`` says what)."""

    def __init__(self, path, kind: str):
        super().__init__(f"{kind}, not a regular file")
        self.path, self.kind = path, kind


def open_regular(path):
    """``path`` opened for binary reading if it is a regular file (after resolving links);
    ``NotRegular`` if it is not, the ``OSError`` of the open otherwise. The check is made on the
    descriptor (opened without blocking, so a FIFO cannot stall it), so nothing can swap the
    file in between. The one rule for every input; ``open_input`` words its refusals."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(path, _kind(mode))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_input(path, what: str = "file"):
    """``open_regular``, with each refusal as one PortError line naming ``path`` as ``what``."""
    try:
        return open_regular(path)
    except NotRegular as err:
        raise PortError(f"{path}: refused as {what}: {err.kind}, not a regular file") from err
    except FileNotFoundError as err:
        raise PortError(f"{path}: no such {what}") from err
    except OSError as err:
        raise PortError(f"{path}: cannot read {what}: {err.strerror or err}") from err


def check_input(path, what: str = "file") -> Path:
    """``path`` if ``open_input`` would take it, for libraries that open files by name."""
    open_input(path, what).close()
    return Path(path)


def read_input(path, limit: int, what: str = "file") -> bytes:
    """The whole of the regular file ``path``, which may hold at most ``limit`` bytes."""
    with open_input(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise PortError(f"{path}: {what} of {size:,} bytes; at most {limit:,} are read")
        data = f.read(size)  # not read(limit + 1): that reserves limit + 1 bytes up front
        while len(data) <= limit:  # and whatever more there is (grown since, or procfs's 0)
            more = f.read(min(1 << 20, limit + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > limit:  # grew while read
        raise PortError(f"{path}: {what} larger than {limit:,} bytes")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_input(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- liveness: a lock held while its owner lives ------------------------------------------
# A process marks what it owns (a staged temporary, an unpacked archive's folder) with an
# exclusive ``flock`` held until it lets go or dies; the kernel drops the lock with the process,
# whatever kills it. Whether an owner lives is then asked of the lock, never of a PID.

_HELD: dict[str, int] = {}  # path -> descriptor holding its lock, in this process


def hold(path: Path, fd: int | None = None) -> None:
    """Hold the lock of ``path`` (a file just created by this process, open as ``fd`` if given)
    until ``release``. Raises FileNotFoundError if the path no longer names that file (a sweep
    removed it before the lock was taken): the caller makes a new one."""
    own = os.open(path, os.O_RDONLY | os.O_NOFOLLOW) if fd is None else os.dup(fd)
    try:
        fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(own).st_ino:
            raise FileNotFoundError(path)
    except BaseException:
        os.close(own)
        raise
    _HELD[str(path)] = own


def release(path: Path) -> None:
    """Let go of the lock ``hold`` took on ``path`` (nothing if it holds none)."""
    fd = _HELD.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def unowned(path: Path) -> bool:
    """Whether ``path`` is a regular file (or a staged folder) whose lock nobody holds: its
    owner is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held (EWOULDBLOCK): its owner lives
        return False
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists in this PID namespace (True when we cannot tell). Only
    ever a reason to keep something: another namespace's live process may be invisible here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True  # someone else's process, or not a pid we can ask about: leave it be
    return True


def stale(owned: Path, pid: int) -> bool:
    """Whether what a process ``pid`` marked with the lock file ``owned`` was left behind: the
    lock is free (the owner is gone, in whatever namespace it ran) and no process ``pid`` lives
    here (what an older version, which took no lock, left while still running is kept)."""
    return pid != os.getpid() and unowned(owned) and not pid_alive(pid)


@contextlib.contextmanager
def locked_folder(path: Path, on_wait=None):
    """Hold the exclusive lock (``flock``) of the folder ``path`` (created if need be) for the
    block: what changes under it (a read-modify-write of a shared file, a cache entry being
    made) is changed by one process at a time, the others waiting. The kernel drops the lock
    with its holder, whatever kills it. ``on_wait()`` is called once before waiting, if another
    process holds it. PortError (``cannot_write``) if the folder cannot be made or opened."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise cannot_write(path, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


# --- temporaries ---------------------------------------------------------------------------

def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.<pid>.*.tmp`` beside ``path`` whose writer is gone (``stale``): files,
    and folders staged whole (``temporary_folder_beside``)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^./]+\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match and stale(Path(entry.path), int(match.group(1))):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)


def temporary_beside(path: Path) -> tuple[int, Path]:
    """(open descriptor, name) of a new private file beside ``path``: the same file system, so
    that ``move_into_place`` is an atomic rename. Stale temporaries of ``path`` are removed;
    this one is held (``hold``) until ``move_into_place`` or ``discard_temporary``."""
    remove_stale_temporaries(path)
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        try:
            hold(Path(tmp), fd)
            return fd, Path(tmp)
        except FileNotFoundError:  # swept before it was held: make another
            os.close(fd)


def move_into_place(tmp: Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp's are private), rename it."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    release(tmp)


def discard_temporary(tmp: Path) -> None:
    """Remove a temporary that will not be moved into place, and let go of it."""
    try:
        tmp.unlink(missing_ok=True)
    finally:
        release(tmp)


# --- targets -------------------------------------------------------------------------------

def is_stream(path: Path) -> bool:
    """Whether ``path`` is a character device or a pipe (following links): written through."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


_DESCRIPTOR_NAME = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/self/fd/(\d+)")


def descriptor_of(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout`` 1, ``/dev/stderr`` 2,
    ``/dev/fd/N`` and ``/proc/self/fd/N`` N), None for any other name. Such a name is written
    through to the descriptor itself (``write_through``): opening it anew would truncate a
    file the shell redirected stdout to, and write over what was printed before."""
    match = _DESCRIPTOR_NAME.fullmatch(os.path.normpath(str(path)))
    if match is None:
        return None
    name, fd, proc_fd = match.groups()
    return {"stdout": 1, "stderr": 2}.get(name) or int(fd or proc_fd)


def written_through(path: Path) -> bool:
    """Whether an output at ``path`` is written through (a stream or a descriptor's name), not
    staged and renamed into place."""
    return descriptor_of(path) is not None or is_stream(path)


def write_through(path: Path, payload: bytes) -> None:
    """``payload`` into the stream or descriptor ``path`` names (``written_through``); OSError
    as the system gives it."""
    fd = descriptor_of(path)
    if fd is None:
        with open(path, "wb") as stream:
            stream.write(payload)
        return
    for printed in (sys.stdout, sys.stderr):  # what was printed before comes first
        with contextlib.suppress(Exception):
            printed.flush()
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once links are resolved (whether or
    not it exists yet), or two links of one existing file."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def check_target(path: Path, inputs=()) -> None:
    """PortError unless ``path`` may be written: not an input of the command, and either new,
    a regular file (replaced whole), or a stream or descriptor (written through)."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise PortError(f"{str(path)!r}: not a file name")
    for given in inputs:
        if same_file(path, given):
            raise PortError(f"{path}: refused: it is {given}, an input of this command")
    if written_through(path):
        return
    if path.is_symlink():
        raise PortError(f"{path}: refused: a symbolic link (give its target, or another name)")
    if path.exists() and not path.is_file():
        raise PortError(f"{path}: refused: exists and is not a regular file")


def check_derived(path: Path) -> None:
    """PortError unless ``path``, a name the tool derives (``NAME-<sha256[:8]>.pth``, its
    manifest and card, an ONNX graph), is absent or a regular file: unlike a name the user
    gives, it is never a link (followed, or replaced) nor a stream or device (written
    through, or replaced). Checked without following links."""
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise cannot_write(path, err) from err
    if stat.S_ISREG(mode):
        return
    what = "a symbolic link" if stat.S_ISLNK(mode) else _kind(mode)
    raise PortError(f"{path}: refused: {what} at a name this tool derives, where it writes only "
                    "regular files; remove it")


def check_folder(path: Path) -> None:
    """PortError (``cannot_write``) unless the folder of ``path`` exists, for an output whose
    folder nothing creates (verify's report and goldens): refused before any work, not after."""
    path = Path(path)
    if written_through(path):
        return
    try:
        mode = os.stat(path.parent).st_mode
    except OSError as err:
        raise cannot_write(path, err) from err
    if not stat.S_ISDIR(mode):
        raise cannot_write(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))


def make_folders(path: Path) -> list[Path]:
    """Create the folder ``path`` with its missing parents; the folders this call made,
    deepest first (what ``remove_made`` takes away again when the outputs are not written)."""
    missing, folder = [], Path(path)
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by another process: not this call's
            continue
        made.insert(0, folder)
    return made


def remove_made(folders: list[Path]) -> None:
    """Remove the folders ``make_folders`` made, deepest first, each only while empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@dataclass
class _Staged:
    path: Path                  # where it goes
    tmp: Path | None            # the staged file (None: a stream, written at commit)
    payload: bytes | None = None


@dataclass
class Outputs:
    """The files one command writes: staged, then committed together (see the module docstring).

    Use as a context manager: anything not committed when the block ends is removed."""
    inputs: tuple = ()
    _staged: list = field(default_factory=list)
    _derived: set = field(default_factory=set)  # paths checked as derived names
    _made: list = field(default_factory=list)  # folders made for the outputs, deepest first

    def make_folder(self, path: Path) -> None:
        """Create the folder ``path`` (with its missing parents) for the outputs: removed again,
        while empty, unless they are committed. PortError (``cannot_write``) if it cannot be."""
        try:
            self._made[:0] = make_folders(path)
        except OSError as err:
            raise cannot_write(Path(path), err) from err

    def check(self, path: Path, derived: bool = False) -> None:
        """``check_target``; with ``derived`` (a name the tool derives) ``check_derived`` first,
        and the path is held to that rule whenever it is staged or committed."""
        if derived:
            self._derived.add(Path(path))
        if Path(path) in self._derived:
            check_derived(path)
        check_target(path, self.inputs)

    @contextlib.contextmanager
    def stream_into(self, path: Path):
        """Yields a ``_Staged`` whose ``file`` receives the contents; its ``path`` may be
        changed (e.g. to a name derived from the contents) before ``commit``."""
        self.check(path)
        try:
            fd, tmp = temporary_beside(path)
        except OSError as err:
            raise cannot_write(path, err) from err
        staged = _Staged(path, tmp)
        self._staged.append(staged)
        try:
            with os.fdopen(fd, "wb") as f:
                staged.file = f
                yield staged
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise cannot_write(staged.path, err) from err

    def add(self, path: Path, payload: bytes, derived: bool = False) -> None:
        """Stage ``payload`` for ``path`` (a stream gets it at commit); ``derived``: see
        ``check``."""
        self.check(path, derived)
        if written_through(path):  # never a derived name: check_derived refused it
            self._staged.append(_Staged(path, None, payload))
            return
        with self.stream_into(path) as staged:
            staged.file.write(payload)

    def drop(self, path: Path) -> None:
        """Forget a staged output (e.g. an identical file is already there)."""
        for staged in [s for s in self._staged if s.path == path]:
            self._staged.remove(staged)
            if staged.tmp is not None:
                discard_temporary(staged.tmp)

    def commit(self, last: Path | list[Path] | None = None) -> None:
        """Rename every staged file into place, in the order staged but ``last`` (a path or a
        list of them) last (the weights, so that they never stand without their manifest); on
        failure, remove the ones already renamed and raise PortError naming the file."""
        lasts = set(last) if isinstance(last, list) else {last}
        self._staged.sort(key=lambda staged: staged.path in lasts)  # stable: keeps the order
        done = []
        try:
            for staged in self._staged:
                self.check(staged.path)  # still not an input, a link or a folder
                if staged.tmp is None:
                    write_through(staged.path, staged.payload)
                else:
                    move_into_place(staged.tmp, staged.path)
                    done.append(staged.path)
            self._made = []  # they hold the outputs now
        except OSError as err:
            for path in done:
                path.unlink(missing_ok=True)
            raise cannot_write(staged.path, err) from err
        except BaseException:
            for path in done:
                path.unlink(missing_ok=True)
            raise
        finally:
            self.abandon()

    def abandon(self) -> None:
        for staged in self._staged:
            if staged.tmp is not None:
                discard_temporary(staged.tmp)
        self._staged = []
        remove_made(self._made)
        self._made = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.abandon()


# --- a folder as one output ------------------------------------------------------------------
# A command whose output is a whole folder (``release``) stages it as a private folder
# ``.NAME.<pid>.XXXX.tmp`` beside it, held as a staged file is (removed by a later run once its
# owner is gone), writes every file into it through ``Outputs``, and renames it into place
# whole: the folder appears with all its files or not at all.

def check_folder_target(path: Path, inputs=()) -> None:
    """PortError unless ``path`` may be an output folder: a name (not a stream, a link or a
    file), holding no input of the command, inside no input either."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise PortError(f"{str(path)!r}: not a folder name")
    if path.is_symlink():
        raise PortError(f"{path}: refused: a symbolic link (give its target, or another name)")
    if path.exists() and not path.is_dir():
        raise PortError(f"{path}: refused: exists and is not a folder")
    folder = path.resolve()
    for given in inputs:
        given = Path(given).resolve()
        if folder == given or folder in given.parents or given in folder.parents:
            raise PortError(f"{path}: refused: it holds or is {given}, an input of this command")


@contextlib.contextmanager
def staged_folder(path: Path):
    """Yields a new private folder beside ``path`` (the same file system), held while it
    lives; removed with everything in it unless ``place_folder`` moved it into place."""
    path = Path(path)
    made = []
    try:
        made = make_folders(path.parent)
        remove_stale_temporaries(path)
        while True:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                        dir=path.parent))
            try:
                hold(tmp)
                break
            except FileNotFoundError:  # swept before it was held: make another
                continue
    except OSError as err:
        remove_made(made)
        raise cannot_write(path, err) from err
    try:
        yield tmp
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        release(tmp)
        if not os.path.lexists(path):  # not placed: the folders made for it go too
            remove_made(made)


def place_folder(tmp: Path, path: Path, replace: bool = False) -> None:
    """Rename the staged folder ``tmp`` to ``path``: a new name or an empty folder; a folder
    with files in it only with ``replace``, which moves the old one aside first and removes
    it once the new one stands (put back if the rename fails or is interrupted)."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, 0o755)  # mkdtemp's folder is private
    try:
        if not replace or not path.exists() or not any(path.iterdir()):
            os.rename(tmp, path)  # onto an empty folder too: rename(2) replaces it
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                      dir=path.parent))
        os.rename(path, aside)  # onto the empty folder just made
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except OSError as err:
        raise cannot_write(path, err) from err


def write_output(path: Path, payload: bytes, inputs=()) -> None:
    """Write one file (or stream) by the rules above; PortError naming it on failure."""
    with Outputs(tuple(inputs)) as outputs:
        outputs.add(Path(path), payload)
        outputs.commit()


def write_text(path: Path, text: str, inputs=()) -> None:
    write_output(path, text.encode("utf8"), inputs)


def write_json(path: Path, document: dict, inputs=()) -> None:
    write_text(path, json.dumps(document, indent=2) + "\n", inputs)
