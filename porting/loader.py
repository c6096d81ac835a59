"""One line from a release name to the exact PyTorch model and its preprocessing:

    from porting import load
    model, preprocess = load("ens_adv_inception_resnet_v2")
    logits = model(preprocess("photo.jpg").unsqueeze(0))

``load(NAME)`` fetches the release's archive (``porting.releases.fetch``, the code of
``port-weights fetch``: the pinned digest checked, or the digest seen first pinned once the
archive has ported: trust on first use, recorded in the cache's ``releases.lock`` as ``fetch
--pin`` records it), ports it (``porting.pipeline``), keeps the ported ``.pth`` and its manifest
in the cache, and returns the model in eval mode with the architecture's own TF-Slim eval
preprocessing as a callable. Later calls take the cached file after checking its sha256 (on the
descriptor that is then loaded) and, when a digest is pinned, that it was ported from that
archive; nothing is downloaded.

The cache (``cache_folder``): ``$PORT_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/tf-porting``, else
``~/.cache/tf-porting``::

    releases.lock                         the digests trusted on first use
    <release>/<variant>/<release>-<sha256[:8]>.pth   and its manifest (.json)
    archives/                             an archive while it is fetched and ported, then removed

``<variant>`` names the port options (``1000``, ``1001-no-aux``, ``1000-fold-bn-ema``, ...).
Only whole files stand there: the download keeps no ``.part`` once the call ends, the port
stages and renames its outputs together (``porting.files.Outputs``), and a failure (a corrupt
or truncated download, a digest mismatch, a full disk, SIGTERM or SIGHUP) removes the archive
and every staged file before the error is raised (before the signal takes its default course).

Several processes loading one release at once take turns under a lock on the release's cache
folder (``porting.files.locked_folder``): the first downloads and ports, the others then find
its file. A cached file is read without the lock (its outputs appear by atomic renames).

``offline`` (or ``$PORT_WEIGHTS_OFFLINE=1``) never touches the network: a cache hit loads, a
miss is one error naming the cached port and the archive that are missing. ``mirror`` (or
``$PORT_WEIGHTS_MIRROR``): a base URL or a local folder of archives, for hosts that no longer
serve them (``porting.releases.fetch``). Progress bars (tqdm) on download and port when stderr
is a terminal (``progress``).

A path instead of a name: a ported ``.pth`` / ``.safetensors`` is loaded; any source ``port``
takes (a checkpoint, a release archive, Keras weights) is ported into a temporary folder, not
cached.

Imports no torch until ``load`` (or a ``Preprocess``) runs.
"""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.spec import EvalConfig, architecture_of_model
from porting.convert import PortOptions
from porting.errors import PortError, Terminated
from porting.files import locked_folder
from porting.pipeline import PORT_STAGES, port_checkpoint
from porting.preprocess import METHODS, TF_SLIM, TIMM, load_image, summary, tf_slim_eval, timm_eval
from porting.progress import Progress
from porting.releases import registry
from porting.releases.fetch import fetch_release, mirror_setting, offline_setting
from porting.write.manifest import ManifestError, read_manifest

CACHE_ENV = "PORT_WEIGHTS_CACHE"
CACHE_NAME = "tf-porting"  # the folder under $XDG_CACHE_HOME (or ~/.cache)
ARCHIVES = "archives"      # the cache's folder for archives while they are fetched and ported
WEIGHTS_SUFFIX = ".pth"


def cache_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$PORT_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/tf-porting`` (an
    absolute ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/tf-porting``."""
    if folder:
        return Path(folder)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / CACHE_NAME


def variant(options: PortOptions) -> str:
    """The cache folder of a port with ``options``: ``1000``, ``1001-no-aux``, ..."""
    return "-".join([str(options.num_classes), *["no-aux"] * (not options.aux),
                     *["fold-bn"] * options.fold_bn, *["ema"] * options.ema])


@dataclass(frozen=True)
class Preprocess:
    """An image -> the model's CHW float32 input tensor (add the batch axis with
    ``.unsqueeze(0)``, or ``torch.stack`` several). Takes an image file's path (read under the
    input rule, ``porting.preprocess.load_image``), a PIL image, or a uint8 HWC RGB array.
    ``method``: ``tf-slim`` (the architecture's own TF-Slim eval preprocessing, what the TF
    model was evaluated with, to the bit) or ``timm`` (timm's eval transform, same numbers)."""
    config: EvalConfig
    method: str = TF_SLIM

    def __call__(self, image):
        import torch

        if isinstance(image, (str, os.PathLike)):
            pixels = load_image(image, self.config, self.method)
        else:
            pixels = self._from_memory(image)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def _from_memory(self, image) -> np.ndarray:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = image.convert("RGB")
            return timm_eval(image, self.config) if self.method == TIMM else \
                tf_slim_eval(np.asarray(image), self.config)
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise TypeError(f"expected an image path, a PIL image or a uint8 HWC RGB array, got "
                            f"{type(image).__name__} {array.dtype} {array.shape}")
        return timm_eval(Image.fromarray(array), self.config) if self.method == TIMM else \
            tf_slim_eval(array, self.config)

    def __repr__(self) -> str:
        return f"Preprocess({self.method}: {summary(self.config, self.method)})"


def load(name: str | os.PathLike, *, num_classes: int = 1000, aux: bool = True,
         fold_bn: bool = False, ema: bool = False, preprocess: str = TF_SLIM,
         cache_dir: str | os.PathLike | None = None, offline: bool | None = None,
         mirror: str | os.PathLike | None = None, progress: bool | None = None):
    """(model, preprocess): release ``name``'s exact PyTorch model in eval mode, fetched,
    ported and cached on first use (see the module docstring), and its ``Preprocess``.

    ``name``: a release (``port-weights fetch --help`` lists them; ``models/*/releases.json``)
    or a path (a ported file, or a source ``port`` takes). ``num_classes`` 1000 (timm's layout,
    TF-Slim's background class dropped) or the checkpoint's own (1001 keeps TF's outputs);
    ``aux``, ``fold_bn``, ``ema`` as ``port``'s ``--no-aux``, ``--fold-bn``, ``--ema``.
    ``offline`` (default ``$PORT_WEIGHTS_OFFLINE``), ``mirror`` (default
    ``$PORT_WEIGHTS_MIRROR``), ``progress`` (default: when stderr is a terminal).

    Raises ``PortError`` (one line naming the problem and the file) for bad input, a failed
    download or check, or what offline mode lacks."""
    if preprocess not in METHODS:
        raise ValueError(f"preprocess {preprocess!r}: one of {', '.join(METHODS)}")
    offline, mirror = offline_setting(offline), mirror_setting(mirror)
    options = PortOptions(num_classes=num_classes, aux=aux, fold_bn=fold_bn, ema=ema)
    with _signals_unwind():
        releases = registry.load_registry()
        if isinstance(name, str) and name in releases:
            model = _load_release(releases[name], options, cache_folder(cache_dir), offline,
                                  mirror, progress)
        elif glob.glob(glob.escape(os.fspath(name)) + "*"):  # a file, or a checkpoint prefix
            model = _load_path(Path(name), options, progress)
        else:
            raise registry.unknown_release(os.fspath(name), releases, f"{os.fspath(name)}: "
                                           "no release of that name and no such file")
    return model, Preprocess(architecture_of_model(model).eval, preprocess)


# --- a release, through the cache ------------------------------------------------------------

def _load_release(release, options: PortOptions, cache: Path, offline: bool, mirror,
                  progress: bool | None):
    from porting.weights import load_ported

    folder = cache / release.name / variant(options)
    hit = _cached(folder, release, registry.pinned_sha256(release.name, cache))
    if hit:
        with contextlib.suppress(PortError):  # replaced meanwhile, or damaged: see below
            return load_ported(*hit)
    with locked_folder(cache / release.name, on_wait=lambda: _say(
            f"{release.name}: another process is fetching or porting it; waiting")):
        hit = _cached(folder, release, registry.pinned_sha256(release.name, cache))
        if hit:
            try:
                return load_ported(*hit)
            except PortError as err:
                _say(f"{err}; porting it again")
        _clear(folder, release.name)
        written = _port_release(release, options, cache, folder, offline, mirror, progress)
        return load_ported(written.path, written.sha256)


def _cached(folder: Path, release, expected: str | None) -> tuple[Path, str] | None:
    """(weights, their sha256) of the port in ``folder`` whose manifest is whole and, when a
    digest is pinned, records that archive as its source; None if there is none."""
    with contextlib.suppress(OSError):
        for manifest_path in sorted(folder.glob(f"{release.name}-*.json")):
            try:
                manifest = read_manifest(manifest_path)
            except (ManifestError, PortError):
                continue
            output, archive = manifest.output, manifest.source and manifest.source.archive
            weights = folder / output.file
            if (manifest.kind != "port" or weights != manifest_path.with_suffix(WEIGHTS_SUFFIX)
                    or (expected and (archive is None or archive.sha256 != expected))):
                continue
            if weights.is_file():
                return weights, output.sha256
    return None


def _clear(folder: Path, name: str) -> None:
    """Remove the ports of ``name`` in ``folder`` (under the release's lock): a damaged one, or
    one of another archive than the pinned one."""
    with contextlib.suppress(OSError):
        for path in folder.glob(f"{name}-*"):
            if path.suffix in (WEIGHTS_SUFFIX, ".json") and path.is_file() \
                    and not path.is_symlink():
                path.unlink()


def _port_release(release, options: PortOptions, cache: Path, folder: Path, offline: bool,
                  mirror, progress: bool | None):
    """Fetch ``release`` into the cache's archives, port it into ``folder``, pin a digest
    seen first; the archive is removed however this ends. Returns the port's ``Written``."""
    archives = cache / ARCHIVES
    try:
        try:
            got = fetch_release(release, archives, mirror=mirror, offline=offline,
                                lock_folder=cache, keep_partial=False, progress=progress)
        except PortError as err:
            if offline:
                raise PortError(f"{folder}: no cached port of {release.name} "
                                f"({variant(options)}); {err}") from err
            raise
        # the release's architecture, not whatever the archive holds: an archive of another
        # net under this name fails to port instead of being cached as this release
        result = _port(got.fetched.path, folder / f"{release.name}{WEIGHTS_SUFFIX}",
                       replace(options, arch=release.architecture), release.name, progress,
                       force=True, pins=cache)
        if got.expected is None:  # trust on first use, now that it ported
            registry.pin(release, got.fetched.sha256, got.origin, cache)
        return result.written
    finally:
        _remove_archive(archives / release.archive)


def _remove_archive(path: Path) -> None:
    """Remove an archive once ported (or failed); its folder stays (another release's download
    may be creating its ``.part`` there)."""
    with contextlib.suppress(OSError):
        if path.is_file() and not path.is_symlink():
            path.unlink()


# --- a path ----------------------------------------------------------------------------------

def _load_path(path: Path, options: PortOptions, progress: bool | None):
    from porting.weights import load_ported

    if path.suffix in (".pth", ".safetensors"):
        return load_ported(path)
    with tempfile.TemporaryDirectory(prefix="port-weights-load-") as folder:
        result = _port(path, Path(folder) / f"model{WEIGHTS_SUFFIX}", options, path.name,
                       progress)
        return load_ported(result.written.path, result.written.sha256)


def _port(src: Path, dst: Path, options: PortOptions, label: str, progress: bool | None,
          **kwargs):
    """``port_checkpoint`` with its stages on a bar labelled ``label`` (``progress``)."""
    bar = Progress(f"port {label}", enabled=progress, unit="step")
    try:
        return port_checkpoint(src, dst, options, **kwargs,
                               progress=lambda stage: bar.step(stage, len(PORT_STAGES)))
    finally:
        bar.end_line()


# --- the rest --------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


UNWOUND = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_unwind():
    """SIGTERM and SIGHUP, where they would kill the process outright (their default action),
    unwind the call instead, so that its staged files, unpacked archive and download are
    removed; the signal then takes its default course. Ctrl-C already unwinds
    (KeyboardInterrupt). Only in the main thread (the only one signals reach in Python), and
    only for signals nobody else handles: a program's own handlers are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [signum for signum in UNWOUND if signal.getsignal(signum) == signal.SIG_DFL]
    for signum in taken:
        signal.signal(signum, Terminated.handler)
    try:
        yield
    except Terminated as stop:
        for signum in taken:
            signal.signal(signum, signal.SIG_DFL)
        taken = []
        os.kill(os.getpid(), stop.signum)  # the default action: the process ends here
        raise
    finally:
        for signum in taken:
            signal.signal(signum, signal.SIG_DFL)
