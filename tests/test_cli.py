"""``port-weights``: written files, reproducibility, atomicity, and one-line errors on bad input."""
import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from models import model_for_state_dict
from porting.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    """Exit 1, exactly one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0]


@pytest.fixture
def ckpt_copy(synthetic_ckpt, tmp_path):
    """A private copy of the synthetic checkpoint that a test may damage."""
    folder = tmp_path / "src"
    folder.mkdir()
    for f in synthetic_ckpt.parent.glob(synthetic_ckpt.name + ".*"):
        shutil.copy(f, folder / f.name)
    return folder / synthetic_ckpt.name


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_port_writes_a_hashed_file_that_loads_strictly(synthetic_ckpt, tmp_path):
    result = run("--src", synthetic_ckpt, "--dst", tmp_path / "adv_inception_v3.pth")
    assert result.exit_code == 0, result.output
    [written] = tmp_path.glob("*.pth")
    digest = sha256(written)
    assert re.fullmatch(r"adv_inception_v3-[0-9a-f]{8}\.pth", written.name)
    assert written.name == f"adv_inception_v3-{digest[:8]}.pth"
    assert f"output   {written} (written)" in result.output
    assert f"sha256   {digest}" in result.output
    assert "skipped  1: global_step (training counter)" in result.output
    model = model_for_state_dict(torch.load(written, weights_only=True))
    assert model.fc.out_features == 1000 and model.AuxLogits is not None


def test_same_input_same_bytes_in_any_folder_and_process(synthetic_ckpt, tmp_path):
    """Two folders, two processes, and --src spelled two ways: one file, one hash."""
    a = run("--src", synthetic_ckpt, "--dst", tmp_path / "a" / "adv_inception_v3.pth", "--fold-bn")
    assert a.exit_code == 0, a.output
    index = f"{synthetic_ckpt}.index"
    b = subprocess.run([sys.executable, "-m", "porting.cli", "--src", index, "--dst",
                        tmp_path / "b" / "adv_inception_v3.pth", "--fold-bn"],
                       capture_output=True, text=True, check=True)
    [fa], [fb] = (tmp_path / "a").glob("*.pth"), (tmp_path / "b").glob("*.pth")
    assert fa.name == fb.name and fa.read_bytes() == fb.read_bytes()
    assert b.stderr == ""


def test_src_spellings(synthetic_ckpt, tmp_path):
    data = next(synthetic_ckpt.parent.glob(synthetic_ckpt.name + ".data-*"))
    for src in (synthetic_ckpt.parent, data):
        result = run("--src", src, "--dst", tmp_path / "x.pth")
        assert result.exit_code == 0, result.output


def test_prefix_with_glob_characters(ckpt_copy, tmp_path):
    for f in ckpt_copy.parent.glob(ckpt_copy.name + ".*"):
        f.rename(f.with_name(f.name.replace(ckpt_copy.name, "m[1].ckpt")))
    result = run("--src", ckpt_copy.parent / "m[1].ckpt", "--dst", tmp_path / "x.pth")
    assert result.exit_code == 0, result.output


def test_output_name_must_not_collide_with_the_sidecars(synthetic_ckpt, tmp_path):
    for name in ("x.json", "x.md"):
        assert_clean_error(run("--src", synthetic_ckpt, "--dst", tmp_path / name),
                           tmp_path / name, "must end in .pth")
    assert list(tmp_path.iterdir()) == []


def test_safetensors_bytes_do_not_depend_on_how_src_is_spelled(synthetic_ckpt, tmp_path):
    for folder, src in (("a", synthetic_ckpt), ("b", synthetic_ckpt.parent)):
        result = run("--src", src, "--dst", tmp_path / folder / "m.pth", "--format", "safetensors")
        assert result.exit_code == 0, result.output
    [a], [b] = (tmp_path / "a").glob("*.safetensors"), (tmp_path / "b").glob("*.safetensors")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_folder_with_two_checkpoints_is_ambiguous(ckpt_copy):
    for f in ckpt_copy.parent.glob(ckpt_copy.name + ".*"):
        shutil.copy(f, f.with_name(f.name.replace(ckpt_copy.name, "other.ckpt")))
    result = run("--src", ckpt_copy.parent, "--dst", ckpt_copy.parent / "out.pth")
    assert_clean_error(result, ckpt_copy.parent, "2 checkpoints")


def test_refuses_to_replace_a_different_file_without_force(synthetic_ckpt, tmp_path):
    dst = tmp_path / "m.pth"
    assert run("--src", synthetic_ckpt, "--dst", dst).exit_code == 0
    [written] = tmp_path.glob("*.pth")
    good = written.read_bytes()
    again = run("--src", synthetic_ckpt, "--dst", dst)
    assert again.exit_code == 0 and "unchanged, already there" in again.output
    written.write_bytes(b"tampered")
    assert_clean_error(run("--src", synthetic_ckpt, "--dst", dst), written, "--force")
    assert written.read_bytes() == b"tampered"
    assert run("--src", synthetic_ckpt, "--dst", dst, "--force").exit_code == 0
    assert written.read_bytes() == good


def test_failed_write_leaves_nothing(synthetic_ckpt, tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", broken_replace)
    result = run("--src", synthetic_ckpt, "--dst", tmp_path / "out" / "m.pth")
    assert_clean_error(result, "No space left on device")
    assert not (tmp_path / "out").exists()  # the folder made for the output too


def test_missing_source(tmp_path):
    assert_clean_error(run("--src", tmp_path / "nope.ckpt", "--dst", tmp_path / "m.pth"),
                       tmp_path / "nope.ckpt", "no such checkpoint")
    assert not (tmp_path / "m.pth").exists()


def _damage(ckpt, suffix, damage):
    [path] = ckpt.parent.glob(ckpt.name + suffix)
    raw = bytearray(path.read_bytes())
    path.write_bytes(damage(raw))
    return path


@pytest.mark.parametrize("what, suffix, damage", [
    ("truncated data", ".data-*", lambda raw: raw[: len(raw) // 2]),
    ("flipped data bytes", ".data-*", lambda raw: raw[:5000] + bytes(b ^ 0xFF for b in raw[5000:5008]) + raw[5008:]),
    ("truncated index", ".index", lambda raw: raw[: len(raw) - 100]),
    ("garbage index", ".index", lambda raw: b"\x00" * len(raw)),
])
def test_corrupt_checkpoint(what, suffix, damage, ckpt_copy, tmp_path):
    damaged = _damage(ckpt_copy, suffix, damage)
    result = run("--src", ckpt_copy, "--dst", tmp_path / "out" / "m.pth")
    assert_clean_error(result, ckpt_copy.parent)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), what
    assert damaged.exists()


def test_unwritable_destination(synthetic_ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run("--src", synthetic_ckpt, "--dst", blocker / "m.pth")
    assert_clean_error(result, blocker, "cannot write")


def test_wrong_architecture_and_debug_traceback(tmp_path):
    from ckpt_tools import write_checkpoint
    import numpy as np

    prefix = write_checkpoint(tmp_path / "alexnet.ckpt",  # TF-Slim's alexnet_v2: not ported here
                              {"alexnet_v2/conv1/weights": np.zeros((11, 11, 3, 64), np.float32)})
    assert_clean_error(run("--src", prefix, "--dst", tmp_path / "m.pth"),
                       "alexnet.ckpt.index", "no known architecture: root scopes alexnet_v2",
                       "InceptionV3 (inception_v3)", "InceptionResnetV2 (inception_resnet_v2)",
                       "resnet_v2_50 (resnet_v2_50)", "vgg_16 (vgg_16)")
    assert_clean_error(run("--src", prefix, "--dst", tmp_path / "m.pth", "--arch", "inception_v3"),
                       "alexnet.ckpt.index", "not a TF-Slim Inception v3 checkpoint")
    partial = write_checkpoint(tmp_path / "resnet.ckpt",
                               {"resnet_v1_50/conv1/weights": np.zeros((7, 7, 3, 64), np.float32)})
    assert_clean_error(run("--src", partial, "--dst", tmp_path / "m.pth"),
                       "resnet.ckpt.index", "266 model variables missing")
    assert run("--src", prefix, "--dst", tmp_path / "m.pth", "--arch", "resnet").exit_code == 2
    assert not list(tmp_path.glob("m*"))
    debug = run("--src", prefix, "--dst", tmp_path / "m.pth", "--debug")
    assert debug.exit_code != 0 and debug.exc_info[0].__name__ == "PortError"


def test_help_teaches():
    result = run("port", "--help")
    assert result.exit_code == 0
    for option in ("--src", "--dst", "--num-classes", "--no-aux", "--fold-bn", "--ema", "--force"):
        assert option in result.output


def test_help_states_ranges_and_bounds_from_the_configs_and_constants(monkeypatch):
    """export/verify/predict --help state each architecture's input range and recipe from its
    eval config, and verify's bounds from the constants verify applies."""
    import porting.cli as cli
    from models.spec import architectures
    from porting.preprocess import summary
    from porting.verify import parity

    def one_paragraph(*args):
        return " ".join(run(*args, "--help").output.split())

    export, predict = one_paragraph("export"), one_paragraph("predict")
    for name, spec in architectures().items():
        low, high = spec.eval.value_range
        assert f"[{low:g}, {high:g}]" in export and name in export
        assert summary(spec.eval) in predict and summary(spec.eval, "timm") in predict
    assert "NCHW in [-1, 1]" not in export  # not every architecture's range
    monkeypatch.setattr(parity, "FLOAT64_RELATIVE_TOLERANCE", 3e-11)
    monkeypatch.setattr(parity, "MAP_RELATIVE_TOLERANCE", 2e-3)
    monkeypatch.setattr(parity, "GRADIENT_RELATIVE_TOLERANCE", 0.25)
    cli._bounds.cache_clear()
    try:
        verify = one_paragraph("verify")
    finally:
        cli._bounds.cache_clear()
    assert "1e-4 for the classifier outputs, 2e-3 for feature maps; --float64: 3e-11" in verify
    assert "bound 0.25 in float32" in verify and "eps 2/255 of the pixel range" in verify
    assert "agree to 3e-11 relative" in verify and "1e-10" not in verify
