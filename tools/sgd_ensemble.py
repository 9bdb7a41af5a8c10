"""Plain SGD over a bootstrap ensemble of cards: the paper's accuracy with the spread the fit's uncertainty leaves.

    python tools/sgd_ensemble.py [--trace ID170ZR5000_20241024T133047.dat] [-n 10] [--epochs 25] [--jobs 2]
        [--out out/sgd-ensemble] [--data-dir ../shared/datasets/mnist]

Refits the trace on n random 70 % subsets of its blocks (edgelearn.stability.bootstrap_cards, seed 0), trains the
paper's network with plain SGD (lr 0.1, batch 64, lr halved every 10 epochs, seed 0) on each card and on the bundled
card, and rewrites the block between the sgd-ensemble markers of docs/results.md: accuracy per card with its
symmetry point, the median and the 90 % range (the default trace; another trace gets its own block,
sgd-ensemble-<width>, added after the last one). Finished runs are reused (OUT/<card>/summary.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelearn.devices import bundled_cards, load_card, symmetry_points, width_label  # noqa: E402
from edgelearn.errors import EdgelearnError  # noqa: E402
from edgelearn.report import replace_marked_block  # noqa: E402
from edgelearn.stability import bootstrap_cards  # noqa: E402
from edgelearn.traces import load_trace  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = "ID170ZR5000_20241024T133047.dat"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def run_one(card_path: str, epochs: int, data_dir: str, out: str) -> dict:
    from edgelearn.train import TrainConfig, train

    summary = Path(out) / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if len(done["epochs"]) >= epochs:
            return done
    config = TrainConfig(card=card_path, algorithm="sgd", lr=0.1, epochs=epochs, batch_size=64, lr_step=10,
                         lr_gamma=0.5, seed=0, data_dir=data_dir)
    return json.loads(train(config, out=out, overwrite=True, progress=False).to_json())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=DEFAULT_TRACE, help="a trace of ../shared/traces/lbe247")
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "out" / "sgd-ensemble"))
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "mnist"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    trace = load_trace(REPO.parent / "shared" / "traces" / "lbe247" / args.trace)
    out = Path(args.out)
    (out / "cards").mkdir(parents=True, exist_ok=True)
    bundled = next(load_card(p) for p in bundled_cards().values() if load_card(p).provenance.source_file == args.trace)
    block = "sgd-ensemble" if args.trace == DEFAULT_TRACE else f"sgd-ensemble-{width_label(bundled.pulse_width_s)}"
    START, END = markers(block)
    bundled_path = out / "cards" / f"{bundled.card_id}.json"
    bundled.save(bundled_path)
    cards = [bundled_path]
    for card in bootstrap_cards(trace, args.n):
        path = out / "cards" / f"{card.card_id}.json"
        card.save(path)
        cards.append(path)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, str(p), args.epochs, args.data_dir, str(out / p.stem)) for p in cards]
        results = [f.result() for f in futures]
    rows = []
    for path, result in zip(cards, results):
        card = load_card(path)
        sp, sp_sim, _ = symmetry_points(card.model)
        # each card is normalised on its own subset: the symmetry point is shown on the bundled card's w scale
        on_full = float(bundled.weight_from_conductance(card.conductance_from_weight(sp)))
        rows.append(dict(card=card.card_id, sp=on_full, test=result["test_accuracy"],
                         pulses=result["counters"]["pulses_up"] + result["counters"]["pulses_down"]))
    acc = np.array([r["test"] for r in rows[1:]])
    lines = ["", f"`python tools/sgd_ensemble.py --trace {args.trace} -n {args.n} --epochs {args.epochs}` "
             f"({time.perf_counter() - t0:.0f} s with {args.jobs} jobs): plain SGD (lr 0.1, batch 64, lr halved every "
             "10 epochs, seed 0) on the bundled card and on each bootstrap card of the same trace (refits on random "
             "7 of 10 contiguous blocks). Symmetry points on the bundled card's w scale.", "",
             "| card | symmetry point | test accuracy | pulses |", "|---|---|---|---|"]
    lines += [f"| {r['card']}{' (bundled)' if k == 0 else ''} | {r['sp']:+.3f} | {r['test']:.4f} | {r['pulses']:,} |"
              for k, r in enumerate(rows)]
    lines += ["", f"Over the {len(acc)} bootstrap cards: median test accuracy {np.median(acc):.3f}, 90 % range "
              f"[{np.quantile(acc, 0.05):.3f}, {np.quantile(acc, 0.95):.3f}] (min {acc.min():.3f}, max {acc.max():.3f}); "
              f"the bundled card: {rows[0]['test']:.3f}. Correlation of accuracy with the symmetry point: "
              f"{np.corrcoef([r['sp'] for r in rows[1:]], acc)[0, 1]:+.2f}.", ""]
    doc = REPO / "docs" / "results.md"
    text = doc.read_text()
    if START not in text and block != "sgd-ensemble":  # a new width: its block goes after the last ensemble block
        last = text.rfind(":end -->", 0, text.find("\nWhat it says")) + len(":end -->")
        text = text[:last] + f"\n\n{START}\n{END}" + text[last:]
    try:
        text = replace_marked_block(text, block, "\n".join(lines), str(doc))
    except EdgelearnError as exc:
        print("\n".join(lines))
        print(f"{exc}; printed instead", file=sys.stderr)
        return 2
    doc.write_text(text)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
