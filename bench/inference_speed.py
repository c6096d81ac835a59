"""CPU inference speed: the TF reference vs the ported model in every engine, side by side,
quiet and under a competing CPU load.

For each architecture (default: one per models/ folder: Inception v3, Inception-ResNet-v2,
ResNet-50 v2) the TF side is its oracle: TF-Slim's graph for Inception v3 and the ResNets,
Keras's InceptionResNetV2 (TF runtime) for Inception-ResNet-v2. The contenders are the plain
ported model (eager PyTorch), ``deploy_model`` and the ``port-weights export`` graph in ONNX
Runtime and in OpenVINO (each verified against TF on the photos first, printed as "parity").
All run in this one process on the same synthetic checkpoint with 2 threads each, taking turns
(one round = 3 batch-1 runs + 1 batch-8 run of each), so that load from other processes falls
on all of them alike. Then the same rounds again while a competing process spins on one core
(``--no-load`` skips that), which is what a shared serving machine does to them. Reports the
median batch-1 latency, batch-8 images/s from the median batch-8 time, ratios to TF, and the
start-up cost: from weights on disk to the first results at both batch sizes (graph build,
restore, folding, weight packing, engine compilation).

    .venv/bin/python bench/inference_speed.py [--rounds 8] [--arch NAME ...] [--no-load]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# PyTorch's OpenMP threads sleep when they wait instead of spinning: deploy_model's setting for
# shared machines (README, bench/deploy_under_load.py). libgomp reads it when torch loads, so it
# is set here, before the import; --omp-spin measures libgomp's default instead.
if "--omp-spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import deploy_model, model_for_state_dict  # noqa: E402
from models.spec import architectures, representatives  # noqa: E402
from porting.convert import PortOptions  # noqa: E402
from porting.onnx.engines import ENGINES  # noqa: E402
from porting.onnx.export import export_weights  # noqa: E402
from porting.verify.parity import compare  # noqa: E402
from porting.verify.photos import load_photos  # noqa: E402
from porting.pipeline import port_checkpoint  # noqa: E402

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


def onnx_runner(engine, path: Path, spin: bool = True):
    run = engine.load(path, threads=THREADS, spin=spin)
    return lambda images_nhwc: run(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))[
        "Logits"]


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


@contextlib.contextmanager
def competing_load():
    """A process spinning on the CPU for as long as the block runs (one core's worth of load)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach the run queue
        yield
    finally:
        spinner.kill()
        spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--arch", nargs="*", choices=list(architectures()),
                        default=list(representatives()),
                        help="architectures to bench (default: one per models/ folder)")
    parser.add_argument("--no-load", action="store_true",
                        help="skip the rounds under a competing CPU load")
    parser.add_argument("--omp-spin", action="store_true",
                        help="leave OMP_WAIT_POLICY unset: PyTorch's threads spin when they wait")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp spins)')}")
    for arch in args.arch:
        bench(architectures()[arch], args.rounds, not args.no_load)


def bench(spec, rounds: int, load: bool) -> None:
    oracle = spec.oracle_module()
    print(f"\n=== {spec.title}: {spec.oracle_name} vs the ported model")
    _, photos = load_photos(config=spec.eval)
    batch1, batch8 = photos[:1].copy(), photos[:BATCH].copy()
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        prefix = oracle.build_synthetic_checkpoint(Path(tmp) / f"adv_{spec.name}.ckpt", photos)
        ported = port_checkpoint(prefix, Path(tmp) / f"adv_{spec.name}.pth",
                                 PortOptions(num_classes=spec.eval.num_classes)).written.path
        exported = export_weights(ported, Path(tmp) / f"adv_{spec.name}.onnx").written.path
        state_dict = torch.load(ported, weights_only=True)  # as a user loads the file
        print(f"synthetic checkpoint written, ported and exported in "
              f"{time.perf_counter() - began:.0f} s")

        warm_up = [batch1, batch8]
        contenders = {}
        contenders["TF reference"] = start(
            lambda: tf_runner(oracle.Reference.for_checkpoint(prefix, threads=THREADS)),
            warm_up)
        contenders["PyTorch plain (eager)"] = start(
            lambda: torch_runner(model_for_state_dict(state_dict)), warm_up)
        contenders["deploy_model()"] = start(
            lambda: torch_runner(deploy_model(state_dict)), warm_up)
        for engine in ENGINES.values():
            contenders[engine.label()] = start(lambda: onnx_runner(engine, exported), warm_up)
        onnxruntime = ENGINES["onnxruntime"]
        contenders[f"{onnxruntime.label()}, no spin"] = start(
            lambda: onnx_runner(onnxruntime, exported, spin=False), warm_up)

    reference = contenders["TF reference"][0](photos)
    parity = {name: compare(run(photos), reference) for name, (run, _) in contenders.items()}
    phases = [("quiet", contextlib.nullcontext)] + (
        [("under load: 1 process spinning on one core", competing_load)] if load else [])
    for phase, context in phases:
        with context():
            timings = rounds_of(contenders, rounds, batch1, batch8)
        report(phase, contenders, parity, rounds, spec.eval.input_size, *timings)


def rounds_of(contenders: dict, rounds: int, batch1, batch8):
    load_before = os.getloadavg()[0]
    latencies = {name: [] for name in contenders}
    batch_times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (run, _) in contenders.items():
            latencies[name] += [timed(run, batch1) for _ in range(B1_RUNS_PER_ROUND)]
            batch_times[name].append(timed(run, batch8))
    return latencies, batch_times, load_before, os.getloadavg()[0]


def report(phase: str, contenders: dict, parity: dict, rounds: int, size: int, latencies: dict,
           batch_times: dict, load_before: float, load_after: float) -> None:
    tf_latency = statistics.median(latencies["TF reference"])
    tf_rate = BATCH / statistics.median(batch_times["TF reference"])
    print(f"\n--- {phase}: {THREADS} threads, {size}x{size}, {rounds} rounds: "
          f"{rounds * B1_RUNS_PER_ROUND} batch-1 runs, {rounds} batch-{BATCH} runs each; "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after "
          f"({os.cpu_count()} CPUs)\n")
    header = (f"{'contender':36} {'b1 ms':>7} {'x TF':>6} {'b1 best':>8} "
              f"{f'b{BATCH} img/s':>10} {'x TF':>6} {'start-up s':>10}  parity vs TF")
    print(header)
    print("-" * len(header))
    for name, (_, startup) in contenders.items():
        latency = statistics.median(latencies[name])
        rate = BATCH / statistics.median(batch_times[name])
        print(f"{name:36} {latency * 1e3:7.1f} {latency / tf_latency:6.2f} "
              f"{min(latencies[name]) * 1e3:8.1f} {rate:10.1f} {rate / tf_rate:6.2f} "
              f"{startup:10.1f}  {'ok' if parity[name].passed else 'FAIL'} "
              f"(max |diff| {parity[name].max_abs_diff:.2g})")
    print("\nb1 ms: median latency; b1 best: fastest run (least disturbed by other load); "
          "x TF: latency ratio (< 1 is faster) and throughput ratio (> 1 is faster).")


if __name__ == "__main__":
    main()
