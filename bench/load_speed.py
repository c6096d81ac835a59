"""The warm `porting.load(NAME)` (a cache hit) vs reading the same cached file by hand, in one
process taking turns (noise hits all alike), medians of N rounds:

- ``load``: ``porting.load(NAME, offline=True)``: manifest read, sha256 of the file checked on
  the descriptor then loaded, model built, state dict loaded strictly, eval mode;
- ``torch.load``: ``torch.load(FILE, weights_only=True)`` of the same file, nothing else;
- ``torch.load + model``: that, then ``models.model_for_state_dict`` (what a user does by hand
  with a ported file, unverified).

The release is a SYNTHETIC checkpoint with the release's variables (built with TensorFlow, or
``--checkpoint PREFIX``), packed as its archive and loaded once cold from a mirror folder.
The file is in the page cache for every contender (it was just written or read).

Usage: python bench/load_speed.py [--rounds N] [--release NAME] [--checkpoint PREFIX]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_archive(release, prefix: Path, folder: Path) -> None:
    """``prefix``'s files as ``release``'s archive in ``folder`` (its member names)."""
    with tarfile.open(folder / release.archive, "w:gz", compresslevel=1) as tar:
        for member in release.members:
            if member.endswith(".meta"):
                info = tarfile.TarInfo(member)
                info.size = 0
                tar.addfile(info, io.BytesIO())
            else:
                tar.add(f"{prefix}{member[len(release.checkpoint):]}", arcname=member)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--release", default="adv_inception_v3")
    parser.add_argument("--checkpoint", type=Path, help="a synthetic checkpoint's prefix")
    args = parser.parse_args()

    import torch

    from models import model_for_state_dict
    from models.spec import get_architecture
    from porting import load
    from porting.releases.registry import get_release

    release = get_release(args.release)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prefix = args.checkpoint
        if prefix is None:
            from porting.verify.photos import load_photos

            spec = get_architecture(release.architecture)
            prefix = spec.oracle_module().build_synthetic_checkpoint(
                tmp / release.checkpoint, load_photos(config=spec.eval)[1])
        (tmp / "mirror").mkdir()
        build_archive(release, prefix, tmp / "mirror")
        cache = tmp / "cache"
        started = time.perf_counter()
        load(args.release, cache_dir=cache, mirror=tmp / "mirror", offline=True, progress=False)
        print(f"cold load (copy from a mirror folder, port, cache, load): "
              f"{time.perf_counter() - started:.2f} s")
        (weights,) = cache.glob(f"{args.release}/*/*.pth")
        contenders = {
            "load (warm)": lambda: load(args.release, cache_dir=cache, offline=True),
            "torch.load": lambda: torch.load(weights, weights_only=True),
            "torch.load + model": lambda: model_for_state_dict(
                torch.load(weights, weights_only=True)),
        }
        times = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        size = weights.stat().st_size / 2**20
        base = statistics.median(times["torch.load"])
        print(f"{args.release}: {weights.name} ({size:.1f} MiB), medians of {args.rounds} "
              f"rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<20} {median * 1000:8.1f} ms   {median / base:5.2f} x torch.load")


if __name__ == "__main__":
    main()
