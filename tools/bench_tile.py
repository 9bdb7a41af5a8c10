"""Benchmark of the crossbar emulator on one thread: pulsed tile updates and a full MLP training step.

    python tools/bench_tile.py [--updates 300] [--samples 2000] [--json]

Prints a table; with --json one object with at least `ns_per_cell_update`, `samples_per_s` and the two ratios the
targets are stated in: `update_vs_numpy` (the pulsed update's ns per cell over numpy's) and `mlp_vs_numpy` (the MLP
step's samples/s over numpy's). Each ratio is the median over paired blocks, edgelearn's and numpy's timed one after
the other in alternating order (7 pairs of --updates updates; 5 pairs of --samples MLP samples), so that both sides
of a ratio see the same machine load; the card and mixed-precision rows are medians of 5 blocks.
- ns_per_cell_update: rank-1 pulsed update of a 256x784 tile, batch 1, on the reference workload aihwkit 1.1 was
  measured on (one thread, this machine class: 9.7 ns): soft-bounds device, dw_min 0.001, bounds +-1, cycle-to-cycle
  sigma 0.3 of the step, x ~ U[0, 1], d ~ N(0, 0.1^2), lr 0.01, stochastic trains BL <= 31 with update management.
  Also measured for the bundled ID170ZR5000 20 ns card.
- samples_per_s: the 784-256-128-10 sigmoid MLP (bias as an extra input column), forward + backward + pulsed `sgd`
  update of every layer, ID170ZR5000 20 ns card, lr 0.05, batch 1, random inputs (aihwkit: about 400).
- the same shapes with plain numpy float64 in the same run, as the reference ratio.

Side by side with IBM aihwkit (optional; aihwkit needs torch, so it runs in its own virtual environment made by
tools/aihwkit_venv.sh, through tools/bench_aihwkit.py in a subprocess):

    python tools/bench_tile.py --aihwkit .aihwkit-venv/bin/python [--rounds 3] [--mnist DIR] [--json]

runs, in each round, edgelearn's and then aihwkit's two workloads: the tile update above, and a mixed-precision
epoch of the 784-256-128-10 network (batch 64, lr 0.5, --epoch-samples training samples, then a forward-only pass
over a quarter as many, as an epoch of 48k training and 12k validation samples; edgelearn on the ID170ZR5000 20 ns
card, aihwkit on its SoftBoundsDevice in a MixedPrecisionCompound with one tile per layer and the bias on the
crossbar, as edgelearn). The rounds alternate so both see the same machine load; reported: per-round ratios and
their median.
"""

from __future__ import annotations

import os
import sys


def _threads_argument(argv) -> str:
    """--threads N (default 1), read before numpy and numba are imported: they size their pools at import."""
    for k, arg in enumerate(argv):
        value = argv[k + 1] if arg == "--threads" and k + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--threads=") else None)
        if value is not None:
            return value if value.isdigit() and int(value) > 0 else "1"  # argparse refuses it in one line
    return "1"


THREADS = _threads_argument(sys.argv[1:])
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # measure this checkout, not an installed copy
from edgelearn.board import Tile  # noqa: E402
from edgelearn.devices import DeviceVariation, PiecewiseStepModel, load_card  # noqa: E402

NO_VARIATION = DeviceVariation(dw_min_dtod=0.0, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.0, source="benchmark")
ROWS, COLS = 256, 784
LAYERS = (784, 256, 128, 10)


def soft_bounds_reference() -> PiecewiseStepModel:
    """aihwkit SoftBoundsDevice(dw_min=0.001, w_min=-1, w_max=1): up = dw_min (1 - w), down = dw_min (1 + w)."""
    return PiecewiseStepModel.from_absolute(-1.0, 1.0, 0.001 * np.array([2.0, 0.0]), 0.001 * np.array([0.0, 2.0]),
                                            dw_min_std=0.3)


def _blocks(run_block, repeats: int) -> tuple[float, float]:
    """(median, best) of `repeats` timed blocks: this VM's timings wander by +-20 % between blocks."""
    times = sorted(run_block() for _ in range(repeats))
    return times[len(times) // 2], times[0]


def paired(block_a, block_b, repeats: int) -> dict:
    """`repeats` pairs of blocks, the order alternating (a b, b a, ...), so that both sides of a ratio see the same
    machine load: {"a": [...], "b": [...], "ratios": [a / b per pair], "ratio_median": ...}. On this VM the
    machine's speed drifts by +-20 % over seconds; medians of separately timed series mix that drift into ratios."""
    a, b = [], []
    for k in range(repeats):
        if k % 2 == 0:
            a.append(block_a())
            b.append(block_b())
        else:
            b.append(block_b())
            a.append(block_a())
    ratios = [x / y for x, y in zip(a, b)]
    return {"a": a, "b": b, "ratios": ratios, "ratio_median": statistics.median(ratios)}


def update_block(tile: Tile, n_updates: int, lr: float, mixed_precision: bool = False, seed: int = 0):
    """(block, pulses): block() times n_updates updates, in ns per cell per update, after a warm-up; pulses[0] sums
    the pulses they applied."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.0, 1.0, (64, tile.cols))
    ds = rng.normal(0.0, 0.1, (64, tile.rows))
    update = tile.update_mp if mixed_precision else tile.update_sgd
    for k in range(10):  # warm-up (compilation is cached, this settles caches and the state)
        update(xs[k], ds[k], lr)
    pulses = [0]

    def block():
        start = time.perf_counter()
        for k in range(n_updates):
            pulses[0] += update(xs[k % 64], ds[k % 64], lr)
        return (time.perf_counter() - start) / n_updates / (tile.rows * tile.cols) * 1e9

    return block, pulses


def time_updates(tile: Tile, n_updates: int, lr: float, mixed_precision: bool = False, repeats: int = 5,
                 seed: int = 0) -> tuple[float, float, float]:
    """(median ns per cell per update, best, pulses per update): `repeats` blocks of n_updates after warm-up."""
    block, pulses = update_block(tile, n_updates, lr, mixed_precision, seed)
    median, best = _blocks(block, repeats)
    return median, best, pulses[0] / (n_updates * repeats)


def numpy_update_block(n_updates: int, lr: float):
    """block() times n_updates float64 rank-1 updates w -= lr d x^T of a 256 x 784 array, in ns per cell."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.1, 0.1, (ROWS, COLS))
    xs = rng.uniform(0.0, 1.0, (64, COLS))
    ds = rng.normal(0.0, 0.1, (64, ROWS))

    def block():
        start = time.perf_counter()
        for k in range(n_updates):
            w[...] -= lr * np.outer(ds[k % 64], xs[k % 64])
        return (time.perf_counter() - start) / n_updates / (ROWS * COLS) * 1e9

    return block


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class NumpyLayer:
    """The float64 reference with the tile's interface: the same MLP step code drives both."""

    def __init__(self, w):
        self.w = w

    def forward(self, x):
        return self.w @ x

    def backward(self, d):
        return self.w.T @ d

    def update_sgd(self, x, d, lr):
        self.w -= lr * np.outer(d, x)


def mlp_step(layers, x, label, lr):
    """Forward, backward and update of the sigmoid MLP (bias = last input column = 1), log-softmax + NLL."""
    inputs, outputs = [], []
    a = x
    for k, layer in enumerate(layers):
        a_in = np.append(a, 1.0)
        z = layer.forward(a_in)
        inputs.append(a_in)
        a = _sigmoid(z) if k < len(layers) - 1 else z
        outputs.append(a)
    p = np.exp(a - a.max())
    p /= p.sum()
    delta = p
    delta[label] -= 1.0  # d NLL / d logits
    for k in range(len(layers) - 1, -1, -1):
        if k > 0:
            back = layers[k].backward(delta)[:-1]  # no gradient to the bias input
            next_delta = back * outputs[k - 1] * (1.0 - outputs[k - 1])
        layers[k].update_sgd(inputs[k], delta, lr)
        if k > 0:
            delta = next_delta


def time_mlp(n_samples: int, card, repeats: int = 3) -> dict:
    """paired() blocks of n_samples batch-1 MLP steps, edgelearn's tiles (a) against numpy float64 (b), in samples
    per second (so the ratio a / b is edgelearn's speed over numpy's)."""
    rng = np.random.default_rng(1)
    tiles = [Tile(card, n_out, n_in + 1, seed=k) for k, (n_in, n_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:]))]
    floats = []
    for tile in tiles:
        init = rng.uniform(-1.0, 1.0, (tile.rows, tile.cols)) / np.sqrt(tile.cols)
        tile.set_weights(init)
        floats.append(NumpyLayer(init.copy()))
    xs = rng.uniform(0.0, 1.0, (100, LAYERS[0]))
    labels = rng.integers(0, 10, 100)
    for k in range(20):
        mlp_step(tiles, xs[k], labels[k], 0.05)

    def rate(layers):
        def block():
            start = time.perf_counter()
            for k in range(n_samples):
                mlp_step(layers, xs[k % 100], labels[k % 100], 0.05)
            return n_samples / (time.perf_counter() - start)
        return block

    return paired(rate(tiles), rate(floats), repeats)


def time_mp_epoch(n_samples: int, mnist: str | None = None, seed: int = 0) -> dict:
    """edgelearn's side of the side-by-side epoch: the paper network, mixed precision, ID170ZR5000 20 ns, batch 64,
    lr 0.5, through the training code's own steps (network.gradients, algorithm.update, network.accuracy). One
    warm-up batch, then n_samples training samples and a forward-only pass over n_samples // 4 evaluation samples.
    Data: MNIST's first training images (with `mnist`) or seeded random inputs in [0, 1] with random labels."""
    from edgelearn.train import TrainConfig, build

    n_eval = n_samples // 4
    if mnist:
        from edgelearn.datasets import load_mnist

        data = load_mnist(mnist)
        take = np.arange(n_samples + n_eval) % len(data.train)
        xs, ys = data.train.x[take], data.train.y[take]
    else:
        rng = np.random.default_rng(seed)
        xs, ys = rng.uniform(0.0, 1.0, (n_samples + n_eval, LAYERS[0])), rng.integers(0, 10, n_samples + n_eval)
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm="mp", network="paper", batch_size=64, lr=0.5, seed=seed,
                         data_dir=mnist or ".")
    network, algorithm, _ = build(config)
    algorithm.prepare(network)

    def train_batch(x, y):
        _, _, grads = network.gradients(x, y)
        for layer, (inputs, deltas) in zip(network.layers, grads):
            algorithm.update(layer, inputs, deltas, config.lr)

    train_batch(xs[:64], ys[:64])  # warm-up
    start = time.perf_counter()
    for k in range(0, n_samples, 64):
        train_batch(xs[k:min(k + 64, n_samples)], ys[k:min(k + 64, n_samples)])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = network.accuracy(xs[n_samples:], ys[n_samples:]) if n_eval else None
    eval_s = time.perf_counter() - start
    return {"samples": n_samples, "eval_samples": n_eval, "samples_per_s": n_samples / (train_s + eval_s),
            "train_samples_per_s": n_samples / train_s, "train_s": train_s, "eval_s": eval_s,
            "eval_accuracy": accuracy, "data": "mnist" if mnist else "random"}


def run_aihwkit(python: str, updates: int, samples: int, mnist: str | None) -> dict:
    """tools/bench_aihwkit.py --json under the aihwkit venv's python; a one-line error if it cannot run."""
    script = Path(__file__).resolve().parent / "bench_aihwkit.py"
    command = [python, str(script), "--json", "--updates", str(updates), "--samples", str(samples)]
    if mnist:
        command += ["--mnist", mnist]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SystemExit(f"bench_tile: --aihwkit {python}: cannot run it ({exc.strerror})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_tile: --aihwkit {python}: bench_aihwkit.py exited {done.returncode}: {last}")
    return json.loads(done.stdout)


def side_by_side(args) -> dict:
    """Alternating rounds of edgelearn's and aihwkit's tile update and mixed-precision epoch."""
    rounds = []
    for _ in range(args.rounds):
        ns_tile, _, _ = time_updates(Tile(soft_bounds_reference(), ROWS, COLS, seed=0, variation=NO_VARIATION),
                                     args.updates, lr=0.01)
        epoch = time_mp_epoch(args.epoch_samples, args.mnist)
        theirs = run_aihwkit(args.aihwkit, args.updates, args.epoch_samples, args.mnist)
        rounds.append({"edgelearn": {"tile_ns_per_cell": ns_tile, "mp_epoch": epoch},
                       "aihwkit": {"tile_ns_per_cell": theirs["tile"]["ns_per_cell_median"], "mp_epoch": theirs["mlp"]},
                       "tile_speedup": theirs["tile"]["ns_per_cell_median"] / ns_tile,
                       "epoch_speedup": epoch["samples_per_s"] / theirs["mlp"]["samples_per_s"]})
        versions = {k: theirs.get(k) for k in ("aihwkit_version", "torch_version")}
    return {"rounds": rounds, **versions, "threads": 1,
            "tile_speedup_median": statistics.median(r["tile_speedup"] for r in rounds),
            "epoch_speedup_median": statistics.median(r["epoch_speedup"] for r in rounds),
            "epoch_samples": args.epoch_samples, "updates_per_block": args.updates}


def thread_scaling(args) -> dict:
    """The mixed-precision epoch in subprocesses of this script on 1 and on args.thread_scaling threads, alternating,
    args.rounds times: samples/s per round and the median ratio."""
    rounds = []
    for _ in range(args.rounds):
        rates = {}
        for threads in (1, args.thread_scaling):
            command = [sys.executable, __file__, "--epoch", "--json", "--rounds", "1", "--threads", str(threads),
                       "--epoch-samples", str(args.epoch_samples)] + (["--mnist", args.mnist] if args.mnist else [])
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rates[str(threads)] = json.loads(done.stdout)["samples_per_s"]
        rates["ratio"] = rates[str(args.thread_scaling)] / rates["1"]
        rounds.append(rates)
    return {"rounds": rounds, "ratio_median": statistics.median(r["ratio"] for r in rounds),
            "threads": args.thread_scaling, "epoch_samples": args.epoch_samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200, help="timed tile updates per block (>= 200)")
    parser.add_argument("--samples", type=int, default=2000, help="timed MLP training samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--aihwkit", metavar="PYTHON", help="side by side with aihwkit: the python of a venv made by "
                        "tools/aihwkit_venv.sh")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (default 3)")
    parser.add_argument("--epoch-samples", type=int, default=6400, help="training samples of the side-by-side epoch")
    parser.add_argument("--mnist", metavar="DIR", help="side by side: MNIST images instead of random inputs")
    parser.add_argument("--threads", type=int, default=1, help="numba and BLAS threads of this process (default 1)")
    parser.add_argument("--epoch", action="store_true", help="only the mixed-precision epoch (--epoch-samples), "
                        "best of --rounds")
    parser.add_argument("--thread-scaling", type=int, metavar="N", help="the mixed-precision epoch on 1 and on N "
                        "threads, in alternating subprocesses (--rounds each): samples/s and their ratio")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.epoch:
        runs = [time_mp_epoch(args.epoch_samples, args.mnist) for _ in range(args.rounds)]
        best = max(runs, key=lambda r: r["samples_per_s"])
        best["threads"] = args.threads
        print(json.dumps(best, indent=2) if args.json else f"mixed-precision epoch, {args.threads} thread(s): "
              f"{best['samples_per_s']:.0f} samples/s (best of {args.rounds})")
        return 0
    if args.thread_scaling:
        result = thread_scaling(args)
        print(json.dumps(result, indent=2) if args.json else
              "\n".join(f"round {k + 1}: 1 thread {r['1']:.0f}, {args.thread_scaling} threads "
                         f"{r[str(args.thread_scaling)]:.0f} samples/s, ratio {r['ratio']:.2f}"
                         for k, r in enumerate(result["rounds"])) + f"\nmedian ratio {result['ratio_median']:.2f}")
        return 0
    card = load_card("ID170ZR5000-20ns")
    if args.aihwkit:
        result = side_by_side(args)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        print(f"edgelearn vs aihwkit {result['aihwkit_version']} (torch {result['torch_version']}), one thread, "
              f"{args.rounds} alternating rounds")
        print(f"{'round':>5s} {'tile ns/cell':>14s} {'aihwkit':>8s} {'speedup':>8s} {'mp epoch samples/s':>19s} "
              f"{'aihwkit':>8s} {'speedup':>8s}")
        for k, r in enumerate(result["rounds"]):
            print(f"{k + 1:5d} {r['edgelearn']['tile_ns_per_cell']:14.2f} {r['aihwkit']['tile_ns_per_cell']:8.2f} "
                  f"{r['tile_speedup']:8.2f} {r['edgelearn']['mp_epoch']['samples_per_s']:19.0f} "
                  f"{r['aihwkit']['mp_epoch']['samples_per_s']:8.0f} {r['epoch_speedup']:8.2f}")
        print(f"median speedup: tile update {result['tile_speedup_median']:.2f}x, mixed-precision epoch "
              f"{result['epoch_speedup_median']:.2f}x")
        return 0
    ref_block, ref_pulses = update_block(Tile(soft_bounds_reference(), ROWS, COLS, seed=0, variation=NO_VARIATION),
                                         args.updates, lr=0.01)
    update_pairs = paired(ref_block, numpy_update_block(args.updates, lr=0.01), 7)
    ns_ref, ns_numpy = statistics.median(update_pairs["a"]), statistics.median(update_pairs["b"])
    ns_ref_best, pulses_ref = min(update_pairs["a"]), ref_pulses[0] / (args.updates * 7)
    ns_card, _, pulses_card = time_updates(Tile(card, ROWS, COLS, seed=0), args.updates, lr=0.01)
    ns_mp, _, pulses_mp = time_updates(Tile(card, ROWS, COLS, seed=0), args.updates, lr=0.5, mixed_precision=True)
    mlp_pairs = time_mlp(args.samples, card, 5)
    samples, samples_numpy = statistics.median(mlp_pairs["a"]), statistics.median(mlp_pairs["b"])
    result = dict(ns_per_cell_update=ns_ref, ns_per_cell_update_best=ns_ref_best, pulses_per_update=pulses_ref,
                  ns_per_cell_update_card=ns_card, pulses_per_update_card=pulses_card,
                  ns_per_cell_mp_update_card=ns_mp, pulses_per_mp_update_card=pulses_mp,
                  numpy_ns_per_cell_update=ns_numpy, samples_per_s=samples, numpy_samples_per_s=samples_numpy,
                  update_vs_numpy=update_pairs["ratio_median"], update_vs_numpy_pairs=update_pairs["ratios"],
                  mlp_vs_numpy=mlp_pairs["ratio_median"], mlp_vs_numpy_pairs=mlp_pairs["ratios"],
                  aihwkit_ns_per_cell_update=9.7, aihwkit_samples_per_s=400.0, tile=f"{ROWS}x{COLS}",
                  updates_per_block=args.updates, blocks=7, mlp_blocks=5, samples=args.samples,
                  threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'measure':52s} {'edgelearn':>11s} {'numpy float':>12s} {'ratio':>7s} {'aihwkit':>8s}")
    print(f"{'ns per cell, 256x784 pulsed update (reference)':52s} {ns_ref:11.2f} {ns_numpy:12.2f} "
          f"{update_pairs['ratio_median']:7.2f} {9.7:8.1f}")
    print(f"{'  best of 7 blocks; ratio = median over 7 paired blocks':52s} {ns_ref_best:11.2f}")
    print(f"{'  pulses per update':52s} {pulses_ref:11.0f}")
    print(f"{'ns per cell, 256x784 pulsed update (ID170ZR5000 20ns)':52s} {ns_card:11.2f} {ns_numpy:12.2f} "
          f"{ns_card / ns_numpy:7.1f}")
    print(f"{'  pulses per update':52s} {pulses_card:11.0f}")
    print(f"{'ns per cell, 256x784 mixed-precision step (ID170 20ns)':52s} {ns_mp:11.2f} {ns_numpy:12.2f} "
          f"{ns_mp / ns_numpy:7.1f}")
    print(f"{'  pulses per step (lr 0.5, epsilon = granularity)':52s} {pulses_mp:11.0f}")
    print(f"{'samples/s, 784-256-128-10 sgd, batch 1 (5 paired blocks)':52s} {samples:11.0f} {samples_numpy:12.0f} "
          f"{mlp_pairs['ratio_median']:7.2f} {400:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
