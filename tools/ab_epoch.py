"""A/B of two source trees on the same training work, in lockstep: which one trains an MNIST epoch faster.

    python tools/ab_epoch.py OLD_TREE NEW_TREE [--algorithm mp] [--rounds 20] [--batches 10] [--mnist DIR] [--json]

OLD_TREE and NEW_TREE are checkouts of this repository (e.g. `git worktree add ../old HEAD~3` and this one). Each
runs in its own worker process (one thread, its tree first on sys.path) that builds the paper's 784-256-128-10
network on ID170ZR5000 20 ns (batch 64, seed 0) and waits. The driver then asks the two workers in turn, the order
alternating each round, for one timed chunk of work: `--batches` training batches (the next ones of MNIST's
training images), and, in a second phase, a forward-only evaluation pass over 1,000 validation images. Each round's
ratio old / new is the speedup; the report is the median ratio and its quartiles.

Why lockstep: this VM's speed drifts by +-20 % over seconds, so two runs one after the other, or medians of
separately timed series, mix the drift into the ratio; chunks of a tenth of a second, alternated, see the same load.
Both workers train the same network from the same seed on the same images, so when the trees compute the same
results (the speed work's promise, checked separately) they do the same work round for round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import os, sys, time
for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
tree, algorithm, mnist, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, tree)
from edgelearn.datasets import load_mnist
from edgelearn.train import TrainConfig, build
import edgelearn
assert os.path.realpath(edgelearn.__file__).startswith(os.path.realpath(tree)), edgelearn.__file__
data = load_mnist(mnist)
config = TrainConfig(card="ID170ZR5000-20ns", algorithm=algorithm, network="paper", epochs=1, batch_size=64, seed=0,
                     data_dir=mnist, lr=0.5 if algorithm.startswith("mp") else 0.1)
network, policy, _ = build(config)
policy.prepare(network)
x, y = data.train.x, data.train.y
position = 0

def train_chunk():
    global position
    for _ in range(batches):
        if position + 64 > len(x):
            position = 0
        _, _, grads = network.gradients(x[position:position + 64], y[position:position + 64])
        for layer, (inputs, deltas) in zip(network.layers, grads):
            policy.update(layer, inputs, deltas, config.lr)
        position += 64

train_chunk()
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    if line.startswith("eval"):
        network.accuracy(data.validation.x[:1000], data.validation.y[:1000])
    else:
        train_chunk()
    print(time.perf_counter() - start, flush=True)
"""


def run(old: str, new: str, algorithm: str, rounds: int, batches: int, mnist: str) -> dict:
    for tree in (old, new):
        if not (Path(tree) / "edgelearn" / "__init__.py").is_file():
            raise SystemExit(f"ab_epoch: {tree}: not a checkout of edgelearn (no edgelearn/__init__.py)")
    workers = []
    for tree in (old, new):
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, str(Path(tree).resolve()), algorithm, mnist,
                                         str(batches)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=os.path.abspath(os.sep)))
    try:
        for tree, worker in zip((old, new), workers):
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit(f"ab_epoch: the worker for {tree} failed (run it alone to see why)")

        def ask(worker, what):
            worker.stdin.write(what + "\n")
            worker.stdin.flush()
            return float(worker.stdout.readline())

        phases = {}
        for what in ("train", "eval"):
            times = {"old": [], "new": []}
            for k in range(rounds):
                order = ("old", "new") if k % 2 == 0 else ("new", "old")
                for side in order:
                    times[side].append(ask(workers[0 if side == "old" else 1], what))
            ratios = [a / b for a, b in zip(times["old"], times["new"])]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            phases[what] = {"old_median_s": statistics.median(times["old"]),
                            "new_median_s": statistics.median(times["new"]),
                            "speedup_median": statistics.median(ratios),
                            "speedup_q25": q1, "speedup_q75": q3, "rounds": rounds}
    finally:
        for worker in workers:
            if worker.stdin:
                worker.stdin.close()
            worker.wait()
    return {"old": old, "new": new, "algorithm": algorithm, "batches_per_chunk": batches, "eval_images": 1000,
            **phases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--algorithm", default="mp", help="training algorithm (default mp)")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds per phase (default 20, >= 4)")
    parser.add_argument("--batches", type=int, default=10, help="training batches of 64 per timed chunk")
    parser.add_argument("--mnist", default=str(REPO.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error("--rounds must be at least 4 (quartiles)")
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    result = run(args.old, args.new, args.algorithm, args.rounds, args.batches, args.mnist)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for what, label in (("train", f"training, {args.batches} batches of 64"), ("eval", "evaluation, 1,000 images")):
        r = result[what]
        print(f"{args.algorithm} {label}: old {r['old_median_s'] * 1e3:.1f} ms, new {r['new_median_s'] * 1e3:.1f} ms "
              f"(medians); speedup {r['speedup_median']:.3f} (quartiles {r['speedup_q25']:.3f}-"
              f"{r['speedup_q75']:.3f}, {r['rounds']} alternating rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
