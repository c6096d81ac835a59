"""Run Python with some packages impossible to import: proves what a command does without."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TENSORFLOW = ("tensorflow", "tf_slim", "tf_keras")
TORCH = ("torch",)
CLI = "from porting.cli import main; main(sys.argv[1:])"  # port-weights ARGS


def blocker(packages: tuple[str, ...]) -> str:
    """Python source that makes any import of ``packages`` (and their submodules) fail as it
    does where they are not installed: ModuleNotFoundError naming the package."""
    return (
        "import sys\n\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {packages!r}:\n"
        "            raise ModuleNotFoundError(f'{name} is blocked in this test', name=name)\n"
        "        return None\n\n"
        "sys.meta_path.insert(0, Blocked())\n"
    )


def run_blocked(packages: tuple[str, ...], code: str, *args) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in a fresh interpreter where ``packages`` cannot be imported."""
    return subprocess.run([sys.executable, "-c", blocker(packages) + code, *map(str, args)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          timeout=300)
