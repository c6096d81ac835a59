"""Release archives as --src: hostile ones are refused whole, before anything is written."""
from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from porting.cli import main


def _temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("port-weights-*"))


def _archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(_file("model.ckpt.index", b"fine"), io.BytesIO(b"fine"))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return path


def _file(name: str, data: bytes = b"evil") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _hostile(tmp: Path) -> dict[str, tuple[list[tarfile.TarInfo], str]]:
    """name -> (members, what the one-line error must say)."""
    outside = tmp / "outside" / "evil"
    return {
        "absolute": ([_file(str(outside))], "has an absolute path"),
        "dotdot": ([_file("../outside/evil")], "points outside the archive"),
        "nested-dotdot": ([_file("ckpt/../../outside/evil")], "points outside the archive"),
        "symlink": ([_special("link", tarfile.SYMTYPE, str(tmp / "outside"))],
                    "is a symbolic link"),
        "symlink-then-file": ([_special("link", tarfile.SYMTYPE, str(tmp / "outside")),
                               _file("link/evil")], "is a symbolic link"),
        "hardlink": ([_special("hard", tarfile.LNKTYPE, "/etc/passwd")], "is a hard link"),
        "device": ([_special("dev", tarfile.CHRTYPE)], "is a device"),
        "fifo": ([_special("fifo", tarfile.FIFOTYPE)], "is a FIFO"),
        "duplicate": ([_file("model.ckpt.index")], "appears twice"),
    }


@pytest.mark.parametrize("case", ["absolute", "dotdot", "nested-dotdot", "symlink",
                                  "symlink-then-file", "hardlink", "device", "fifo", "duplicate"])
def test_hostile_archive_is_refused_and_writes_nothing(case, tmp_path):
    (tmp_path / "outside").mkdir()
    members, message = _hostile(tmp_path)[case]
    archive = _archive(tmp_path / "release.tar.gz", members)
    before = _temp_dirs()
    dst = tmp_path / "out" / "model.pth"
    result = CliRunner().invoke(main, ["--src", str(archive), "--dst", str(dst)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {archive}: refused: member ")
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "out").exists()
    assert _temp_dirs() == before


def test_unreadable_archive_is_one_line(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    result = CliRunner().invoke(main, ["--src", str(archive), "--dst", str(tmp_path / "m.pth")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {archive}: ")


def test_archive_without_a_checkpoint_is_refused_and_cleaned_up(tmp_path):
    archive = tmp_path / "notes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_file("README", b"hello"), io.BytesIO(b"hello"))
    before = _temp_dirs()
    result = CliRunner().invoke(main, ["--src", str(archive), "--dst", str(tmp_path / "m.pth")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "no checkpoint" in result.stderr
    assert _temp_dirs() == before and not list(tmp_path.glob("m*"))
