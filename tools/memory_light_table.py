"""The memory-light training table of docs/algorithms.md: mixed precision at int32 / int16 / int8 and the transfer
algorithms (ttv2, c-ttv2, agad) next to plain SGD and the digital baseline, with test accuracy, the controller's
SRAM, pulses and energy, on a quick configuration (not the paper's grid: that is `edgelearn sweep run memory-light`).

    python tools/memory_light_table.py [--cards ID170ZR5000-20ns ID170ZR5000-200us] [--network 784-64-10]
        [--samples 6000] [--epochs 3] [--seeds 0 1] [--jobs 2] [--out DIR] [--print]
    python tools/memory_light_table.py --paper [--out out/memory-light-paper]     # the paper's network, 48k, 25 epochs
    python tools/memory_light_table.py --sweep DIR     # tabulate `edgelearn sweep run memory-light --out DIR`

Every run: batch 64, lr 0.5 (sgd and sp-shift 0.1, as the paper sweep), the transfer settings of the small grid in
docs/algorithms.md (METHODS, PER_CARD), with --paper a tenth of their transfer_lr, as
traces/sweeps/memory-light.toml; test accuracy on the 10,000 MNIST test images (out of sample), mean and range over
the seeds. Rewrites the block between the memory-light (with --paper memory-light-paper, with --sweep
memory-light-sweep) markers of docs/algorithms.md. With --out every run writes its directory there, and a finished
run (summary.json) is reused.
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

from edgelearn.energy import load_energy_model, report_run  # noqa: E402
from edgelearn.report import replace_marked_block  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "algorithms.md"
# (label, algorithm, extra config)
METHODS = [
    ("mp, χ int32", "mp", {}),
    ("mp, χ int16", "mp", {"pulses": {"chi_bits": 16}}),
    ("mp, χ int8", "mp", {"pulses": {"chi_bits": 8}}),
    ("ttv2, H int8", "ttv2", {"transfer": {"fast_lr": 10.0, "transfer_lr": 0.3}}),
    ("c-ttv2, H int8", "c-ttv2", {"transfer": {"fast_lr": 50.0, "transfer_lr": 0.3}}),
    ("agad, H int8", "agad", {"transfer": {"fast_lr": 50.0, "transfer_lr": 0.3}}),
    ("sgd", "sgd", {"lr": 0.1}),
    ("sp-shift", "sp-shift", {"lr": 0.1}),
    ("digital (float64)", "digital", {}),
]
TARGET = 0.95
# transfer settings per card where the 20 ns ones are not the best (a small grid at 200 us: 784-64-10, 6000 images,
# 2 epochs; its granularity, 0.14, is twice the 20 ns card's, and the fast array's lr follows)
# on the paper's network the grid's transfer_lr let the slow weights random-walk (docs/algorithms.md, "Why"): --paper
# and traces/sweeps/memory-light.toml use a tenth of it
PAPER_TRANSFER = 0.1
PER_CARD = {"ID170ZR5000-200us": {"ttv2": {"fast_lr": 100.0, "transfer_lr": 0.3},
                                  "c-ttv2": {"fast_lr": 100.0, "transfer_lr": 0.1},
                                  "agad": {"fast_lr": 100.0, "transfer_lr": 0.1}}}


def one(job):
    from edgelearn.train import TrainConfig, train

    label, algorithm, extra, card, args, seed = job
    fields = dict(algorithm=algorithm, network=args.network, epochs=args.epochs, batch_size=64, lr=0.5, seed=seed,
                  max_train_samples=args.samples, data_dir=args.data_dir)
    if algorithm != "digital":
        fields["card"] = card
    fields.update(extra)
    if algorithm in PER_CARD.get(card, {}):
        fields["transfer"] = dict(PER_CARD[card][algorithm])
    if args.paper and "transfer" in fields:  # the sweep spec's settings: a tenth of the grid's transfer_lr
        tenth = round(fields["transfer"]["transfer_lr"] * PAPER_TRANSFER, 12)
        fields["transfer"] = {**fields["transfer"], "transfer_lr": tenth}
    run_dir = None
    if args.out:
        slug = f"{card if algorithm != 'digital' else 'digital'}-{label}-seed{seed}"
        run_dir = Path(args.out) / "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in slug)
    if run_dir is not None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        resume = run_dir is not None and (run_dir / "checkpoint.npz").is_file()  # an interrupted run goes on
        result = train(TrainConfig(**fields), out=run_dir, progress=False, resume=resume,
                       overwrite=run_dir is not None and not resume)
        summary = json.loads(result.to_json())
    print(f"done: {label} {card} seed {seed}: {summary['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    return row_of(summary, label, card, seed, algorithm)


def row_of(summary: dict, label: str, card: str, seed: int, algorithm: str) -> dict:
    """One table row from a run's summary.json: accuracy, epochs to target, SRAM, pulses, energy."""
    epochs = summary["epochs"]
    row = dict(label=label, card=card if algorithm != "digital" else "-", seed=seed, test=summary["test_accuracy"],
               wall_s=summary["wall_s"],
               to_target=next((m["epoch"] for m in epochs if m["validation_accuracy"] >= TARGET), None))
    items = summary["memory"]["items"]
    row["state_bytes"] = sum(items.get(k, 0) for k in ("accumulator", "buffer", "transfer_state", "weights"))
    row["sram_bytes"] = summary["memory"]["total_bytes"]
    c = summary["counters"]
    row["pulses"] = c.get("pulses_up", 0) + c.get("pulses_down", 0)
    row["calibration"] = c.get("calibration_pulses_up", 0) + c.get("calibration_pulses_down", 0)
    if algorithm != "digital":
        for name in ("table", "schottky-bound"):
            r = report_run(summary, load_energy_model(name))
            row[f"programming_j[{name}]"] = r.components_j["programming"]
            row[f"calibration_j[{name}]"] = r.components_j.get("calibration", 0.0)
            row[f"total_j[{name}]"] = r.components_j["total"]
    return row


SWEEP_LABELS = {"mp": "mp, χ int32", "mp-int8": "mp, χ int8", "ttv2": "ttv2, H int8", "c-ttv2": "c-ttv2, H int8",
                "agad": "agad, H int8", "sgd": "sgd", "sp-shift": "sp-shift", "digital": "digital (float64)"}


def sweep_rows(out: Path) -> tuple[list, str]:
    """Rows of every finished run of a memory-light sweep directory, in the spec's order; and a note on how many
    runs are finished and their summed wall time."""
    try:
        keys = json.loads((out / "sweep.json").read_text())["runs"]
    except (OSError, ValueError, KeyError):
        raise SystemExit(f"memory_light_table: {out}: not a sweep directory (no readable sweep.json)") from None
    rows, wall = [], 0.0
    for key in keys:
        run = out / "runs" / key
        if not (run / "summary.json").is_file():
            continue
        axes = json.loads((run / "config.json").read_text())["axes"]
        summary = json.loads((run / "summary.json").read_text())
        algorithm = summary["config"]["algorithm"]
        label = SWEEP_LABELS.get(axes.get("method"), axes.get("method") or algorithm)
        rows.append(row_of(summary, label, axes.get("card") or "-", axes.get("seed", 0), algorithm))
        wall += summary["wall_s"]
    if not rows:
        raise SystemExit(f"memory_light_table: {out}: no finished runs yet")
    return rows, f"{len(rows)} of {len(keys)} runs finished, {wall / 3600:.1f} h of run time in all"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", nargs="+", default=["ID170ZR5000-20ns", "ID170ZR5000-200us"])
    parser.add_argument("--network", default="784-64-10")
    parser.add_argument("--samples", type=int, default=6000, help="the first N training images (default 6000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--out", help="write every run's directory here; finished runs are reused")
    parser.add_argument("--paper", action="store_true", help="the paper's network on all 48k images, 25 epochs, "
                        "seed 0 (about 40 minutes with two jobs)")
    parser.add_argument("--print", action="store_true", help="print the block instead of rewriting the doc")
    parser.add_argument("--sweep", metavar="DIR", help="tabulate the finished runs of a memory-light sweep "
                        "(`edgelearn sweep run memory-light --out DIR`) instead of running anything")
    args = parser.parse_args(argv)
    block_name = "memory-light"
    if args.paper:
        args.network, args.samples, args.epochs, args.seeds, block_name = "paper", None, 25, [0], "memory-light-paper"
    t0 = time.perf_counter()
    if args.sweep:
        rows, about = sweep_rows(Path(args.sweep))
        block_name = "memory-light-sweep"
        command = "edgelearn sweep run memory-light --out DIR && python tools/memory_light_table.py --sweep DIR"
        args.seeds = sorted({r["seed"] for r in rows})
        head = f"`{command}` ({about}): "
    else:
        jobs = []
        for card in args.cards:
            for label, algorithm, extra in METHODS:
                if algorithm == "digital" and card != args.cards[0]:
                    continue
                jobs += [(label, algorithm, extra, card, args, seed) for seed in args.seeds]
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one, jobs))
        command = "python tools/memory_light_table.py" + (" --paper" if args.paper else "")
        head = f"`{command}` ({time.perf_counter() - t0:.0f} s with {args.jobs} jobs on a 2-core machine): "
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["card"], r["label"]), []).append(r)
    samples = "all 48,000" if args.samples is None else f"the first {args.samples:,}"
    spread = "mean [min, max] over the seeds" if len(args.seeds) > 1 else "one seed: no interval"
    lines = [head + (f"network {args.network}, {samples} training images, {args.epochs} epochs, " if not args.sweep
                     else "the spec's runs (traces/sweeps/memory-light.toml: the paper's network, all 48,000 "
                          "training images, 25 epochs), ") +
             f"batch 64, seeds {', '.join(map(str, args.seeds))}; test accuracy on the 10,000 test images (out of "
             f"sample), {spread}. "
             f"Epochs to {TARGET:.0%} validation accuracy ('-': not reached). SRAM: the algorithm's own state (χ, H, "
             "chopper, references; the digital baseline's float32 weights) and the whole controller (with one "
             "batch's activations and deltas). Energy under the `table` model (the `schottky-bound` upper bound in "
             "brackets): training pulses, calibration pulses, and the whole run (converters, reads and digital work "
             "included).", "",
             f"| card | method | test accuracy | epochs to {TARGET:.0%} | algorithm SRAM | controller SRAM | pulses | "
             "calibration pulses | programming J | calibration J | total J |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def energy(rs, what):
        lo = np.mean([r.get(f"{what}_j[table]", np.nan) for r in rs])
        hi = np.mean([r.get(f"{what}_j[schottky-bound]", np.nan) for r in rs])
        return "-" if np.isnan(lo) else f"{lo:.3g} ({hi:.3g})"

    for (card, label), rs in groups.items():
        acc = [r["test"] for r in rs]
        hits = [r["to_target"] for r in rs]
        lines.append(f"| {card} | {label} | {np.mean(acc):.3f}"
                     + (f" [{min(acc):.3f}, {max(acc):.3f}]" if len(acc) > 1 else "") + " | "
                     + ", ".join("-" if h is None else str(h) for h in hits) + " | "
                     f"{rs[0]['state_bytes'] / 1024:,.1f} KiB | {rs[0]['sram_bytes'] / 1024:,.1f} KiB | "
                     f"{np.mean([r['pulses'] for r in rs]):,.0f} | {np.mean([r['calibration'] for r in rs]):,.0f} | "
                     f"{energy(rs, 'programming')} | {energy(rs, 'calibration')} | "
                     + ("-" if np.isnan(np.mean([r.get('total_j[table]', np.nan) for r in rs]))
                        else f"{np.mean([r['total_j[table]'] for r in rs]):.3g}") + " |")
    block = "\n".join(lines)
    if args.print:
        print(block)
        return 0
    DOC.write_text(replace_marked_block(DOC.read_text(encoding="utf-8"), block_name, block, str(DOC)),
                   encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)} ({len(rows)} runs, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
