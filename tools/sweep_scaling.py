"""Scaling of a sweep with the number of Dask workers: the same small grid on a LocalCluster with 1 and with 2
workers (one thread each), wall time and speed-up, and a check that both give the same numbers per run.

    python tools/sweep_scaling.py [--data-dir ../shared/datasets/mnist] [--epochs 3] [--samples 24000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgelearn.sweep import SweepSpec, run_sweep

REPO = Path(__file__).resolve().parent.parent


def numbers(out: Path) -> dict:
    result = {}
    for run_dir in sorted((out / "runs").iterdir()):
        s = json.loads((run_dir / "summary.json").read_text())
        result[run_dir.name] = (s["test_accuracy"], s["counters"])
    return result


def main() -> int:
    from distributed import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=24000)
    args = parser.parse_args()
    spec = SweepSpec(name="scaling", axes={"card": ["ID170ZR5000-20ns", "ID170ZR5000-2us"], "algorithm": ["mp", "sgd"]},
                     fixed=dict(epochs=args.epochs, network="784-64-10", max_train_samples=args.samples,
                                data_dir=args.data_dir))
    walls, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c:
                t0 = time.perf_counter()
                result = run_sweep(spec, out, scheduler=c.scheduler_address, progress=False)
                walls[workers] = time.perf_counter() - t0
            assert result.completed == 4 and not result.failed, result
            outs[workers] = numbers(out)
            print(f"{workers} worker(s): {walls[workers]:.1f} s for 4 runs", flush=True)
    print(f"speed-up 1 -> 2 workers: {walls[1] / walls[2]:.2f}x; identical results: {outs[1] == outs[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
