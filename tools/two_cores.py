"""How much two cores give on this machine: the same work in one process alone, then in two processes at once.

    python tools/two_cores.py [--workloads alu gemm epoch] [--rounds 3] [--mnist DIR] [--json]

Each workload runs in fresh one-thread processes (numba, OpenBLAS and OpenMP pinned to one thread), alone and then as
two copies started together, in alternating rounds; the two-core throughput of a round is 2 x (time alone) / (slower
of the two copies), 2.0 for work that shares nothing. Workloads:
- alu: a numba integer loop (registers only): whether the two cores are real cores;
- gemm: float64 64x785 @ 785x256 products with one OpenBLAS thread (the forward MVM of a paper-network batch);
- epoch: the second of two mixed-precision training epochs of the paper network on 9,600 MNIST images (batch 64,
  ID170ZR5000 20 ns, seed 0, the 2,400-image validation pass included), through edgelearn.train.train.
Two processes at once bound what two threads inside one training run could give only loosely (threads share one
model's arrays, processes have two), but a shortfall here that the alu and gemm rows do not show is contention for
what the cores share (caches, memory), which threads would meet as well. Issue 18 asks for 1.7x on two threads.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("alu", "gemm", "epoch")
DEFAULT_MNIST = REPO.parent / "shared" / "datasets" / "mnist"


def two_core_throughput(alone: float, together: list[float]) -> float:
    """Two copies' work over the time the slower copy took, relative to one copy alone (2.0: nothing shared)."""
    if alone <= 0.0 or len(together) != 2 or min(together) <= 0.0:
        raise ValueError(f"need a positive time alone and two positive times together, got {alone}, {together}")
    return 2.0 * alone / max(together)


def _child(workload: str, mnist: str) -> float:
    """Run one workload in this process; returns its timed seconds (set-up and compilation excluded)."""
    import numpy as np
    from numba import njit

    if workload == "alu":
        @njit(cache=False)
        def spin(n):
            x, y = 1, 3
            for _ in range(n):
                x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFF
                y ^= x >> 7
            return y

        spin(10)
        start = time.perf_counter()
        spin(300_000_000)
        return time.perf_counter() - start
    if workload == "gemm":
        rng = np.random.default_rng(0)
        a, b = rng.random((64, 785)), rng.random((785, 256))
        a @ b
        start = time.perf_counter()
        for _ in range(4000):
            a @ b
        return time.perf_counter() - start
    sys.path.insert(0, str(REPO))
    from edgelearn.datasets import load_mnist
    from edgelearn.train import TrainConfig, train

    data = load_mnist(mnist, 9600)
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm="mp", network="paper", epochs=2, batch_size=64, seed=0,
                         max_train_samples=9600, data_dir=str(mnist))
    return float(train(config, progress=False, data=data).epochs[-1].wall_s)


def _run(workload: str, copies: int, mnist: str) -> list[float]:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", workload, "--mnist", mnist],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(copies)]
    times = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit status {p.returncode}"
            raise RuntimeError(f"{workload} worker failed: {last}")
        times.append(float(out.split()[-1]))
    return times


def measure(workloads, rounds: int, mnist: str) -> dict:
    """{workload: {"alone": [...], "together": [[a, b], ...], "throughput": [...], "throughput_median": x}}."""
    result = {}
    for workload in workloads:
        alone, together = [], []
        for k in range(rounds):
            if k % 2 == 0:
                alone.append(_run(workload, 1, mnist)[0])
                together.append(_run(workload, 2, mnist))
            else:
                together.append(_run(workload, 2, mnist))
                alone.append(_run(workload, 1, mnist)[0])
        ratios = [two_core_throughput(a, t) for a, t in zip(alone, together)]
        result[workload] = {"alone": alone, "together": together, "throughput": ratios,
                            "throughput_median": statistics.median(ratios)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mnist", default=str(DEFAULT_MNIST))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(_child(args.child, args.mnist))
        return 0
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if "epoch" in args.workloads and not Path(args.mnist).is_dir():
        parser.error(f"--mnist {args.mnist}: no such directory (the epoch workload trains on MNIST)")
    result = measure(args.workloads, args.rounds, args.mnist)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'workload':10s} {'alone s':>9s} {'two at once s':>15s} {'two-core throughput':>20s}")
    for workload, r in result.items():
        for a, t, x in zip(r["alone"], r["together"], r["throughput"]):
            print(f"{workload:10s} {a:9.2f} {t[0]:7.2f} {t[1]:7.2f} {x:20.2f}")
        print(f"{workload:10s} {'median':>33s} {r['throughput_median']:20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
