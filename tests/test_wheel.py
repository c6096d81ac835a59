"""The built wheel, installed (not editable) into a fresh venv without TensorFlow, as users and
CI images install it: port, port --model-card, --format safetensors, inspect, verify --goldens
and fetch from a loopback server all work from there, with no file of the source tree."""
from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def _pip(python: Path, *args) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", *args], check=True, timeout=900)  # no .pyc: ~25 s less


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """(bin folder) of a fresh venv with torch 2.13.0 (CPU) and the built wheel, no TensorFlow."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--no-build-isolation", "-w", str(root / "dist"),
                    str(ROOT)], check=True, timeout=600, cwd=root)
    (wheel,) = (root / "dist").glob("tf_porting-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    _pip(python, "torch==2.13.0")  # first and pinned: the CPU build on local disk
    _pip(python, "-c", str(CONSTRAINTS), str(wheel))
    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True)
    assert probe.returncode != 0  # really without TensorFlow
    return root / "venv" / "bin"


def _cli(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``port-weights ARGS`` from the wheel's console script, outside the source tree."""
    return subprocess.run([str(bin_dir / "port-weights"), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def goldens_file(synthetic_ckpt, ported_files, tmp_path_factory):
    from click.testing import CliRunner

    from porting.cli import main

    path = tmp_path_factory.mktemp("wheel_goldens") / "goldens.h5"
    result = CliRunner().invoke(main, ["verify", "--src", str(synthetic_ckpt), "--count", "1",
                                       "--record-goldens", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_wheel_smoke_set(wheel_venv, synthetic_ckpt, goldens_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    port = _cli(wheel_venv, "--src", synthetic_ckpt, "--dst", "out/m.pth", "--model-card",
                cwd=work)
    assert port.returncode == 0, port.stderr
    (weights,) = (work / "out").glob("m-*.pth")
    assert weights.with_suffix(".json").is_file() and weights.with_suffix(".md").is_file()
    card = weights.with_suffix(".md").read_text()
    assert "Inception v3 weights ported" in card and "299x299" in card

    safetensors = _cli(wheel_venv, "--src", synthetic_ckpt, "--dst", "out/m.safetensors",
                       "--no-aux", cwd=work)
    assert safetensors.returncode == 0, safetensors.stderr
    assert list((work / "out").glob("m-*.safetensors"))

    inspect = _cli(wheel_venv, "inspect", synthetic_ckpt, cwd=work)
    assert inspect.returncode == 0, inspect.stderr
    assert "mapped   388 variables to 98 PyTorch layers" in inspect.stdout

    verify = _cli(wheel_venv, "verify", "--goldens", goldens_file, "--weights", weights, cwd=work)
    assert verify.returncode == 0, verify.stderr
    assert "PASS" in verify.stdout

    typo = _cli(wheel_venv, "inpsect", synthetic_ckpt, cwd=work)
    assert typo.returncode == 2 and "No such command" in typo.stderr


def test_wheel_fetches_from_a_loopback_server(wheel_venv, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    payload = b"not really a release archive\n" * 1000
    (served / "adv_inception_v3_2017_08_18.tar.gz").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/adv_inception_v3_2017_08_18.tar.gz"
        fetched = _cli(wheel_venv, "fetch", "adv_inception_v3", "--url", url, "--dest", "dl",
                       cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "dl" / "adv_inception_v3_2017_08_18.tar.gz").read_bytes() == payload
    # the registry came with the wheel: fetch knew the release's archive name
