"""Energy models and energy reports computed from exact counters (never inside a kernel).

A run's counters (summary.json of `edgelearn train`) times unit energies gives its energy per component; the unit
energies come from an `EnergyModel`: a per-pulse programming model (schottky-bound, capacitive or table) plus
per-operation energies for the rest of the chip. Any finished run can be re-costed under another model.
Sources and assumptions of every default are in docs/energy.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .devices import DeviceCard, load_card
from .errors import EdgelearnError, read_text_file, validation_error

Q_E = 1.602176634e-19  # C
K_B = 1.380649e-23  # J/K
EPS_0 = 8.8541878128e-12  # F/m


class SchottkyBound(BaseModel):
    """Leakage-limited upper bound E = |V| J(|V|) A t_pw (the thesis' estimate), J the modified Schottky emission
    (Simmons) current density J = alpha T^1.5 E mu' exp(-(phi_B - sqrt(q E / (4 pi eps0 eps_r))) / (kT/q))."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["schottky-bound"] = "schottky-bound"
    barrier_ev: float = Field(0.19, gt=0, description="Schottky barrier height phi_B, eV")
    eps_r: float = Field(18.2, gt=0, description="relative permittivity of the film")
    thickness_m: float = Field(5e-9, gt=0, description="film thickness")
    temperature_k: float = Field(300.0, gt=0, description="temperature")
    alpha_a_s_per_cm3_k15: float = Field(3e-4, gt=0, description="Simmons alpha, A s cm^-3 K^-3/2")
    mobility_cm2_per_vs: float = Field(8.9e-3, gt=0, description="effective mobility mu' = mu (m*/m0)^1.5")

    def current_density_a_per_m2(self, volts: float) -> float:
        field_v_per_m = abs(volts) / self.thickness_m
        lowering_v = math.sqrt(Q_E * field_v_per_m / (4.0 * math.pi * EPS_0 * self.eps_r))
        thermal_v = K_B * self.temperature_k / Q_E
        j_a_per_cm2 = (self.alpha_a_s_per_cm3_k15 * self.temperature_k ** 1.5 * (field_v_per_m / 100.0)
                       * self.mobility_cm2_per_vs * math.exp(-(self.barrier_ev - lowering_v) / thermal_v))
        return j_a_per_cm2 * 1e4

    def pulse_energy_j(self, volts: float, width_s: float, area_m2: float) -> float:
        return abs(volts) * self.current_density_a_per_m2(volts) * area_m2 * width_s


class Capacitive(BaseModel):
    """E = C V^2 + 2 Pr A |V| + |V| I_leak t_pw: charging the device capacitance C = eps0 eps_r A / d, switching the
    polarisation (NeuroSim's FeFET form, every pulse counted as a full 2 Pr switch: an upper bound for partial
    switching), plus leakage."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["capacitive"] = "capacitive"
    eps_r: float = Field(18.2, gt=0, description="relative permittivity")
    thickness_m: float = Field(5e-9, gt=0, description="film thickness")
    remanent_polarization_c_per_m2: float = Field(0.10, ge=0, description="Pr (0.10 C/m^2 = 10 uC/cm^2)")
    leakage_a: float = Field(1e-9, ge=0, description="leakage current during a pulse")

    def pulse_energy_j(self, volts: float, width_s: float, area_m2: float) -> float:
        v = abs(volts)
        capacitance = EPS_0 * self.eps_r * area_m2 / self.thickness_m
        return capacitance * v * v + 2.0 * self.remanent_polarization_c_per_m2 * area_m2 * v + v * self.leakage_a * width_s


class TableModel(BaseModel):
    """Measured or published per-pulse energies by pulse width, interpolated linearly in log(width)-log(energy);
    outside the table (or with one point) extrapolated with slope `exponent` (E ~ width^exponent)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["table"] = "table"
    widths_s: list[float] = Field([20e-9], min_length=1, description="pulse widths, ascending")
    energies_j: list[float] = Field([3e-12], min_length=1, description="energy per pulse at each width")
    exponent: float = Field(1.0, description="log-log slope used beyond the table")

    @model_validator(mode="after")
    def _valid_table(self):
        if len(self.widths_s) != len(self.energies_j):
            raise ValueError("widths_s and energies_j differ in length")
        if min(self.widths_s) <= 0 or min(self.energies_j) <= 0:
            raise ValueError("widths and energies must be positive")
        if any(b <= a for a, b in zip(self.widths_s, self.widths_s[1:])):
            raise ValueError("widths_s must ascend")
        return self

    def pulse_energy_j(self, volts: float, width_s: float, area_m2: float) -> float:
        xs = [math.log(w) for w in self.widths_s]
        ys = [math.log(e) for e in self.energies_j]
        x = math.log(width_s)
        if x <= xs[0]:
            return math.exp(ys[0] + self.exponent * (x - xs[0]))
        if x >= xs[-1]:
            return math.exp(ys[-1] + self.exponent * (x - xs[-1]))
        k = next(k for k in range(len(xs) - 1) if x <= xs[k + 1])
        t = (x - xs[k]) / (xs[k + 1] - xs[k])
        return math.exp(ys[k] + t * (ys[k + 1] - ys[k]))


class OperationEnergies(BaseModel):
    """Energy of everything but programming pulses, per counted event (defaults and sources in docs/energy.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    t_read_s: float = Field(10e-9, gt=0, description="read time of an array pass (device read: V_read^2 G t_read)")
    dac_j: float = Field(0.5e-12, ge=0, description="one DAC conversion (7 bit)")
    adc_j: float = Field(2.6e-12, ge=0, description="one ADC conversion (9 bit SAR, Walden FoM 5 fJ/step)")
    mac_j: float = Field(3.2e-12, ge=0, description="one digital multiply-accumulate (32 bit int, 45 nm)")
    accumulator_update_j: float = Field(10.1e-12, ge=0, description="chi read-modify-write: 2 SRAM accesses + add")
    rng_draw_j: float = Field(0.5e-12, ge=0, description="one controller random number")
    device_read_j: float | None = Field(None, ge=0, description="one single-device read (default: as a cell read)")


class EnergyModel(BaseModel):
    """A complete set of unit energies: the programming model, the pulse amplitudes it is evaluated at, and the rest."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = "schottky-bound"
    programming: SchottkyBound | Capacitive | TableModel = Field(default_factory=SchottkyBound,
                                                                 discriminator="kind")
    amplitude_down_v: float | None = Field(None, description="positive (down) pulse amplitude; default: the "
                                           "largest amplitude the card's fit used")
    amplitude_up_v: float | None = Field(None, description="negative (up) pulse amplitude magnitude; default: "
                                         "the largest the card's fit used")
    area_m2: float | None = Field(None, gt=0, description="device area; default: the card's")
    operations: OperationEnergies = OperationEnergies()


BUILTIN_MODELS = {
    "schottky-bound": lambda: EnergyModel(name="schottky-bound", programming=SchottkyBound()),
    "capacitive": lambda: EnergyModel(name="capacitive", programming=Capacitive()),
    "table": lambda: EnergyModel(name="table", programming=TableModel()),
}


def load_energy_model(name_or_path: str) -> EnergyModel:
    """A built-in model by name (schottky-bound, capacitive, table) or a JSON file with an EnergyModel."""
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]()
    path = Path(name_or_path)
    if not path.is_file():
        raise EdgelearnError(f"{name_or_path}: not a built-in energy model ({', '.join(BUILTIN_MODELS)}) nor a file")
    try:
        return EnergyModel.model_validate_json(read_text_file(path, "energy model JSON file"))
    except ValidationError as exc:
        raise validation_error(path, exc, "model") from None


@dataclass
class UnitEnergies:
    """What one counted event costs, in joules, for one card under one model."""

    model: str
    card_id: str
    pulse_up_j: float
    pulse_down_j: float
    cell_read_j: float
    device_read_j: float
    dac_j: float
    adc_j: float
    mac_j: float
    accumulator_update_j: float
    rng_draw_j: float
    amplitude_up_v: float
    amplitude_down_v: float
    area_m2: float


def run_amplitudes(pulses: dict | None) -> tuple[float | None, float | None]:
    """(up, down) pulse amplitude magnitudes a run's PulseConfig (as a dict, e.g. summary["config"]["pulses"]) set."""
    pulses = pulses or {}
    return pulses.get("amplitude_up_v"), pulses.get("amplitude_down_v")


def unit_energies(model: EnergyModel, card: DeviceCard,
                  amplitudes: tuple[float | None, float | None] = (None, None)) -> UnitEnergies:
    """Unit energies of `card` under `model`. Pulses are priced at the amplitudes the run used (`amplitudes`, from its
    PulseConfig: the emulated steps were the card's amplitude response there), else at the model's, else at the top of
    the card's measured range; a model amplitude that contradicts the run's is refused."""
    area = model.area_m2 or card.area_m2
    if area is None:
        raise EdgelearnError(f"card {card.card_id} has no device area ({card.area_rule}); give area_m2 in the model")
    for name, run_v in zip(("amplitude_up_v", "amplitude_down_v"), amplitudes):
        model_v = getattr(model, name)
        if run_v is not None and model_v is not None and abs(abs(model_v) - abs(run_v)) > 1e-9:
            raise EdgelearnError(f"energy model {model.name}: {name} {model_v:g} V, but the run pulsed at {run_v:g} V "
                                 f"(its pulses.{name}); drop it from the model")
    run_up, run_down = amplitudes
    vrange = card.provenance.voltage_range or {}
    v_down = run_down if run_down is not None else (
        model.amplitude_down_v if model.amplitude_down_v is not None else vrange.get("pos_end_v"))
    v_up = run_up if run_up is not None else model.amplitude_up_v if model.amplitude_up_v is not None else (
        abs(vrange["neg_end_v"]) if "neg_end_v" in vrange else None)
    if v_down is None or v_up is None:
        raise EdgelearnError(f"card {card.card_id} records no voltage range; give amplitude_up_v / amplitude_down_v")
    width = card.pulse_width_s
    ops = model.operations
    cell_read = card.read_voltage_v ** 2 * card.g_ref_s * ops.t_read_s
    return UnitEnergies(model=model.name, card_id=card.card_id,
                        pulse_up_j=model.programming.pulse_energy_j(v_up, width, area),
                        pulse_down_j=model.programming.pulse_energy_j(v_down, width, area),
                        cell_read_j=cell_read, device_read_j=ops.device_read_j if ops.device_read_j is not None
                        else cell_read, dac_j=ops.dac_j, adc_j=ops.adc_j, mac_j=ops.mac_j,
                        accumulator_update_j=ops.accumulator_update_j, rng_draw_j=ops.rng_draw_j,
                        amplitude_up_v=abs(v_up), amplitude_down_v=abs(v_down), area_m2=area)


# counter name -> (component, unit-energy attribute)
COMPONENTS = {
    "pulses_up": ("programming", "pulse_up_j"),
    "pulses_down": ("programming", "pulse_down_j"),
    "calibration_pulses_up": ("calibration", "pulse_up_j"),
    "calibration_pulses_down": ("calibration", "pulse_down_j"),
    "cell_reads": ("array_reads", "cell_read_j"),
    "device_reads": ("calibration", "device_read_j"),
    "dac_conversions": ("dac", "dac_j"),
    "adc_conversions": ("adc", "adc_j"),
    "digital_macs": ("digital", "mac_j"),
    "accumulator_updates": ("accumulator", "accumulator_update_j"),
    "rng_draws": ("digital", "rng_draw_j"),
}


def cost(counters: dict, units: UnitEnergies) -> dict[str, float]:
    """Energy per component (J) of a set of counters: counts x unit energies, nothing else."""
    out: dict[str, float] = {}
    for name, (component, attribute) in COMPONENTS.items():
        out[component] = out.get(component, 0.0) + counters.get(name, 0) * getattr(units, attribute)
    out["total"] = sum(v for k, v in out.items())
    return out


@dataclass
class EnergyReport:
    """A training run re-costed under one energy model."""

    model: str
    card_id: str
    units: dict
    components_j: dict
    per_epoch_programming_j: list
    cumulative_programming_j: list
    samples: int
    updates: int
    energy_per_sample_j: float
    programming_per_update_j: float
    energy_to_target_j: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _run_card(summary: dict) -> DeviceCard:
    """The card a run used: its config's card (file or bundled name), else the bundled card of its card id."""
    for name in (summary.get("config", {}).get("card"), summary["card_id"]):
        try:
            card = load_card(name)
        except EdgelearnError:
            continue
        if card.card_id == summary["card_id"]:
            return card
    raise EdgelearnError(f"card {summary['card_id']} of this run is neither at {summary['config'].get('card')} nor "
                         "bundled: pass the run's card file")


def report_run(summary: dict, model: EnergyModel, targets=(0.9, 0.95)) -> EnergyReport:
    """Cost a run from its summary.json under `model`: per component, per epoch (programming, from the per-epoch pulse
    counts), cumulative, per sample and per update, and the energy (programming + calibration) to reach each target
    validation accuracy."""
    if not summary.get("card_id"):
        raise EdgelearnError("this run has no device card (digital baseline): nothing to cost")
    card = _run_card(summary)
    units = unit_energies(model, card, run_amplitudes(summary["config"].get("pulses")))
    components = cost(summary["counters"], units)
    per_epoch = [m["pulses_up"] * units.pulse_up_j + m["pulses_down"] * units.pulse_down_j
                 for m in summary["epochs"]]
    calibration = components["calibration"]
    cumulative, running = [], calibration
    for e in per_epoch:
        running += e
        cumulative.append(running)
    to_target = {}
    for target in targets:
        epoch = next((m["epoch"] for m in summary["epochs"] if m["validation_accuracy"] >= target), None)
        to_target[f"{target:.2f}"] = None if epoch is None else cumulative[epoch - 1]
    n_train = summary["config"].get("max_train_samples") or 48_000
    samples = n_train * len(summary["epochs"])
    updates = summary["counters"].get("updates", 0)
    return EnergyReport(model=model.name, card_id=card.card_id, units=asdict(units), components_j=components,
                        per_epoch_programming_j=per_epoch, cumulative_programming_j=cumulative, samples=samples,
                        updates=updates, energy_per_sample_j=components["total"] / samples if samples else 0.0,
                        programming_per_update_j=components["programming"] / updates if updates else 0.0,
                        energy_to_target_j=to_target)


def model_band(totals: dict[str, dict]) -> dict:
    """Where energy models disagree: {model: components} (each with a "total") -> the band of the total (min, max,
    ratio), each component's range, and the component that drives the spread (the widest max - min)."""
    if not totals:
        raise EdgelearnError("no energy model to compare")
    names = list(totals)
    parts = [k for k in next(iter(totals.values())) if k != "total"]
    ranges = {k: [min(totals[n][k] for n in names), max(totals[n][k] for n in names)] for k in parts}
    low, high = min(totals[n]["total"] for n in names), max(totals[n]["total"] for n in names)
    spread = {k: hi - lo for k, (lo, hi) in ranges.items()}
    driver = max(spread, key=spread.get) if high > low else None
    return dict(models={n: totals[n]["total"] for n in names}, min_j=low, max_j=high,
                ratio=high / low if low > 0 else None, driver=driver,
                driver_range_j=ranges[driver] if driver else None,
                driver_share_of_spread=spread[driver] / (high - low) if driver else None,
                component_ranges_j={k: v for k, v in ranges.items() if v[1] > v[0]})


_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([pnumkM]?)(J|Wh|Ah|V|s)?\s*$")
_PREFIX = {"": 1.0, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6}


def parse_quantity(text: str, unit: str, what: str) -> float:
    """'1mJ' -> 0.001 (unit 'J'); a bare number is taken in the base unit. One-line error for anything else."""
    match = _UNIT.match(str(text))
    if not match or (match.group(3) not in (None, unit)):
        raise EdgelearnError(f"{what}: '{text}' is not a quantity in {unit} "
                             f"(examples: 1m{unit}, 250u{unit}, 0.5{unit})")
    return float(match.group(1)) * _PREFIX[match.group(2)]
