"""The release-folder check every architecture's test module runs on its own synthetic
checkpoint: ``port-weights release`` twice, into two folders of the same name, gives the same
files, byte for byte (the folder is reproducible)."""
from __future__ import annotations

import os
from pathlib import Path

from porting.publish import make_release

FILES = {"model.safetensors", "config.json", "README.md", "model.json"}


def assert_release_is_reproducible(checkpoint, tmp_path: Path) -> None:
    folders = [tmp_path / side / "release" for side in ("a", "b")]
    for folder in folders:
        make_release(checkpoint, folder, timm_distance=False)
    (a, b) = folders
    assert set(os.listdir(a)) == set(os.listdir(b)) == FILES
    for name in sorted(FILES):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    changed = (a / "config.json").read_bytes().replace(b'"num_classes": 1000',
                                                       b'"num_classes": 1001')
    assert changed != (b / "config.json").read_bytes()  # the comparison can tell a change
