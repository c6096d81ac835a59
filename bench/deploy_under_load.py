"""Why ``deploy_model`` slows down so much when other processes share the CPU, and which setting
fixes it: its batch-1 latency quiet and while a competing process spins on one core, for each
OpenMP setting, each in a fresh process (libgomp reads its settings once, when torch loads).

PyTorch's CPU build runs its intra-op threads (and oneDNN's) on GNU OpenMP (libgomp), which
splits each op statically between the threads and lets idle threads spin at the barrier. When
another process takes a core, one of the two threads waits for the scheduler while the other
spins on the core that is left, burning it: every op lasts a scheduler time slice, not its own
work. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead.

Weights are random (with realistic batch-norm statistics): speed does not depend on them.

    .venv/bin/python bench/deploy_under_load.py [--arch NAME] [--runs 15]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from models.spec import architectures

THREADS = 2
SETTINGS = {  # label -> (environment, threads)
    "default (libgomp spins)": ({}, THREADS),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, THREADS),
    "GOMP_SPINCOUNT=0": ({"GOMP_SPINCOUNT": "0"}, THREADS),
    "1 thread": ({}, 1),
}
SPIN = [sys.executable, "-c", "while True: pass"]


def child(arch: str, threads: int, runs: int) -> None:
    """Measure in this process; print {"quiet": ms, "loaded": ms} as JSON."""
    import numpy as np
    import torch

    from models import create_model, deploy_model, get_architecture

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = get_architecture(arch)
    model = create_model(spec, spec.eval.num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.1, 0.1)
    deployed = deploy_model(model)
    size = spec.eval.input_size
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size))
                         .astype(np.float32))

    def median_ms() -> float:
        times = []
        with torch.inference_mode():
            for _ in range(runs):
                began = time.perf_counter()
                deployed(x)
                times.append(time.perf_counter() - began)
        return statistics.median(times) * 1e3

    with torch.inference_mode():
        for _ in range(3):
            deployed(x)
    quiet = median_ms()
    spinner = subprocess.Popen(SPIN)
    try:
        time.sleep(0.5)
        loaded = median_ms()
    finally:
        spinner.kill()
        spinner.wait()
    print(json.dumps({"quiet": quiet, "loaded": loaded}))


def smallest() -> str:
    return min(architectures().values(),
               key=lambda spec: spec.parameter_count(spec.eval.num_classes)).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(architectures()), default=smallest(),
                        help="architecture (default: the one with the fewest parameters)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--child", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.arch, args.child, args.runs)
    root = Path(__file__).resolve().parents[1]
    print(f"deploy_model({args.arch}) batch-1 latency, median of {args.runs} runs, quiet and "
          f"with 1 process spinning; 1-min load average {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs)\n")
    print(f"{'setting':26} {'quiet ms':>9} {'loaded ms':>10} {'loaded/quiet':>13}")
    for label, (env, threads) in SETTINGS.items():
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
        done = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--runs",
                               str(args.runs), "--child", str(threads)],
                              env={**clean, **env}, cwd=root, capture_output=True, text=True,
                              check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label:26} {result['quiet']:9.1f} {result['loaded']:10.1f} "
              f"{result['loaded'] / result['quiet']:13.2f}")
    print(f"\n(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
