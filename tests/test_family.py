"""Every Inception v3 release of the family, as its .tar.gz, ports with --src and matches TF-Slim.

Archives are packed here from the session's two synthetic checkpoints (one V2, one V1 with the
same values) under each release's exact member names from the registry. The Inception-ResNet-v2
releases' archives are tested the same way in test_inception_resnet_v2_port.py.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from models import model_for_state_dict
from porting.cli import main
from porting.write.manifest import record_parity
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from porting.releases.registry import load_registry

RELEASES = sorted(name for name, release in load_registry().items()
                  if release.architecture == "inception_v3")


def _pack(archive: Path, files: dict[str, Path | None]) -> Path:
    """A .tar.gz with ``files`` (member name -> file; None for an empty placeholder)."""
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, path in files.items():
            if path is None:  # the .meta graph: in the release, but never read by the port
                info = tarfile.TarInfo(name)
                tar.addfile(info)
            else:
                tar.add(path, arcname=name)
    return archive


@pytest.fixture(scope="module")
def release_archives(tmp_path_factory, synthetic_ckpt, synthetic_v1_ckpt):
    folder = tmp_path_factory.mktemp("releases")
    archives = {}
    for name in RELEASES:
        release, files = load_registry()[name], {}
        for member in release.members:
            if release.format == "V1":
                files[member] = synthetic_v1_ckpt
            elif member.endswith(".meta"):
                files[member] = None
            else:  # "<release>.ckpt.index" <- "<synthetic prefix>.index", same for the data shard
                files[member] = Path(f"{synthetic_ckpt}{member[len(release.checkpoint):]}")
        archives[name] = _pack(folder / release.archive, files)
    return archives


def test_v1_checkpoint_holds_the_v2_values(synthetic_ckpt, synthetic_v1_ckpt):
    from ckpt_tools import read_all

    v1, v2 = read_all(synthetic_v1_ckpt), read_all(synthetic_ckpt)
    assert v1.keys() == v2.keys() and all((v1[k] == v2[k]).all() for k in v2)


@pytest.mark.parametrize("name", RELEASES)
def test_release_archive_ports_with_parity(name, release_archives, tf_outputs, photos, tmp_path,
                                           ported_files):
    release = load_registry()[name]
    archive = release_archives[name]
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(release.members)
    temp_before = set(Path(tempfile.gettempdir()).glob("port-weights-*"))

    result = CliRunner().invoke(main, ["--src", str(archive), "--dst", str(tmp_path / f"{name}.pth"),
                                       "--num-classes", "1001"])
    assert result.exit_code == 0, result.output
    assert f"{archive}: {release.checkpoint} ({release.format}, " in result.stdout
    assert set(Path(tempfile.gettempdir()).glob("port-weights-*")) == temp_before

    (output,) = tmp_path.glob(f"{name}-*.pth")
    # the same bytes as the session's port of the checkpoint itself, whose parity test_parity
    # proves; one release is also run against TF-Slim here, end to end
    assert output.read_bytes() == ported_files["1001"].read_bytes()
    if name == "adv_inception_v3":
        model = model_for_state_dict(torch.load(output, weights_only=True))
        ours = torch_outputs(model, photos[1], batch_size=len(photos[1]))
        reference = tf_outputs[len(photos[1])]
        logits, aux = compare(ours["Logits"], reference["Logits"]), \
            compare(ours["AuxLogits"], reference["AuxLogits"])
        print(f"{name}: Logits {logits}; AuxLogits {aux}")
        assert logits.passed and aux.passed
    else:
        logits = compare(np.zeros((1, 5)), np.zeros((1, 5)))  # a parity record for the manifest

    manifest_path = output.with_suffix(".json")
    manifest = record_parity(manifest_path, logits, "TF-Slim inception_v3 on 10 photos")
    source = manifest.source
    assert source.release == name and source.url == release.url
    assert source.format == release.format and source.checkpoint == release.checkpoint
    assert source.archive.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert {f.name for f in source.files} == {m for m in release.members
                                              if not m.endswith(".meta")}
    assert manifest.variables.mapped_count == 388
    assert manifest.variables.skipped == {"global_step": "training counter"}
    assert json.loads(manifest_path.read_text())["parity"]["passed"] is True
