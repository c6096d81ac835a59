"""Outputs that never clobber, appear together or not at all, and leave nothing behind, also on
SIGTERM; bad requests that are one line and exit 1. Each case failed before its fix (see the
closing note of the hardening issue for the before/after table)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from porting.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int = 1, *fragments) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def ported(synthetic_ckpt, tmp_path_factory):
    """A port of the synthetic checkpoint with its manifest and card: (folder, weights)."""
    folder = tmp_path_factory.mktemp("ported_safe")
    result = run("--src", synthetic_ckpt, "--dst", folder / "m.pth", "--model-card")
    assert result.exit_code == 0, result.output
    return folder, next(folder.glob("m-*.pth"))


# --- the table: refused targets -----------------------------------------------------------

def test_targets_that_are_inputs_links_or_folders_are_refused(ported, synthetic_ckpt, tmp_path):
    import shutil

    folder, weights = ported
    before = {p: p.read_bytes() for p in folder.iterdir()}
    source = tmp_path / "src"  # a copy: a regression must not destroy the session's checkpoint
    source.mkdir()
    for path in synthetic_ckpt.parent.glob(f"{synthetic_ckpt.name}.*"):
        shutil.copy(path, source / path.name)
    synthetic_ckpt = source / synthetic_ckpt.name
    index = Path(f"{synthetic_ckpt}.index")
    index_bytes = index.read_bytes()
    import socket

    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.json"))  # neither a file, nor a device or pipe
    cases = [  # (--json target, what the error says)
        (weights, "an input of this command"),
        (weights.with_suffix(".json"), "an input of this command"),  # its manifest
        (index, "an input of this command"),
        (link, "a symbolic link"),
        (tmp_path / "sock.json", "not a regular file"),
    ]
    for target, message in cases:
        result = run("verify", "--src", synthetic_ckpt, "--weights", weights, "--json", target)
        one_line_error(result, 1, target, message)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert index.read_bytes() == index_bytes and not link.exists()
    assert listing(tmp_path) == ["link.json", "sock.json", "src"]
    server.close()


def test_record_goldens_over_an_input_is_refused(ported, synthetic_ckpt, tmp_path):
    import shutil

    weights = tmp_path / ported[1].name  # a copy: a regression must not break the fixture
    shutil.copy(ported[1], weights)
    before = weights.read_bytes()
    result = run("verify", "--src", synthetic_ckpt, "--weights", weights,
                 "--record-goldens", weights)
    one_line_error(result, 1, "an input of this command")
    result = run("verify", "--src", synthetic_ckpt, "--record-goldens",
                 Path(f"{synthetic_ckpt}.index"))
    one_line_error(result, 1, "an input of this command")
    assert weights.read_bytes() == before
    result = run("verify", "--src", synthetic_ckpt, "--record-goldens", "/dev/null")
    one_line_error(result, 1, "cannot be streamed")


def test_json_report_streams_to_a_character_device(monkeypatch, tmp_path):
    """``--json /dev/stdout`` (a device or pipe) is written through, not replaced."""
    from porting.files import write_json

    write_json(Path("/dev/null"), {"a": 1})  # a character device: written, still a device
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"print(open({str(fifo)!r}).read())"],
                              stdout=subprocess.PIPE, text=True)
    write_json(fifo, {"streamed": True})
    out, _ = reader.communicate(timeout=60)
    assert json.loads(out) == {"streamed": True} and fifo.is_fifo()


def test_a_full_device_is_written_through_and_fails_in_one_line():
    """``--json /dev/full`` (as root) used to replace the device with a file and exit 0."""
    from porting.errors import PortError
    from porting.files import write_json

    with pytest.raises(PortError, match="^/dev/full: cannot write: No space left on device$"):
        write_json(Path("/dev/full"), {"a": 1})
    assert Path("/dev/full").is_char_device()


def test_empty_dst_is_one_line(synthetic_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run("--src", synthetic_ckpt, "--dst", ""), 1, "--dst needs a file name")
    assert listing(tmp_path) == []


# --- sidecars and parity ---------------------------------------------------------------------

def test_reporting_keeps_the_recorded_parity_and_other_sidecars_need_force(synthetic_ckpt,
                                                                           tmp_path):
    from porting.write.manifest import record_parity
    from porting.verify.parity import Parity

    first = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", "--model-card")
    assert first.exit_code == 0, first.output
    manifest_path = next(tmp_path.glob("m-*.json"))
    parity = Parity(1e-5, 10.0, 1e-4, 10, 10, 10)
    record_parity(manifest_path, parity, "TF-Slim (test)", next(tmp_path.glob("m-*.md")))
    recorded = manifest_path.read_bytes()
    again = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", "--model-card")
    assert again.exit_code == 0, again.output
    assert manifest_path.read_bytes() == recorded  # parity kept, file untouched
    assert "max abs logit diff 1e-05" in next(tmp_path.glob("m-*.md")).read_text()
    # the same weights from another reader: the manifest says so, the parity stays
    other = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", "--reader", "tf")
    assert other.exit_code == 0, other.output
    manifest = json.loads(manifest_path.read_text())
    assert manifest["options"]["reader"] == "tf" and manifest["parity"]["max_abs_diff"] == 1e-5
    # a sidecar that is not of these weights (edited by hand) is replaced only with --force
    manifest_path.write_text("{}")
    edited = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth")
    one_line_error(edited, 1, manifest_path, "--force")
    assert manifest_path.read_text() == "{}"
    assert run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", "--force").exit_code == 0


def test_a_failed_manifest_write_leaves_no_weights(synthetic_ckpt, tmp_path, monkeypatch):
    """Outputs appear together: the weights are renamed last, and removed if a sidecar fails."""
    from porting import files

    real = files.move_into_place

    def full_disk(tmp, path):
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(files, "move_into_place", full_disk)
    result = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth", "--model-card")
    one_line_error(result, 1, "cannot write: No space left on device")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", [[], ["release"]])
def test_folders_made_for_the_outputs_go_with_them(command, synthetic_ckpt, tmp_path,
                                                    monkeypatch):
    """--dst in folders that do not exist yet: made for the outputs, and removed again when
    nothing is written (the disk fills at the rename); kept, with the outputs, otherwise."""
    from porting import files

    def full_disk(tmp, path):
        raise OSError(28, "No space left on device")

    dst = tmp_path / "new" / "deeper" / ("out" if command else "out.pth")
    monkeypatch.setattr(files, "move_into_place", full_disk)
    if command:  # release renames its folder whole: the disk fills at that rename
        monkeypatch.setattr(files.os, "rename", lambda *a: full_disk(*a))
        args = [*command, "--src", synthetic_ckpt, "--dst", dst, "--no-timm-distance"]
    else:
        args = ["--src", synthetic_ckpt, "--dst", dst]
    one_line_error(run(*args), 1, "No space left on device")
    assert listing(tmp_path) == []
    monkeypatch.undo()  # the control: written, the folders kept
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert dst.parent.is_dir() and any(dst.parent.iterdir())


def test_verify_with_a_read_only_manifest_still_reports(ported, synthetic_ckpt, monkeypatch):
    """Parity passed, the manifest cannot be updated: the report stands, exit 0, files unchanged."""
    from porting import files

    folder, weights = ported
    before = {p: p.read_bytes() for p in folder.iterdir()}

    def read_only(tmp, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "move_into_place", read_only)
    result = run("verify", "--src", synthetic_ckpt, "--weights", weights, "--count", 1)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "manifest not updated" in result.stdout
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- nothing left behind ---------------------------------------------------------------------

def test_sigterm_during_a_port_leaves_nothing(synthetic_ckpt, tmp_path):
    """SIGTERM (timeout, CI cancellation, docker stop) cleans up like Ctrl-C; exit 143."""
    import tarfile

    archive = tmp_path / "release.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in Path(synthetic_ckpt).parent.glob(f"{Path(synthetic_ckpt).name}.*"):
            tar.add(path, arcname=path.name)
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    code = ("import time, porting.write.hashed as w; real = w.save_state_dict\n"
            "def slow(sd, f):\n    real(sd, f); print('staged', flush=True); time.sleep(60)\n"
            "w.save_state_dict = slow\n"
            "import sys; from porting.cli import run; sys.argv[1:] = "
            f"['--src', {str(archive)!r}, '--dst', {str(out / 'm.pth')!r}]; run()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["interrupted by SIGTERM; outputs left unwritten"]
    assert not out.exists() and listing(tmp_path / "tmp") == []  # the folder made for it too


def test_temporaries_of_a_killed_process_are_removed_by_the_next_run(synthetic_ckpt, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".m.pth.{pid}.abcd1234.tmp"
    stale.write_bytes(b"half a file")
    alive = tmp_path / f".m.pth.{os.getppid()}.abcd1234.tmp"  # a live process's: kept
    alive.write_bytes(b"in progress")
    result = run("--src", synthetic_ckpt, "--dst", tmp_path / "m.pth")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()


# --- inputs that are not weights -------------------------------------------------------------

def test_nonfinite_weights_are_refused_with_the_variable_named(variant, tmp_path):
    name = "InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights"

    def poisoned(tensors):
        tensors[name] = tensors[name].copy()
        tensors[name].flat[7] = np.nan
        return tensors

    prefix = variant("nan", poisoned)
    one_line_error(run("--src", prefix, "--dst", tmp_path / "m.pth"), 1, name,
                   "1 NaN/Inf value of", "--allow-nonfinite")
    assert listing(tmp_path) == []
    allowed = run("--src", prefix, "--dst", tmp_path / "m.pth", "--allow-nonfinite")
    assert allowed.exit_code == 0, allowed.output


def test_a_typo_is_no_such_command():
    result = run("inpsect", "x")
    assert result.exit_code == 2 and "No such command 'inpsect'" in result.output


def test_an_oversized_image_in_predict_is_one_line(ported, tmp_path, monkeypatch):
    """A decompression bomb is refused before it is decoded (exit 1, not 70)."""
    from PIL import Image

    _, weights = ported
    photo = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is "too large" here
    one_line_error(run("predict", weights, photo), 1, photo, "image too large")
