"""Fit a card to every measured trace, write the bundled cards and the tables in docs/devices.md.

    python tools/fit_cards.py [--traces ../shared/traces/lbe247] [--jobs 2] [--check]

Cards for ID161ZR15000 and ID170ZR5000 (every pulse width) go to traces/cards/; every trace's figures go to the
tables. Each card carries its out-of-sample figures (10-fold blocked cross-validation against a constant-step
baseline and the low-dimensional families, edgelearn.validation), its stable points and, for the bundled cards, the
symmetry point's interval over 20 refits on 70 % subsets. A trace with fewer pulses than 64 is fitted with fewer
nodes (never more fitted values than pulses). --check refits and fails if a committed card or the tables would
change (for reviewers).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgelearn.devices import DEFAULT_NODES, card_warnings, validate_card, width_label
from edgelearn.errors import EdgelearnWarning
from edgelearn.report import replace_marked_block
from edgelearn.traces import load_trace

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DEVICES = ("ID161ZR15000", "ID170ZR5000")
SP_RESAMPLES = 20
FAMILIES = ("constant", "soft-bounds", "power", "power-amplitude")


def nodes_for(pulses: int) -> int:
    """32 nodes, or the most of 16, 8, 4 whose 2 x nodes values do not exceed the pulses."""
    return next((k for k in (DEFAULT_NODES, 16, 8, 4) if 2 * k <= pulses), 4)


def fit_one(path: Path):
    from edgelearn.poly5 import fit_poly5
    from edgelearn.validation import fit_card

    warnings.simplefilter("ignore", EdgelearnWarning)
    t0 = time.perf_counter()
    trace = load_trace(path)
    pulses = int((~trace.anchors).sum())
    bundled = trace.meta.device_id in BUNDLED_DEVICES
    card = fit_card(trace, nodes=nodes_for(pulses), sp_resamples=SP_RESAMPLES if bundled else 0)
    poly5 = fit_poly5(trace).figures.nrmse
    return card, poly5, time.perf_counter() - t0


def keep_committed(card):
    """The refitted card, but with the committed card's model and base figures when the committed fit is as good: same
    conductance scale and a replay cost at most 1 % above the refit's. The replay objective is not convex and the
    optimiser's path depends on floating-point noise (another process or BLAS build): refits land 1e-13 to 1e-9 from
    the committed tables, and once (ID170ZR5000 2 us) in another local minimum 0.25 % lower in cost with tables up to
    5 % apart at weakly constrained nodes. Keeping the committed fit then keeps every result trained on it
    reproducible; a refit better by more than 1 % is written as fitted."""
    import numpy as np

    from edgelearn.devices import DeviceCard

    path = REPO / "traces" / "cards" / f"{card.card_id}.json"
    if not path.exists():
        return card
    old = DeviceCard.model_validate_json(path.read_text())
    same_scale = np.allclose([old.g_ref_s, old.g_min_s, old.g_max_s], [card.g_ref_s, card.g_min_s, card.g_max_s],
                             rtol=1e-9)
    old_cost, new_cost = old.provenance.fit.get("cost"), card.provenance.fit.get("cost")
    if not same_scale or old_cost is None or old_cost > 1.01 * new_cost:
        return card
    kept = card.model_copy(deep=True)
    kept.model, kept.g_ref_s, kept.g_min_s, kept.g_max_s = old.model, old.g_ref_s, old.g_min_s, old.g_max_s
    base = old.figures.model_dump(exclude_none=True)
    kept.figures = kept.figures.model_copy(update={k: v for k, v in base.items()
                                                   if k not in ("read_noise_w", "parameters", "out_of_sample",
                                                                "stable_points", "symmetry_interval")})
    kept.provenance.fit = dict(card.provenance.fit, cost=old_cost, evaluations=old.provenance.fit.get("evaluations"))
    if abs(old_cost - new_cost) > 1e-9 * old_cost:
        kept.provenance.fit["kept_committed_fit"] = f"refit cost {new_cost:.6g}, committed {old_cost:.6g}"
    from edgelearn.stability import stable_points

    kept.figures.stable_points = [p.to_dict() for p in stable_points(kept.model)]
    return kept


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


def prediction_table(cards, poly5) -> str:
    lines = ["| card | pulses | fitted values | in-sample nrmse | out of sample (folds) | constant steps (2) "
             "| soft bounds (2) | power (4) | power × amplitude (8) | poly5 in-sample | read noise (w) | stable points "
             "(basin share) | warnings |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for card in cards:
        f = card.figures
        o = f.out_of_sample or {}
        fam = o.get("families") or {}
        best = min([("card", o.get("nrmse"))] + [(k, v["out_of_sample_nrmse"]) for k, v in fam.items()],
                   key=lambda kv: kv[1] if kv[1] is not None else 9.9)[0]

        def cell(name, value):
            text = "-" if value is None else f"{value:.3f}"
            return f"**{text}**" if name == best else text

        stable = ", ".join(f"{p['w']:+.2f} ({p['basin_fraction']:.0%})" for p in f.stable_points or [])
        lines.append(
            f"| {card.card_id} | {f.n_pulses} | {f.parameters} | {f.nrmse:.4f} | {cell('card', o.get('nrmse'))} "
            f"({o.get('folds')}) | "
            + " | ".join(cell(k, fam.get(k, {}).get("out_of_sample_nrmse")) for k in FAMILIES)
            + f" | {poly5[card.card_id]:.4f} | {f.read_noise_w:.4f} | {stable} | {len(card_warnings(card))} |")
    return "\n".join(lines)


def amplitude_table(cards) -> str:
    """The amplitude-aware model (edgelearn.amplitude) beside the amplitude-blind card on the same folds."""
    import numpy as np

    lines = ["| card | pulses | fitted values (blind / aware) | in-sample nrmse, blind / aware | out of sample, blind "
             "/ aware (folds) | aware better by | v0 / vs up (V) | v0 / vs down (V) | measured |V| up; down | "
             "ramps identify it? |", "|---|---|---|---|---|---|---|---|---|---|"]
    blind, aware = [], []
    for card in cards:
        a, f = card.amplitude, card.figures
        if a is None:
            lines.append(f"| {card.card_id} | {f.n_pulses} | {f.parameters} / - | {f.nrmse:.4f} / - | - | - | - | - "
                         "| one amplitude per direction | - |")
            continue
        o = a.out_of_sample or {}
        b_oos, a_oos = o.get("blind_out_of_sample_nrmse"), o.get("out_of_sample_nrmse")
        if b_oos is not None and a_oos is not None:
            blind.append(b_oos)
            aware.append(a_oos)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"| {card.card_id} | {f.n_pulses} | {f.parameters} / {a.parameters} | {f.nrmse:.4f} / {a.nrmse:.4f} "
            f"| {fmt(b_oos)} / **{fmt(a_oos)}** ({o.get('folds', '-')}) "
            f"| {'-' if not (b_oos and a_oos) else f'{b_oos / a_oos:.2f}x'} "
            f"| {a.v0_up_v:.2f} / {a.vs_up_v:.3f} | {a.v0_down_v:.2f} / {a.vs_down_v:.3f} "
            f"| {a.range_up_v[0]:.2f}-{a.range_up_v[1]:.2f}; {a.range_down_v[0]:.2f}-{a.range_down_v[1]:.2f} "
            f"| {'yes' if a.identified else 'no (one-way ramps)'} |")
    if blind:
        lines.append(f"| **median over {len(blind)} traces** | | | | {np.median(blind):.3f} / "
                     f"**{np.median(aware):.3f}** | aware lower on {sum(x < y for x, y in zip(aware, blind))} of "
                     f"{len(blind)} | | | | |")
    return "\n".join(lines)


def interval_table(cards) -> str:
    lines = ["| card | symmetry point (full fit) | median of 20 refits | 90 % interval | simulated: median "
             "[90 %] | refits at a bound (±0.05) |", "|---|---|---|---|---|---|"]
    for card in cards:
        i = card.figures.symmetry_interval
        if not i:
            continue
        m = card.model
        at_bound = sum(1 for v in i["values"] if min(v - m.w_min, m.w_max - v) <= 0.05)
        lines.append(f"| {card.card_id} | {card.figures.symmetry_point:+.3f} | {i['median']:+.3f} | "
                     f"[{i['low']:+.3f}, {i['high']:+.3f}] | {i['simulated_median']:+.3f} [{i['simulated_low']:+.3f}, "
                     f"{i['simulated_high']:+.3f}] | {at_bound} of {i['resamples']} |")
    return "\n".join(lines)


def cross_run_table(cards, traces) -> str:
    """Every card replaying every other run of its device at its width (where a device/width has several runs)."""
    lines = ["| card (fitted on) | replays the run | nrmse, in-sample | nrmse, other run |", "|---|---|---|---|"]
    groups = {}
    for card in cards:
        groups.setdefault((card.device_id, card.pulse_width_s), []).append(card)
    for (_, _), group in sorted(groups.items()):
        for a, b in itertools.permutations(group, 2):
            report = validate_card(a, traces[b.provenance.source_file])
            lines.append(f"| {a.card_id} | {b.provenance.source_file} | {a.figures.nrmse:.4f} | {report.nrmse:.3f} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, block: str) -> str:
    return replace_marked_block(text, name, block, "docs/devices.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces" / "lbe247")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--check", action="store_true", help="fail if outputs would change")
    args = parser.parse_args()
    files = sorted(args.traces.glob("*.dat"))
    if not files:
        print(f"no .dat traces in {args.traces}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cards, poly5 = [], {}
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for path, (card, p5, wall) in zip(files, pool.map(fit_one, files)):
            cards.append(card)
            poly5[card.card_id] = p5
            o = card.figures.out_of_sample or {}
            a = (card.amplitude.out_of_sample or {}) if card.amplitude else {}
            print(f"{card.card_id:44s} eps={card.figures.granularity:.4f} sym={card.figures.symmetry_point:+.3f} "
                  f"nrmse={card.figures.nrmse:.4f} oos={o.get('nrmse') or float('nan'):.3f} ({o.get('folds')} folds) "
                  f"amplitude-aware oos={a.get('out_of_sample_nrmse') or float('nan'):.3f} {wall:.0f}s", flush=True)
    traces = {path.name: load_trace(path) for path in files}
    cards = sorted((keep_committed(c) if c.device_id in BUNDLED_DEVICES else c for c in cards),
                   key=lambda c: (c.device_id, c.pulse_width_s, c.card_id))
    outputs = {REPO / "traces" / "cards" / f"{c.card_id}.json": c.to_json() + "\n"
               for c in cards if c.device_id in BUNDLED_DEVICES}
    doc = REPO / "docs" / "devices.md"
    text = doc.read_text()
    text = replace_block(text, "devices-table", table(cards))
    text = replace_block(text, "prediction-table", prediction_table(cards, poly5))
    text = replace_block(text, "interval-table", interval_table(cards))
    text = replace_block(text, "amplitude-table", amplitude_table(cards))
    text = replace_block(text, "cross-run-table", cross_run_table(cards, traces))
    outputs[doc] = text
    changed = [p for p, content in outputs.items() if not p.exists() or p.read_text() != content]
    if args.check:
        for p in changed:
            print(f"would change: {p.relative_to(REPO)}", file=sys.stderr)
        return 1 if changed else 0
    for p, content in outputs.items():
        p.write_text(content)
    print(f"wrote {len(outputs) - 1} cards and docs/devices.md ({len(changed)} changed) in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
