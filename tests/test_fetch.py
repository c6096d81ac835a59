"""`port-weights fetch` against an HTTP server on 127.0.0.1 (never the real network)."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from porting.releases import download as download_module
from porting.releases import registry
from models.spec import get_architecture
from porting.cli import main
from porting.errors import PortError

PAYLOAD = np.random.default_rng(5).bytes(3 * 2**20 + 12345)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
ARCHIVE = "adv_inception_v3_2017_08_18.tar.gz"  # the registry's file name for adv_inception_v3


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` (and ``If-Range`` against the path's
    ``ETag``/``Last-Modified`` unless told to ignore it); cuts a body short once, or always, if
    asked; leaves out or garbles ``Content-Length``; redirects."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.if_range.append(self.headers.get("If-Range"))
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in server.garbage_once:  # not HTTP at all: http.client's BadStatusLine
            server.garbage_once.discard(self.path)
            self.wfile.write(b"garbage\r\n\r\n")
            self.close_connection = True
            return
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        validators = server.validators.get(self.path, {})
        if_range = self.headers.get("If-Range")
        start = 0
        if self.headers.get("Range") and (if_range is None or server.ignore_if_range
                                          or if_range in validators.values()):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        for header, value in validators.items():
            self.send_header(header, value)
        if self.path in server.bad_length:
            self.send_header("Content-Length", "12 MiB")
        elif self.path not in server.no_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.cut_once or self.path in server.cut_always:
            server.cut_once.discard(self.path)  # promise the whole body, send half, hang up
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    # a client that gives up mid-body (as fetch does on a bad answer) is no server error: its
    # traceback would land in the stderr the tests read
    httpd.handle_error = lambda request, client_address: None
    httpd.files = {f"/{ARCHIVE}": PAYLOAD}
    httpd.requests, httpd.if_range = [], []
    httpd.cut_once, httpd.cut_always, httpd.garbage_once = set(), set(), set()
    httpd.no_length, httpd.bad_length = set(), set()
    httpd.validators, httpd.redirects, httpd.ignore_if_range = {}, {}, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ARCHIVE}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def lock_in_tmp(tmp_path_factory, monkeypatch):
    """The lock file (and the default download folder) of every test is its own, never the
    checkout's checkpoints/."""
    folder = tmp_path_factory.mktemp("downloads") / "checkpoints"
    monkeypatch.setattr(registry, "download_dir", lambda: folder, raising=False)
    return folder / "releases.lock"


@pytest.fixture
def no_sleep(monkeypatch):
    """No backoff between retries, and a clock that moves a second per look, so that the
    progress line is drawn at every chance (an error must still start a line of its own)."""
    clock = itertools.count()
    monkeypatch.setattr(download_module, "time",
                        types.SimpleNamespace(sleep=lambda seconds: None,
                                              monotonic=lambda: float(next(clock))))


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
        "inception_v4": base + "inception_v4_2016_09_09.tar.gz",
        **{f"resnet_v{v}_{depth}": base + f"resnet_v{v}_{depth}_{date}.tar.gz"
           for v, date in ((1, "2016_08_28"), (2, "2017_04_14")) for depth in (50, 101, 152)},
        **{f"vgg_{depth}": base + f"vgg_{depth}_2016_08_28.tar.gz" for depth in (16, 19)},
    }
    assert releases["inception_v3"].format == "V1"
    assert releases["inception_v3"].members == ("inception_v3.ckpt",)
    for name, release in releases.items():
        spec = get_architecture(release.architecture)
        assert release.num_classes == spec.eval.num_classes and release.aux_logits == spec.has_aux
        assert release.url.endswith("/" + release.archive)
        # pinned or not: a digest is 64 hex digits or null (local pins go to releases.lock)
        assert release.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", release.sha256)
        if release.format == "V2":
            assert sorted(release.members) == [f"{name}.ckpt.{s}" for s in
                                               ("data-00000-of-00001", "index", "meta")]


CLASS_FACTS = ("num_classes", "background_class", "aux_logits", "label_offset", "input_size")


def test_each_folder_lists_its_own_releases_and_no_fact_its_spec_owns():
    """The registry is assembled from the folders' release lists; a release's classes, aux head
    and input size are its architecture's (the spec), never repeated in a list."""
    lists = registry.release_lists()
    assert {path.parent.name for path in lists} >= {"inception_v3", "inception_resnet_v2",
                                                    "resnet"}
    listed = {}
    for path in lists:
        entries = json.loads(path.read_text())["releases"]
        for name, entry in entries.items():
            assert not set(CLASS_FACTS) & set(entry), (path, name)
            assert get_architecture(entry["architecture"]).package == f"models.{path.parent.name}"
            listed[name] = path
    assert {name: r.listed_in for name, r in registry.load_registry().items()} == listed
    resnet, inception = registry.get_release("resnet_v1_50"), registry.get_release("inception_v3")
    assert (resnet.num_classes, resnet.background_class, resnet.aux_logits) == (1000, None, False)
    assert (inception.num_classes, inception.background_class, inception.aux_logits) == \
        (1001, 0, True)


def _release_list(folder: Path, releases: dict) -> Path:
    folder.mkdir(parents=True)
    path = folder / registry.RELEASES_FILE
    path.write_text(json.dumps({"releases": releases}))
    return path


def _entry(name: str, architecture: str = "inception_v3", **changes) -> dict:
    listed = json.loads(registry.get_release("inception_v3").listed_in.read_text())
    entry = listed["releases"]["inception_v3"]
    return {**entry, "architecture": architecture, "checkpoint": f"{name}.ckpt", **changes}


def test_a_release_listed_by_two_folders_is_refused_naming_both(tmp_path):
    first = _release_list(tmp_path / "a" / "inception_v3", {"x": _entry("x")})
    second = _release_list(tmp_path / "b" / "inception_v3", {"y": _entry("y"), "x": _entry("x")})
    assert set(registry.load_registry((first,))) == {"x"}
    with pytest.raises(PortError) as err:
        registry.load_registry((first, second))
    assert str(err.value) == f"{second}: release 'x' is listed twice: in {first} and here"


def test_a_release_list_holds_only_its_folders_architectures_and_no_class_facts(tmp_path):
    foreign = _release_list(tmp_path / "inception_v3", {"x": _entry("x", "resnet_v1_50")})
    with pytest.raises(PortError, match=f"^{re.escape(str(foreign))}: unreadable release "
                       "registry: release 'x' names architecture 'resnet_v1_50', not one of this "
                       "folder's \\(inception_v3\\)$"):
        registry.load_registry((foreign,))
    repeated = _release_list(tmp_path / "again" / "inception_v3",
                             {"x": _entry("x", num_classes=1001)})
    with pytest.raises(PortError, match="unreadable release registry: .*num_classes"):
        registry.load_registry((repeated,))


def test_downloads_and_verifies(server, tmp_path):
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]
    assert f"{DIGEST} (verified)" in result.stdout
    assert result.stderr == ""  # no progress bar where stderr is no terminal (a log, a pipe)


def test_a_resnet_release_downloads_under_its_archive_name(server, tmp_path):
    archive = registry.get_release("resnet_v2_152").archive
    server.files[f"/{archive}"] = PAYLOAD
    url = server.url.replace(ARCHIVE, archive)
    result = CliRunner().invoke(main, ["fetch", "resnet_v2_152", "--dest", str(tmp_path), "--url",
                                       url, "--sha256", DIGEST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet_v2_152_2017_04_14.tar.gz"]


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


# --- no digest pinned: what a download can and cannot vouch for -------------------------------

OLD_PAYLOAD = np.random.default_rng(6).bytes(len(PAYLOAD))  # the upstream file before it changed


def _error_line(stderr: str) -> str:
    """The error, which must be a line of its own (never glued to the progress line)."""
    lines = stderr.split("\n")
    assert lines[-1] == "" and lines[-2].startswith("error: "), repr(stderr[-300:])
    assert "\r" not in lines[-2]
    return lines[-2]


@pytest.mark.parametrize("validator", [{"ETag": '"v1"'},
                                       {"Last-Modified": "Wed, 01 Jan 2020 00:00:00 GMT"}])
def test_part_of_a_file_that_changed_upstream_is_not_spliced(server, tmp_path, no_sleep,
                                                             validator):
    path = f"/{ARCHIVE}"
    server.files[path], server.validators[path] = OLD_PAYLOAD, validator
    server.cut_always.add(path)
    first = fetch("--dest", str(tmp_path), "--url", server.url)
    assert first.exit_code == 1 and (tmp_path / f"{ARCHIVE}.part").exists()
    assert set(server.if_range[1:]) == set(validator.values())  # every resume asks If-Range

    # upstream replaced the file; the server honours If-Range: 200 with the whole new file
    server.files[path] = PAYLOAD
    server.validators[path] = ({"ETag": '"v2"'} if "ETag" in validator
                               else {"Last-Modified": "Thu, 02 Jan 2020 00:00:00 GMT"})
    server.cut_always.clear()
    server.requests.clear()
    second = fetch("--dest", str(tmp_path), "--url", server.url)
    assert second.exit_code == 0, second.output
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]


def test_a_206_with_another_etag_is_not_spliced(server, tmp_path, monkeypatch):
    """A server that ignores If-Range but names the new version: the answer is not appended."""
    path = f"/{ARCHIVE}"
    server.files[path], server.validators[path] = OLD_PAYLOAD, {"ETag": '"v1"'}
    server.cut_once.add(path)
    server.ignore_if_range = True
    server.requests.clear()

    def swap_after_first_request(*_):  # the retry's delay: upstream changes meanwhile
        server.files[path], server.validators[path] = PAYLOAD, {"ETag": '"v2"'}
    monkeypatch.setattr(time, "sleep", swap_after_first_request)
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD


def test_leftover_part_without_validator_or_digest_starts_again(server, tmp_path):
    """Nothing says the .part is a prefix of today's file: no digest to catch a splice, so the
    download starts from zero instead of resuming."""
    (tmp_path / f"{ARCHIVE}.part").write_bytes(OLD_PAYLOAD[:2**20])
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 0, result.output
    assert server.requests == [(f"/{ARCHIVE}", None)]
    assert (tmp_path / ARCHIVE).read_bytes() == PAYLOAD


def test_a_resume_sends_the_validator_the_server_gave(server, tmp_path, no_sleep):
    path = f"/{ARCHIVE}"
    server.validators[path] = {"ETag": '"abc"', "Last-Modified": "Wed, 01 Jan 2020 00:00:00 GMT"}
    server.cut_once.add(path)
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 0, result.output
    assert server.requests == [(path, None), (path, f"bytes={len(PAYLOAD) // 2}-")]
    assert server.if_range == [None, '"abc"']  # the ETag when there is one
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]  # no sidecar left


@pytest.mark.parametrize("etag", ['"v1"', None])
def test_body_shorter_than_its_length_fails_after_retries_on_its_own_line(server, tmp_path,
                                                                          no_sleep, etag):
    path = f"/{ARCHIVE}"
    server.cut_always.add(path)
    server.validators[path] = {"ETag": etag} if etag else {}
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 1
    line = _error_line(result.stderr)
    assert "download failed after 5 attempts" in line and "transfer cut" in line
    assert not (tmp_path / ARCHIVE).exists()
    if etag:  # the next run can resume: the .part and what vouches for it are kept
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ARCHIVE}.part",
                                                              f"{ARCHIVE}.part.validator"]
        assert "rerun to resume" in line
    else:  # nothing could vouch for a .part on the next run: it would start from zero anyway
        assert list(tmp_path.iterdir()) == [] and "nothing was kept" in line
        assert server.requests == [(path, None)] * 5  # no resume without a validator


def test_truncated_body_without_length_is_kept_but_marked_unverified(server, tmp_path):
    server.no_length.add(f"/{ARCHIVE}")
    server.cut_once.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / ARCHIVE).stat().st_size == len(PAYLOAD) // 2  # undetectable: kept...
    assert "NOT verified" in result.stdout  # ...and said to be so
    assert "sent no length" in result.stdout and "cut short" in result.stdout


def test_truncated_body_without_length_fails_a_pinned_digest(server, tmp_path):
    server.no_length.add(f"/{ARCHIVE}")
    server.cut_once.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 1 and "sha256 mismatch" in _error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_whole_body_without_length_is_not_warned_about_when_pinned(server, tmp_path):
    server.no_length.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--sha256", DIGEST)
    assert result.exit_code == 0 and f"{DIGEST} (verified)" in result.stdout
    assert "no length" not in result.stdout


def test_non_numeric_content_length_is_one_line(server, tmp_path):
    server.bad_length.add(f"/{ARCHIVE}")
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 1, result.output
    line = _error_line(result.stderr)
    assert len(result.stderr.splitlines()) == 1
    assert "Content-Length '12 MiB'" in line
    assert list(tmp_path.iterdir()) == []


def test_redirect_loop_is_one_line(server, tmp_path):
    base = server.url.rsplit("/", 1)[0]
    server.redirects["/loop"] = "/loop"
    result = fetch("--dest", str(tmp_path), "--url", f"{base}/loop")
    assert result.exit_code == 1, result.output
    assert len(result.stderr.splitlines()) == 1 and "redirect" in _error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


# --- trust on first use: fetch --pin and checkpoints/releases.lock ---------------------------

def test_pin_records_the_digest_that_later_fetches_check(server, tmp_path, lock_in_tmp):
    result = fetch("--dest", str(tmp_path), "--url", server.url, "--pin")
    assert result.exit_code == 0, result.output
    assert json.loads(lock_in_tmp.read_text()) == {
        "adv_inception_v3": {"archive": ARCHIVE, "sha256": DIGEST, "url": server.url}}
    assert registry.pinned_sha256("adv_inception_v3") == DIGEST
    assert "pinned" in result.stdout and str(lock_in_tmp) in result.stdout

    again = fetch("--dest", str(tmp_path), "--url", server.url)  # already there: checked
    assert again.exit_code == 0 and f"{DIGEST} (verified)" in again.stdout

    (tmp_path / ARCHIVE).unlink()
    server.files[f"/{ARCHIVE}"] = OLD_PAYLOAD  # upstream (or a mirror) now serves other bytes
    changed = fetch("--dest", str(tmp_path), "--url", server.url)
    assert changed.exit_code == 1
    line = _error_line(changed.stderr)
    assert "sha256 mismatch" in line and "nothing was kept" in line and str(lock_in_tmp) in line
    assert list(tmp_path.iterdir()) == []


def test_pinned_sha256_prefers_the_registry_and_ignores_another_archives_pin(lock_in_tmp,
                                                                             monkeypatch):
    lock_in_tmp.parent.mkdir(parents=True)
    lock_in_tmp.write_text(json.dumps({
        "adv_inception_v3": {"archive": ARCHIVE, "sha256": DIGEST, "url": "x"},
        "inception_v3": {"archive": "inception_v3_OTHER.tar.gz", "sha256": DIGEST, "url": "x"}}))
    assert registry.pinned_sha256("adv_inception_v3") == DIGEST
    assert registry.pinned_sha256("inception_v3") is None  # a pin of some other file
    assert registry.pinned_sha256("ens3_adv_inception_v3") is None
    release = dataclasses.replace(registry.get_release("adv_inception_v3"), sha256="e" * 64)
    monkeypatch.setattr(registry, "load_registry", lambda: {"adv_inception_v3": release})
    assert registry.pinned_sha256("adv_inception_v3") == "e" * 64


def test_unreadable_lock_is_one_line(server, tmp_path, lock_in_tmp):
    lock_in_tmp.parent.mkdir(parents=True)
    lock_in_tmp.write_text("{not json")
    result = fetch("--dest", str(tmp_path), "--url", server.url)
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert f"{lock_in_tmp}: unreadable" in result.stderr
