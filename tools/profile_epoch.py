"""Where an MNIST training epoch spends its time, per kernel, on one thread (issue 18: profile first).

    python tools/profile_epoch.py [--algorithms mp sgd c-ttv2] [--samples 48000] [--no-validation] [--json]
        [--doc docs/performance.md]

Trains one epoch of the paper's 784-256-128-10 network (batch 64, ID170ZR5000 20 ns, seed 0) per algorithm with
timers around the controller kernels the tiles call (firmware_model.controller / lowmem, patched in place for the
run) and around the tiles' host-side work, and reports seconds and shares:
- forward MVM, backward MVM: controller.mvm_batch_gemm / mvm_batch (DAC, analog sum, noise, ADC, bound
  management);
- host BLAS for chi: the mini-batch gradient d^T x that Tile.update_mp_batch forms with numpy before the kernel;
- update kernels: mp_update_dense, stochastic_update_batch, deterministic_update_batch, apply_counts and the
  memory-light kernels;
- transfer reads / policy: the transfer algorithms' column reads are forward MVMs (counted there); their digital
  buffer work is in the policy (Python + numba), counted as "algorithm (host)";
- validation and test: the 12,000-image validation pass after the epoch and the 10,000-image test pass (their
  forward MVMs included, counted apart from training's);
- Python and numpy host work: everything else in the epoch (activations, softmax, slicing, bookkeeping).
Each kernel call is timed with perf_counter (about 0.1 us per call of overhead, a few hundred thousand calls per
epoch: well under 1 % here). The first epoch compiles nothing: numba's cache is warmed on a tiny run first.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # profile this checkout, not an installed copy of edgelearn
CATEGORIES = ("forward MVM", "backward MVM", "host BLAS for chi", "update kernels", "algorithm (host)",
              "validation and test", "Python and numpy host work")


class Timers:
    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack = []  # nested timers: the inner one's time is taken out of the outer one's
        self.evaluating = False

    @contextmanager
    def section(self, name):
        t0 = time.perf_counter()
        self.stack.append(0.0)
        try:
            yield
        finally:
            inner = self.stack.pop()
            spent = time.perf_counter() - t0
            self.seconds[name] += spent - inner
            self.calls[name] += 1
            if self.stack:
                self.stack[-1] += spent


def instrument(timers: Timers):
    """Patch the kernels the tiles call with timed wrappers; returns a function that undoes it."""
    from edgelearn import algorithms, board, train
    from firmware_model import controller, lowmem

    undo = []

    def patch(module, name, wrapper_of):
        original = getattr(module, name)
        setattr(module, name, wrapper_of(original))
        undo.append(lambda: setattr(module, name, original))

    def timed(category):
        def wrapper_of(fn):
            def wrapped(*args, **kwargs):
                with timers.section(category):
                    return fn(*args, **kwargs)
            return wrapped
        return wrapper_of

    def mvm_batch_of(fn):
        def wrapped(state, ref_state, use_ref, vecs, transpose, *rest):
            if timers.evaluating:  # the evaluation passes keep their MVMs
                return fn(state, ref_state, use_ref, vecs, transpose, *rest)
            with timers.section("backward MVM" if transpose else "forward MVM"):
                return fn(state, ref_state, use_ref, vecs, transpose, *rest)
        return wrapped

    patch(controller, "mvm_batch_gemm", mvm_batch_of)  # what the tiles call; it may call mvm_batch (one-hot reads)
    patch(controller, "mvm_batch", mvm_batch_of)
    for name in ("mp_update_dense", "stochastic_update_batch", "deterministic_update_batch", "apply_counts"):
        patch(controller, name, timed("update kernels"))
    for name in ("mp_update_dense_q", "buffer_transfer"):
        patch(lowmem, name, timed("update kernels"))
    # the host BLAS of mixed precision: Tile.update_mp_batch's ds.T @ xs, timed by wrapping the method and taking
    # the kernel (timed inside) out of it
    patch(board.Tile, "update_mp_batch", timed("host BLAS for chi"))
    patch(algorithms.Transfer, "update", timed("algorithm (host)"))
    original_accuracy = train.Network.accuracy

    def accuracy(self, xs, labels):
        timers.evaluating = True
        try:
            with timers.section("validation and test"):
                return original_accuracy(self, xs, labels)
        finally:
            timers.evaluating = False
    train.Network.accuracy = accuracy
    undo.append(lambda: setattr(train.Network, "accuracy", original_accuracy))
    return lambda: [u() for u in reversed(undo)]


def profile(algorithm: str, samples: int | None, data) -> dict:
    from edgelearn.train import TrainConfig, train

    extra = {"lr": 0.1} if algorithm in ("sgd", "sp-shift") else {}
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm=algorithm, network="paper", epochs=1, batch_size=64,
                         seed=0, max_train_samples=samples, data_dir="unused", **extra)
    timers = Timers()
    undo = instrument(timers)
    try:
        t0 = time.perf_counter()
        with timers.section("Python and numpy host work"):
            result = train(config, progress=False, data=data)
        wall = time.perf_counter() - t0
    finally:
        undo()
    seconds = {c: timers.seconds.get(c, 0.0) for c in CATEGORIES}
    return dict(algorithm=algorithm, samples=samples or 48000, wall_s=wall, seconds=seconds,
                calls={c: timers.calls.get(c, 0) for c in CATEGORIES},
                shares={c: seconds[c] / wall for c in CATEGORIES}, validation_accuracy=result.epochs[0].validation_accuracy)


def table(results: list[dict]) -> str:
    lines = ["| part of the epoch | " + " | ".join(f"`{r['algorithm']}`" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for c in CATEGORIES:
        lines.append(f"| {c} | " + " | ".join(f"{r['seconds'][c]:.2f} s ({r['shares'][c]:.0%})" for r in results)
                     + " |")
    lines.append("| **epoch, wall** | " + " | ".join(f"**{r['wall_s']:.1f} s**" for r in results) + " |")
    lines.append("| training samples per second (evaluation passes excluded) | " + " | ".join(
        f"{r['samples'] / (r['wall_s'] - r['seconds']['validation and test']):,.0f}" for r in results) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["mp", "sgd", "c-ttv2"])
    parser.add_argument("--samples", type=int, help="training images (default: all 48,000)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--doc", help="rewrite the epoch-profile block of this markdown file")
    args = parser.parse_args(argv)
    from edgelearn.datasets import load_mnist
    from edgelearn.report import replace_marked_block

    data = load_mnist(args.data_dir, args.samples)
    small = load_mnist(args.data_dir, 64)
    for algorithm in args.algorithms:  # warm numba's cache: nothing compiles inside the timed epochs
        profile(algorithm, 64, small)
    results = [profile(a, args.samples, data) for a in args.algorithms]
    if args.json:
        print(json.dumps(results, indent=2))
    block = (f"`python tools/profile_epoch.py` (one thread, this 2-core machine class): one epoch of the paper's "
             f"784-256-128-10 network on {results[0]['samples']:,} MNIST images, batch 64, ID170ZR5000 20 ns, plus "
             "the 12,000-image validation and 10,000-image test passes; seconds and share of the wall time.\n\n"
             + table(results))
    if not args.json:
        print(block)
    if args.doc:
        doc = Path(args.doc)
        doc.write_text(replace_marked_block(doc.read_text(encoding="utf-8"), "epoch-profile", block, str(doc)),
                       encoding="utf-8")
        print(f"wrote {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
