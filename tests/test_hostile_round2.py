"""Hardening, round two (issue 19): each test reproduces one defect found by the adversarial
review of 43960f2 and fails there. Hostile cases run bounded in time and memory."""
from __future__ import annotations

import fcntl
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
