"""The built wheel, installed (not editable) into a fresh venv, one install after the other, as
users and CI images install it (README "Install"), with no file of the source tree:

1. base, neither torch nor TensorFlow: port (--model-card, --format safetensors), inspect and
   fetch from a loopback server work; predict and verify of a .pth say, in one line, that they
   need the torch extra;
2. + the onnx extra, still no torch: verify --weights X.onnx --goldens G.h5 in ONNX Runtime and
   OpenVINO;
3. + torch (the pinned CPU build first, as the Makefile does, then the torch extra): verify
   --goldens of the .pth the base install ported, predict on its .safetensors twin.

The three share one venv, each stage adding to the last (a venv and its packages cost seconds;
torch alone ~12 s), so the tests run in file order (xdist keeps a module in one worker), and a
test that finds the venv past its stage fails rather than test the wrong install.
"""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
STAGES = ("base", "onnx", "torch")
NEEDS_TORCH = "error: this needs PyTorch"
# The venv's processes see only the venv: not the source tree a PYTHONPATH may point at.
CLEAN_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _run(*args, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=CLEAN_ENV,
                          cwd=cwd, timeout=timeout)


class WheelVenv:
    """A fresh venv that the wheel goes into in ``STAGES``, each adding to the last."""

    def __init__(self, root: Path, wheel: Path):
        self.wheel, self.bin = wheel, root / "venv" / "bin"
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True,
                       timeout=300)
        self.stage = -1

    def at(self, stage: str) -> Path:
        """The venv's bin folder with the installs up to ``stage``, made if not yet there."""
        wanted = STAGES.index(stage)
        if self.stage > wanted:
            pytest.fail(f"the venv already has the {STAGES[self.stage]} install: run the "
                        "wheel tests in file order")
        while self.stage < wanted:
            self.stage += 1
            getattr(self, f"_install_{STAGES[self.stage]}")()
        return self.bin

    def _pip(self, *args) -> None:
        run = _run(self.bin / "python", "-m", "pip", "install", "--quiet",
                   "--disable-pip-version-check", "--no-compile", *args,  # no .pyc: ~25 s less
                   timeout=900)
        assert run.returncode == 0, run.stderr

    def installed(self) -> set[str]:
        """Which of the frameworks and the extras' packages the venv has."""
        run = _run(self.bin / "python", "-c", "import importlib.util as u; print(*(m for m in "
                   "('torch', 'tensorflow', 'onnx', 'onnxruntime', 'openvino', 'safetensors', "
                   "'PIL') if u.find_spec(m)))")
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    def _install_base(self) -> None:
        self._pip("-c", CONSTRAINTS, self.wheel)
        assert self.installed() == set()

    def _install_onnx(self) -> None:
        self._pip("-c", CONSTRAINTS, f"{self.wheel}[onnx]")
        assert self.installed() == {"onnx", "onnxruntime", "openvino", "PIL"}

    def _install_torch(self) -> None:
        # pinned, as the Makefile installs it: torch 2.13.0 is the CPU build on local disk
        self._pip("-c", CONSTRAINTS, "torch==2.13.0", f"{self.wheel}[torch]")
        assert self.installed() == {"torch", "onnx", "onnxruntime", "openvino", "safetensors",
                                    "PIL"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--no-build-isolation", "-w", str(root / "dist"),
                    str(ROOT)], check=True, timeout=600, cwd=root, env=CLEAN_ENV)
    (built,) = (root / "dist").glob("tf_porting-*.whl")
    return WheelVenv(root, built)


def _cli(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``port-weights ARGS`` from the wheel's console script, outside the source tree."""
    return _run(bin_dir / "port-weights", *args, cwd=cwd)


@pytest.fixture(scope="module")
def goldens_file(synthetic_ckpt, tmp_path_factory):
    from click.testing import CliRunner

    from porting.cli import main

    path = tmp_path_factory.mktemp("wheel_goldens") / "goldens.h5"
    result = CliRunner().invoke(main, ["verify", "--src", str(synthetic_ckpt), "--count", "1",
                                       "--record-goldens", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def base_ports(wheel, synthetic_ckpt, tmp_path_factory):
    """(folder, port, port to safetensors): the synthetic checkpoint ported by the base install."""
    work = tmp_path_factory.mktemp("wheel_work")
    bin_dir = wheel.at("base")
    port = _cli(bin_dir, "--src", synthetic_ckpt, "--dst", "out/m.pth", "--model-card", cwd=work)
    safetensors = _cli(bin_dir, "--src", synthetic_ckpt, "--dst", "out/m.safetensors",
                       "--no-aux", cwd=work)
    return work, port, safetensors


@pytest.fixture(scope="module")
def exported_graph(ported_files, tmp_path_factory):
    """The 1000-class port exported to ONNX here (export needs torch and onnx)."""
    from click.testing import CliRunner

    from porting.cli import main

    out = tmp_path_factory.mktemp("wheel_onnx")
    result = CliRunner().invoke(main, ["export", "--weights", str(ported_files["1000"]),
                                       "--dst", str(out / "m.onnx")])
    assert result.exit_code == 0, result.output
    (graph,) = out.glob("m-*.onnx")
    return graph


def _one_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


# --- 1. base: neither torch nor TensorFlow -----------------------------------------------------

def test_base_install_ports_and_inspects(wheel, base_ports, synthetic_ckpt):
    bin_dir = wheel.at("base")
    work, port, safetensors = base_ports
    assert port.returncode == 0, port.stderr
    (weights,) = (work / "out").glob("m-*.pth")
    assert weights.with_suffix(".json").is_file() and weights.with_suffix(".md").is_file()
    card = weights.with_suffix(".md").read_text()
    assert "Inception v3 weights ported" in card and "299x299" in card
    assert safetensors.returncode == 0, safetensors.stderr
    assert list((work / "out").glob("m-*.safetensors"))

    inspect = _cli(bin_dir, "inspect", synthetic_ckpt, cwd=work)
    assert inspect.returncode == 0, inspect.stderr
    assert "mapped   388 variables to 98 PyTorch layers" in inspect.stdout

    typo = _cli(bin_dir, "inpsect", synthetic_ckpt, cwd=work)
    assert typo.returncode == 2 and "No such command" in typo.stderr


def _photo(folder: Path) -> Path:
    from PIL import Image

    image = folder / "photo.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(image)
    return image


def test_base_install_says_what_needs_the_torch_extra(wheel, base_ports, goldens_file, tmp_path):
    bin_dir = wheel.at("base")
    work = base_ports[0]
    (weights,) = (work / "out").glob("m-*.pth")
    image = _photo(tmp_path)
    for args in (["predict", weights, image],
                 ["verify", "--goldens", goldens_file, "--weights", weights]):
        run = _cli(bin_dir, *args, cwd=tmp_path)
        assert run.returncode == 1, run.stderr
        line = _one_line(run)
        assert line.startswith(NEEDS_TORCH) and "pip install 'tf-porting[torch]'" in line, line
    assert list(tmp_path.iterdir()) == [image]  # nothing written


def test_base_install_fetches_from_a_loopback_server(wheel, tmp_path):
    bin_dir = wheel.at("base")
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
        fetched = _cli(bin_dir, "fetch", "adv_inception_v3", "--url", url, "--dest", "dl",
                       cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "dl" / "adv_inception_v3_2017_08_18.tar.gz").read_bytes() == payload
    # the registry came with the wheel: fetch knew the release's archive name


# --- 2. + onnx, no torch: an exported graph checked against golden files ----------------------

def test_onnx_install_verifies_a_graph_without_torch(wheel, exported_graph, goldens_file,
                                                     tmp_path):
    bin_dir = wheel.at("onnx")
    verify = _cli(bin_dir, "verify", "--weights", exported_graph, "--goldens", goldens_file,
                  cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    verdict = verify.stdout.strip().splitlines()[-1]
    assert verdict.startswith("PASS") and "ONNX Runtime" in verdict and "OpenVINO" in verdict


# --- 3. + torch: verify and predict the base install's ports -----------------------------------

def test_torch_install_verifies_and_predicts(wheel, base_ports, goldens_file, tmp_path):
    bin_dir = wheel.at("torch")
    work = base_ports[0]
    (weights,) = (work / "out").glob("m-*.pth")
    verify = _cli(bin_dir, "verify", "--goldens", goldens_file, "--weights", weights, cwd=work)
    assert verify.returncode == 0, verify.stderr
    assert "PASS" in verify.stdout

    image = _photo(tmp_path)
    (safetensors,) = (work / "out").glob("m-*.safetensors")  # read back with the torch extra
    predict = _cli(bin_dir, "predict", safetensors, image, "--top", "2", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.splitlines()[0].endswith("photo.png")
    assert [line.split(".")[0].strip() for line in predict.stdout.splitlines()[1:]] == ["1", "2"]
