"""The energy-convergence trade-off across pulse widths, from finished training runs (no re-training).

    python tools/energy_tradeoff.py [--runs out/paper] [--algorithm mp] [--models schottky-bound capacitive table]

Reads RUNS/<card>/<algorithm>/summary.json (written by tools/reproduce_paper.py), re-costs each run under every
model, and writes the table between the markers of docs/energy.md and docs/energy_tradeoff.png (validation
accuracy vs cumulative programming energy, one curve per pulse width, log x).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgelearn.devices import width_label
from edgelearn.energy import load_energy_model, report_run

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(REPO / "out" / "paper"))
    parser.add_argument("--algorithm", default="mp")
    parser.add_argument("--models", nargs="+", default=["schottky-bound", "capacitive", "table"])
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()
    summaries = sorted(Path(args.runs).glob(f"*/{args.algorithm}/summary.json"))
    if not summaries:
        print(f"no {args.algorithm} runs under {args.runs}: run tools/reproduce_paper.py first", file=sys.stderr)
        return 2
    runs = sorted((json.loads(p.read_text()) for p in summaries), key=lambda s: s["card_id"])
    from edgelearn.devices import load_card

    runs.sort(key=lambda s: load_card(s["config"]["card"]).pulse_width_s)
    key = f"{args.target:.2f}"
    lines = [f"| model | pulse width | J per pulse (down / up) | J per update call | epochs to {args.target:.0%} "
             f"| pulses to {args.target:.0%} | programming J to {args.target:.0%} | programming J, all epochs |",
             "|---|---|---|---|---|---|---|---|"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.models), figsize=(5 * len(args.models), 4), squeeze=False)
    for ax, name in zip(axes[0], args.models):
        model = load_energy_model(name)
        for summary in runs:
            r = report_run(summary, model, targets=(args.target,))
            card = load_card(summary["config"]["card"])
            epoch = next((m["epoch"] for m in summary["epochs"] if m["validation_accuracy"] >= args.target), None)
            pulses = None if epoch is None else sum(m["pulses_up"] + m["pulses_down"] for m in summary["epochs"][:epoch])
            to_target = r.energy_to_target_j[key]
            lines.append(f"| {name} | {width_label(card.pulse_width_s)} | {r.units['pulse_down_j']:.2e} / "
                         f"{r.units['pulse_up_j']:.2e} | {r.programming_per_update_j:.2e} | {epoch} | "
                         f"{pulses if pulses is not None else '–'} | "
                         f"{'–' if to_target is None else f'{to_target:.2e}'} | {r.components_j['programming']:.2e} |")
            ax.plot(r.cumulative_programming_j, [m["validation_accuracy"] for m in summary["epochs"]], marker=".",
                    label=width_label(card.pulse_width_s))
        ax.set_xscale("log")
        ax.set_xlabel("cumulative programming energy (J)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{args.algorithm} under {name}")
        ax.set_ylim(0.5, 1.0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(REPO / "docs" / "energy_tradeoff.png", dpi=90)
    plt.close(fig)
    doc = REPO / "docs" / "energy.md"
    text = doc.read_text()
    start, end = "<!-- tradeoff:start -->", "<!-- tradeoff:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{start}\n" + "\n".join(lines) + f"\n{end}{tail}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
