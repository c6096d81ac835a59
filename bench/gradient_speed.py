"""Input-gradient speed: TF's graph gradient vs the ported model's, side by side, on 2 threads.

What an iterative attack (PGD, MI-FGSM, ...) spends its time on: one forward and one backward
pass of the summed softmax cross-entropy of the Logits, for the gradient with respect to the
input images. The TF side is the architecture's oracle (``models/<name>/oracle.py``:
``tf.gradients`` of that loss in TF-Slim's graph, run in a session with 2 intra-op threads and
1 inter-op thread; for Inception-ResNet-v2 Keras's model, whose gradient is traced into a
``tf.function``). The PyTorch contenders, each given the same ported state dict:

- eager: the model as ``model_for_state_dict`` loads it (parameters requiring gradients);
- eager, parameters frozen: the same with ``requires_grad_(False)`` (autograd keeps the input
  path only);
- ``folded_model()``: batch norms folded into the convs, parameters frozen;
- ``gradient_model()``: ``folded_model`` in channels_last (``models.deploy``).

Every contender's input gradient is checked against TF's first (``gradient_parity``: within
``GRADIENT_RELATIVE_TOLERANCE``, and FGSM images that keep their top-1 across the frameworks);
a contender that fails is reported and not timed, and the script exits 1. Then all run in this
one process taking turns (a round: each contender once at each batch size), so that load from
other processes falls on all alike; the table gives images/s from the median time per batch
and its ratio to TF's.

The allocator: glibc hands every block above 32 MiB back to the OS when it is freed, and
PyTorch frees its activations after every batch, so each batch pays the kernel to zero-fill
them again (TF's session does not). ``models.deploy.retain_freed_memory`` turns that off for
the process, as this script does unless ``--glibc-default`` is given (TF is unaffected either
way). Likewise ``OMP_WAIT_POLICY=PASSIVE`` (unless ``--omp-spin``): see ``models/deploy.py``.

    .venv/bin/python bench/gradient_speed.py [--rounds 5] [--arch NAME ...] [--batch 8 16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--omp-spin" not in sys.argv:  # read by libgomp when torch loads: set before the import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import model_for_state_dict  # noqa: E402
from models.deploy import folded_model, gradient_model, retain_freed_memory  # noqa: E402
from models.spec import ClassLayout, architectures  # noqa: E402
from porting.convert import PortOptions  # noqa: E402
from porting.pipeline import port_checkpoint  # noqa: E402
from porting.verify.gradients import gradient_parity, torch_loss_gradient  # noqa: E402
from porting.verify.parity import GRADIENT_RELATIVE_TOLERANCE  # noqa: E402
from porting.verify.photos import load_photos  # noqa: E402

THREADS = 2
DEFAULT_ARCHS = ("inception_v3", "resnet_v2_50")  # a few minutes; all six: ~23 min under load
PARITY_IMAGES = 4  # photos whose gradients are checked, PARITY_BATCH at a time
PARITY_BATCH = 2
TF_NAME = "TF: the oracle's graph gradient"

CONTENDERS = {
    "PyTorch eager (as loaded)": model_for_state_dict,
    "eager, parameters frozen": lambda sd: model_for_state_dict(sd).requires_grad_(False),
    "folded_model()": folded_model,
    "gradient_model(): folded, channels_last": gradient_model,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--arch", nargs="+", choices=list(architectures()), metavar="NAME",
                        default=list(DEFAULT_ARCHS),
                        help=f"architectures to bench, of: {' '.join(architectures())} "
                             f"(default: {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 16],
                        help="batch sizes (default: 8 16)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc as it is (freed activations go back to the "
                             "OS and are zero-filled again on the next batch)")
    parser.add_argument("--omp-spin", action="store_true",
                        help="leave OMP_WAIT_POLICY unset: PyTorch's threads spin when they wait")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.batch) < 1:
        parser.error("--rounds and --batch take positive numbers")
    torch.set_num_threads(THREADS)
    retained = False if args.glibc_default else retain_freed_memory()
    print(f"{THREADS} threads; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp spins)')}; freed memory "
          f"{'retained (retain_freed_memory)' if retained else 'returned to the OS (glibc default)'}")
    failed = False
    for arch in args.arch:
        failed |= not bench(architectures()[arch], args.rounds, sorted(set(args.batch)))
    sys.exit(1 if failed else 0)


def bench(spec, rounds: int, batches: list[int]) -> bool:
    """Check and time one architecture; False if some contender failed its parity check."""
    oracle = spec.oracle_module()
    print(f"\n=== {spec.title}: input gradient of the cross-entropy, TF ({spec.oracle_name}) vs "
          f"the ported model", flush=True)
    _, photos = load_photos(config=spec.eval)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        prefix = oracle.build_synthetic_checkpoint(Path(tmp) / f"{spec.name}.ckpt", photos)
        ported = port_checkpoint(prefix, Path(tmp) / f"{spec.name}.pth",
                                 PortOptions(num_classes=spec.eval.num_classes)).written.path
        state_dict = torch.load(ported, weights_only=True)  # as a user loads the file
        tf_model = oracle.Reference.for_checkpoint(prefix, threads=THREADS)
    models = {name: make(state_dict) for name, make in CONTENDERS.items()}
    dropped = ClassLayout.of(spec.eval, models["folded_model()"].num_classes,
                             source=tf_model.num_classes).dropped
    print(f"synthetic checkpoint written, ported and loaded in "
          f"{time.perf_counter() - began:.0f} s", flush=True)

    parity = {}
    for name, model in models.items():
        parity[name] = gradient_parity(model, tf_model, photos[:PARITY_IMAGES], dropped=dropped,
                                       relative_tolerance=GRADIENT_RELATIVE_TOLERANCE,
                                       batch_size=PARITY_BATCH)
        print(f"parity {name}: {'ok' if parity[name].passed else 'FAIL'}: {parity[name]}",
              flush=True)

    images = np.resize(photos, (max(batches), *photos.shape[1:]))  # the photos, repeated
    labels = tf_model(images, ("Logits",))["Logits"][:, dropped:].argmax(1)
    runs = {TF_NAME: lambda x, y: tf_model.loss_gradient(x, y, dropped)}
    runs.update({name: (lambda x, y, model=model: torch_loss_gradient(model, x, y))
                 for name, model in models.items() if parity[name].passed})
    for batch in batches:  # warm-up: graph pruning, oneDNN primitive creation, allocations
        for run in runs.values():
            run(images[:batch], labels[:batch])

    times = {(name, batch): [] for name in runs for batch in batches}
    load_before = os.getloadavg()[0]
    for done in range(rounds):
        for batch in batches:
            for name, run in runs.items():
                x, y = images[:batch], labels[:batch]
                start = time.perf_counter()
                run(x, y)
                times[name, batch].append(time.perf_counter() - start)
        print(f"round {done + 1}/{rounds}", end="\r", flush=True)
    report(spec, times, parity, batches, rounds, load_before)
    tf_model.close()
    return all(p.passed for p in parity.values())


def report(spec, times: dict, parity: dict, batches: list[int], rounds: int,
           load_before: float) -> None:
    size = spec.eval.input_size
    print(f"\n--- {spec.title}, {size}x{size}, {THREADS} threads, median of {rounds} rounds; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs)\n")
    header = (f"{'path':42} {'batch':>5} {'img/s':>7} {'x TF':>6} {'best x TF':>9}  "
              f"parity vs TF (relative error, bound {GRADIENT_RELATIVE_TOLERANCE:g})")
    print(header)
    print("-" * len(header))
    for batch in batches:
        tf_time = statistics.median(times[TF_NAME, batch])
        tf_best = min(times[TF_NAME, batch])
        for name in (TF_NAME, *parity):
            if name in parity and not parity[name].passed:
                print(f"{name:42} {batch:5} {'-':>7} {'-':>6} {'-':>9}  FAIL "
                      f"({parity[name].relative_error:.3g}): not timed")
                continue
            median = statistics.median(times[name, batch])
            check = ("reference" if name == TF_NAME else
                     f"ok ({parity[name].relative_error:.3g}, FGSM top-1 "
                     f"{parity[name].torch_fgsm_agree}/{parity[name].images})")
            print(f"{name:42} {batch:5} {batch / median:7.2f} {tf_time / median:6.2f} "
                  f"{tf_best / min(times[name, batch]):9.2f}  {check}")
    print("\nx TF: throughput ratio to TF at the same batch (> 1 is faster), from the median "
          "times; best x TF: from the fastest run of each (least disturbed by other load).")


if __name__ == "__main__":
    main()
