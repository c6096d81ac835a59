"""Whole-process port speed and memory: native reader vs TensorFlow's, on release-sized
synthetic checkpoints, by default one architecture per models/ folder (inception_v3: 104 MiB,
inception_resnet_v2: ~226 MiB, resnet_v2_50: ~98 MiB, inception_v4: ~176 MiB, vgg_16: ~528
MiB). Runs alternate (noise hits all alike); medians of wall time and peak RSS.

Targets: native wall <= 0.40 x TF's (`--reader tf`) and x the usual TF-based script's; native
peak RSS <= `import torch` RSS + 1.5 x checkpoint, and <= 0.5 x the script's.
Usage: python bench/port_speed.py [--runs N] [--arch NAME ...] [--checkpoint PREFIX]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WALL_RATIO_TARGET = 0.40
RSS_CHECKPOINT_FACTOR = 1.5
RSS_SCRIPT_RATIO_TARGET = 0.5
# The usual TF-based porting script, for context: a load_checkpoint loop, torch.save, sha256.
TF_SCRIPT = """
import hashlib, sys, numpy as np, tensorflow as tf, torch
reader = tf.train.load_checkpoint(sys.argv[1])
state = {n: torch.from_numpy(np.array(reader.get_tensor(n)))
         for n in sorted(reader.get_variable_to_shape_map())}
torch.save(state, sys.argv[2])
print(hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest())
"""
WRAPPER = "import resource, subprocess, sys, time\n" \
          "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n" \
          "wall = time.perf_counter() - t\n" \
          "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of ``command``, measured in a fresh wrapper process so that
    RUSAGE_CHILDREN holds this one child only."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True,
                         text=True, check=True).stdout.split()
    wall, rss_kib, rc = float(out[0]), int(out[1]), int(out[2])
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(command)}")
    return wall, rss_kib / 1024


def build_checkpoint(folder: Path, arch: str) -> Path:
    from models.spec import get_architecture
    from porting.verify.photos import load_photos

    oracle = get_architecture(arch).oracle_module()
    return oracle.build_synthetic_checkpoint(folder / f"adv_{arch}.ckpt",
                                             load_photos(config=get_architecture(arch).eval)[1])


def main() -> None:
    from models.spec import architectures, representatives

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arch", nargs="*", choices=list(architectures()),
                        default=list(representatives()),
                        help="architectures to bench (default: one per models/ folder)")
    parser.add_argument("--checkpoint", type=Path, help="existing V2 prefix (default: build one)")
    args = parser.parse_args()
    for arch in ([None] if args.checkpoint else args.arch):
        bench(args, arch)


def bench(args, arch: str | None) -> None:
    print(f"\n=== {arch or args.checkpoint}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint is None:
            started = time.perf_counter()
            prefix = build_checkpoint(tmp, arch)
            print(f"built synthetic checkpoint in {time.perf_counter() - started:.0f} s")
        else:
            prefix = args.checkpoint
        ckpt_mib = sum(f.stat().st_size for f in prefix.parent.glob(f"{prefix.name}.*")) / 2**20
        cli = [sys.executable, "-m", "porting.cli", "port", "--src", str(prefix)]
        samples = {name: [] for name in ("import torch", "native", "tf", "tf script")}
        for run in range(args.runs):  # a fresh destination each run: every port writes its file
            commands = {
                "import torch": [sys.executable, "-c", "import torch"],
                "native": [*cli, "--dst", str(tmp / f"native{run}" / "x.pth")],
                "tf": [*cli, "--dst", str(tmp / f"tf{run}" / "x.pth"), "--reader", "tf"],
                "tf script": [sys.executable, "-c", TF_SCRIPT, str(prefix), str(tmp / f"s{run}.pth")],
            }
            for name, command in commands.items():
                samples[name].append(measure(command))

    median = {name: (statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs))
              for name, runs in samples.items()}
    print(f"checkpoint {ckpt_mib:.1f} MiB; medians of {args.runs} alternating runs\n")
    print(f"{'command':<14}{'wall s':>9}{'peak RSS MiB':>15}")
    for name, (wall, rss) in median.items():
        print(f"{name:<14}{wall:>9.2f}{rss:>15.0f}")
    ratio = median["native"][0] / median["tf"][0]
    rss_limit = median["import torch"][1] + RSS_CHECKPOINT_FACTOR * ckpt_mib
    print(f"\nwall native/tf  {ratio:.2f}  (target <= {WALL_RATIO_TARGET:.2f}): "
          f"{'ok' if ratio <= WALL_RATIO_TARGET else 'MISSED'}")
    print(f"native peak RSS {median['native'][1]:.0f} MiB  (target <= torch import + "
          f"{RSS_CHECKPOINT_FACTOR} x checkpoint = {rss_limit:.0f} MiB): "
          f"{'ok' if median['native'][1] <= rss_limit else 'MISSED'}")
    script_wall = median["native"][0] / median["tf script"][0]
    script_rss = median["native"][1] / median["tf script"][1]
    print(f"wall native/tf script  {script_wall:.2f}  (target <= {WALL_RATIO_TARGET:.2f}: the "
          f"usual load_checkpoint + torch.save + sha256 script): "
          f"{'ok' if script_wall <= WALL_RATIO_TARGET else 'MISSED'}")
    print(f"peak RSS native/tf script  {script_rss:.2f}  "
          f"(target <= {RSS_SCRIPT_RATIO_TARGET:.2f}): "
          f"{'ok' if script_rss <= RSS_SCRIPT_RATIO_TARGET else 'MISSED'}")
    per_run = sorted(n[0] / s[0] for n, s in zip(samples["native"], samples["tf script"]))
    print(f"wall native/tf script per run: {' '.join(f'{r:.2f}' for r in per_run)}")


if __name__ == "__main__":
    main()
