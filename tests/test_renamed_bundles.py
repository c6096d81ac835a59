"""Renamed checkpoints (a root scope renamed so that several models fit one TF graph, as attack
code passes them around) and bundles of several checkpoints (``port --all``).

The renamed checkpoints are written here by TensorFlow from the fixed synthetic Inception v3
checkpoint (tests/conftest.py), renaming every variable as the rename scripts of those code
bases do (``name.replace(old_root, new_root)``: ``global_step`` keeps its name).
"""
from __future__ import annotations

import io
import json
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models.spec import get_architecture
from porting.cli import main
from porting.convert import PortOptions, detect_architecture, plan_variables, root_scope
from porting.errors import PortError
from porting.pipeline import port_checkpoint
from porting.read.api import VariableInfo
from porting.read.sources import CheckpointSource
from porting.write.manifest import read_manifest

IV3 = get_architecture("inception_v3")
IRV2 = get_architecture("inception_resnet_v2")
ONE_THOUSAND_ONE = PortOptions(num_classes=1001)


def _renamed(tensors: dict, old: str, new: str) -> dict:
    return {name.replace(old, new): value for name, value in tensors.items()}


@pytest.fixture(scope="module")
def bundle(tensors, tmp_path_factory):
    """A folder with two renamed copies of the synthetic checkpoint, as attack code names them:
    adv_inception_v3_rename.ckpt (root AdvInceptionV3), ens3_adv_inception_v3_rename.ckpt
    (root Ens3AdvInceptionV3), both with the same values as ``synthetic_ckpt``."""
    from ckpt_tools import write_checkpoint

    folder = tmp_path_factory.mktemp("bundle")
    for prefix, root in (("adv_inception_v3_rename.ckpt", "AdvInceptionV3"),
                         ("ens3_adv_inception_v3_rename.ckpt", "Ens3AdvInceptionV3")):
        write_checkpoint(folder / prefix, _renamed(tensors, IV3.tf_root, root))
    return folder


@pytest.fixture(scope="module")
def renamed_ckpt(bundle):
    return bundle / "adv_inception_v3_rename.ckpt"


@pytest.fixture(scope="module")
def plain_port(synthetic_ckpt, tmp_path_factory):
    """The unrenamed synthetic checkpoint's port (1001 classes): what a renamed copy must give."""
    return port_checkpoint(synthetic_ckpt, tmp_path_factory.mktemp("plain") / "iv3.pth",
                           ONE_THOUSAND_ONE)


def _zip(path: Path, folder: Path, under: str = "models/") -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for file in sorted(folder.iterdir()):
            zipped.write(file, under + file.name)
    return path


def _temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("port-weights-*"))


# --- renamed root scopes ---------------------------------------------------------------------

def test_a_renamed_checkpoint_ports_to_the_same_bytes_and_records_its_scope(renamed_ckpt,
                                                                             plain_port, tmp_path):
    result = port_checkpoint(renamed_ckpt, tmp_path / "adv.pth", ONE_THOUSAND_ONE)
    assert result.conversion.architecture is IV3
    assert result.conversion.renamed_root == "AdvInceptionV3"
    assert result.written.path.read_bytes() == plain_port.written.path.read_bytes()
    assert result.written.path.name[-13:] == plain_port.written.path.name[-13:]  # same hash

    renamed, plain = read_manifest(result.manifest), read_manifest(plain_port.manifest)
    assert renamed.source.root_scope == "AdvInceptionV3"
    assert plain.source.root_scope is None
    assert "root_scope" not in json.loads(plain_port.manifest.read_bytes())["source"]
    # the file's own names, under the renamed root; global_step is not renamed
    assert set(renamed.variables.mapped) == {
        name.replace(IV3.tf_root, "AdvInceptionV3", 1) for name in plain.variables.mapped}
    assert renamed.variables.skipped == plain.variables.skipped == {
        "global_step": "training counter"}
    assert renamed.output.sha256 == plain.output.sha256 and renamed.options == plain.options


def test_a_root_scope_no_spec_lists_is_refused_naming_it(tensors, tmp_path):
    """Negative control: only the aliases in the specs are taken for the architecture."""
    from ckpt_tools import write_checkpoint

    prefix = write_checkpoint(tmp_path / "mine.ckpt",
                              _renamed(tensors, IV3.tf_root, "MyInceptionV3"))
    result = CliRunner().invoke(main, ["--src", str(prefix), "--dst", str(tmp_path / "m.pth")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "no known architecture: root scopes MyInceptionV3 (388 variables)" in result.stderr
    assert not list(tmp_path.glob("m-*")) and not (tmp_path / "m.pth").exists()


def test_two_copies_of_one_architecture_in_one_checkpoint_are_refused(tensors, tmp_path):
    from ckpt_tools import write_checkpoint

    both = {**tensors, **_renamed(tensors, IV3.tf_root, "AdvInceptionV3")}
    prefix = write_checkpoint(tmp_path / "both.ckpt", both)
    result = CliRunner().invoke(main, ["--src", str(prefix), "--dst", str(tmp_path / "m.pth")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "several Inception v3 models" in result.stderr
    assert "InceptionV3 (388 variables)" in result.stderr and "AdvInceptionV3" in result.stderr


def test_port_and_inspect_say_the_renamed_scope(renamed_ckpt, tmp_path):
    ported = CliRunner().invoke(main, ["--src", str(renamed_ckpt), "--dst",
                                       str(tmp_path / "a.pth")])
    assert ported.exit_code == 0, ported.output
    assert "model    Inception v3 (inception_v3), renamed root scope AdvInceptionV3" in ported.stdout
    shown = CliRunner().invoke(main, ["inspect", str(renamed_ckpt)])
    assert shown.exit_code == 0, shown.output
    assert "model    Inception v3 (inception_v3), renamed root scope AdvInceptionV3" in shown.stdout
    assert "AdvInceptionV3/Conv2d_1a_3x3/weights" in shown.stdout
    assert "mapped   388 variables" in shown.stdout


def test_tf_reference_reads_a_renamed_checkpoint_under_its_scope(renamed_ckpt, tf_outputs,
                                                                 photos):
    """The oracle's graph keeps TF-Slim's own scope and reads each variable under the renamed
    one: same outputs as on the unrenamed checkpoint (conftest's reference), bit for bit."""
    from models.inception_v3.oracle import Reference

    images = photos[1]
    model = Reference.for_checkpoint(renamed_ckpt, root="AdvInceptionV3")
    try:
        out = model(images)
    finally:
        model.close()
    for name in ("Logits", "AuxLogits"):
        np.testing.assert_array_equal(out[name], tf_outputs[len(images)][name])
    with pytest.raises(PortError, match="not a TF-Slim Inception v3 checkpoint"):
        Reference.for_checkpoint(renamed_ckpt)  # negative control: its names are not TF-Slim's


def test_verify_src_of_a_renamed_checkpoint_matches_tf(renamed_ckpt, plain_port):
    result = CliRunner().invoke(main, ["verify", "--src", str(renamed_ckpt), "--weights",
                                       str(plain_port.written.path), "--count", "2"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout


def _index_of(spec, root: str, classes: int = 1001) -> dict[str, VariableInfo]:
    """Names, dtypes and shapes of a checkpoint of ``spec`` stored under ``root`` (no data)."""
    names = {"global_step": VariableInfo(np.dtype("int64"), ())}
    for layer in spec.layers:
        for role, shape in layer.kind.tf_shapes(layer.shape, classes).items():
            name = layer.variables()[role].replace(spec.tf_root, root, 1)
            names[name] = VariableInfo(np.dtype("float32"), tuple(shape))
    return names


class _Index:
    """A reader of an index alone: what detection and the plan look at."""
    kind = "native"

    def __init__(self, variables):
        self._variables = variables
        self.source = CheckpointSource(Path("x.ckpt"), "V2", (Path("x.ckpt.index"),))

    def variables(self):
        return self._variables

    def stored_name(self, name):
        return name


@pytest.mark.parametrize("spec,root", [(IRV2, "EnsAdvInceptionResnetV2"),
                                       (IV3, "Ens4AdvInceptionV3"), (IRV2, IRV2.tf_root)])
def test_each_renamed_scope_is_detected_and_planned(spec, root):
    index = _Index(_index_of(spec, root))
    assert detect_architecture(index.variables()) is spec
    assert root_scope(index, spec) == root
    layers, sources, skipped = plan_variables(index, PortOptions(), spec)
    assert len(sources) == sum(len(layer.variables()) for layer in spec.layers)
    assert all(name.startswith(f"{root}/") for name in sources.values())
    assert skipped == {"global_step": "training counter"}


def test_aliases_are_data_of_the_specs_and_each_names_one_architecture():
    assert "AdvInceptionV3" in IV3.aliases and "EnsAdvInceptionResnetV2" in IRV2.aliases
    from models.spec import architectures

    roots = [root for spec in architectures().values() for root in (spec.tf_root, *spec.aliases)]
    assert len(roots) == len(set(roots))


# --- bundles -----------------------------------------------------------------------------------

def _port_all(src, dst, *extra):
    return CliRunner().invoke(main, ["port", "--src", str(src), "--dst", str(dst), "--all",
                                     "--num-classes", "1001", *extra])


def _check_bundle_port(result, dst: Path, plain_port):
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    weights = sorted(dst.glob("*.pth"))
    assert [p.name[:-13] for p in weights] == ["adv_inception_v3_rename",
                                               "ens3_adv_inception_v3_rename"]
    for path, line, root in zip(weights, lines, ("AdvInceptionV3", "Ens3AdvInceptionV3")):
        assert path.read_bytes() == plain_port.written.path.read_bytes()
        assert read_manifest(path.with_suffix(".json")).source.root_scope == root
        assert line.startswith(f"{path.name[:-13]}.ckpt: inception_v3, renamed root scope {root} ")
        assert str(path) in line and plain_port.written.sha256 in line
    assert len(list(dst.iterdir())) == 4  # weights and manifests, nothing else


def test_a_bundle_folder_ports_each_checkpoint_exactly(bundle, plain_port, tmp_path):
    _check_bundle_port(_port_all(bundle, tmp_path / "out"), tmp_path / "out", plain_port)


def test_a_bundle_zip_ports_each_checkpoint_exactly(bundle, plain_port, tmp_path):
    archive = _zip(tmp_path / "models.zip", bundle)
    before = _temp_dirs()
    _check_bundle_port(_port_all(archive, tmp_path / "out"), tmp_path / "out", plain_port)
    assert not _temp_dirs() - before


def test_without_all_two_checkpoints_are_one_line_naming_both(bundle, tmp_path):
    archive = _zip(tmp_path / "models.zip", bundle)
    for src in (bundle, archive):
        result = CliRunner().invoke(main, ["--src", str(src), "--dst", str(tmp_path / "m.pth")])
        assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"error: {src}: ")
        assert ("2 checkpoints (adv_inception_v3_rename.ckpt, "
                "ens3_adv_inception_v3_rename.ckpt)") in result.stderr
        assert not list(tmp_path.glob("m-*")) and not (tmp_path / "m.pth").exists()


def test_a_bundle_with_one_bad_checkpoint_writes_nothing(bundle, tensors, tmp_path):
    from ckpt_tools import write_checkpoint

    folder = tmp_path / "bundle"
    folder.mkdir()
    for file in bundle.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    write_checkpoint(folder / "zz_broken.ckpt", {**tensors, "InceptionV3/Extra/weights":
                                                 np.zeros(3, np.float32)})
    result = _port_all(folder, tmp_path / "out")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 4  # 3 progress + error
    assert "zz_broken.ckpt" in result.stderr.splitlines()[-1]
    assert "InceptionV3/Extra/weights" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_all_needs_a_folder_or_archive(renamed_ckpt, tmp_path):
    result = _port_all(renamed_ckpt, tmp_path / "out")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "not a folder or archive of checkpoints" in result.stderr


def test_plain_port_still_refuses_a_folder_as_dst(synthetic_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["--src", str(synthetic_ckpt), "--dst", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.stderr


# --- hostile zips: refused with nothing written and nothing left behind -----------------------

def _hostile(path: Path, build) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        build(zipped)
    return path


def _link(zipped):
    info = zipfile.ZipInfo("models/model.ckpt.index")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zipped.writestr(info, "/etc/passwd")


HOSTILE = {
    "traversal": (lambda z: z.writestr("../evil.ckpt.index", b"x"), "points outside the archive"),
    "absolute": (lambda z: z.writestr("/tmp/evil.ckpt.index", b"x"), "absolute path"),
    "link": (_link, "is a symbolic link"),
    "twice": (lambda z: [z.writestr("a.index", b"x"), z.writestr("a.index", b"y")],
              "appears twice"),
    "too large": (lambda z: z.writestr("m.ckpt.data-00000-of-00001", bytes(4096)),
                  "unpacks to more than 1.0 KiB"),
    "bomb": (lambda z: z.writestr(zipfile.ZipInfo("m.ckpt.data-00000-of-00001"),
                                  bytes(3 << 20), zipfile.ZIP_DEFLATED),
             "times its compressed size"),
    "members": (lambda z: [z.writestr(f"f{i}", b"") for i in range(65)], "more than 64 members"),
    "not a zip": (None, "not a readable"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("all_", [False, True], ids=["port", "port --all"])
def test_a_hostile_zip_is_refused_with_nothing_written(case, all_, tmp_path):
    build, message = HOSTILE[case]
    archive = tmp_path / "models.zip"
    if build is None:
        archive.write_bytes(b"PK\x03\x04 but nothing after")
    else:
        _hostile(archive, build)
    before = _temp_dirs()
    dst = tmp_path / "out" / ("" if all_ else "m.pth")
    args = ["port", "--src", str(archive), "--dst", str(dst),
            *(["--max-unpacked-bytes", "1024"] if case == "too large" else [])]
    result = CliRunner().invoke(main, [*args, *(["--all"] if all_ else [])])
    assert result.exit_code == 1, result.output
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {archive}: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not _temp_dirs() - before
    assert not (tmp_path / "evil.ckpt.index").exists()


# --- Inception-ResNet-v2 (in the suite's Inception-ResNet-v2 group: its checkpoint is shared) --

def test_a_renamed_irv2_checkpoint_ports_exactly_and_its_reference_matches(
        irv2_checkpoint, irv2_reference, photos, tmp_path):
    """EnsAdvInceptionResnetV2: same bytes as the unrenamed port; the Keras + TF aux reference
    read under the renamed scope gives the unrenamed reference's outputs."""
    from ckpt_tools import read_all, write_checkpoint
    from models.inception_resnet_v2.oracle import Reference

    prefix = irv2_checkpoint[0]
    renamed = write_checkpoint(tmp_path / "ens_adv_inception_resnet_v2_rename.ckpt",
                               _renamed(read_all(prefix), IRV2.tf_root, "EnsAdvInceptionResnetV2"))
    ported = port_checkpoint(renamed, tmp_path / "r" / "irv2.pth", ONE_THOUSAND_ONE)
    plain = port_checkpoint(prefix, tmp_path / "p" / "irv2.pth", ONE_THOUSAND_ONE)
    assert ported.conversion.architecture is IRV2
    assert read_manifest(ported.manifest).source.root_scope == "EnsAdvInceptionResnetV2"
    assert ported.written.path.read_bytes() == plain.written.path.read_bytes()

    images = photos[1]
    reference = Reference.for_checkpoint(renamed, root="EnsAdvInceptionResnetV2")
    try:
        out = reference(images)
    finally:
        reference.close()
    for name in ("Logits", "AuxLogits"):
        np.testing.assert_allclose(out[name], irv2_reference[len(images)][name], rtol=0, atol=1e-5)
    with pytest.raises(PortError, match="not a TF-Slim Inception-ResNet-v2 checkpoint"):
        Reference.for_checkpoint(renamed)  # negative control: its names are not TF-Slim's
