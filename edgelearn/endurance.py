"""Device endurance and lifetime from exact per-device pulse counts.

A ferroelectric device endures a finite number of switching cycles (a card's `endurance_cycles`, else
`devices.DEFAULT_ENDURANCE_CYCLES`, a typical literature figure for HZO devices: docs/devices.md, "Endurance").
Convention: **one programming pulse = one switching cycle**, whatever its polarity. This is conservative: an analog
update pulse switches only part of the polarisation, and a full up-down cycle is two pulses in this count.

The worst device is the one with the most pulses (up + down) in the counted stretch; its pulses scaled to a day give
the days until it reaches its endurance. Only the counted devices wear in this figure: callers pass the weight
devices' counters (`CounterReport.pulses_per_device_up/down`), and may append the reference devices'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .devices import DEFAULT_ENDURANCE_CYCLES, DeviceCard
from .errors import EdgelearnError


@dataclass
class EnduranceReport:
    """Wear of the worst device. `per_day_scale` turns the counted pulses into pulses per day (for a training run,
    where a day means nothing, it is 1 and the "per day" figures are per run: `lifetime_days` is then the number of
    such runs the worst device survives)."""

    devices: int
    worst_device: int  # flat index into the counted devices (row-major per tile, tiles concatenated)
    worst_device_pulses: int  # up + down pulses of the worst device in the counted stretch
    mean_device_pulses: float
    per_day_scale: float
    pulses_per_day_worst: float
    mean_pulses_per_day: float
    endurance_cycles: float
    endurance_source: str  # "card" or "default"
    lifetime_days: float | None  # None: the worst device received no pulse (no wear from this use)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, unit: str = "day") -> str:
        """One line: '<worst pulses per unit> / <lifetime>'."""
        life = "unlimited (no pulses)" if self.lifetime_days is None else f"{self.lifetime_days:.3g}"
        return f"{self.pulses_per_day_worst:.4g} / {life}"


def endurance_of(card: DeviceCard | None) -> tuple[float, str]:
    """(endurance in cycles, "card" or "default")."""
    if card is not None and card.endurance_cycles is not None:
        return float(card.endurance_cycles), "card"
    return DEFAULT_ENDURANCE_CYCLES, "default"


def endurance_report(pulses_up, pulses_down, per_day_scale: float = 1.0, endurance_cycles: float | None = None,
                     endurance_source: str | None = None) -> EnduranceReport:
    """Worst device's pulses (up + down), scaled by `per_day_scale` to a day, and the days until it reaches
    `endurance_cycles` (None: the default figure). Arrays of any shape; they are flattened."""
    up = np.asarray(pulses_up, np.int64).ravel()
    down = np.asarray(pulses_down, np.int64).ravel()
    if up.shape != down.shape:
        raise EdgelearnError(f"pulse counts up and down differ in length ({up.size} and {down.size})")
    if up.size == 0:
        raise EdgelearnError("no devices counted")
    if (up < 0).any() or (down < 0).any():
        raise EdgelearnError("pulse counts must not be negative")
    if not (math.isfinite(per_day_scale) and per_day_scale >= 0):
        raise EdgelearnError(f"per-day scale must be finite and not negative, got {per_day_scale}")
    if endurance_cycles is None:
        endurance_cycles, source = DEFAULT_ENDURANCE_CYCLES, "default"
    else:
        source = endurance_source or "card"
    if not (math.isfinite(endurance_cycles) and endurance_cycles > 0):
        raise EdgelearnError(f"endurance must be a finite positive number of cycles, got {endurance_cycles}")
    total = up + down
    worst = int(total.argmax())
    worst_pulses = int(total[worst])
    per_day = worst_pulses * per_day_scale
    mean = float(total.mean())
    return EnduranceReport(devices=int(total.size), worst_device=worst, worst_device_pulses=worst_pulses,
                           mean_device_pulses=mean, per_day_scale=float(per_day_scale),
                           pulses_per_day_worst=float(per_day), mean_pulses_per_day=mean * per_day_scale,
                           endurance_cycles=float(endurance_cycles), endurance_source=source,
                           lifetime_days=float(endurance_cycles / per_day) if per_day > 0 else None)


def counter_endurance(report, per_day_scale: float, card: DeviceCard | None) -> EnduranceReport:
    """endurance_report of a CounterReport's weight devices with the card's endurance (or the default)."""
    cycles, source = endurance_of(card)
    return endurance_report(report.pulses_per_device_up, report.pulses_per_device_down, per_day_scale, cycles, source)
