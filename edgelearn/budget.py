"""Energy-budget estimation: what learning fits in a wearable's daily energy budget, and how long a battery lasts.

Per-step costs are counters measured once per (card, algorithm, network, batch size) by emulating a short stretch of
training on random inputs, then cached as JSON (in $EDGELEARN_CACHE_DIR, default ~/.cache/edgelearn), so a budget
answers in well under a second afterwards. The measured pulse count of a step is that of early training on random
data; give a finished run (`from_run`) for the counts of a real one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .algorithms import make_algorithm
from .devices import DeviceCard, bundled_cards, load_card
from .endurance import endurance_of, endurance_report
from .energy import EnergyModel, cost, unit_energies
from .errors import EdgelearnError
from .network import Network, parse_sizes
from .traces import write_atomically

CACHE_VERSION = 2  # 2: per-device pulse figures (device_pulses) for the endurance estimate
MEASURE_SAMPLES = 512


def cache_path() -> Path:
    return Path(os.environ.get("EDGELEARN_CACHE_DIR", Path.home() / ".cache" / "edgelearn")) / "step_costs.json"


def _measure(card: DeviceCard, algorithm: str, network: str, batch_size: int, lr: float, seed: int) -> dict:
    """Counters per learning sample and per inference, from MEASURE_SAMPLES emulated training samples."""
    algo = make_algorithm(algorithm)
    if algo.digital:
        raise EdgelearnError("the budget needs an analog algorithm (sgd, mp, sp-shift)")
    sizes = parse_sizes(network)
    net = Network(sizes, card=card, seed=seed, references=algo.references)
    calibration = algo.prepare(net)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.0, 1.0, (MEASURE_SAMPLES, sizes[0]))
    labels = rng.integers(0, sizes[-1], MEASURE_SAMPLES)
    devices_before = net.board.counters()
    before = devices_before.counts
    for start in range(0, MEASURE_SAMPLES, batch_size):
        _, _, grads = net.gradients(xs[start:start + batch_size], labels[start:start + batch_size])
        for layer, (inputs, deltas) in zip(net.layers, grads):
            algo.update(layer, inputs, deltas, lr)
    devices_after = net.board.counters()
    after = devices_after.counts
    learning = {k: (after[k] - before[k]) / MEASURE_SAMPLES for k in after}
    wear = endurance_report(devices_after.pulses_per_device_up - devices_before.pulses_per_device_up,
                            devices_after.pulses_per_device_down - devices_before.pulses_per_device_down,
                            1.0 / MEASURE_SAMPLES)  # per learning sample
    device_pulses = dict(devices=wear.devices, worst_device=wear.worst_device,
                         worst_per_learning_step=wear.pulses_per_day_worst,
                         mean_per_learning_step=wear.mean_pulses_per_day, samples=MEASURE_SAMPLES)
    before = after
    net.forward(xs[:batch_size])
    after = net.board.counters().counts
    inference = {k: (after[k] - before[k]) / batch_size for k in after}
    return dict(learning=learning, inference=inference, calibration=calibration, device_pulses=device_pulses)


def step_costs(card: DeviceCard, algorithm: str, network: str = "paper", batch_size: int = 1, lr: float | None = None,
               seed: int = 0) -> dict:
    """Counters per learning sample and per inference for this card and algorithm (cached)."""
    lr = lr if lr is not None else {"mp": 0.5}.get(algorithm, 0.1)
    key = f"{card.card_id}|{algorithm}|{network}|{batch_size}|{lr}|{seed}|v{CACHE_VERSION}"
    path = cache_path()
    cache = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except json.JSONDecodeError:
            cache = {}  # a damaged cache is only a cache: measure again and rewrite it
    if key not in cache:
        cache[key] = _measure(card, algorithm, network, batch_size, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(cache, indent=1))
    return cache[key]


@dataclass
class WidthOption:
    card_id: str
    pulse_width_s: float
    energy_per_learning_step_j: float
    learning_steps_per_day: int


@dataclass
class BudgetResult:
    """The answer of `edgelearn budget`; every field is documented in docs/energy.md."""

    card_id: str
    algorithm: str
    model: str
    network: str
    daily_budget_j: float
    windows_per_day: int
    batch_size: int  # samples per learning step
    energy_per_inference_j: float
    energy_per_learning_step_j: float
    learning_step_components_j: dict
    programming_share: float
    inference_energy_per_day_j: float
    learning_steps_per_day: int
    fits: bool
    best_pulse_width_s: float | None
    best_card_id: str | None
    widths: list
    battery_energy_j: float | None
    battery_life_days: float | None
    endurance: dict | None = None  # worst device's wear at learning_steps_per_day (None: no per-device counts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _learning_steps(budget_j: float, inference_day_j: float, step_j: float) -> int:
    spare = budget_j - inference_day_j
    return int(spare // step_j) if spare > 0 and step_j > 0 else 0


def estimate(card: DeviceCard, algorithm: str, daily_budget_j: float, model: EnergyModel, *,
             windows_per_day: int = 67_500, network: str = "paper", battery_mah: float | None = None,
             battery_v: float | None = None, compare_widths: bool = True, batch_size: int = 1) -> BudgetResult:
    """How much on-chip learning fits in the chip's daily energy budget (crossbar, converters and the controller's
    digital work at the model's unit energies; the whole wearable is edgelearn.system). Inference of every window is
    paid first (default: 2.56 s windows with 50 % overlap, 67 500 a day); the rest buys learning steps of
    `batch_size` labelled samples each. The battery lasts battery / max(budget, inference per day) days: the chip
    alone, a bound, not the wearable's battery life."""
    if daily_budget_j <= 0:
        raise EdgelearnError(f"--daily-budget must be positive, got {daily_budget_j} J")
    if windows_per_day < 0:
        raise EdgelearnError(f"--windows-per-day must not be negative, got {windows_per_day}")
    if batch_size < 1:
        raise EdgelearnError(f"--batch-size must be at least 1, got {batch_size}")
    if (battery_mah is None) != (battery_v is None):
        raise EdgelearnError("--battery-mah and --battery-v go together")

    def costs_for(c: DeviceCard):
        units = unit_energies(model, c)
        per = step_costs(c, algorithm, network, batch_size)
        learning = {k: v * batch_size for k, v in cost(per["learning"], units).items()}  # per sample x batch
        return learning, cost(per["inference"], units)

    learning, inference = costs_for(card)
    device_pulses = dict(step_costs(card, algorithm, network, batch_size).get("device_pulses") or {})
    if device_pulses:  # measured per learning sample; a step is batch_size samples
        device_pulses["worst_per_learning_step"] *= batch_size
        device_pulses["mean_per_learning_step"] *= batch_size
    inference_day = inference["total"] * windows_per_day
    steps = _learning_steps(daily_budget_j, inference_day, learning["total"])
    widths = []
    if compare_widths:
        same_device = sorted((load_card(p) for p in bundled_cards().values()), key=lambda c: c.pulse_width_s)
        for other in (c for c in same_device if c.device_id == card.device_id):
            other_learning, other_inference = costs_for(other)
            widths.append(WidthOption(other.card_id, other.pulse_width_s, other_learning["total"], _learning_steps(
                daily_budget_j, other_inference["total"] * windows_per_day, other_learning["total"])))
    best = max(widths, key=lambda w: w.learning_steps_per_day, default=None)
    battery_j = battery_mah * 1e-3 * 3600.0 * battery_v if battery_mah is not None else None
    return BudgetResult(
        card_id=card.card_id, algorithm=algorithm, model=model.name, network=network, daily_budget_j=daily_budget_j,
        windows_per_day=windows_per_day, batch_size=batch_size, energy_per_inference_j=inference["total"],
        energy_per_learning_step_j=learning["total"], learning_step_components_j=learning,
        programming_share=learning["programming"] / learning["total"] if learning["total"] else 0.0,
        inference_energy_per_day_j=inference_day, learning_steps_per_day=steps, fits=inference_day <= daily_budget_j,
        best_pulse_width_s=best.pulse_width_s if best else None, best_card_id=best.card_id if best else None,
        widths=[asdict(w) for w in widths], battery_energy_j=battery_j,
        battery_life_days=battery_j / max(daily_budget_j, inference_day) if battery_j is not None else None,
        endurance=_budget_endurance(device_pulses, steps, card))


def _budget_endurance(device_pulses: dict | None, steps_per_day: int, card: DeviceCard) -> dict | None:
    """The worst device's pulses per day at `steps_per_day` learning steps (its measured pulses per step, one pulse =
    one switching cycle; inference sends no pulse) and the days until it reaches its endurance."""
    if not device_pulses:
        return None
    cycles, source = endurance_of(card)
    per_day = device_pulses["worst_per_learning_step"] * steps_per_day
    return dict(devices=device_pulses["devices"], worst_device=device_pulses["worst_device"],
                worst_pulses_per_learning_step=device_pulses["worst_per_learning_step"],
                pulses_per_day_worst=per_day,
                mean_pulses_per_day=device_pulses["mean_per_learning_step"] * steps_per_day,
                endurance_cycles=cycles, endurance_source=source,
                lifetime_days=cycles / per_day if per_day > 0 else None)
