"""``port-weights inspect``: the variable table, destinations, skip reasons, totals."""
from __future__ import annotations

from click.testing import CliRunner

from porting.cli import main


def test_inspect_synthetic_checkpoint(synthetic_ckpt):
    result = CliRunner().invoke(main, ["inspect", str(synthetic_ckpt)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["variable", "dtype", "shape", "bytes", "PyTorch", "destination"]
    row = next(line for line in lines if line.startswith("InceptionV3/Conv2d_1a_3x3/weights "))
    assert row.split()[1:] == ["float32", "[3,", "3,", "3,", "32]", "3,456",
                               "Conv2d_1a_3x3", "(weight)"]
    assert any(line.startswith("global_step ") and "skipped: training counter" in line
               for line in lines)
    assert "(V2, 2 files)" in result.output
    assert "total    389 variables" in result.output
    assert "mapped   388 variables to 98 PyTorch layers" in result.output


def test_inspect_without_aux_says_why_aux_is_skipped(synthetic_ckpt):
    result = CliRunner().invoke(main, ["inspect", "--no-aux", str(synthetic_ckpt)])
    assert result.exit_code == 0, result.output
    assert "skipped: AuxLogits head left out (--no-aux)" in result.output


def test_inspect_any_checkpoint_lists_it_and_says_port_would_fail(checkpoints):
    result = CliRunner().invoke(main, ["inspect", str(checkpoints["v1"])])
    assert result.exit_code == 0, result.output
    assert "(V1, 1 files)" in result.output
    assert "strings" in result.output and "string" in result.output
    assert "port     would fail: " in result.output and "no known architecture" in result.output


def test_inspect_of_garbage_is_one_line(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"hello")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {path}")


def test_inspect_reports_the_shape_check_port_would_fail(variant):
    name = "InceptionV3/Mixed_6c/Branch_2/Conv2d_0b_7x1/weights"

    def transposed(tensors):
        tensors[name] = tensors[name].transpose(1, 0, 2, 3).copy()
        return tensors

    result = CliRunner().invoke(main, ["inspect", str(variant("inspect_transposed", transposed))])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(name + " "))
    assert "Mixed_6c.branch7x7dbl_2 (weight)" in row  # where it would go ...
    assert "port     would fail: " in result.output  # ... and why it cannot
    assert f"{name} has shape [1, 7, 160, 160], expected [7, 1, 160, 160]" in result.output
