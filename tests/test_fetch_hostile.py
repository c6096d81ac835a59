"""`fetch` under attack (issue 19: defects 1, 4, 10, 11, 12, 15), against servers on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from porting.errors import PortError
from porting.releases import download as download_module
from porting.releases import registry
from test_fetch import ARCHIVE, DIGEST, PAYLOAD, fetch, lock_in_tmp, server  # noqa: F401

ROOT = Path(__file__).parent.parent


# 1. a planted .part never redirects the download ---------------------------------------------

@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_planted_part_link_is_refused_and_its_target_untouched(server, tmp_path, link):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "downloads"
    dest.mkdir()
    part = dest / f"{ARCHIVE}.part"
    (part.symlink_to if link == "symbolic" else part.hardlink_to)(victim)
    result = fetch("--url", server.url, "--dest", dest)
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {part}: refused") and "remove it" in line
    assert victim.read_bytes() == b"precious"
    assert not (dest / ARCHIVE).exists() and not (dest / ARCHIVE).is_symlink()
    assert server.requests == []


# 4. concurrent pins of different releases all land -------------------------------------------

def test_concurrent_pins_of_different_releases_all_land(lock_in_tmp, monkeypatch):
    names = ["adv_inception_v3", "ens3_adv_inception_v3", "ens4_adv_inception_v3",
             "inception_v3"]
    real = registry.read_lock

    def slow_read(*folder):  # widen the read-modify-write window: each pin reads, waits, writes
        lock = real(*folder)
        time.sleep(0.2)
        return lock

    monkeypatch.setattr(registry, "read_lock", slow_read)
    threads = [threading.Thread(target=registry.pin,
                                args=(registry.get_release(name), f"{i:064x}", f"u{i}"))
               for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    pinned = json.loads(lock_in_tmp.read_text())
    assert sorted(pinned) == sorted(names)


def test_pinning_an_archive_already_there_says_so(server, tmp_path, lock_in_tmp):
    dest = tmp_path / "downloads"
    dest.mkdir()
    (dest / ARCHIVE).write_bytes(PAYLOAD)
    result = fetch("--url", server.url, "--dest", dest, "--pin")
    assert result.exit_code == 0, result.output
    assert server.requests == []  # nothing downloaded
    assert "already there" in result.output
    assert f"was already in {dest}" in result.output and "not downloaded now" in result.output


# 10 and 12. the lock file is a regular file of bounded size and depth ------------------------

def test_a_fifo_lock_is_refused_without_blocking(server, tmp_path, lock_in_tmp):
    lock_in_tmp.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(lock_in_tmp)
    result = fetch("--url", server.url, "--dest", tmp_path / "d")
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {lock_in_tmp}: refused as release lock: a pipe")


def test_a_deeply_nested_lock_is_one_line(server, tmp_path, lock_in_tmp):
    lock_in_tmp.parent.mkdir(parents=True, exist_ok=True)
    lock_in_tmp.write_text("[" * 100000 + "]" * 100000)
    result = fetch("--url", server.url, "--dest", tmp_path / "d")
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line == f"error: {lock_in_tmp}: unreadable release lock: nested too deeply"


def test_an_archive_path_that_is_a_fifo_or_a_device_link_is_refused(server, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    os.mkfifo(dest / ARCHIVE)
    result = fetch("--url", server.url, "--dest", dest)
    assert result.exit_code == 1 and "a pipe, not a regular file" in result.output
    other = tmp_path / "e"
    other.mkdir()
    (other / ARCHIVE).symlink_to("/dev/zero")
    result = fetch("--url", server.url, "--dest", other)
    assert result.exit_code == 1 and "a character device" in result.output


def test_concurrent_fetches_of_one_release_download_once(server, tmp_path):
    dest = tmp_path / "d" / ARCHIVE
    results, errors = [], []

    def one():
        try:
            results.append(download_module.download(server.url, dest, DIGEST,
                                                    stream=open(os.devnull, "w")))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(r.unchanged for r in results) == [False, True, True, True]
    assert all(r.sha256 == DIGEST for r in results) and dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == [ARCHIVE]
    assert len([r for r in server.requests if r[0] == f"/{ARCHIVE}"]) == 1


# 11. downloads are capped in size and time ----------------------------------------------------

class _Endless(BaseHTTPRequestHandler):
    """No Content-Length; the body never ends (``server.trickle``: one byte every 0.05 s)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        chunk = b"x" if self.server.trickle else b"x" * 65536
        try:
            while not self.server.stopping:
                self.wfile.write(chunk)
                if self.server.trickle:
                    self.wfile.flush()
                    time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endless():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    httpd.trickle, httpd.stopping = False, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ARCHIVE}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.stopping = True
    httpd.shutdown()
    httpd.server_close()


def test_an_endless_body_is_cut_at_the_size_cap_and_nothing_is_kept(endless, tmp_path):
    dest = tmp_path / ARCHIVE
    with pytest.raises(PortError, match=r"runs past 1,048,576 bytes.*nothing was kept"):
        download_module.download(endless.url, dest, max_bytes=1 << 20, retries=0,
                                 stream=open(os.devnull, "w"))
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_body_is_cut_at_the_deadline_and_nothing_is_kept(endless, tmp_path):
    endless.trickle = True
    dest = tmp_path / ARCHIVE
    started = time.monotonic()
    with pytest.raises(PortError, match=r"deadline.*nothing was kept"):
        download_module.download(endless.url, dest, deadline=1.0, retries=3, timeout=5,
                                 stream=open(os.devnull, "w"))
    assert time.monotonic() - started < 30  # bounded: the deadline, not the per-read timeout
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_download_leaves_no_part_nothing_resumes(endless, tmp_path):
    endless.trickle = True
    env = {**os.environ, "PORT_WEIGHTS_CHECKPOINTS": str(tmp_path / "locks")}
    proc = subprocess.Popen([sys.executable, "-m", "porting.cli", "fetch", "adv_inception_v3",
                             "--url", endless.url, "--dest", str(tmp_path / "d")], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / "d" / f"{ARCHIVE}.part"
    for _ in range(200):  # until the transfer has begun
        if part.exists() and part.stat().st_size:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list((tmp_path / "d").iterdir()) == []


# 15. a validator that cannot be a header vouches for nothing ---------------------------------

def test_a_validator_with_crlf_restarts_the_download(server, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / f"{ARCHIVE}.part").write_bytes(PAYLOAD[:1000])
    (dest / f"{ARCHIVE}.part.validator").write_bytes(b'"abc"\r\nX-Evil: 1\r\n')
    result = fetch("--url", server.url, "--dest", dest)
    assert result.exit_code == 0, result.output
    assert (dest / ARCHIVE).read_bytes() == PAYLOAD
    assert server.requests == [(f"/{ARCHIVE}", None)]  # from zero, no Range
