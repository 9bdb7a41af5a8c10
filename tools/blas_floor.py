"""The float64 matrix products an MNIST epoch cannot do without, timed on this machine: a floor under the epoch.

    python tools/blas_floor.py [--repeats 200] [--json]

The batched emulator computes each batch's analog sums, and mixed precision its mini-batch gradient d^T x, as
numpy float64 matrix products (BLAS); everything else (DAC, noise, ADC, pulses, the network's host math) comes on
top. This script times exactly those products for the paper's 784-256-128-10 network (bias as an extra input
column), one thread, with the operand layouts the code uses, and adds them up:
- per training batch of 64: forward W x for the three layers, backward W^T d for layers 2 and 3 (the first layer's
  is never needed), and for mixed precision the gradient d^T x of every layer;
- per validation chunk of 1,000 images: the forward products;
- bound-management repeats are left out (they add a fifth to a quarter of the first layer's forward products in a
  paper run), so this is a lower bound on the products' time.
It prints the floor per epoch (48,000 training and 12,000 validation images), per paper sweep (5 pulse widths x
{sgd, mp, sp-shift}, 25 epochs each, on two workers), and the most training samples per second an epoch could
reach if nothing but these products took time.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

SIZES = (784, 256, 128, 10)
TRAIN, VALIDATION, BATCH, CHUNK = 48_000, 12_000, 64, 1000


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products(repeats: int, seed: int = 0) -> dict:
    """Seconds per product, by name, and the float operations of each."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        w = rng.uniform(-0.1, 0.1, (n_out, n_in + 1))  # a tile's state: rows = outputs, columns = inputs + bias
        for batch, tag in ((BATCH, "train"), (CHUNK, "eval")):
            us = rng.uniform(-1.0, 1.0, (batch, n_in + 1))
            out[f"forward L{k} {tag}"] = (_median_time(lambda: us @ w.T, repeats), 2 * batch * (n_in + 1) * n_out)
        ds = rng.normal(0.0, 0.01, (BATCH, n_out))
        if k > 0:
            out[f"backward L{k}"] = (_median_time(lambda: ds @ w, repeats), 2 * BATCH * (n_in + 1) * n_out)
        xs = rng.uniform(0.0, 1.0, (BATCH, n_in + 1))
        out[f"gradient L{k}"] = (_median_time(lambda: ds.T @ xs, repeats), 2 * BATCH * (n_in + 1) * n_out)
    return out


def floor(repeats: int) -> dict:
    p = products(repeats)
    layers = range(len(SIZES) - 1)
    train_batch = sum(p[f"forward L{k} train"][0] for k in layers) + sum(p[f"backward L{k}"][0] for k in layers if k)
    gradient = sum(p[f"gradient L{k}"][0] for k in layers)
    eval_chunk = sum(p[f"forward L{k} eval"][0] for k in layers)
    batches, chunks = TRAIN / BATCH, VALIDATION / CHUNK
    epoch = {"sgd": batches * train_batch + chunks * eval_chunk,
             "mp": batches * (train_batch + gradient) + chunks * eval_chunk}
    epoch["sp-shift"] = epoch["sgd"]
    sweep = 5 * 25 * (epoch["sgd"] + epoch["mp"] + epoch["sp-shift"]) / 2
    flops = sum(f for _, f in p.values())
    seconds = sum(t for t, _ in p.values())
    return {"products_s": {name: t for name, (t, _) in p.items()},
            "gflops_per_s": flops / seconds / 1e9,
            "epoch_floor_s": epoch, "paper_sweep_floor_s": sweep,
            "mp_training_samples_per_s_ceiling": BATCH / (train_batch + gradient),
            "sgd_training_samples_per_s_ceiling": BATCH / train_batch, "repeats": repeats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed repeats per product (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    result = floor(args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"float64 products at {result['gflops_per_s']:.1f} GFLOP/s (one thread, medians of {args.repeats})")
    for name, seconds in result["products_s"].items():
        print(f"  {name:18s} {seconds * 1e3:7.3f} ms")
    e = result["epoch_floor_s"]
    print(f"epoch floor (48,000 + 12,000 images): mp {e['mp']:.2f} s, sgd and sp-shift {e['sgd']:.2f} s")
    print(f"paper sweep floor (15 runs x 25 epochs, two workers): {result['paper_sweep_floor_s']:.0f} s")
    print(f"training samples/s if nothing but these products took time: mp "
          f"{result['mp_training_samples_per_s_ceiling']:,.0f}, "
          f"sgd {result['sgd_training_samples_per_s_ceiling']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
