"""Hardening, round two (issue 19): each test reproduces one defect found by the adversarial
review of 43960f2 and fails there. Hostile cases run bounded in time and memory."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class _Holder:
    """A live process holding the flock of ``path``: an owner whose PID this namespace cannot
    see (the path names a dead PID), as a run in another container sharing /tmp would be."""

    def __init__(self, path: Path):
        script = ("import fcntl, os, sys, time\n"
                  f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                  "print('held', flush=True)\n"
                  "time.sleep(60)\n")
        self.process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout.readline().strip() == "held"

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


# 13. stale detection must not depend on PIDs being comparable ------------------------------

def test_a_live_unpack_folder_of_another_pid_namespace_is_kept(tmp_path, monkeypatch):
    from porting.read import archives

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = _dead_pid()  # what the other namespace's PID looks like from here: nobody
    folder = tmp_path / f"port-weights-{dead}-abcd_123"
    (folder / "wrap").mkdir(parents=True)
    lock = tmp_path / f"{folder.name}.lock"
    lock.write_bytes(b"")
    orphan = tmp_path / f"port-weights-{dead}-efgh_456"  # the same, its owner gone
    orphan.mkdir()
    (tmp_path / f"{orphan.name}.lock").write_bytes(b"")
    holder = _Holder(lock)
    try:
        removed = archives.remove_stale_folders()
        assert folder.is_dir() and lock.is_file()
        assert removed == [orphan] and not orphan.exists()
    finally:
        holder.close()
    assert archives.remove_stale_folders() == [folder]  # once its owner is gone: swept
    assert list(tmp_path.iterdir()) == []


def test_a_live_temporary_of_another_pid_namespace_is_kept(tmp_path):
    from porting.files import write_output

    dead = _dead_pid()
    live = tmp_path / f".m.json.{dead}.abcd1234.tmp"
    live.write_bytes(b"being written in another container")
    gone = tmp_path / f".m.json.{dead}.efgh5678.tmp"
    gone.write_bytes(b"left by a killed writer")
    holder = _Holder(live)
    try:
        write_output(tmp_path / "m.json", b"{}\n")
        assert live.exists() and not gone.exists()
    finally:
        holder.close()
    write_output(tmp_path / "m.json", b"{}\n")
    assert not live.exists()


# --- verify, predict, export: outputs, goldens, inputs, signals (defects 2, 5, 7, 10, 12, 15) -----

GiB = 1 << 30


def _cli(*args, cwd: Path, timeout: float = 120, memory: int | None = 2 * GiB, stdout=None,
         file_size: int | None = None) -> subprocess.CompletedProcess:
    """``port-weights ARGS`` in its own process (its own $TMPDIR, under ``cwd``), bounded in time
    and address space (and file size): a hang or a runaway allocation fails the test."""
    import resource
    import signal

    def limits():
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails: EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    tmp = cwd / ".tmpdir"
    tmp.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "porting.cli", *map(str, args)]
    options = dict(cwd=cwd, env={**os.environ, "TMPDIR": str(tmp)}, preexec_fn=limits,
                   stderr=subprocess.PIPE, text=True,
                   stdout=subprocess.PIPE if stdout is None else stdout)
    return subprocess.run(command, timeout=timeout, **options)


def _one_line(result, code: int, *fragments) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def _files(folder: Path) -> dict[str, bytes | str]:
    """Everything under ``folder`` but $TMPDIR: a file's bytes, a link's target, else its kind."""
    def state(path: Path):
        if path.is_symlink():
            return f"-> {os.readlink(path)}"
        return path.read_bytes() if path.is_file() else "fifo" if path.is_fifo() else "dir"
    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))
            if ".tmpdir" not in p.parts}


@pytest.fixture(scope="module")
def ported_weights(synthetic_ckpt, tmp_path_factory) -> Path:
    """The synthetic checkpoint ported (1000 classes, with its manifest and card)."""
    folder = tmp_path_factory.mktemp("round2_ported")
    result = _cli("--src", synthetic_ckpt, "--dst", folder / "m.pth", "--model-card", cwd=folder)
    assert result.returncode == 0, result.stderr
    return next(folder.glob("m-*.pth"))


@pytest.fixture(scope="module")
def recorded(synthetic_ckpt, tmp_path_factory) -> Path:
    """Goldens of the synthetic checkpoint on 2 images, recorded by the CLI."""
    folder = tmp_path_factory.mktemp("round2_goldens")
    goldens = folder / "goldens.h5"
    result = _cli("verify", "--src", synthetic_ckpt, "--count", 2, "--record-goldens", goldens,
                  cwd=folder, timeout=300, memory=None)
    assert result.returncode == 0, result.stderr
    return goldens


def _copy_weights(weights: Path, folder: Path, sidecars=(".json", ".md")) -> Path:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".pth", *sidecars):
        shutil.copy(weights.with_suffix(suffix), folder / weights.with_suffix(suffix).name)
    return folder / weights.name


# 2. two outputs of one command with the same path: a usage error before any work ------------

def test_two_outputs_naming_one_file_and_empty_names_are_usage_errors(synthetic_ckpt, tmp_path):
    """43960f2: `--record-goldens G --json G` wrote the goldens, then the report over them (exit
    0, "goldens G"); `--json ''` was ignored. Now exit 2 before TensorFlow is even loaded."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    base = ["verify", "--src", synthetic_ckpt, "--count", 1]
    cases = [
        (["--record-goldens", "G.h5", "--json", "G.h5"], "name the same file"),
        (["--record-goldens", "G.h5", "--json", "./G.h5"], "name the same file"),
        (["--record-goldens", "real/G.h5", "--json", "alias/G.h5"], "name the same file"),
        (["--record-goldens", "G.h5", "--json", ""], "--json '': give a file name"),
        (["--record-goldens", ""], "--record-goldens '': give a file name"),
    ]
    before = _files(tmp_path)
    for args, message in cases:
        result = _cli(*base, *args, cwd=tmp_path, timeout=60)
        assert result.returncode == 2, (args, result.returncode, result.stderr[-2000:])
        assert message in result.stderr and "Usage:" in result.stderr, (args, result.stderr)
        assert _files(tmp_path) == before, args


# 5. derived output names are never streams or links ---------------------------------------

@pytest.mark.parametrize("planted, options", [
    ("manifest -> /dev/null", []),      # 43960f2: manifest swallowed, weights written, exit 0
    ("manifest fifo", []),              # 43960f2: blocked at commit
    ("card fifo", ["--model-card"]),    # 43960f2: blocked at commit
    ("weights -> /dev/null", ["--force"]),  # 43960f2: the link replaced by the weights
    ("weights fifo", ["--force"]),      # 43960f2: the FIFO replaced by the weights
])
def test_derived_names_that_are_links_or_streams_are_refused(planted, options, ported_weights,
                                                             synthetic_ckpt, tmp_path):
    stem = ported_weights.stem  # the hashed name a port of the checkpoint gets
    what, kind = planted.split(" ", 1)
    target = tmp_path / f"{stem}{ {'manifest': '.json', 'card': '.md', 'weights': '.pth'}[what]}"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/null")
    before = _files(tmp_path)
    result = _cli("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", *options, cwd=tmp_path,
                  timeout=60)
    _one_line(result, 1, target, "refused", "a name this tool derives")
    assert _files(tmp_path) == before  # nothing written, the planted entry untouched


def test_a_user_named_stream_is_still_written_through(ported_weights, recorded, tmp_path):
    """15. `--json /dev/stdout` with stdout a file (43960f2: refused as a symbolic link, though
    the README documents it): written at stdout's position, between the table and the verdict."""
    weights = _copy_weights(ported_weights, tmp_path / "w")
    report = tmp_path / "stdout.txt"
    with open(report, "w") as stdout:
        result = _cli("verify", "--goldens", recorded, "--weights", weights, "--count", 1,
                      "--json", "/dev/stdout", cwd=tmp_path, stdout=stdout)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    table, rest = text.split("\n{\n", 1)
    document, verdict = rest.rsplit("\n}\n", 1)
    assert table.startswith("end point") and verdict.startswith("PASS: ")
    assert json.loads("{\n" + document + "\n}")["passed"] is True


# 7. golden files: read lazily, only what is compared, within budgets --------------------------

def _goldens_like(recorded: Path, path: Path, images: int, chunk_images: int = 1,
                  extra: dict | None = None) -> Path:
    """``recorded``'s attributes and end points, declared for ``images`` images, the inputs
    chunked by ``chunk_images``; its 2 images' data written where chunked by image (the rest
    never written: HDF5 fills them on read, so the file stays small); ``extra`` end points
    {name: row shape} declared (replacing any of that name) and never written."""
    import h5py
    import numpy as np

    extra = extra or {}
    with h5py.File(recorded, "r") as source, h5py.File(path, "w") as out:
        out.attrs.update(dict(source.attrs))

        def declare(name, shape, dtype, rows=None, by=1):
            chunks = (min(by, images), *[min(n, 1 << 20) for n in shape])
            dataset = out.create_dataset(name, shape=(images, *shape), dtype=dtype,
                                         chunks=chunks, compression="gzip")
            if rows is not None and by == 1:
                dataset[:len(rows)] = rows

        declare("inputs", source["inputs"].shape[1:], "float32", source["inputs"][...],
                by=chunk_images)
        out["image_names"] = np.array([f"{i}.png" for i in range(images)],
                                      dtype=h5py.string_dtype())
        for key, dataset in source["end_points"].items():
            if key not in extra:
                declare(f"end_points/{key}", dataset.shape[1:], dataset.dtype, dataset[...])
        for key, shape in extra.items():
            declare(f"end_points/{key}", shape, "float32")
    return path


def test_goldens_are_read_only_as_far_as_compared(ported_weights, recorded, tmp_path):
    """43960f2 read every declared input before --count applied (2000 images: 2 GiB, exit 70
    under a 2 GiB limit) and every end point in the file, compared or not (an extra [2, 2^31]
    one: 8 GiB a row, exit 70). Now --count 1 reads one image and the end points compared."""
    for name, images, extra in (("many.h5", 2000, None), ("extra.h5", 2, {"Extra": [1 << 31]})):
        goldens = _goldens_like(recorded, tmp_path / name, images, extra=extra)
        result = _cli("verify", "--goldens", goldens, "--weights", ported_weights, "--count", 1,
                      cwd=tmp_path)
        assert result.returncode == 0, (name, result.returncode, result.stderr[-2000:])
        assert result.stdout.strip().splitlines()[-1].startswith("PASS: 21 end points"), name


@pytest.mark.parametrize("declared, says", [
    (dict(images=20_000), "declares 20,000 images; a golden file holds at most 10,000"),
    (dict(images=2000, chunk_images=2000), "inputs is chunked by 2,000 images"),
    (dict(images=2, extra={"Mixed_7c": [1 << 31]}), "bytes per image"),
])
def test_goldens_declaring_more_than_the_budget_are_refused(declared, says, ported_weights,
                                                            recorded, tmp_path):
    """What a golden file declares is checked on its metadata before anything is read
    (43960f2: exit 70, MemoryError, under a 2 GiB limit)."""
    goldens = _goldens_like(recorded, tmp_path / "hostile.h5", **declared)
    result = _cli("verify", "--goldens", goldens, "--weights", ported_weights, "--count", 1,
                  cwd=tmp_path)
    _one_line(result, 1, goldens, says)


# 15. the verify report and goldens: refused before the run, one line when the disk says no -----

def test_json_into_a_missing_folder_is_refused_before_the_run(ported_weights, recorded, tmp_path):
    """43960f2 ran the comparison, recorded the parity in the manifest, then failed."""
    weights = _copy_weights(ported_weights, tmp_path / "w")
    before = _files(tmp_path)
    result = _cli("verify", "--goldens", recorded, "--weights", weights, "--count", 1,
                  "--json", tmp_path / "missing" / "r.json", cwd=tmp_path)
    _one_line(result, 1, tmp_path / "missing" / "r.json", "cannot write")
    assert result.stdout == "" and _files(tmp_path) == before  # the manifest untouched


def test_a_full_disk_while_recording_goldens_is_one_line_naming_them(synthetic_ckpt, tmp_path):
    """43960f2: HDF5's error text (two lines naming the temporary file; under a file size limit
    a RuntimeError on close, exit 70). Now one line naming the golden file, nothing left."""
    result = _cli("verify", "--src", synthetic_ckpt, "--count", 1, "--record-goldens", "g.h5",
                  cwd=tmp_path, timeout=300, memory=None, file_size=4 << 20)
    line = _one_line(result, 1, "error: g.h5: cannot write: File too large")
    assert ".tmp" not in line and _files(tmp_path) == {}


def test_ctrl_c_exits_130_in_one_line_and_leaves_nothing(synthetic_ckpt, tmp_path):
    """43960f2: click's "Aborted!" and exit 1. Now as SIGTERM: 128 + 2, one line, no outputs."""
    import signal

    code = ("import time, porting.write.hashed as w; real = w.save_state_dict\n"
            "def slow(sd, f):\n    real(sd, f); print('staged', flush=True); time.sleep(60)\n"
            "w.save_state_dict = slow\n"
            "import sys; from porting.cli import run; sys.argv[1:] = "
            f"['--src', {str(synthetic_ckpt)!r}, '--dst', 'out/m.pth']; run()")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert process.stdout.readline().strip() == "staged"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, err
    assert err.strip().splitlines() == ["interrupted by SIGINT; outputs left unwritten"]
    assert not (tmp_path / "out").exists()  # the folder made for the output too


# 12. manifests beside the weights that are not this tool's, and names a card cannot hold ------

def test_foreign_manifests_beside_the_weights_are_left_alone(ported_weights, recorded, tmp_path):
    """43960f2: a manifest nested 100000 deep gave RecursionError (exit 70) in port, in verify
    after PASS and in export; a minimal one with a card, KeyError after PASS."""
    nested = "[" * 100_000 + "]" * 100_000
    minimal = json.dumps({"output": {
        "sha256": hashlib.sha256(ported_weights.read_bytes()).hexdigest()}})
    for name, text in (("nested", nested), ("minimal", minimal)):
        weights = _copy_weights(ported_weights, tmp_path / name)
        manifest = weights.with_suffix(".json")
        manifest.write_text(text)
        before = _files(tmp_path / name)
        result = _cli("verify", "--goldens", recorded, "--weights", weights, "--count", 1,
                      cwd=tmp_path)
        assert result.returncode == 0, (name, result.returncode, result.stderr[-2000:])
        assert f"manifest not updated: {manifest} is not a readable manifest" in result.stdout
        assert _files(tmp_path / name) == before, name
    weights = tmp_path / "nested" / ported_weights.name
    exported = _cli("export", "--weights", weights, "--dst", tmp_path / "g.onnx", cwd=tmp_path,
                    timeout=300, memory=None)
    assert exported.returncode == 0, exported.stderr[-2000:]
    graph_manifest = json.loads(next(tmp_path.glob("g-*.json")).read_text())
    assert graph_manifest["source"]["ported_from"] is None


def test_port_over_a_foreign_manifest_and_a_card_for_a_name_not_utf8(synthetic_ckpt, ported_weights,
                                                                     tmp_path):
    """43960f2: exit 70 (RecursionError reading the manifest there; UnicodeEncodeError writing
    the card of a non-UTF-8 --dst). Now one line, exit 1, nothing written."""
    (tmp_path / "nested").mkdir()
    manifest = tmp_path / "nested" / ported_weights.with_suffix(".json").name
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    before = _files(tmp_path)
    result = _cli("--src", synthetic_ckpt, "--dst", tmp_path / "nested" / "m.pth", cwd=tmp_path)
    _one_line(result, 1, manifest, "exists with different contents; pass --force")
    assert _files(tmp_path) == before
    dst = os.fsencode(tmp_path) + b"/m\xff.pth"
    result = _cli("--src", synthetic_ckpt, "--dst", os.fsdecode(dst), "--model-card",
                  cwd=tmp_path)
    _one_line(result, 1, "m\\xff-", "a model card is UTF-8 text")
    assert _files(tmp_path) == before
