"""Device models fitted to measured traces: device cards, the fit, replay validation and derived figures.

A card holds an aihwkit-style PiecewiseStep model of one device at one pulse width, its device-to-device variation,
the figures users compare devices by (granularity, symmetry point, states, on/off) and where it came from.
The arrays a card's model turns into (`PiecewiseStepModel.kernel_args`) are what firmware_model's crossbar kernels consume.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firmware_model import crossbar

from ._version import __version__
from .errors import (EdgelearnError, EdgelearnWarning, InputError, bundled_files, error_field, error_message,
                     read_text_file)
from .traces import Trace, TraceMeta, write_atomically

CARD_FORMAT = "edgelearn-card/1"
DEFAULT_NODES = 32
DEFAULT_SMOOTHING = 1e-2
SETTLE_TOLERANCE = 1e-7  # in units of w: the alternating-pulse search stops when the pair mean moves less
MAX_SETTLE_PAIRS = 200_000
MAX_SWEEP_PULSES = 100_000
MAX_FIT_ITERATIONS = 200  # per starting point; the real traces converge in 10-100
# Limits (docs/architecture.md, "Limits"). A card's numbers flow into the kernels: all must be finite and in range.
MAX_NODES = 256  # step-table nodes (the bundled cards have 32)
MAX_WEIGHT_BOUND = 100.0  # |w_min|, |w_max| in normalised units (fitted cards: about 1)
MAX_RELATIVE_SIGMA = 1.0  # device-to-device relative sigmas (the device papers report < 0.1)
MAX_C2C_SIGMA = 100.0  # cycle-to-cycle relative sigma (fitted: 0.03-0.33 bundled, up to about 5 on noisy traces)
MAX_CONDUCTANCE_S = 1.0  # as the trace readers: a device conductance above 1 S is a unit mistake
MAX_CARD_BYTES = 1 * 2**20  # a card is about 4 KB
# Endurance (switching cycles per device) when a card gives none: a typical literature figure for HZO ferroelectric
# devices (10^9-10^11 reported; docs/devices.md, "Endurance"), overridable per card with `endurance_cycles`.
DEFAULT_ENDURANCE_CYCLES = 1e10
# The replay-error fit costs time and memory in proportion to pulses x 2 nodes (a dense Jacobian and its SVD): a
# 10^6-pulse trace took 365-514 s and 4.8 GB. Longer traces are fitted on FIT_BLOCKS evenly spaced blocks of consecutive
# pulses (MAX_FIT_PULSES in all; each block re-anchors on its measured first state); figures use every pulse.
MAX_FIT_PULSES = 20_000
FIT_BLOCKS = 40


class PiecewiseStepModel(BaseModel):
    """State-dependent step model (aihwkit PiecewiseStepDevice semantics), weights normalised to about [-1, 1].

    Absolute step at state w: up = scale_up * interp(piecewise_up, w), down = scale_down * interp(piecewise_down, w)
    with nodes equally spaced over [w_min, w_max]. Both tables are 1 at w = 0. `dw_min` is the smaller of the two
    steps at w = 0; `up_down` is aihwkit's asymmetry (> 0: down steps smaller, < 0: up steps smaller), so aihwkit's own
    `dw_min` parameter, the larger step, is dw_min / (1 - |up_down|).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    w_min: float = Field(ge=-MAX_WEIGHT_BOUND, lt=0.0, description="lower weight bound (normalised units)")
    w_max: float = Field(gt=0.0, le=MAX_WEIGHT_BOUND, description="upper weight bound (normalised units)")
    dw_min: float = Field(gt=0.0, description="smaller of the up and down steps at w = 0 (normalised units)")
    up_down: float = Field(gt=-1.0, lt=1.0, description="aihwkit up/down asymmetry: >0 down steps smaller")
    piecewise_up: list[float] = Field(min_length=2, max_length=MAX_NODES,
                                      description="relative up-step table, nodes over [w_min, w_max]")
    piecewise_down: list[float] = Field(min_length=2, max_length=MAX_NODES,
                                        description="relative down-step table, same nodes")
    dw_min_std: float = Field(0.0, ge=0.0, le=MAX_C2C_SIGMA, description="cycle-to-cycle relative std of each step")

    @model_validator(mode="after")
    def _consistent(self):
        if not self.w_min < 0.0 < self.w_max:
            raise ValueError(f"need w_min < 0 < w_max, got {self.w_min}, {self.w_max}")
        if len(self.piecewise_up) != len(self.piecewise_down):
            raise ValueError("piecewise_up and piecewise_down need the same number of nodes")
        if min(self.piecewise_up) < 0.0 or min(self.piecewise_down) < 0.0:
            raise ValueError("step tables must not be negative")
        if not self.dw_min < self.w_max - self.w_min:
            raise ValueError(f"dw_min {self.dw_min} is not smaller than the weight range {self.w_max - self.w_min}")
        return self

    @property
    def dw_min_aihwkit(self) -> float:
        return self.dw_min / (1.0 - abs(self.up_down))

    @property
    def scale_up(self) -> float:
        return (1.0 + min(self.up_down, 0.0)) * self.dw_min_aihwkit

    @property
    def scale_down(self) -> float:
        return (1.0 - max(self.up_down, 0.0)) * self.dw_min_aihwkit

    @property
    def nodes(self) -> np.ndarray:
        return np.linspace(self.w_min, self.w_max, len(self.piecewise_up))

    def step_up(self, w) -> np.ndarray:
        """Absolute up step at state(s) w (no noise)."""
        return self.scale_up * np.interp(w, self.nodes, self.piecewise_up)

    def step_down(self, w) -> np.ndarray:
        """Absolute down step at state(s) w (no noise)."""
        return self.scale_down * np.interp(w, self.nodes, self.piecewise_down)

    @property
    def granularity(self) -> float:
        """epsilon: the mean of the up and down step at w = 0."""
        return 0.5 * (float(self.step_up(0.0)) + float(self.step_down(0.0)))

    @classmethod
    def from_absolute(cls, w_min, w_max, up_steps, down_steps, dw_min_std=0.0) -> PiecewiseStepModel:
        """Build the model from absolute step tables (normalised-w units per pulse) on equally spaced nodes."""
        up_steps, down_steps = np.asarray(up_steps, float), np.asarray(down_steps, float)
        nodes = np.linspace(w_min, w_max, len(up_steps))
        up0, down0 = float(np.interp(0.0, nodes, up_steps)), float(np.interp(0.0, nodes, down_steps))
        if up0 <= 0.0 or down0 <= 0.0:
            raise EdgelearnError("step tables must be positive at w = 0")
        up_down = 1.0 - down0 / up0 if down0 < up0 else -(1.0 - up0 / down0)
        return cls(w_min=float(w_min), w_max=float(w_max), dw_min=min(up0, down0), up_down=up_down,
                   piecewise_up=(up_steps / up0).tolist(), piecewise_down=(down_steps / down0).tolist(),
                   dw_min_std=float(dw_min_std))

    def kernel_args(self) -> tuple:
        """(table_up, table_down, scale_up, scale_down, w_min, w_max): the arguments firmware_model.crossbar takes."""
        return (np.asarray(self.piecewise_up, np.float64), np.asarray(self.piecewise_down, np.float64),
                self.scale_up, self.scale_down, self.w_min, self.w_max)

    def to_aihwkit(self) -> dict:
        """Keyword arguments for aihwkit's PiecewiseStepDevice with the same noise-free behaviour."""
        return dict(w_min=self.w_min, w_max=self.w_max, dw_min=self.dw_min_aihwkit, up_down=self.up_down,
                    piecewise_up=list(self.piecewise_up), piecewise_down=list(self.piecewise_down),
                    dw_min_std=self.dw_min_std, dw_min_dtod=0.0, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.0)


def amplitude_sigmoid(volts, v0: float, vs: float):
    """The amplitude factor A(|V|) = 1 / (1 + exp(-(|V| - v0) / vs)) of an amplitude response (edgelearn.amplitude)."""
    return 1.0 / (1.0 + np.exp(-(np.abs(np.asarray(volts, float)) - v0) / vs))


class AmplitudeResponse(BaseModel):
    """How a device's step depends on the pulse amplitude: step(w, V) = table(w) * A(|V|) / A(reference), one sigmoid
    A per direction, tables (`model`) fitted jointly with it at the reference amplitude (the top of the measured range,
    where the energy models price a pulse by default). Fitted by edgelearn.amplitude.fit_amplitude; used by the
    emulator when a run's PulseConfig gives an amplitude (never extrapolated beyond the measured range)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    form: str = "step(w, V) = table(w) * A(|V|) / A(reference); A(v) = 1 / (1 + exp(-(v - v0) / vs)) per direction"
    model: PiecewiseStepModel = Field(description="step tables at the reference amplitudes (same w scale as the card)")
    v0_up_v: float
    vs_up_v: float = Field(gt=0.0)
    v0_down_v: float
    vs_down_v: float = Field(gt=0.0)
    reference_up_v: float = Field(gt=0.0, description="|V| of up (negative) pulses the tables hold at")
    reference_down_v: float = Field(gt=0.0, description="|V| of down (positive) pulses the tables hold at")
    range_up_v: tuple[float, float] = Field(description="measured |V| of up pulses (min, max)")
    range_down_v: tuple[float, float] = Field(description="measured |V| of down pulses (min, max)")
    nrmse: float = Field(description="in-sample replay error with each pulse's own amplitude (as the card's nrmse)")
    parameters: int = Field(description="fitted values: 2 x nodes + 4")
    out_of_sample: dict | None = Field(None, description="blocked cross-validation of this model beside the "
                                       "amplitude-blind card's (edgelearn.amplitude.cross_validate_amplitude)")
    identified: bool = Field(False, description="each direction's trains ramp both ways (rising and falling |V|): "
                             "only then do the data separate the amplitude from the state dependence; with every "
                             "train ramping one way, |V| and w move together along each branch and the split rests "
                             "on the sigmoid form and the smoothing")
    ramps: dict = Field(default_factory=dict, description="trains per direction whose |V| rises / falls / is flat")
    fit: dict = Field(default_factory=dict, description="nodes, smoothing, optimiser result")

    def factor(self, volts: float, direction: str) -> float:
        """A(|V|) / A(reference) for direction 'up' or 'down'."""
        if direction == "up":
            v0, vs, ref = self.v0_up_v, self.vs_up_v, self.reference_up_v
        else:
            v0, vs, ref = self.v0_down_v, self.vs_down_v, self.reference_down_v
        return float(amplitude_sigmoid(volts, v0, vs) / amplitude_sigmoid(ref, v0, vs))


class DeviceVariation(BaseModel):
    """Device-to-device variation, drawn once per device in a crossbar (aihwkit conventions, relative sigmas).

    Defaults: the related device papers report cycle-to-cycle and device-to-device variation below 10 % (earlier
    generation), so 0.1 for step size and bounds; up/down asymmetry 0.01 as in the thesis' final runs. A single trace
    per device cannot measure these; override them when you have arrays of devices.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dw_min_dtod: float = Field(0.1, ge=0.0, le=MAX_RELATIVE_SIGMA, description="relative sigma of the step scale "
                                                                              "across devices")
    up_down_dtod: float = Field(0.01, ge=0.0, le=MAX_RELATIVE_SIGMA, description="sigma of the up/down asymmetry "
                                                                                "across devices")
    w_min_dtod: float = Field(0.1, ge=0.0, le=MAX_RELATIVE_SIGMA, description="relative sigma of the lower bound "
                                                                             "across devices")
    w_max_dtod: float = Field(0.1, ge=0.0, le=MAX_RELATIVE_SIGMA, description="relative sigma of the upper bound "
                                                                             "across devices")
    source: str = Field("default: <10 % d2d (device papers), up_down_dtod 0.01 (thesis final runs)",
                        description="where these numbers come from")

    @classmethod
    def none(cls) -> "DeviceVariation":
        """No device-to-device variation: every device is the card's nominal device."""
        return cls(dw_min_dtod=0.0, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.0, source="none")


class DeviceFigures(BaseModel):
    """Figures derived from the fitted model (normalised-w units unless the name has a unit)."""

    model_config = ConfigDict(extra="forbid")
    granularity: float = Field(description="epsilon: mean of the up and down step at w = 0")
    symmetry_point: float = Field(description="where up and down steps are equal, from the tables (stable root)")
    symmetry_point_simulated: float = Field(description="where alternating up/down pulses from w = 0 settle")
    symmetry_pairs: int = Field(description="up/down pairs the simulated search needed")
    symmetry_point_measured: bool = Field(description="whether the symmetry point lies where both directions were "
                                                      "measured (else it rests on extrapolated steps)")
    measured_range_up: tuple[float, float] = Field(description="states the up pulses started from")
    measured_range_down: tuple[float, float] = Field(description="states the down pulses started from")
    n_states: float = Field(description="pulses for a full sweep between the bounds, mean of up and down")
    on_off_ratio: float = Field(description="G_max / G_min over the fitted pulses")
    nrmse: float = Field(description="replay RMSE / measured w range, all fitted pulses")
    nrmse_up: float = Field(description="the same over up (negative) pulses")
    nrmse_down: float = Field(description="the same over down (positive) pulses")
    n_pulses: int = Field(description="pulses compared in the replay (anchors excluded)")
    read_noise_w: float | None = Field(None, description="read-noise sigma (w units) from consecutive step "
                                       "residuals (noise_split); None on older cards")
    parameters: int | None = Field(None, description="fitted values of the step tables (2 x nodes)")
    out_of_sample: dict | None = Field(None, description="blocked cross-validation (edgelearn.validation): folds, "
                                       "out-of-sample nrmse, the constant-step baseline's, the families' errors")
    stable_points: list | None = Field(None, description="every attractor under alternating pulses with its basin "
                                       "(edgelearn.stability.stable_points)")
    symmetry_interval: dict | None = Field(None, description="the symmetry point's median and 90 % interval over "
                                           "refits on subsets of the trace (edgelearn.stability)")


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_file: str
    source_sha256: str = ""
    measured_at: str = ""
    selection: str = Field(description="pulses kept: all, analysis-block, or cutoffs:FILE")
    voltage_range: dict | None = None
    n_trace_pulses: int
    fit: dict = Field(description="fit settings: nodes, smoothing, optimiser result")
    conductance_rule: str = "G = (1/R_low + 1/R_high) / 2 for WGFMU files"
    simplification: str = ("each row of the amplitude staircase is treated as one identical pulse; the amplitude "
                           "dependence is absorbed into the state dependence of the step tables")
    edgelearn_version: str = __version__


class DeviceCard(BaseModel):
    """Everything the emulator needs to know about one device at one pulse width. Saved as JSON."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: str = CARD_FORMAT
    card_id: str = Field(description="unique name: device-width-measurement time")
    device_id: str
    pulse_width_s: float = Field(gt=0.0, le=1.0)
    read_voltage_v: float = Field(gt=0.0, le=10.0)
    area_m2: float | None = Field(None, gt=0.0, description="device area; from the size label where the naming rule "
                                                            "knows it")
    area_rule: str = ""
    g_ref_s: float = Field(gt=0.0, le=MAX_CONDUCTANCE_S, description="conductance that maps to w = 0 (mean of the "
                                                                     "fitted trace)")
    g_min_s: float = Field(gt=0.0, le=MAX_CONDUCTANCE_S)
    g_max_s: float = Field(gt=0.0, le=MAX_CONDUCTANCE_S)
    model: PiecewiseStepModel
    variation: DeviceVariation = DeviceVariation()
    figures: DeviceFigures
    provenance: Provenance
    endurance_cycles: float | None = Field(None, gt=0.0, description="switching cycles a device endures (one "
                                           "programming pulse counts as one cycle); None: DEFAULT_ENDURANCE_CYCLES")
    amplitude: AmplitudeResponse | None = Field(None, description="the step's dependence on the pulse amplitude; None: "
                                                "a single-amplitude trace, or a card fitted before edgelearn had it")

    @model_validator(mode="after")
    def _format(self):
        if self.format != CARD_FORMAT:
            raise ValueError(f"expected format '{CARD_FORMAT}', got '{self.format}'")
        if not self.g_min_s < self.g_max_s:
            raise ValueError(f"need g_min_s < g_max_s, got {self.g_min_s} and {self.g_max_s}")
        if not self.g_min_s <= self.g_ref_s <= self.g_max_s:
            raise ValueError(f"need g_min_s <= g_ref_s <= g_max_s, got g_ref_s {self.g_ref_s} outside "
                             f"[{self.g_min_s}, {self.g_max_s}]")
        return self

    def model_at(self, amplitude_up_v: float | None = None, amplitude_down_v: float | None = None,
                 where: str = "pulses") -> PiecewiseStepModel:
        """The step model for pulses of these amplitude magnitudes (None: the reference, the top of the measured
        range), from the card's amplitude response; refuses amplitudes outside the measured range."""
        resp = self.amplitude
        if resp is None:
            raise EdgelearnError(f"{where}: card {self.card_id} has no amplitude response (its trace has one amplitude "
                                 "per direction, or the card predates it): refit it with `edgelearn device fit`, or "
                                 "leave the amplitude unset")
        factors = []
        for name, volts, (low, high), direction in (
                ("amplitude_up_v", amplitude_up_v, resp.range_up_v, "up"),
                ("amplitude_down_v", amplitude_down_v, resp.range_down_v, "down")):
            if volts is None:
                factors.append(1.0)
                continue
            if not (math.isfinite(volts) and low - 1e-9 <= abs(volts) <= high + 1e-9):
                raise EdgelearnError(f"{where}.{name}: {volts:g} V is outside the {low:g}..{high:g} V card "
                                     f"{self.card_id} measured {direction} pulses at (the response is not "
                                     "extrapolated)")
            factors.append(resp.factor(abs(volts), direction))
        m = resp.model
        grid = m.nodes
        return PiecewiseStepModel.from_absolute(m.w_min, m.w_max, m.step_up(grid) * factors[0],
                                                m.step_down(grid) * factors[1], dw_min_std=m.dw_min_std)

    # -- conversions -------------------------------------------------------------------------------------------
    def weight_from_conductance(self, g_s) -> np.ndarray:
        """w = 2 (G - G_ref) / (G_max - G_min)."""
        return 2.0 * (np.asarray(g_s, float) - self.g_ref_s) / (self.g_max_s - self.g_min_s)

    def conductance_from_weight(self, w) -> np.ndarray:
        return self.g_ref_s + 0.5 * np.asarray(w, float) * (self.g_max_s - self.g_min_s)

    def summary(self) -> dict:
        """The figures `edgelearn device show` prints."""
        f = self.figures
        return dict(card_id=self.card_id, device_id=self.device_id, pulse_width_s=self.pulse_width_s,
                    granularity=f.granularity, symmetry_point=f.symmetry_point,
                    symmetry_point_simulated=f.symmetry_point_simulated,
                    symmetry_point_measured=f.symmetry_point_measured, dw_min=self.model.dw_min,
                    up_down=self.model.up_down, w_min=self.model.w_min, w_max=self.model.w_max,
                    n_states=f.n_states, on_off_ratio=f.on_off_ratio, dw_min_std=self.model.dw_min_std,
                    g_min_s=self.g_min_s, g_max_s=self.g_max_s, area_m2=self.area_m2, nrmse=f.nrmse,
                    nrmse_out_of_sample=(f.out_of_sample or {}).get("nrmse"), read_noise_w=f.read_noise_w,
                    source_file=self.provenance.source_file)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: str | Path) -> None:
        write_atomically(path, self.to_json() + "\n")


def load_card(path_or_name: str | Path) -> DeviceCard:
    """Load a card from a JSON file, or a bundled card by id or unique id prefix (e.g. 'ID170ZR5000-20ns')."""
    path = Path(path_or_name)
    if not path.exists():
        path = bundled_card_path(str(path_or_name))
    text = read_text_file(path, "card JSON file", MAX_CARD_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", exc.lineno) from None
    except RecursionError:
        raise InputError(path, "not a card: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise InputError(path, f"not a card: a number in it is too long ({str(exc).split(';')[0]})") from None
    try:
        return DeviceCard.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(path, error_message(err), field=error_field(err["loc"], "card")) from None


def bundled_cards() -> dict[str, Path]:
    """Cards shipped with the package (fitted by tools/fit_cards.py from the LBE247 traces), by card id."""
    return bundled_files("cards", "*.json")


def bundled_card_path(name: str) -> Path:
    cards = bundled_cards()
    if name in cards:
        return cards[name]
    matches = sorted(k for k in cards if k.startswith(name))
    if len(matches) == 1:
        return cards[matches[0]]
    if not matches:
        raise EdgelearnError(f"{name}: no such card file, and no bundled card of that name "
                             f"(bundled: {', '.join(sorted({k.rsplit('-', 1)[0] for k in cards}))})")
    raise EdgelearnError(f"{name}: ambiguous, bundled cards {', '.join(matches)}")


# ------------------------------------------------------------------------------------------------ the fit


def width_label(seconds: float) -> str:
    """2e-08 -> '20ns', 2e-06 -> '2us', 2e-3 -> '2ms'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        value = seconds / scale
        if value >= 1.0 - 1e-9:
            return f"{value:.4g}{unit}"
    return f"{seconds / 1e-12:.4g}ps"


_NAME = re.compile(r"^ID\d+[A-Z]{2}(?P<size>\d+)?(?P<shape>Oct|Circ|Star)?$")


def device_area(device_id: str) -> tuple[float | None, str]:
    """Area from the LBE247 naming rule: octagon of (34/9) r^2 with r the size label in nm (traces/README)."""
    match = _NAME.match(device_id)
    if not match or not match.group("size"):
        return None, "unknown: no size label in the device name"
    if match.group("shape") in ("Circ", "Star"):
        return None, f"unknown: the (34/9) r^2 rule is for octagons, not {match.group('shape')}"
    r_m = int(match.group("size")) * 1e-9
    return 34.0 / 9.0 * r_m * r_m, "(34/9) r^2, r = size label in nm (octagon)"


@dataclass
class ReplayReport:
    """Measured vs replayed trajectory of one trace under one card."""

    card_id: str
    trace: str
    nrmse: float
    nrmse_up: float
    nrmse_down: float
    rmse_w: float
    n_pulses: int
    n_anchors: int
    w_range: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def replay_trace(model: PiecewiseStepModel, w_measured: np.ndarray, trace: Trace) -> np.ndarray:
    """Noise-free replay of the trace's pulses from its first measured state, re-anchored after gaps."""
    anchors = trace.anchors
    return crossbar.replay(float(w_measured[0]), trace.polarity.astype(np.int64), anchors, w_measured,
                           *model.kernel_args())


def _replay_errors(w_measured, w_replayed, trace: Trace) -> dict:
    anchors = trace.anchors
    compared = ~anchors
    w_range = float(w_measured.max() - w_measured.min())
    err = w_replayed - w_measured

    def nrmse(mask):
        mask = mask & compared
        return float(np.sqrt(np.mean(err[mask] ** 2)) / w_range) if mask.any() else float("nan")

    return dict(nrmse=nrmse(np.ones_like(compared)), nrmse_up=nrmse(trace.polarity < 0),
                nrmse_down=nrmse(trace.polarity > 0), rmse_w=float(np.sqrt(np.mean(err[compared] ** 2))),
                n_pulses=int(compared.sum()), n_anchors=int(anchors.sum()), w_range=w_range)


def validate_card(card: DeviceCard, trace: Trace) -> ReplayReport:
    """Replay the trace's pulse sequence on the card's model (no noise) and compare with the measurement."""
    w = card.weight_from_conductance(trace.conductance_s)
    replayed = replay_trace(card.model, w, trace)
    return ReplayReport(card_id=card.card_id, trace=trace.meta.source or trace.path, **_replay_errors(w, replayed, trace))


def _hat_basis(x, nodes):
    """Rows: linear-interpolation weights of each x on the node grid (clamped at the ends)."""
    n = len(nodes)
    pos = np.clip((x - nodes[0]) / (nodes[-1] - nodes[0]) * (n - 1), 0.0, n - 1)
    idx = np.minimum(pos.astype(int), n - 2)
    t = pos - idx
    basis = np.zeros((len(x), n))
    basis[np.arange(len(x)), idx] = 1.0 - t
    basis[np.arange(len(x)), idx + 1] += t
    return basis


def _second_difference(n):
    d = np.zeros((n - 2, n))
    for i in range(n - 2):
        d[i, i:i + 3] = (1.0, -2.0, 1.0)
    return d


def _local_steps(w, trace: Trace):
    """(state before, step in the pulse's own direction, polarity) for every non-anchor pulse."""
    keep = ~trace.anchors
    before = np.roll(w, 1)[keep]
    step = (w - np.roll(w, 1))[keep] * -trace.polarity[keep]
    return before, step, trace.polarity[keep]


def _running_median(w, trace: Trace, half_window: int = 2):
    """w smoothed by a running median within each stretch of consecutive pulses of one polarity."""
    smooth = w.copy()
    breaks = trace.anchors | np.r_[True, trace.polarity[1:] != trace.polarity[:-1]]
    starts = np.nonzero(breaks)[0]
    for a, b in zip(starts, np.r_[starts[1:], len(w)]):
        for k in range(a, b):
            smooth[k] = np.median(w[max(a, k - half_window):min(b, k + half_window + 1)])
    return smooth


def _initial_tables(before, step, pol, nodes, smoothing):
    """Per-direction smoothed local-slope estimate: the fit's starting point."""
    d2 = _second_difference(len(nodes))
    tables = []
    typical = np.median(np.abs(step)) if step.size else 1e-3
    for direction in (-1, 1):
        sel = pol == direction
        basis = _hat_basis(before[sel], nodes)
        lhs = basis.T @ basis + max(smoothing, 1e-6) * 10.0 * d2.T @ d2 + 1e-9 * np.eye(len(nodes))
        table = np.linalg.solve(lhs, basis.T @ step[sel])
        tables.append(np.maximum(table, 0.05 * typical))
    return tables  # up, down


def _flat_outside(table, grid, visited):
    """Hold the table constant beyond the states a direction's pulses started from.

    Nodes there only meet the smoothing term, which would extrapolate the last slope into states that were never
    measured (and move the symmetry point with it); a constant step is the least assuming continuation. Replay of the
    measured trace is unchanged: no visited state interpolates between two such nodes.
    """
    table = table.copy()
    lo, hi = visited.min(), visited.max()
    below = np.nonzero(grid <= lo)[0]
    above = np.nonzero(grid >= hi)[0]
    if below.size > 1:
        table[: below[-1]] = np.interp(lo, grid, table)
    if above.size > 1:
        table[above[0] + 1:] = np.interp(hi, grid, table)
    return table


BOUND_ZONE = 0.02  # noise_split leaves out pulses this close (share of the range) to the bound they push toward


def noise_split(w: np.ndarray, trace: Trace, predict) -> tuple[float, float]:
    """(read-noise sigma in w, cycle-to-cycle relative sigma) from a trace and a fitted step law predict(w, polarity).

    Cards use the read-noise figure. The cycle-to-cycle figure is biased low when the step law overfits (a 64-value
    table on 100-200 pulses absorbs part of the write noise: 0.05-0.07 for a true 0.10 on synthetic traces), so the
    card's dw_min_std stays the robust spread of measured / fitted steps, which includes read noise (an upper bound
    of the write noise; `card_warnings` says when read noise explains it).

    A measured step is e_k = s_k (1 + c_k) + r_k - r_(k-1) around the predicted step s_k, with write (cycle-to-cycle)
    noise c_k and read noise r_k, all independent. Consecutive residuals share one read, so for a pair
        var(e_k + e_(k-1)) = sigma_c^2 (s_k^2 + s_(k-1)^2) + 2 sigma_r^2
        var(e_k - e_(k-1)) = sigma_c^2 (s_k^2 + s_(k-1)^2) + 6 sigma_r^2
    and sigma_r^2 = (var(diff) - var(sum)) / 4, sigma_c^2 = (3 var(sum) - var(diff)) / 4 / mean((s_k^2 + s_(k-1)^2)/2).
    Variances are robust (1.4826 MAD, squared), so pulses clipped at a bound do not count; each estimate is bounded at
    0 (residuals correlated positively are misfit, not read noise: sigma_r = 0). Dividing by the mean squared step,
    not step by step, keeps read noise on near-zero steps from becoming an absurd sigma_c. Pairs are consecutive
    pulses of one polarity, neither an anchor nor within BOUND_ZONE of the range from the bound it pushes toward.
    """
    before = np.roll(w, 1)
    step = (w - before) * -trace.polarity
    predicted = predict(before, trace.polarity)
    # pulses pushing into the bound they start or end near are clipped, not noisy: left out
    edge = BOUND_ZONE * float(w.max() - w.min())
    toward = np.where(trace.polarity < 0, w.max() - np.maximum(w, before), np.minimum(w, before) - w.min())
    keep = ~trace.anchors & (toward > edge)
    resid = np.where(keep, step - predicted, 0.0)
    pair = keep[1:] & keep[:-1] & (trace.polarity[1:] == trace.polarity[:-1])
    if pair.sum() < 4:
        return 0.0, 0.0
    e1, e0 = resid[1:][pair], resid[:-1][pair]

    def robust_var(x):
        return float((1.4826 * np.median(np.abs(x - np.median(x)))) ** 2)

    v_sum, v_diff = robust_var(e1 + e0), robust_var(e1 - e0)
    mean_sq = float(np.mean(0.5 * (predicted[1:][pair] ** 2 + predicted[:-1][pair] ** 2)))
    read_var = max(0.0, (v_diff - v_sum) / 4.0)
    write_var = max(0.0, (3.0 * v_sum - v_diff) / 4.0) / mean_sq if mean_sq > 0 else 0.0
    return math.sqrt(read_var), math.sqrt(write_var)


def conductance_scale(g) -> tuple[float, float, float]:
    """(g_ref, g_min, g_max) of a trace's w normalisation: its mean, min and max conductance."""
    g = np.asarray(g, float)
    return float(g.mean()), float(g.min()), float(g.max())


def to_weight(g, scale: tuple[float, float, float]) -> np.ndarray:
    """w = 2 (G - g_ref) / (g_max - g_min) for scale = (g_ref, g_min, g_max) (as DeviceCard.weight_from_conductance)."""
    g_ref, g_min, g_max = scale
    return 2.0 * (np.asarray(g, float) - g_ref) / (g_max - g_min)


def fit_inputs(trace: Trace, nodes: int):
    """What every fitting method starts from, with its one-line errors (non-finite or constant conductance, a
    direction with fewer than 2 measured steps): (scale, w, node grid over the measured w range, and each compared
    pulse's starting state, step in its own direction and polarity)."""
    where = trace.path or trace.meta.source or "trace"
    g = trace.conductance_s
    if not np.isfinite(g).all():
        raise InputError(where, f"non-finite conductance at pulse {int(trace.pulse[~np.isfinite(g)][0])}")
    scale = conductance_scale(g)
    if not scale[2] > scale[1]:
        raise InputError(where, "conductance never changes: nothing to fit")
    w = to_weight(g, scale)
    grid = np.linspace(float(w.min()), float(w.max()), nodes)
    before, step, pol = _local_steps(w, trace)
    for direction, name in ((-1, "up (negative)"), (1, "down (positive)")):
        if np.count_nonzero(pol == direction) < 2:
            raise InputError(where, f"the {name} branch has fewer than 2 pulses that follow a measured state: "
                             "cannot fit its steps")
    return scale, w, grid, before, step, pol


def fitted_noise(w: np.ndarray, trace: Trace, grid, up, down) -> tuple[float, float]:
    """(cycle-to-cycle sigma, read-noise sigma) of a trace around step tables up / down on `grid`: the robust spread
    of measured / fitted step (read noise included, what cards use) and noise_split's read noise."""
    def predict(b, p):
        return np.where(p < 0, np.interp(b, grid, up), np.interp(b, grid, down))

    before, step, pol = _local_steps(w, trace)
    ratio = step / predict(before, pol) - 1.0
    c2c = float(1.4826 * np.median(np.abs(ratio - np.median(ratio)))) if ratio.size else 0.0
    return c2c, noise_split(w, trace, predict)[0]


def fit_subset(n: int, max_pulses: int | None = None, blocks: int | None = None) -> np.ndarray | None:
    """Rows of an n-pulse trace the fit uses: None (all) up to max_pulses (default MAX_FIT_PULSES), else `blocks`
    (default FIT_BLOCKS) evenly spaced runs of max_pulses // blocks consecutive pulses from the start to the end."""
    max_pulses = MAX_FIT_PULSES if max_pulses is None else max_pulses
    blocks = FIT_BLOCKS if blocks is None else blocks
    if n <= max_pulses:
        return None
    length = max(2, max_pulses // blocks)
    starts = np.linspace(0, n - length, blocks).round().astype(np.int64)
    return np.unique((starts[:, None] + np.arange(length)[None, :]).ravel())


def fit_device(trace: Trace, nodes: int = DEFAULT_NODES, smoothing: float = DEFAULT_SMOOTHING,
               variation: DeviceVariation | None = None) -> DeviceCard:
    """Fit a PiecewiseStep model to a trace so that replaying the trace's pulses reproduces its trajectory.

    The step tables (positive, parametrised in log space) minimise the replay error over all pulses plus
    `smoothing` times the squared second differences of the log tables (which also decides nodes no pulse visits).
    Cycle-to-cycle noise is the robust spread of measured steps around the fitted step at the same state.
    A trace longer than MAX_FIT_PULSES is fitted on evenly spaced blocks of it (`fit_subset`, with an
    EdgelearnWarning); the bounds, noise and figures still use every pulse.
    """
    import warnings

    from scipy.optimize import least_squares

    if not 3 <= nodes <= MAX_NODES:
        raise EdgelearnError(f"nodes: expected 3 to {MAX_NODES}, got {nodes}")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise EdgelearnError(f"smoothing: expected a finite number >= 0, got {smoothing}")
    scale, w, grid, before, step, pol = fit_inputs(trace, nodes)
    w_min, w_max = float(grid[0]), float(grid[-1])
    full_trace, full_w = trace, w
    subset = fit_subset(len(trace))
    if subset is not None:  # the optimiser sees evenly spaced blocks; each re-anchors (its pulse numbers jump)
        warnings.warn(f"{trace.path or trace.meta.source}: {len(trace):,} pulses; the fit uses {len(subset):,} of "
                      f"them ({FIT_BLOCKS} evenly spaced blocks of consecutive pulses, the limit MAX_FIT_PULSES); "
                      "bounds, noise and figures use every pulse", EdgelearnWarning, stacklevel=2)
        trace = replace(trace, pulse=trace.pulse[subset], amplitude_v=trace.amplitude_v[subset],
                        polarity=trace.polarity[subset], conductance_s=trace.conductance_s[subset])
        w = w[subset]
        sub_before, sub_step, sub_pol = _local_steps(w, trace)
    else:
        sub_before, sub_step, sub_pol = before, step, pol
    # two starting points, the raw local slopes and the slopes of a running median (robust to single outliers);
    # the replay objective is not convex, so keep whichever ends lower
    starts = [_initial_tables(sub_before, sub_step, sub_pol, grid, smoothing),
              _initial_tables(*_local_steps(_running_median(w, trace), trace), grid, smoothing)]
    anchors = trace.anchors
    compared = ~anchors
    polarity = trace.polarity.astype(np.int64)
    d2 = _second_difference(nodes)
    reg = math.sqrt(smoothing)

    def residuals(theta):
        up, down = np.exp(theta[:nodes]), np.exp(theta[nodes:])
        replayed = crossbar.replay(w[0], polarity, anchors, w, up, down, 1.0, 1.0, w_min, w_max)
        return np.concatenate([(replayed - w)[compared], reg * (d2 @ theta[:nodes]), reg * (d2 @ theta[nodes:])])

    # a step is at most the whole range and at least a millionth of it; bounds keep unvisited nodes finite
    lower, upper = math.log(1e-6 * (w_max - w_min)), math.log(w_max - w_min)
    result = None
    for up0, down0 in starts:
        theta0 = np.clip(np.log(np.concatenate([up0, down0])), lower + 1e-9, upper - 1e-9)
        candidate = least_squares(residuals, theta0, bounds=(lower, upper), method="trf", diff_step=1e-3,
                                  max_nfev=MAX_FIT_ITERATIONS)
        if result is None or candidate.cost < result.cost:
            result = candidate
    trace, w = full_trace, full_w
    up, down = np.exp(result.x[:nodes]), np.exp(result.x[nodes:])
    up = _flat_outside(up, grid, before[pol < 0])
    down = _flat_outside(down, grid, before[pol > 0])

    c2c, read_noise = fitted_noise(w, trace, grid, up, down)
    model = PiecewiseStepModel.from_absolute(w_min, w_max, up, down, dw_min_std=c2c)
    fit = dict(nodes=nodes, smoothing=smoothing, method="least_squares(trf) on replay residuals",
               cost=float(result.cost), evaluations=int(result.nfev), status=int(result.status),
               noise="c2c: robust spread of measured / fitted step (read noise included); read noise: noise_split "
                     "(pairs of consecutive step residuals)",
               **({} if subset is None else dict(pulses_fitted=int(len(subset)), blocks=FIT_BLOCKS)))
    return card_from_fit(trace, w, scale, model, before, pol, variation, fit, read_noise, 2 * nodes)


def card_from_fit(trace: Trace, w: np.ndarray, g_scale: tuple, model: PiecewiseStepModel, before, pol,
                  variation: DeviceVariation | None, fit: dict, read_noise: float | None,
                  parameters: int | None) -> DeviceCard:
    """The card around a fitted model (any fitting method): replay errors, symmetry points, measured ranges, states,
    area, provenance. before / pol: each compared pulse's starting state and polarity (_local_steps)."""
    g_ref, g_min, g_max = g_scale
    replayed = replay_trace(model, w, trace)
    errors = _replay_errors(w, replayed, trace)
    sym, sym_sim, pairs = symmetry_points(model)
    range_up = (float(before[pol < 0].min()), float(before[pol < 0].max()))
    range_down = (float(before[pol > 0].min()), float(before[pol > 0].max()))
    area, area_rule = device_area(trace.meta.device_id)
    meta: TraceMeta = trace.meta
    stamp = meta.measured_at.replace("-", "").replace(":", "") or "untimed"
    return DeviceCard(
        card_id=f"{meta.device_id}-{width_label(meta.pulse_width_s)}-{stamp}",
        device_id=meta.device_id, pulse_width_s=meta.pulse_width_s, read_voltage_v=meta.read_voltage_v,
        area_m2=area, area_rule=area_rule, g_ref_s=g_ref, g_min_s=g_min, g_max_s=g_max, model=model,
        variation=variation or DeviceVariation(),
        figures=DeviceFigures(
            granularity=model.granularity,
            symmetry_point=sym, symmetry_point_simulated=sym_sim, symmetry_pairs=pairs,
            symmetry_point_measured=bool(max(range_up[0], range_down[0]) <= sym <= min(range_up[1], range_down[1])),
            measured_range_up=range_up, measured_range_down=range_down,
            n_states=effective_states(model), on_off_ratio=g_max / g_min, nrmse=errors["nrmse"],
            nrmse_up=errors["nrmse_up"], nrmse_down=errors["nrmse_down"], n_pulses=errors["n_pulses"],
            read_noise_w=read_noise, parameters=parameters),
        provenance=Provenance(
            source_file=meta.source or Path(trace.path).name, source_sha256=meta.source_sha256,
            measured_at=meta.measured_at, selection=meta.selection,
            voltage_range=meta.voltage_range.model_dump() if meta.voltage_range else None,
            n_trace_pulses=len(trace), fit=fit),
    )


# ------------------------------------------------------------------------------------------- derived figures


OUT_OF_SAMPLE_RATIO_WARN = 5.0  # out-of-sample / in-sample error above this: the in-sample figure overstates ...
OUT_OF_SAMPLE_WARN = 0.05  # ... when the out-of-sample error is also at least this (issue 15's target)


def card_warnings(card: DeviceCard, implausible_only: bool = False) -> list[str]:
    """Plausibility problems of a card, one line each (printed by `device fit`, `device show` and `train`): absurd
    cycle-to-cycle noise, read noise larger than a step, a symmetry point at a bound or on extrapolated steps, fewer
    pulses than fitted parameters, an out-of-sample error far above the in-sample one or no better than constant
    steps, the largest basin of attraction under alternating pulses at a bound (device show lists every stable
    point). implausible_only: leave out the two out-of-sample lines, which hold for most measured cards (what `train`
    prints; its summary keeps them all)."""
    f, m = card.figures, card.model
    out = []
    if m.dw_min_std > 1.0:
        why = ""
        if f.read_noise_w is not None and f.granularity > 0:
            from_reads = math.sqrt(2.0) * f.read_noise_w / f.granularity
            why = (f"; read noise alone spreads a step at w = 0 by {from_reads:.2f} (sqrt 2 x {f.read_noise_w:.3g} / "
                   f"{f.granularity:.3g}), so the sigma is mostly read noise, not write noise")
        out.append(f"cycle-to-cycle sigma {m.dw_min_std:.2f} > 1: about {_wrong_way(m.dw_min_std):.0%} of pulses "
                   f"would move the weight the wrong way{why}")
    if f.read_noise_w is not None and f.read_noise_w > f.granularity:
        out.append(f"read noise {f.read_noise_w:.3g} (w) exceeds the step at w = 0 ({f.granularity:.3g}): single "
                   "reads cannot resolve one pulse")
    span = m.w_max - m.w_min
    if min(f.symmetry_point - m.w_min, m.w_max - f.symmetry_point) <= 0.01 * span:
        out.append(f"symmetry point {f.symmetry_point:+.3f} at a bound of [{m.w_min:+.3f}, {m.w_max:+.3f}]")
    elif not f.symmetry_point_measured:
        out.append(f"symmetry point {f.symmetry_point:+.3f} rests on extrapolated steps (outside the states both "
                   "directions were measured from)")
    if f.parameters is not None and f.n_pulses < f.parameters:
        out.append(f"{f.n_pulses} pulses for {f.parameters} fitted parameters: fewer pulses than parameters "
                   "(fit with fewer --nodes)")
    oos = {} if implausible_only else (f.out_of_sample or {})
    if oos.get("nrmse") is not None and oos["nrmse"] >= OUT_OF_SAMPLE_WARN and \
            oos["nrmse"] > OUT_OF_SAMPLE_RATIO_WARN * f.nrmse:
        out.append(f"out-of-sample error {oos['nrmse']:.3f} is {oos['nrmse'] / f.nrmse:.0f}x the in-sample "
                   f"{f.nrmse:.4f} ({oos.get('folds')}-fold blocked cross-validation): the in-sample figure "
                   "overstates what the card predicts")
    if oos.get("nrmse") is not None and oos.get("baseline_nrmse") is not None and \
            oos["nrmse"] >= oos["baseline_nrmse"]:
        out.append(f"out of sample the card ({oos['nrmse']:.3f}) does not beat a constant-step model "
                   f"({oos['baseline_nrmse']:.3f})")
    if card.amplitude is not None and not card.amplitude.identified and not implausible_only:
        out.append("amplitude response from staircases that all ramp one way: amplitude and state move together, so "
                   "the data do not separate them (measure alternating ramps: hil characterize --staircase)")
    stable = f.stable_points or []
    main = max(stable, key=lambda p: p.get("basin_fraction", 0.0), default=None)
    if main is not None and main.get("at_bound"):
        where = ", ".join(f"{p['w']:+.2f} ({p.get('basin_fraction', 0.0):.0%})" for p in stable)
        out.append(f"under alternating pulses most states settle at a bound ({main['w']:+.2f}); stable points "
                   f"(basin share): {where}")
    return out


def _wrong_way(sigma: float) -> float:
    """Share of pulses whose relative step 1 + sigma * N(0, 1) is negative."""
    return 0.5 * math.erfc(1.0 / (sigma * math.sqrt(2.0)))



def symmetry_points(model: PiecewiseStepModel) -> tuple[float, float, int]:
    """(analytic, simulated, pairs): where up and down steps balance.

    Analytic: the step difference up(w) - down(w) is piecewise linear on the node grid, so its roots are exact; the
    answer is the stable root (difference falling through zero) that the drift from w = 0 reaches, or the bound it
    runs into when there is none. Simulated: alternating up/down pulses from w = 0 until the pair mean settles.
    """
    grid = model.nodes
    diff = model.step_up(grid) - model.step_down(grid)
    d0 = float(model.step_up(0.0) - model.step_down(0.0))
    analytic = None
    if d0 == 0.0:
        analytic = 0.0
    elif d0 > 0.0:  # drifts upward: first downward zero crossing above 0
        for i in range(len(grid) - 1):
            a, b = diff[i], diff[i + 1]
            if grid[i + 1] > 0.0 and a > 0.0 >= b:
                root = grid[i] + a / (a - b) * (grid[i + 1] - grid[i])
                if root >= 0.0:
                    analytic = float(root)
                    break
        if analytic is None:
            analytic = model.w_max
    else:  # drifts downward: last downward crossing below 0
        for i in range(len(grid) - 2, -1, -1):
            a, b = diff[i], diff[i + 1]
            if grid[i] < 0.0 and a >= 0.0 > b:
                root = grid[i] + a / (a - b) * (grid[i + 1] - grid[i]) if a != b else grid[i]
                if root <= 0.0:
                    analytic = float(root)
                    break
        if analytic is None:
            analytic = model.w_min
    simulated, pairs = crossbar.alternate_until_settled(0.0, *model.kernel_args(), MAX_SETTLE_PAIRS, SETTLE_TOLERANCE)
    return float(analytic), float(simulated), int(pairs)


def effective_states(model: PiecewiseStepModel) -> float:
    """Mean number of noise-free pulses for a full down sweep (w_max to w_min) and a full up sweep, each counted
    until the weight is within 0.5 % of the range from the far bound."""
    margin = 0.005 * (model.w_max - model.w_min)
    args = (*model.kernel_args(), MAX_SWEEP_PULSES)
    n_down = crossbar.pulses_to_cross(model.w_max, model.w_min + margin, crossbar.POLARITY_DOWN, *args)
    n_up = crossbar.pulses_to_cross(model.w_min, model.w_max - margin, crossbar.POLARITY_UP, *args)
    return 0.5 * (n_down + n_up)
