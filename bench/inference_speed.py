"""CPU inference speed: the TF reference vs the ported model, plain and deployed, side by side.

For each architecture (default: one per models/ folder: Inception v3, Inception-ResNet-v2,
ResNet-50 v2) the TF side is its oracle: TF-Slim's graph for Inception v3 and the ResNets, Keras's
InceptionResNetV2 (TF runtime) for Inception-ResNet-v2. All contenders run in this one
process on the same synthetic checkpoint with 2 threads each,
taking turns (one round = 3 batch-1 runs + 1 batch-8 run of each), so that load from other
processes falls on all of them alike. Reports the median batch-1 latency, batch-8 images/s from
the median batch-8 time, ratios to TF, and the start-up cost: from weights in memory to the
first results at both batch sizes (graph build, restore, folding, weight packing).

    .venv/bin/python bench/inference_speed.py [--rounds 8] [--arch NAME ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import deploy_model, model_for_state_dict
from models.spec import architectures, representatives
from porting.convert import PortOptions
from porting.parity import compare
from porting.photos import load_photos
from porting.pipeline import port_checkpoint

THREADS = 2
BATCH = 8
B1_RUNS_PER_ROUND = 3


def tf_runner(model):
    return lambda images_nhwc: model(images_nhwc, ("Logits",))["Logits"]


def torch_runner(model: torch.nn.Module):
    def run(images_nhwc: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()
    return run


def start(make_runner, warm_up: list[np.ndarray]):
    """(runner, seconds from nothing to first results on every warm-up batch)."""
    began = time.perf_counter()
    run = make_runner()
    for batch in warm_up:
        run(batch)
    return run, time.perf_counter() - began


def timed(run, batch: np.ndarray) -> float:
    began = time.perf_counter()
    run(batch)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--arch", nargs="*", choices=list(architectures()),
                        default=list(representatives()),
                        help="architectures to bench (default: one per models/ folder)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    for arch in args.arch:
        bench(architectures()[arch], args.rounds)


def bench(spec, rounds: int) -> None:
    oracle = spec.oracle_module()
    print(f"\n=== {spec.title}: {spec.oracle_name} vs the ported model")
    _, photos = load_photos(config=spec.eval)
    batch1, batch8 = photos[:1].copy(), photos[:BATCH].copy()
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        prefix = oracle.build_synthetic_checkpoint(Path(tmp) / f"adv_{spec.name}.ckpt", photos)
        ported = port_checkpoint(prefix, Path(tmp) / f"adv_{spec.name}.pth",
                                 PortOptions(num_classes=spec.eval.num_classes)).written.path
        state_dict = torch.load(ported, weights_only=True)  # as a user loads the file
        print(f"synthetic checkpoint written and ported in {time.perf_counter() - began:.0f} s")

        warm_up = [batch1, batch8]
        contenders = {}
        contenders["TF reference"] = start(
            lambda: tf_runner(oracle.Reference.for_checkpoint(prefix, threads=THREADS)),
            warm_up)
        contenders["PyTorch plain (eager)"] = start(
            lambda: torch_runner(model_for_state_dict(state_dict)), warm_up)
        contenders["deploy_model()"] = start(
            lambda: torch_runner(deploy_model(state_dict)), warm_up)

    reference = contenders["TF reference"][0](photos)
    parity = {name: compare(run(photos), reference) for name, (run, _) in contenders.items()}

    load_before = os.getloadavg()[0]
    latencies = {name: [] for name in contenders}
    batch_times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (run, _) in contenders.items():
            latencies[name] += [timed(run, batch1) for _ in range(B1_RUNS_PER_ROUND)]
            batch_times[name].append(timed(run, batch8))
    load_after = os.getloadavg()[0]

    tf_latency = statistics.median(latencies["TF reference"])
    tf_rate = BATCH / statistics.median(batch_times["TF reference"])
    print(f"\n{THREADS} threads, 299x299, {rounds} rounds: "
          f"{rounds * B1_RUNS_PER_ROUND} batch-1 runs, {rounds} batch-{BATCH} runs each; "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after "
          f"({os.cpu_count()} CPUs)\n")
    header = (f"{'contender':28} {'b1 ms':>7} {'x TF':>6} {'b1 best':>8} "
              f"{f'b{BATCH} img/s':>10} {'x TF':>6} {'start-up s':>10}  parity vs TF")
    print(header)
    print("-" * len(header))
    for name, (_, startup) in contenders.items():
        latency = statistics.median(latencies[name])
        rate = BATCH / statistics.median(batch_times[name])
        print(f"{name:28} {latency * 1e3:7.1f} {latency / tf_latency:6.2f} "
              f"{min(latencies[name]) * 1e3:8.1f} {rate:10.1f} {rate / tf_rate:6.2f} "
              f"{startup:10.1f}  {'ok' if parity[name].passed else 'FAIL'} "
              f"(max |diff| {parity[name].max_abs_diff:.2g})")
    print("\nb1 ms: median latency; b1 best: fastest run (least disturbed by other load); "
          "x TF: latency ratio (< 1 is faster) and throughput ratio (> 1 is faster).")


if __name__ == "__main__":
    main()
