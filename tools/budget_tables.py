"""The whole-system breakdowns of docs/budget.md: the default stream network (measured by `edgelearn run`) and the
paper's 784-256-128-10 network (quick estimate), each on the two bundled profiles, and the quick estimate of the
stream network next to its measured run.

    python tools/budget_tables.py            # rewrites the block between the budget-tables markers of docs/budget.md
    python tools/budget_tables.py --print    # prints it instead
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgelearn.continual import load_run_config, run_stream
from edgelearn.energy import BUILTIN_MODELS
from edgelearn.profiles import CycleTable, load_profile
from edgelearn.system import TERM_NAMES, TERMS, quick_estimate, system_budget, workload_from_run

DOC = Path(__file__).resolve().parent.parent / "docs" / "budget.md"
START, END = "<!-- budget-tables:start -->", "<!-- budget-tables:end -->"
PROFILES = ("m4f-lowpower", "m33")


def _models(first: str) -> list[str]:
    return [first] + [m for m in BUILTIN_MODELS if m != first]


def _column(b) -> dict:
    rows = {TERM_NAMES[t]: f"{b.terms_j_per_day[t]:.3g} ({b.terms_j_per_day[t] / b.total_j_per_day:.1%})"
            for t in TERMS}
    rows["**total per day**"] = f"**{b.total_j_per_day:.3g} J** ({b.average_power_w * 1e6:.0f} µW)"
    rows["dominant term"] = f"{TERM_NAMES[b.dominant_term]} ({b.dominant_share:.0%})"
    rows["battery life"] = (f"{b.battery_life_days:.1f} days ({b.battery_energy_j:,.0f} J)"
                            if b.battery_life_days is not None else "-")
    band = b.band
    lo, hi = band["term_ranges"].get(band["driver"], [0, 0]) if band["driver"] else (0, 0)
    rows["band over the 3 energy models"] = (f"{band['min_j_per_day']:.4g} .. {band['max_j_per_day']:.4g} J; "
                                             f"{TERM_NAMES[band['driver']]} {lo:.2g} .. {hi:.2g} J"
                                             if band["driver"] else "no spread")
    rows["windows / learning steps per day"] = f"{b.windows_per_day:,.0f} / {b.learning_steps_per_day:,.0f}"
    rows["controller duty cycle"] = f"{b.duty_cycle:.3%} ({b.active_s_per_day:.1f} s/day)"
    rows["chip (counters × energy model, J/day)"] = f"{b.chip_j_per_day:.3g}"
    rows["pre-training, once"] = (f"{b.pretraining_once_j:.3g} J" if b.pretraining_once_j is not None
                                  else "not in a quick estimate")
    e = b.endurance
    rows["worst device: pulses/day, lifetime"] = (
        "-" if not e else f"{e['pulses_per_day_worst']:.3g}, "
        + ("unlimited" if e["lifetime_days"] is None else f"{e['lifetime_days'] / 365.25:.3g} years"))
    rows["memory"] = b.memory["message"] if b.memory else "-"
    return rows


def _table(columns: dict[str, dict]) -> list[str]:
    names = list(columns)
    keys = list(next(iter(columns.values())))
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += ["| " + k + " | " + " | ".join(str(columns[n][k]) for n in names) + " |" for k in keys]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the block instead of rewriting docs/budget.md")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    config = load_run_config(None)
    run = json.loads(run_stream(config, progress=False).to_json())
    stream = workload_from_run(run, "edgelearn run (default stream, measured)")
    columns = {}
    for name in PROFILES:
        columns[f"stream 30-32-4, mp, `{name}`"] = _column(system_budget(stream, load_profile(name),
                                                                         _models(config.energy_model)))
    for name in PROFILES:
        profile = load_profile(name)
        paper = quick_estimate("ID170ZR5000-20ns", "mp", "paper", batch_size=8, label_rate=0.1,
                               rate_hz=profile.imu.odr_hz, channels=6, energy_model=config.energy_model)
        columns[f"paper 784-256-128-10, mp, `{name}` (quick estimate)"] = _column(
            system_budget(paper, profile, _models(config.energy_model)))
    geo = run["geometry"]
    quick = quick_estimate(config.card, config.algorithm, "-".join(map(str, geo["sizes"])),
                           batch_size=config.replay_batch, label_rate=config.label_rate, rate_hz=geo["rate_hz"],
                           channels=geo["channels"], window_s=config.frontend.window_s,
                           overlap=config.frontend.overlap, energy_model=config.energy_model)
    m4f = load_profile(PROFILES[0])
    measured_b = system_budget(stream, m4f, [config.energy_model])
    quick_b = system_budget(quick, m4f, [config.energy_model])
    lines = [START, "", f"`python tools/budget_tables.py` (seed 0; {time.perf_counter() - t0:.0f} s on a 2-core "
             "machine). Energy model of the headline: the run's (`table`); the band spans `table`, `schottky-bound` "
             "and `capacitive`. Percentages are shares of the day's total.", ""]
    lines += _table(columns)
    lines += ["", "The quick estimate of the same stream network (random inputs, batch "
              f"{config.replay_batch}, label rate {config.label_rate}, {geo['rate_hz']:g} Hz, {geo['channels']} "
              "channels) next to the measured run, on `m4f-lowpower`:", "",
              "| | measured run | quick estimate | ratio |", "|---|---|---|---|"]
    for label, a, b in (("learning steps per day", measured_b.learning_steps_per_day, quick_b.learning_steps_per_day),
                        ("programming pulses per day", measured_b.counts_per_day["pulses_up"]
                         + measured_b.counts_per_day["pulses_down"], quick_b.counts_per_day["pulses_up"]
                         + quick_b.counts_per_day["pulses_down"]),
                        ("chip J per day", measured_b.chip_j_per_day, quick_b.chip_j_per_day),
                        ("MCU active J per day", measured_b.terms_j_per_day["mcu_active"],
                         quick_b.terms_j_per_day["mcu_active"]),
                        ("total J per day", measured_b.total_j_per_day, quick_b.total_j_per_day)):
        lines.append(f"| {label} | {a:.4g} | {b:.4g} | {b / a if a else float('nan'):.2f} |")
    lines += ["", "Controller cycles: the bundled profiles' measured table (docs/firmware.md) next to the hand estimate it "
              "replaced (`CycleTable()` defaults, docs/budget.md), on the measured stream:", "",
              "| profile | cycles | MCU active (J/day) | front end (J/day) | duty cycle | total (J/day) | battery (days) |",
              "|---|---|---|---|---|---|---|"]
    for name in PROFILES:
        profile = load_profile(name)
        for label, p in (("measured", profile), ("estimate", profile.model_copy(update={"cycles": CycleTable()}))):
            b = system_budget(stream, p, [config.energy_model])
            lines.append(f"| `{name}` | {label} | {b.terms_j_per_day['mcu_active']:.3g} | "
                         f"{b.terms_j_per_day['front_end']:.3g} | {b.duty_cycle:.3%} | {b.total_j_per_day:.4g} | "
                         f"{b.battery_life_days:.1f} |")
    lines += ["", END]
    block = "\n".join(lines)
    if args.print:
        print(block)
        return 0
    text = DOC.read_text()
    if START not in text or END not in text:
        print(f"{DOC}: the markers {START} / {END} are missing", file=sys.stderr)
        return 2
    DOC.write_text(text[:text.index(START)] + block + text[text.index(END) + len(END):])
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
