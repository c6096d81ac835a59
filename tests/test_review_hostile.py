"""An adversarial review's findings: each a hostile input that once got past a rule."""
from __future__ import annotations

import codecs
import pickle
import resource
from pathlib import Path

import numpy as np
import pytest

from porting.compare.foreign import read_foreign
from porting.errors import PortError


class Call:
    """Pickles as a call of ``func(*args)``, whatever ``func`` is."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def zoo_file(path: Path, content) -> Path:
    """``content`` pickled as the converter zoo's .npy (a 0-d object array)."""
    np.save(path, np.array(content, dtype=object), allow_pickle=True)
    return path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("call", [
    # 3 GiB no byte of the file holds, allocated while unpickling, touched by compare later
    Call(np.core.multiarray._reconstruct, np.ndarray, (3 << 30,), b"b"),
    Call(np.ndarray, (3 << 30,), "b"),
])
def test_a_pickled_array_larger_than_its_bytes_is_refused(tmp_path, call):
    hostile = zoo_file(tmp_path / "unbacked.npy", {"node": {"weights": call}})
    with pytest.raises(PortError, match=r"unbacked\.npy: refused: .*no byte of the file holds"):
        read_foreign(hostile)


def test_nested_codecs_in_a_pickle_cannot_grow_its_bytes(tmp_path):
    value = "ab"
    for i in range(36):  # each hex encoding doubles it: 2**36 bytes from a 2 KB file
        value = Call(codecs.encode, value, "hex" if i else "latin1")
    hostile = zoo_file(tmp_path / "codecs.npy", {"node": {"note": value}})
    before = peak_mb()
    with pytest.raises(PortError, match=r"codecs\.npy: refused: .*_codecs\.encode to 'hex'"):
        read_foreign(hostile)
    assert peak_mb() - before < 64
    # the bytes Python's own protocol-2 pickles spell this way still load
    plain = zoo_file(tmp_path / "plain.npy", {"node": {"weights": np.ones(2, np.float32),
                                                       "name": b"\xffconv"}})
    assert read_foreign(plain)["node/weights"].tolist() == [1, 1]


def shared_tree(leaf):
    """A dict 12 levels deep of 30 references each to the level below: 30**12 paths to
    ``leaf`` from a pickle of a few KB (its memo shares every level)."""
    level = {"w": leaf}
    for _ in range(12):
        level = {str(k): level for k in range(30)}
    return level


def test_a_pickle_sharing_one_dict_everywhere_is_refused_not_walked(tmp_path):
    hostile = zoo_file(tmp_path / "shared.npy", shared_tree(np.zeros(1, np.float32)))
    assert hostile.stat().st_size < 10_000
    with pytest.raises(PortError, match=r"shared\.npy: refused: holds one dict in several"):
        read_foreign(hostile)


def test_a_pth_sharing_one_dict_everywhere_or_nested_deep_is_refused(tmp_path):
    import torch
    torch.save(shared_tree(torch.zeros(1)), tmp_path / "shared.pth")
    with pytest.raises(PortError, match=r"shared\.pth: refused: holds one dict in several"):
        read_foreign(tmp_path / "shared.pth")
    deep = {"w": torch.zeros(1)}
    for _ in range(17):
        deep = {"a": deep}
    torch.save(deep, tmp_path / "deep.pth")
    with pytest.raises(PortError, match=r"deep\.pth: nested more than 16 deep"):
        read_foreign(tmp_path / "deep.pth")
    # the control: a state dict nested 16 deep is read
    torch.save(deep["a"], tmp_path / "ok.pth")
    assert list(read_foreign(tmp_path / "ok.pth")) == ["a/" * 16 + "w"]


def test_a_pth_whose_members_are_deflated_is_refused_before_it_is_inflated(tmp_path):
    """torch.load inflates a zip member whole: 200 MB of zeros deflate to ~200 KB."""
    import zipfile

    import torch

    from porting.weights import load_ported

    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(tmp_path / "small.pth") as src, \
            zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            data, method = src.read(info.filename), zipfile.ZIP_STORED
            if info.filename.endswith("/data/0"):  # the storage, 200 MB deflated
                data, method = bytes(200 << 20), zipfile.ZIP_DEFLATED
            dst.writestr(info.filename, data, compress_type=method)
    assert bomb.stat().st_size < 1 << 20
    before = peak_mb()
    for read in (read_foreign, load_ported):
        with pytest.raises(PortError, match=r"bomb\.pth: refused: member .*data/0' is "
                                            r"compressed"):
            read(bomb)
    assert peak_mb() - before < 100
    # the control: torch.save's own (stored) file is read
    assert read_foreign(tmp_path / "small.pth")["w"].tolist() == [0, 0, 0, 0]
