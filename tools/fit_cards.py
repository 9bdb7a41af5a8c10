"""Fit a card to every measured trace, write the bundled cards and the table in docs/devices.md.

    python tools/fit_cards.py [--traces ../shared/traces/lbe247] [--check]

Cards for ID161ZR15000 and ID170ZR5000 (every pulse width) go to traces/cards/; every trace's figures go to the
table. --check refits and fails if a committed card or the table would change (for reviewers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgelearn.devices import fit_device, width_label
from edgelearn.traces import load_trace

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DEVICES = ("ID161ZR15000", "ID170ZR5000")


def table(cards) -> str:
    lines = [
        "| card | pulse width | pulses | ε (granularity) | symmetry point (tables / simulated) | measured there? "
        "| states | on/off | nrmse (all / up / down) | c2c σ | bundled |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for card in cards:
        f = card.figures
        lines.append(
            f"| {card.card_id} | {width_label(card.pulse_width_s)} | {f.n_pulses} | {f.granularity:.4f} "
            f"| {f.symmetry_point:+.3f} / {f.symmetry_point_simulated:+.3f} | {'yes' if f.symmetry_point_measured else 'no'} "
            f"| {f.n_states:.1f} | {f.on_off_ratio:.2f} | {f.nrmse:.4f} / {f.nrmse_up:.4f} / {f.nrmse_down:.4f} "
            f"| {card.model.dw_min_std:.2f} | {'yes' if card.device_id in BUNDLED_DEVICES else ''} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces" / "lbe247")
    parser.add_argument("--check", action="store_true", help="fail if outputs would change")
    args = parser.parse_args()
    files = sorted(args.traces.glob("*.dat"))
    if not files:
        print(f"no .dat traces in {args.traces}", file=sys.stderr)
        return 2
    cards = []
    for path in files:
        card = fit_device(load_trace(path))
        cards.append(card)
        print(f"{card.card_id:44s} eps={card.figures.granularity:.4f} sym={card.figures.symmetry_point:+.3f} "
              f"nrmse={card.figures.nrmse:.4f}")
    cards.sort(key=lambda c: (c.device_id, c.pulse_width_s, c.card_id))
    outputs = {REPO / "traces" / "cards" / f"{c.card_id}.json": c.to_json() + "\n"
               for c in cards if c.device_id in BUNDLED_DEVICES}
    doc = (REPO / "docs" / "devices.md")
    text = doc.read_text()
    start, end = "<!-- devices-table:start -->", "<!-- devices-table:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    outputs[doc] = f"{head}{start}\n{table(cards)}\n{end}{tail}"
    changed = [p for p, content in outputs.items() if not p.exists() or p.read_text() != content]
    if args.check:
        for p in changed:
            print(f"would change: {p.relative_to(REPO)}", file=sys.stderr)
        return 1 if changed else 0
    for p, content in outputs.items():
        p.write_text(content)
    print(f"wrote {len(outputs) - 1} cards and docs/devices.md ({len(changed)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
