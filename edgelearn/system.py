"""The wearable as a whole system: energy per day by term, battery life, the energy-model band, wear and memory.

Every figure is a count per day times a documented unit cost (docs/budget.md):
- crossbar terms (array_reads, converters, programming, calibration): counters x the energy model's unit energies
  (edgelearn.energy.cost);
- controller terms (front_end, mcu_active): operations x cycles per operation (the profile's [cycles] table) x energy
  per cycle (run current per MHz x supply); mcu_sleep: sleep current x supply x the rest of the day;
- sensor: the IMU's current at its data rate x its supply x 24 h.
The energy model's digital unit energies (mac_j, accumulator_update_j, rng_draw_j: a custom controller in 45 nm) are
not used here: on a wearable that work runs on the profile's microcontroller and is costed in its cycles.

What happens in a day comes from a `Workload`, one of three:
- `workload_from_run(summary)`: a finished `edgelearn run`: its learning arm's counters per streamed window times the
  windows of a day (the run's own `energy_per_day_j` uses the same definition);
- `workload_from_config(config)`: runs the stream of a RunConfig exactly as `edgelearn run` does, then the above;
- `quick_estimate(...)`: counters of a short random-input training stretch (edgelearn.budget.step_costs) at a given
  batch size and label rate: a quick estimate, labelled as such in every output.
`system_budget(workload, profile, models)` turns one into a `SystemBudget`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .devices import DeviceCard, load_card
from .endurance import endurance_of
from .energy import cost, load_energy_model, model_band, unit_energies
from .errors import EdgelearnError, InputError, read_text_file
from .memory import MemoryReport, memory_footprint
from .profiles import HardwareProfile

DAY_S = 86_400.0
QUICK_ESTIMATE = "quick estimate (random inputs)"

# term -> energy.cost components it sums (crossbar terms, under an energy model)
CHIP_TERMS = {"array_reads": ("array_reads",), "converters": ("dac", "adc"), "programming": ("programming",),
              "calibration": ("calibration",)}
TERMS = ("sensor", "front_end", "mcu_active", "mcu_sleep", *CHIP_TERMS)
TERM_NAMES = {"sensor": "sensor (IMU)", "front_end": "front end (MCU)", "mcu_active": "MCU active",
              "mcu_sleep": "MCU sleep", "array_reads": "array reads", "converters": "converters (DAC + ADC)",
              "programming": "programming", "calibration": "calibration"}
# controller counter -> cycle-table operation (MCU active)
COUNTER_CYCLES = {"mvm_forward": "mvm_pass", "mvm_backward": "mvm_pass", "dac_conversions": "dac_code",
                  "adc_conversions": "adc_code", "digital_macs": "mac", "accumulator_updates": "chi_update",
                  "rng_draws": "rng_draw", "pulses_up": "pulse", "pulses_down": "pulse",
                  "calibration_pulses_up": "pulse", "calibration_pulses_down": "pulse", "device_reads": "device_read",
                  "updates": "update_call"}
FRONT_END_OPS = ("wake", "sample_read", "feature_sample", "feature_channel", "normalise_feature")


@dataclass
class Workload:
    """What the wearable does in a day: windows and learning steps, the crossbar's and controller's counters per day,
    the front end's geometry, and what happens once (pre-training at the factory)."""

    source: str  # "run summary PATH", "run config NAME (measured)" or QUICK_ESTIMATE
    card: str  # card file or bundled name, as the run gave it
    card_id: str
    algorithm: str
    sizes: list
    energy_model: str  # the run's energy model (the primary model unless others are asked for)
    windows_per_day: float
    learning_steps_per_day: float
    counts_per_day: dict  # counter name -> events per day
    rate_hz: float  # sensor samples per second and channel
    channels: int
    window_samples: int
    frontend_mode: str  # "features" or "raw"
    inputs: int  # network inputs per window (normalised)
    measured: dict  # what the day was scaled from: windows, learning steps, stream seconds
    pretrain_counts: dict | None = None  # counters of the factory's on-chip work (calibration, pre-training), once
    worst_device_pulses_per_day: float | None = None
    mean_device_pulses_per_day: float | None = None
    devices: int | None = None
    memory: dict | None = None  # a MemoryReport dict
    notes: list = field(default_factory=list)


@dataclass
class SystemBudget:
    """A day of the wearable under one profile; every field is documented in docs/budget.md."""

    source: str
    profile: str
    profile_typical: bool
    card_id: str
    algorithm: str
    sizes: list
    energy_model: str
    windows_per_day: float
    learning_steps_per_day: float
    counts_per_day: dict
    operations_per_day: dict  # cycle-table operation -> count per day
    cycles_per_day: dict  # "front_end", "mcu_active", and per operation
    active_s_per_day: float
    duty_cycle: float
    energy_per_cycle_j: float
    terms_j_per_day: dict  # TERMS -> J per day under energy_model
    total_j_per_day: float
    average_power_w: float
    dominant_term: str
    dominant_share: float
    chip_j_per_day: float  # the run's own energy_per_day_j: all counters under the energy model (digital included)
    pretraining_once_j: float | None
    pretraining_days: float | None  # pre-training energy in days of the daily total
    battery_energy_j: float | None
    battery_life_days: float | None
    band: dict  # per selected model: total J per day; min, max, ratio, and the term that drives the spread
    endurance: dict | None
    memory: dict | None
    cycle_source: str
    pulse_time_s_per_day: float  # pulses x pulse width: an upper bound of the array's programming time
    notes: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# -- workloads -------------------------------------------------------------------------------------------------------

def _require(summary: dict, keys, where: str) -> None:
    for key in keys:
        if key not in summary:
            raise InputError(where, "missing (not a summary.json of `edgelearn run`, or one written before "
                                    "edgelearn recorded the stream's geometry: run it again)", field=key)


def read_run_summary(path: str | Path) -> dict:
    """A summary.json of `edgelearn run`, or a one-line InputError."""
    text = read_text_file(path, "run summary (summary.json of edgelearn run)")
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(summary, dict):
        raise InputError(path, "expected a JSON object (a summary.json of edgelearn run)")
    if "epochs" in summary and "windows" not in summary:
        raise InputError(path, "a summary of `edgelearn train` (MNIST epochs), not of `edgelearn run`: cost a training "
                               "run with `edgelearn energy`")
    _require(summary, ("config", "card_id", "counters", "windows", "learning_steps", "geometry"), str(path))
    return summary


def workload_from_run(summary: dict, source: str = "run summary") -> Workload:
    """The day of a finished `edgelearn run` (RunResult as a dict, or its summary.json): the learning arm's counters
    per streamed window times the windows of a day; learning steps per day likewise (measured, not label_rate x
    windows). Pre-training counters are kept for the once-only figure."""
    _require(summary, ("config", "card_id", "counters", "windows", "learning_steps", "geometry"), source)
    geo, config = summary["geometry"], summary["config"]
    windows = int(summary["windows"])
    if windows < 1:
        raise InputError(source, "the run streamed no window: nothing to scale to a day", field="windows")
    per_day = float(geo["windows_per_day"])
    scale = per_day / windows
    counts = {k: float(v) * scale for k, v in summary["counters"].items()}
    notes = []
    pre = summary.get("pretrain") or {}
    if pre.get("mode") == "digital":
        notes.append("digital pre-training: the weights were programmed at the factory without counted pulses; "
                     "pre-training energy covers only the counted on-chip work")
    e = summary.get("endurance") or {}
    worst = e.get("worst_device_pulses")
    return Workload(
        source=source, card=config.get("card") or summary["card_id"], card_id=summary["card_id"],
        algorithm=config.get("algorithm", "mp"), sizes=list(geo["sizes"]),
        energy_model=config.get("energy_model", "table"), windows_per_day=per_day,
        learning_steps_per_day=float(summary["learning_steps"]) * scale, counts_per_day=counts,
        rate_hz=float(geo["rate_hz"]), channels=int(geo["channels"]), window_samples=int(geo["window_samples"]),
        frontend_mode=geo.get("mode", "features"), inputs=int(geo["sizes"][0]),
        measured=dict(windows=windows, learning_steps=int(summary["learning_steps"]),
                      stream_seconds=summary.get("stream_seconds")),
        pretrain_counts=pre.get("counters"),
        worst_device_pulses_per_day=None if worst is None else float(worst) * scale,
        mean_device_pulses_per_day=None if e.get("mean_device_pulses") is None else
        float(e["mean_device_pulses"]) * scale,
        devices=e.get("devices"), memory=summary.get("memory") or None, notes=notes)


def workload_from_config(config, progress: bool = False, source: str | None = None, profile=None,
                         require_fit: bool = False) -> Workload:
    """Run the stream of a RunConfig exactly as `edgelearn run` does (pre-training, control and learning arms) and
    return its day (profile and require_fit: the memory verdict, as run_stream)."""
    from .continual import run_stream

    result = run_stream(config, progress=progress, profile=profile, require_fit=require_fit)
    return workload_from_run(asdict(result), source or "run config (measured)")


def check_quick_options(batch_size: int, label_rate: float, rate_hz: float, channels: int,
                        windows_per_day: float | None) -> None:
    """The quick estimate's settings, each checked with a one-line error naming its `edgelearn budget` option."""
    for option, value, ok, expected in (
            ("--batch-size", batch_size, batch_size >= 1, "must be at least 1"),
            ("--label-rate", label_rate, 0.0 <= label_rate <= 1.0, "must be between 0 and 1"),
            ("--channels", channels, channels >= 1, "must be at least 1"),
            ("--rate-hz", rate_hz, math.isfinite(rate_hz) and 0.0 < rate_hz <= 100_000.0,
             "must be above 0 and at most 100000"),
            ("--windows-per-day", windows_per_day, windows_per_day is None or windows_per_day >= 0,
             "must not be negative")):
        if not ok:
            raise EdgelearnError(f"{option} {expected}, got {value}")


def quick_estimate(card: DeviceCard | str, algorithm: str = "mp", network: str = "paper", *, batch_size: int = 1,
                   label_rate: float = 0.1, learning_steps_per_day: float | None = None, rate_hz: float = 100.0,
                   channels: int = 6, window_s: float = 2.56, overlap: float = 0.5,
                   windows_per_day: float | None = None, energy_model: str = "schottky-bound") -> Workload:
    """A day from counters of random-input training (edgelearn.budget.step_costs, measured once and cached): every
    window is inferred, label_rate of them (or `learning_steps_per_day`) start a learning step of `batch_size`
    samples. The front end cuts `window_s` windows with `overlap` from `channels` at `rate_hz` (windows_per_day:
    86 400 s / hop unless given). Labelled a quick estimate: pulse counts of early training on random data stand in
    for a stream's."""
    from .budget import step_costs
    from .network import parse_sizes

    from .stream import FrontEndConfig

    check_quick_options(batch_size, label_rate, rate_hz, channels, windows_per_day)
    card = load_card(card) if isinstance(card, (str, Path)) else card
    length, hop = FrontEndConfig(window_s=window_s, overlap=overlap).geometry(rate_hz)
    per_day = DAY_S * rate_hz / hop if windows_per_day is None else float(windows_per_day)
    steps = per_day * label_rate if learning_steps_per_day is None else float(learning_steps_per_day)
    per = step_costs(card, algorithm, network, batch_size)
    counts = {k: per["inference"].get(k, 0) * per_day + per["learning"].get(k, 0) * batch_size * steps
              for k in per["learning"]}
    sizes = parse_sizes(network)
    dp = per.get("device_pulses") or {}
    worst = dp.get("worst_per_learning_step")
    return Workload(
        source=f"{QUICK_ESTIMATE}, batch {batch_size}", card=card.card_id, card_id=card.card_id,
        algorithm=algorithm, sizes=list(sizes), energy_model=energy_model, windows_per_day=per_day,
        learning_steps_per_day=steps, counts_per_day=counts, rate_hz=float(rate_hz), channels=int(channels),
        window_samples=length, frontend_mode="features", inputs=int(sizes[0]),
        measured=dict(random_samples=dp.get("samples"), batch_size=batch_size),
        pretrain_counts=None,
        worst_device_pulses_per_day=None if worst is None else worst * batch_size * steps,
        mean_device_pulses_per_day=None if dp.get("mean_per_learning_step") is None else
        dp["mean_per_learning_step"] * batch_size * steps, devices=dp.get("devices"),
        memory=memory_footprint(sizes, algorithm, batch=batch_size).to_dict(),
        notes=["quick estimate: per-step counts of early training on random inputs (batch "
               f"{batch_size}), not a stream's; use --from-run or --config for a run's own figures"])


# -- the budget ------------------------------------------------------------------------------------------------------

def _card_of(w: Workload) -> DeviceCard:
    """The workload's card: as the run named it (a file or a bundled name), else the bundled card of its id."""
    for name in dict.fromkeys((w.card, w.card_id)):
        try:
            card = load_card(name)
        except EdgelearnError:
            continue
        if card.card_id == w.card_id:
            return card
    raise EdgelearnError(f"card {w.card_id} of this run is neither at {w.card} nor bundled: run the budget where the "
                         "run's card file is")


def operations_per_day(w: Workload) -> dict:
    """Cycle-table operations per day: the controller's counters, and the front end's work on the sensor stream
    (every sample read once from the FIFO; every window woken for, its samples summed per channel, its channels
    finished, its inputs normalised; raw mode copies its inputs instead of computing features)."""
    ops = {name: 0.0 for name in ("mvm_pass", "dac_code", "adc_code", "mac", "chi_update", "rng_draw", "pulse",
                                  "device_read", "update_call", *FRONT_END_OPS)}
    for counter, op in COUNTER_CYCLES.items():
        ops[op] += w.counts_per_day.get(counter, 0.0)
    n = w.windows_per_day
    ops["wake"] = n
    ops["sample_read"] = w.rate_hz * DAY_S * w.channels
    if w.frontend_mode == "raw":
        ops["feature_sample"] = n * w.inputs
    else:
        ops["feature_sample"] = n * w.window_samples * w.channels
        ops["feature_channel"] = n * w.channels
    ops["normalise_feature"] = n * w.inputs
    return ops


def _chip_terms(counts: dict, units) -> dict:
    components = cost(counts, units)
    return {term: sum(components[c] for c in parts) for term, parts in CHIP_TERMS.items()}


def system_budget(w: Workload, profile: HardwareProfile, models=None, card: DeviceCard | None = None,
                  battery_mah: float | None = None, battery_v: float | None = None) -> SystemBudget:
    """A day of workload `w` on `profile`: energy per term (under the first of `models`, default the workload's own
    energy model), the band over all of `models`, battery life (the profile's battery, or battery_mah / battery_v),
    the controller's duty cycle, the worst device's wear and the memory verdict."""
    if (battery_mah is None) != (battery_v is None):
        raise EdgelearnError("--battery-mah and --battery-v go together")
    card = card if card is not None else _card_of(w)
    names = list(models) if models else [w.energy_model]
    energy_models = [load_energy_model(m) if isinstance(m, str) else m for m in names]
    cycles = profile.cycles
    per_cycle = profile.energy_per_cycle_j
    ops = operations_per_day(w)
    op_cycles = {op: count * getattr(cycles, op) for op, count in ops.items()}
    front = sum(op_cycles[op] for op in FRONT_END_OPS)
    active_cycles = sum(v for op, v in op_cycles.items() if op not in FRONT_END_OPS)
    active_s = (front + active_cycles) / profile.mcu.clock_hz
    notes = list(w.notes)
    if active_s > DAY_S:
        notes.append(f"the controller cannot keep up: it needs {active_s:,.0f} s of work per day at "
                     f"{profile.mcu.clock_hz / 1e6:g} MHz (a day has 86,400 s); sleep is counted as 0")
    sleep_s = max(0.0, DAY_S - active_s)
    fixed = {"sensor": (profile.imu.current_a * profile.imu.supply_v * DAY_S) if profile.imu else 0.0,
             "front_end": front * per_cycle, "mcu_active": active_cycles * per_cycle,
             "mcu_sleep": profile.mcu.sleep_current_a * profile.mcu.supply_v * sleep_s}
    if profile.imu is None:
        notes.append(f"the profile {profile.name} has no IMU: the sensor is not counted")
    elif abs(profile.imu.odr_hz - w.rate_hz) > 0.05 * w.rate_hz:
        notes.append(f"the profile's IMU figure is at {profile.imu.odr_hz:g} Hz, the stream samples at "
                     f"{w.rate_hz:g} Hz: the sensor term is the profile's figure (give a profile with your IMU's "
                     "current at your rate)")
    per_model, primary = {}, None
    for model in energy_models:
        units = unit_energies(model, card)
        terms = {**fixed, **_chip_terms(w.counts_per_day, units)}
        per_model[model.name] = dict(terms, total=sum(terms.values()))
        if primary is None:
            primary, primary_units = terms, units
    total = sum(primary.values())
    spread = model_band(per_model)
    band = dict(models=spread["models"], min_j_per_day=spread["min_j"], max_j_per_day=spread["max_j"],
                ratio=spread["ratio"], driver=spread["driver"], term_ranges=spread["component_ranges_j"])
    dominant = max(primary, key=primary.get)
    pretrain_j = pretrain_days = None
    if w.pretrain_counts:
        pc = w.pretrain_counts
        pre_cycles = sum(pc.get(counter, 0) * getattr(cycles, op) for counter, op in COUNTER_CYCLES.items())
        pretrain_j = sum(_chip_terms(pc, primary_units).values()) + pre_cycles * per_cycle
        pretrain_days = pretrain_j / total if total > 0 else None
    elif w.source.startswith(QUICK_ESTIMATE):
        notes.append("pre-training is not part of a quick estimate")
    if battery_mah is not None:
        battery_j = battery_mah * 1e-3 * 3600.0 * battery_v
    else:
        battery_j = profile.battery.energy_j if profile.battery is not None else None
    pulses = w.counts_per_day.get("pulses_up", 0.0) + w.counts_per_day.get("pulses_down", 0.0) + \
        w.counts_per_day.get("calibration_pulses_up", 0.0) + w.counts_per_day.get("calibration_pulses_down", 0.0)
    endurance = None
    if w.worst_device_pulses_per_day is not None:
        cycles_end, source = endurance_of(card)
        per_day = w.worst_device_pulses_per_day
        endurance = dict(devices=w.devices, pulses_per_day_worst=per_day,
                         mean_pulses_per_day=w.mean_device_pulses_per_day, endurance_cycles=cycles_end,
                         endurance_source=source, lifetime_days=cycles_end / per_day if per_day > 0 else None)
    memory = None
    if w.memory:
        memory = MemoryReport(**w.memory).check(profile).to_dict()
    return SystemBudget(
        source=w.source, profile=profile.name, profile_typical=profile.typical, card_id=w.card_id,
        algorithm=w.algorithm, sizes=list(w.sizes), energy_model=energy_models[0].name,
        windows_per_day=w.windows_per_day, learning_steps_per_day=w.learning_steps_per_day,
        counts_per_day=dict(w.counts_per_day), operations_per_day=ops,
        cycles_per_day=dict(front_end=front, mcu_active=active_cycles, **op_cycles), active_s_per_day=active_s,
        duty_cycle=active_s / DAY_S, energy_per_cycle_j=per_cycle, terms_j_per_day=primary, total_j_per_day=total,
        average_power_w=total / DAY_S, dominant_term=dominant,
        dominant_share=primary[dominant] / total if total > 0 else 0.0,
        chip_j_per_day=cost(w.counts_per_day, primary_units)["total"], pretraining_once_j=pretrain_j,
        pretraining_days=pretrain_days, battery_energy_j=battery_j,
        battery_life_days=battery_j / total if battery_j is not None and total > 0 else None, band=band,
        endurance=endurance, memory=memory, cycle_source=cycles.source,
        pulse_time_s_per_day=pulses * card.pulse_width_s, notes=notes)


def breakdown_rows(b: SystemBudget) -> dict:
    """The budget as table rows (label -> text), largest term first, the dominant one named."""
    rows = {"source": b.source, "profile": f"{b.profile}" + (" (typical figures)" if b.profile_typical else ""),
            "card / algorithm / network": f"{b.card_id} / {b.algorithm} / {'-'.join(map(str, b.sizes))}",
            "windows per day / learning steps per day": f"{b.windows_per_day:,.0f} / {b.learning_steps_per_day:,.0f}",
            "controller duty cycle": f"{b.duty_cycle:.3%} ({b.active_s_per_day:.1f} s active per day; cycles: "
                                     f"{b.cycle_source})"}
    for term in sorted(b.terms_j_per_day, key=b.terms_j_per_day.get, reverse=True):
        value = b.terms_j_per_day[term]
        share = value / b.total_j_per_day if b.total_j_per_day else 0.0
        rows[f"  {TERM_NAMES[term]} (J/day)"] = f"{value:.3e}  {share:6.1%}"
    rows[f"total per day (J, {b.energy_model})"] = (f"{b.total_j_per_day:.3e} = {b.average_power_w * 1e6:.1f} uW "
                                                    f"average; dominant: {TERM_NAMES[b.dominant_term]} "
                                                    f"({b.dominant_share:.0%})")
    band = b.band
    if len(band["models"]) > 1:
        text = f"{band['min_j_per_day']:.3e} .. {band['max_j_per_day']:.3e} ({', '.join(band['models'])})"
        if band["driver"]:
            lo, hi = band["term_ranges"][band["driver"]]
            text += f"; from {TERM_NAMES[band['driver']]}: {lo:.3e} .. {hi:.3e}"
        rows["band over energy models (J/day)"] = text
    if b.pretraining_once_j is not None:
        rows["pre-training, once (J)"] = (f"{b.pretraining_once_j:.3e}" + (
            f" (= {b.pretraining_days:.2g} days of the daily total)" if b.pretraining_days is not None else ""))
    if b.battery_life_days is not None:
        rows["battery life (days)"] = f"{b.battery_life_days:.1f} ({b.battery_energy_j:,.0f} J)"
    if not b.endurance:
        rows["worst device: pulses per day / lifetime"] = "not available (no per-device pulse counts)"
    else:
        e = b.endurance
        life = "unlimited (no pulses)" if e["lifetime_days"] is None else f"{e['lifetime_days']:.3g} days"
        rows["worst device: pulses per day / lifetime"] = (f"{e['pulses_per_day_worst']:.4g} / {life} (endurance "
                                                           f"{e['endurance_cycles']:.3g} cycles, "
                                                           f"{e['endurance_source']})")
    if b.memory:
        rows[f"memory (profile {b.profile})"] = b.memory["message"]
    return rows
