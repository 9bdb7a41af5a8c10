"""Measure the C firmware on both core classes and write the figures where they are used: the per-CPU blocks of
docs/firmware.md and the [cycles] table of each bundled hardware profile (traces/profiles/*.toml), which the budget
uses for controller cycles. Needs the firmware extra (pip install ".[firmware]").

    python tools/firmware_tables.py            # rewrites docs/firmware.md and the bundled profiles
    python tools/firmware_tables.py --check    # exits 1 if any of them would change

Then `python tools/budget_tables.py` regenerates the budgets of docs/budget.md from the profiles.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgelearn.cli import firmware_table
from edgelearn.profiles import measured_cycles, profile_with_cycles
from edgelearn.report import replace_marked_block
from firmware_model.measure import measure

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "firmware.md"
# bundled profile -> the core class it is measured on
PROFILES = {"m4f-lowpower": "cortex-m4", "m33": "cortex-m33"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    doc = DOC.read_text(encoding="utf-8")
    writes: dict[Path, str] = {}
    for profile, cpu in PROFILES.items():
        result = measure(cpu)
        doc = replace_marked_block(doc, f"firmware-{cpu}", firmware_table(result), "python tools/firmware_tables.py")
        path = ROOT / "traces" / "profiles" / f"{profile}.toml"
        writes[path] = profile_with_cycles(path, measured_cycles(result))
        print(f"{cpu}: flash {result['sizes']['flash']:,} B; chi update "
              f"{result['operations']['mp_update_chi_per_cell']['cycles']:.0f} cycles/cell -> {path.name}")
    writes[DOC] = doc
    stale = [p for p, text in writes.items() if p.read_text(encoding="utf-8") != text]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)} (python tools/firmware_tables.py)", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(writes[p], encoding="utf-8")
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in stale) or 'nothing (all up to date)'} "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
