"""Mutated checkpoints: the native reader returns the right tensors or one clean PortError.

A seeded corpus of flipped bytes, truncations and zeroed ranges, in index and data files of
V2 checkpoints (plain and Snappy) and V1 files. Anything but bit-identical values or a
one-line PortError naming a file is a failure.
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from dtype_checkpoints import same

from porting.errors import PortError
from porting.readers import open_reader

MUTATIONS_PER_FILE = 45
TARGETS = [("v2", ".index"), ("v2", ".data-00000-of-00001"), ("v2_snappy", ".index"),
           ("v1", ""), ("v1_snappy", "")]


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "zero", "tail"])
    at = rng.randrange(len(out))
    if kind == "flip":
        out[at] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[at:]
    elif kind == "zero":
        end = min(len(out), at + rng.randint(1, 64))
        out[at:end] = bytes(end - at)
    else:  # the footer and last blocks are where a reader is most fragile
        at = max(0, len(out) - rng.randint(1, 60))
        out[at] ^= 0xFF
    return f"{kind}@{at}", bytes(out)


def _read_everything(prefix: Path) -> dict[str, np.ndarray]:
    reader = open_reader(prefix, "native")
    return {name: reader.read(name) for name in reader.variables()}


def test_mutated_checkpoints_read_right_or_fail_cleanly(checkpoints, tmp_path):
    rng = random.Random(20240601)
    outcomes = {"identical": 0, "error": 0}
    started = time.monotonic()
    for flavour, suffix in TARGETS:
        original = checkpoints[flavour]
        expected = _read_everything(original)
        target_name = original.name + suffix
        data = (original.parent / target_name).read_bytes()
        for i in range(MUTATIONS_PER_FILE):
            what, mutated = _mutate(data, rng)
            case = tmp_path / f"{flavour}{suffix}-{i}"
            case.mkdir()
            for f in original.parent.iterdir():
                shutil.copy(f, case / f.name)
            (case / target_name).write_bytes(mutated)
            try:
                got = _read_everything(case / original.name)
            except PortError as err:
                message = str(err)
                assert "\n" not in message and message.startswith(str(case)), (what, message)
                outcomes["error"] += 1
                continue
            assert got.keys() == expected.keys(), (flavour, suffix, what)
            for name, value in expected.items():
                assert same(got[name], value), (flavour, suffix, what, name)
            outcomes["identical"] += 1
    assert sum(outcomes.values()) >= 200
    assert outcomes["error"] > 100  # the corpus really exercises the checks
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("size", [0, 1, 47, 48])
def test_tiny_files_are_not_checkpoints(tmp_path, size):
    path = tmp_path / "model.ckpt.index"
    path.write_bytes(b"\x57" * size)
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(PortError, match=rf"^{path}: "):
        open_reader(tmp_path / "model.ckpt", "native")
