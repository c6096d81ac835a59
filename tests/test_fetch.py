"""`port-weights fetch` against an HTTP server on 127.0.0.1 (never the real network)."""
from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from porting import registry
from porting.cli import main

PAYLOAD = np.random.default_rng(5).bytes(3 * 2**20 + 12345)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ARCHIVE = "adv_inception_v3_2017_08_18.tar.gz"  # the registry's file name for adv_inception_v3


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; cuts a body short once if asked."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if self.path in server.garbage_once:  # not HTTP at all: http.client's BadStatusLine
            server.garbage_once.discard(self.path)
            self.wfile.write(b"garbage\r\n\r\n")
            self.close_connection = True
            return
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.cut_once:  # promise the whole body, send half, hang up
            server.cut_once.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {f"/{ARCHIVE}": PAYLOAD}
    httpd.requests, httpd.cut_once, httpd.garbage_once = [], set(), set()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ARCHIVE}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def fetch(*args):
    return CliRunner().invoke(main, ["fetch", "adv_inception_v3", *args])


def test_registry_lists_the_family_with_its_official_urls():
    releases = registry.load_registry()
    base = "http://download.tensorflow.org/models/"
    assert {name: r.url for name, r in releases.items()} == {
        "adv_inception_v3": base + "adv_inception_v3_2017_08_18.tar.gz",
        "ens3_adv_inception_v3": base + "ens3_adv_inception_v3_2017_08_18.tar.gz",
        "ens4_adv_inception_v3": base + "ens4_adv_inception_v3_2017_08_18.tar.gz",
        "inception_v3": base + "inception_v3_2016_08_28.tar.gz",
        "ens_adv_inception_resnet_v2": base + "ens_adv_inception_resnet_v2_2017_08_18.tar.gz",
        "adv_inception_resnet_v2": base + "adv_inception_resnet_v2_2017_12_18.tar.gz",
        "inception_resnet_v2": base + "inception_resnet_v2_2016_08_30.tar.gz",
    }
    assert releases["inception_v3"].format == "V1"
    assert releases["inception_v3"].members == ("inception_v3.ckpt",)
    for name, release in releases.items():
        assert release.num_classes == 1001 and release.aux_logits
        assert release.url.endswith("/" + release.archive)
        assert release.sha256 is None and "not verified" in release.sha256_note  # none pinned yet
        if release.format == "V2":
            assert sorted(release.members) == [f"{name}.ckpt.{s}" for s in
                                               ("data-00000-of-00001", "index", "meta")]


def test_downloads_and_verifies(server, tmp_path):
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]
    assert f"{DIGEST} (verified)" in result.stdout
    assert "MiB" in result.stderr and "#" * 30 in result.stderr  # the progress bar, on stderr


def test_registry_url_is_used_and_unpinned_digest_is_printed(server, tmp_path, monkeypatch):
    release = dataclasses.replace(registry.get_release("adv_inception_v3"), url=server.url)
    monkeypatch.setattr(registry, "load_registry", lambda: {"adv_inception_v3": release})
    result = fetch("--dest", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert server.requests == [(f"/{ARCHIVE}", None)]
    assert f"sha256   {DIGEST} (NOT verified" in result.stdout


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.cut_once.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr
    assert server.requests == [(f"/{ARCHIVE}", None), (f"/{ARCHIVE}", f"bytes={len(PAYLOAD) // 2}-")]
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD


def test_leftover_part_file_is_resumed(server, tmp_path):
    (tmp_path / f"{ARCHIVE}.part").write_bytes(PAYLOAD[:2**20])
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert server.requests == [(f"/{ARCHIVE}", f"bytes={2**20}-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]


def test_digest_mismatch_leaves_nothing_behind(server, tmp_path):
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", "0" * 64)
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and f"{ARCHIVE}: sha256 mismatch: got {DIGEST}" in last
    assert "nothing was kept" in last
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_one_line_and_leaves_nothing(server, tmp_path):
    result = fetch("--dest", str(tmp_path), "--url", server.url + ".missing")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: http://127.0.0.1:") and "HTTP 404" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["notaurl", "http://", "ftp:///x", "http://a b/x.tar.gz",
                                 "http://127.0.0.1:port/x", "http://[::1/x", "http://a\nb/x"])
def test_malformed_url_is_one_line_and_creates_nothing(tmp_path, url):
    dest = tmp_path / "new"
    result = fetch("--dest", str(dest), "--url", url)
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(": not a valid URL\n") and result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1
    assert not dest.exists()


def test_malformed_http_answer_is_retried(server, tmp_path):
    server.garbage_once.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD


def test_existing_file_is_checked_not_downloaded_again(server, tmp_path):
    (tmp_path / ARCHIVE).write_bytes(PAYLOAD)
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0 and "already there" in result.stdout
    assert server.requests == []


def test_unknown_release_and_bad_digest_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["fetch", "no_such_model", "--dest", str(tmp_path)])
    assert result.exit_code == 1 and "no release named 'no_such_model'" in result.stderr
    result = fetch("--dest", str(tmp_path), "--url", "http://127.0.0.1:9/x", "--sha256", "xyz")
    assert result.exit_code == 1 and "expected 64 hex digits" in result.stderr
