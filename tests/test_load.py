"""`porting.load`: a release by name -> fetched, ported, cached, verified model; against HTTP
servers on 127.0.0.1 serving a SYNTHETIC release archive (never the network)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from porting import files, load
from porting.cli import main
from porting.errors import PortError
from porting.loader import cache_folder
from porting.releases import registry
from porting.verify.parity import compare
from porting.verify.photos import PHOTOS, photo_dir
from porting.verify.torch_runner import torch_outputs
from test_fetch import ARCHIVE, DIGEST, PAYLOAD, lock_in_tmp, no_sleep, server  # noqa: F401
from test_fetch_hostile import endless  # noqa: F401

ROOT = Path(__file__).parent.parent
NAME = "adv_inception_v3"  # its archive is test_fetch's ARCHIVE
VARIANT = "1001"           # TF's outputs, as tf_outputs holds them
RELEASE = registry.get_release(NAME)
REGISTRY = registry.load_registry()


@pytest.fixture(scope="module")
def archive(synthetic_ckpt, tmp_path_factory) -> bytes:
    """The synthetic checkpoint as the release's archive: its members, at the top level."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for member in RELEASE.members:
            if member.endswith(".meta"):  # a graph: never read by a port
                info = tarfile.TarInfo(member)
                info.size = 4
                tar.addfile(info, io.BytesIO(b"meta"))
            else:
                suffix = member[len(RELEASE.checkpoint):]
                tar.add(f"{synthetic_ckpt}{suffix}", arcname=member)
    return buffer.getvalue()


@pytest.fixture
def served(server, archive, monkeypatch):
    """``server`` serving the archive at its name; the registry's URL for the release is it."""
    server.files[f"/{ARCHIVE}"] = archive
    here = dataclasses.replace(RELEASE, url=server.url)
    monkeypatch.setattr(registry, "load_registry", lambda paths=None: {**REGISTRY, NAME: here})
    server.base = server.url.rsplit("/", 1)[0]
    return server


def archive_requests(server) -> int:
    return sum(path == f"/{ARCHIVE}" for path, _ in server.requests)


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder``, relative, sorted: what a failure may leave is checked here."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def cached(cache: Path) -> list[str]:
    """The files a successful load leaves: the pin, the weights and their manifest."""
    found = files_in(cache)
    assert [f for f in found if f != registry.LOCK_NAME and not f.startswith(f"{NAME}/")] == []
    return found


def logits(model, photos) -> np.ndarray:
    return torch_outputs(model, photos[1], 10)["Logits"]


# --- cold, warm, and what they return ---------------------------------------------------------

@pytest.fixture(scope="module")
def warm(tmp_path_factory, archive):
    """A cache after one cold load from a mirror folder (offline: no server needed)."""
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / ARCHIVE).write_bytes(archive)
    cache = tmp_path_factory.mktemp("warm") / "cache"
    load(NAME, num_classes=1001, cache_dir=cache, mirror=mirror, offline=True, progress=False)
    return cache


def test_cold_and_warm_calls_return_models_matching_tensorflow(served, tmp_path, photos,
                                                               tf_outputs):
    cache = tmp_path / "cache"
    model, preprocess = load(NAME, num_classes=1001, cache_dir=cache, progress=False)
    assert archive_requests(served) == 1 and not model.training
    cold = logits(model, photos)
    parity = compare(cold, tf_outputs[10]["Logits"])
    assert parity.passed, parity

    served.requests.clear()
    model, _ = load(NAME, num_classes=1001, cache_dir=cache, progress=False)
    assert served.requests == []  # a cache hit: the server is not asked
    assert np.array_equal(logits(model, photos), cold)

    (weights,) = (cache / NAME / VARIANT).glob("*.pth")
    manifest = json.loads(weights.with_suffix(".json").read_text())
    assert cached(cache) == [f"{NAME}/{VARIANT}/{weights.stem}.json",
                             f"{NAME}/{VARIANT}/{weights.name}", registry.LOCK_NAME]
    assert manifest["output"]["sha256"].startswith(weights.stem.rsplit("-", 1)[1])
    digest = manifest["source"]["archive"]["sha256"]  # trusted on first use, and pinned
    assert registry.pinned_sha256(NAME, cache) == digest
    assert json.loads((cache / registry.LOCK_NAME).read_text())[NAME]["url"] == served.url

    # the preprocessing is the one the TF references were computed with
    first = preprocess(photo_dir() / PHOTOS[0])
    assert first.dtype == torch.float32 and first.shape == (3, 299, 299)
    assert np.array_equal(first.numpy(), photos[1][0].transpose(2, 0, 1))


def test_negative_control_padding_counting_pools_fail(warm, photos, tf_outputs):
    """The parity above can fail: the same weights with padding counted in the pools (timm's
    Inception v3) miss TF's logits."""
    model, _ = load(NAME, num_classes=1001, cache_dir=warm, offline=True)
    for pool in (m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)):
        pool.count_include_pad = True
    assert not compare(logits(model, photos), tf_outputs[10]["Logits"]).passed


def test_a_damaged_cached_file_is_not_used_but_ported_again(served, warm, tmp_path, photos,
                                                            tf_outputs):
    cache = tmp_path / "cache"
    shutil.copytree(warm, cache)
    (weights,) = (cache / NAME / VARIANT).glob("*.pth")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of a tensor: still a loadable file
    weights.write_bytes(bytes(data))
    model, _ = load(NAME, num_classes=1001, cache_dir=cache, progress=False)
    assert archive_requests(served) == 1  # the pinned archive fetched again
    assert compare(logits(model, photos), tf_outputs[10]["Logits"]).passed
    assert weights.read_bytes() != bytes(data)
    assert len(cached(cache)) == 3


def test_other_options_are_another_cache_entry_and_a_local_checkpoint_loads(
        warm, synthetic_ckpt, photos, tf_outputs, tmp_path):
    model, preprocess = load(synthetic_ckpt, num_classes=1000)  # ported in a temporary folder
    reference = tf_outputs[10]["Logits"][:, 1:]  # the background class dropped
    assert compare(logits(model, photos), reference).passed
    assert "central crop" in repr(preprocess)
    with pytest.raises(PortError, match="no cached port of adv_inception_v3 \\(1000-no-aux\\)"):
        load(NAME, aux=False, cache_dir=warm, offline=True)


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PORT_WEIGHTS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "tf-porting"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_folder() == Path.home() / ".cache" / "tf-porting"
    monkeypatch.setenv("PORT_WEIGHTS_CACHE", str(tmp_path / "mine"))
    assert cache_folder() == tmp_path / "mine" and cache_folder(tmp_path) == tmp_path


# --- offline and mirrors ----------------------------------------------------------------------

def test_offline_hit_and_miss_never_touch_the_network(served, warm, tmp_path, monkeypatch):
    model, _ = load(NAME, num_classes=1001, cache_dir=warm, offline=True)
    assert not model.training
    monkeypatch.setenv("PORT_WEIGHTS_OFFLINE", "1")
    cache = tmp_path / "empty"
    with pytest.raises(PortError) as err:
        load(NAME, num_classes=1001, cache_dir=cache)
    message = str(err.value)
    assert message.startswith(f"{cache / NAME / VARIANT}: no cached port of {NAME} (1001); "
                              f"offline: release {NAME}'s archive {ARCHIVE} is not in ")
    assert "PORT_WEIGHTS_MIRROR" in message and "\n" not in message
    assert served.requests == [] and files_in(cache) == []


def test_mirror_url_and_mirror_folder(served, archive, tmp_path, monkeypatch):
    gone = dataclasses.replace(RELEASE, url=f"{served.base}/gone/{ARCHIVE}")  # 404 there
    monkeypatch.setattr(registry, "load_registry", lambda paths=None: {**REGISTRY, NAME: gone})
    monkeypatch.setenv("PORT_WEIGHTS_MIRROR", served.base + "/")
    load(NAME, cache_dir=tmp_path / "a", progress=False)
    assert served.requests == [(f"/{ARCHIVE}", None)]
    assert json.loads((tmp_path / "a" / registry.LOCK_NAME).read_text())[NAME]["url"] == \
        f"{served.base}/{ARCHIVE}"

    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / ARCHIVE).write_bytes(archive)
    served.requests.clear()
    load(NAME, cache_dir=tmp_path / "b", mirror=f"file://{folder}", progress=False)
    assert served.requests == [] and (folder / ARCHIVE).read_bytes() == archive
    assert len(cached(tmp_path / "b")) == 3


# --- failures leave nothing partial -----------------------------------------------------------

def _fails(cache: Path, match: str, **kwargs) -> None:
    pins = registry.read_lock(cache)
    with pytest.raises(PortError, match=match) as err:
        load(NAME, num_classes=1001, cache_dir=cache, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert [f for f in files_in(cache) if f != registry.LOCK_NAME] == []  # nothing partial
    assert registry.read_lock(cache) == pins  # and nothing trusted


def test_a_truncated_response_fails_and_leaves_nothing(served, tmp_path, no_sleep):
    served.validators[f"/{ARCHIVE}"] = {"ETag": '"v1"'}  # fetch would keep a resumable .part
    served.cut_always.add(f"/{ARCHIVE}")
    _fails(tmp_path / "cache", "download failed after 5 attempts.*nothing was kept")


def test_a_truncated_response_without_length_fails_to_port_and_leaves_nothing(served,
                                                                              tmp_path):
    served.no_length.add(f"/{ARCHIVE}")
    served.cut_once.add(f"/{ARCHIVE}")  # half an archive, and nothing says so
    _fails(tmp_path / "cache", ARCHIVE)


def test_a_corrupt_response_fails_to_port_and_leaves_nothing(served, archive, tmp_path):
    damaged = bytearray(archive)
    damaged[len(damaged) // 2] ^= 0xFF
    served.files[f"/{ARCHIVE}"] = bytes(damaged)
    _fails(tmp_path / "cache", ARCHIVE)


def test_a_response_that_is_no_archive_fails_and_leaves_nothing(served, tmp_path):
    served.files[f"/{ARCHIVE}"] = PAYLOAD  # random bytes
    _fails(tmp_path / "cache", ARCHIVE)


def test_a_digest_mismatch_fails_and_leaves_nothing(served, tmp_path):
    cache = tmp_path / "cache"
    registry.pin(RELEASE, DIGEST, "elsewhere", cache)  # pinned: not what the server sends
    _fails(cache, f"sha256 mismatch: got [0-9a-f]{{64}}, expected {DIGEST} \\(pinned in "
                  f"{cache / registry.LOCK_NAME}\\)")
    assert registry.pinned_sha256(NAME, cache) == DIGEST


def test_a_full_disk_fails_and_leaves_nothing(served, tmp_path, monkeypatch):
    real = files.move_into_place

    def full_disk(tmp, path):
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(files, "move_into_place", full_disk)
    _fails(tmp_path / "cache", "cannot write: No space left on device")


def _load_in_a_process(cache: Path, mirror: str) -> subprocess.Popen:
    code = ("import sys\nfrom porting import load\n"
            f"model, _ = load({NAME!r}, num_classes=1001, cache_dir=sys.argv[1], "
            "mirror=sys.argv[2])\n"
            "print(sum(float(p.double().sum()) for p in model.parameters()))\n")
    return subprocess.Popen([sys.executable, "-c", code, str(cache), mirror], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_during_the_download_leaves_nothing(endless, tmp_path):
    endless.trickle = True
    cache = tmp_path / "cache"
    proc = _load_in_a_process(cache, endless.url.rsplit("/", 1)[0])
    part = cache / "archives" / f"{ARCHIVE}.part"
    for _ in range(600):  # until the transfer has begun (the .part is made just before)
        if part.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert part.exists(), proc.stderr.read() if proc.poll() is not None else "not started"
    time.sleep(0.5)  # a few bytes in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err  # the default action, after cleaning up
    assert files_in(cache) == []


# --- two processes, one download --------------------------------------------------------------

def test_two_processes_loading_at_once_download_once(served, tmp_path):
    from test_fetch import _Handler

    class Slow(_Handler):  # the first answer waits: the second process comes meanwhile
        def do_GET(self):
            time.sleep(2)
            super().do_GET()

    served.RequestHandlerClass = Slow
    cache = tmp_path / "cache"
    procs = [_load_in_a_process(cache, served.base) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]  # the same weights
    assert archive_requests(served) == 1
    assert len(cached(cache)) == 3


# --- fetch shares the code: --mirror, --offline ----------------------------------------------

def fetch(*args):
    return CliRunner().invoke(main, ["fetch", NAME, "--sha256", DIGEST, *map(str, args)])


def test_fetch_takes_a_mirror_folder_or_url_and_an_offline_flag(server, tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / ARCHIVE).write_bytes(PAYLOAD)
    result = fetch("--dest", tmp_path / "a", "--mirror", folder, "--offline")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / ARCHIVE).read_bytes() == PAYLOAD and "(verified)" in result.stdout

    result = fetch("--dest", tmp_path / "b", "--mirror", server.url.rsplit("/", 1)[0])
    assert result.exit_code == 0 and server.requests == [(f"/{ARCHIVE}", None)]

    monkeypatch.setenv("PORT_WEIGHTS_OFFLINE", "yes")
    result = fetch("--dest", tmp_path / "c")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: offline: release {NAME}'s archive {ARCHIVE} is "
                                    f"not in {tmp_path / 'c'}; ")
    assert not (tmp_path / "c").exists() and len(server.requests) == 1
    result = fetch("--dest", tmp_path / "b")  # offline, but there: checked
    assert result.exit_code == 0 and "already there" in result.stdout

    monkeypatch.setenv("PORT_WEIGHTS_OFFLINE", "maybe")
    result = fetch("--dest", tmp_path / "b")
    assert result.exit_code == 1 and "PORT_WEIGHTS_OFFLINE='maybe'" in result.stderr


def test_a_mirrored_file_of_other_bytes_is_refused_and_nothing_kept(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / ARCHIVE).write_bytes(PAYLOAD[:-1])
    result = fetch("--dest", tmp_path / "a", "--mirror", folder)
    assert result.exit_code == 1 and "sha256 mismatch" in result.stderr
    assert list((tmp_path / "a").iterdir()) == []
    os.mkfifo(folder / "x.tar.gz")
    (folder / ARCHIVE).unlink()
    (folder / ARCHIVE).symlink_to(folder / "x.tar.gz")
    result = fetch("--dest", tmp_path / "a", "--mirror", folder)
    assert result.exit_code == 1 and "a pipe, not a regular file" in result.stderr


def test_progress_is_drawn_on_a_terminal(server, tmp_path):
    from porting.releases.download import download

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    download(server.url, tmp_path / ARCHIVE, DIGEST, stream=stream)
    assert "100%" in stream.getvalue() and ARCHIVE in stream.getvalue()
    quiet = io.StringIO()
    download(server.url, tmp_path / "again" / ARCHIVE, DIGEST, stream=quiet)
    assert quiet.getvalue() == ""


def test_load_ported_counts_a_file_only_if_its_digest_matches(warm, tmp_path):
    """The digest is taken beside the load: a file of another digest is DigestMismatch, also
    where it would load (one bit of a tensor) or would not load at all (truncated)."""
    from porting.files import sha256_file
    from porting.weights import DigestMismatch, load_ported

    (weights,) = (warm / NAME / VARIANT).glob("*.pth")
    digest = sha256_file(weights)
    assert isinstance(load_ported(weights, sha256=digest), torch.nn.Module)
    data = weights.read_bytes()
    flipped, cut = tmp_path / "flipped.pth", tmp_path / "cut.pth"
    flipped.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1])
                        + data[len(data) // 2 + 1:])
    cut.write_bytes(data[:len(data) // 3])
    assert isinstance(load_ported(flipped), torch.nn.Module)  # it loads: only the digest tells
    for bad in (flipped, cut):
        with pytest.raises(DigestMismatch, match=f"{bad}: sha256 is [0-9a-f]{{64}}, expected"):
            load_ported(bad, sha256=digest)


def test_an_unknown_release_name_is_one_line_with_the_closest_names(tmp_path, monkeypatch):
    """A typo in a release name says which release was probably meant, in one line, for
    load() and `fetch` alike (one message, porting.releases.registry); nothing is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PortError) as err:
        load("ens_adv_inception_resnet", cache_dir=tmp_path / "cache", offline=True)
    line = str(err.value)
    assert "\n" not in line and "did you mean 'ens_adv_inception_resnet_v2'" in line
    result = CliRunner().invoke(main, ["fetch", "ens3_adv_inception", "--offline",
                                       "--dest", str(tmp_path / "d")])
    assert result.exit_code == 1 and "did you mean 'ens3_adv_inception_v3'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
