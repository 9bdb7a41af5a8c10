"""The Board API and its in-process backend: crossbar tiles of fitted devices driven by the numba controller.

Training, characterisation and streaming code talk to a `Board` and never to kernels. `InProcessBoard` runs the
firmware model in this process; `edgelearn.hil.SerialBoard` implements the same methods over a serial link.
A `Tile` is usable on its own from a notebook: build it from a card, then forward / backward / update / calibrate,
and read its exact counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from numba import njit
from pydantic import BaseModel, ConfigDict, Field

from firmware_model import controller as ctl
from firmware_model import crossbar, fixed, lowmem

from .devices import DeviceCard, DeviceVariation, PiecewiseStepModel, load_card
from .errors import EdgelearnError

_FOLD_LIMIT = 2**31 - 1  # per-device int32 pulse counts are folded into int64 totals before they could reach this


class PeripheryConfig(BaseModel):
    """DAC / ADC and management settings (defaults: aihwkit IOParameters)."""

    # frozen: a tile keeps the kernel arguments it derived from these (saves about 1 us on every MVM call)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    dac_bits: int = Field(7, ge=2, le=16, description="signed input DAC resolution, bits")
    inp_bound: float = Field(1.0, gt=0, description="input range of the DAC (normalised units)")
    adc_bits: int = Field(9, ge=2, le=16, description="signed output ADC resolution, bits")
    out_bound: float = Field(12.0, gt=0, description="output range of the ADC (normalised units)")
    out_noise: float = Field(0.06, ge=0, description="std of Gaussian output noise per MVM (normalised units)")
    noise_management: Literal["abs_max", "none"] = Field("abs_max", description="input scaling before the DAC")
    bound_management: Literal["iterative", "none"] = Field("iterative", description="halve inputs on ADC overflow")
    max_bm_rounds: int = Field(10, ge=0, description="most extra passes of iterative bound management")

    def kernel_args(self) -> tuple:
        """The periphery arguments of firmware_model.controller.mvm / mvm_batch, in their order."""
        return (self.dac_bits, self.inp_bound, self.adc_bits, self.out_bound, self.out_noise,
                ctl.NM_ABS_MAX if self.noise_management == "abs_max" else ctl.NM_NONE,
                self.bound_management == "iterative", self.max_bm_rounds)


class PulseConfig(BaseModel):
    """How the controller turns an update into pulses."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    bl_max: int = Field(31, ge=1, le=31, description="longest stochastic pulse train (BL)")
    update_management: bool = Field(True, description="balance the x and d train probabilities (aihwkit UM)")
    dw_min: float | None = Field(None, gt=0, description="step used for BL and train probabilities; default the "
                                 "card's aihwkit dw_min (larger step at w = 0)")
    chi_frac_bits: int = Field(24, ge=8, le=28, description="fraction bits of the int32 mixed-precision accumulator")
    max_pulses_per_update: int = Field(0, ge=0, description="mixed precision: most pulses per device per step (0: no cap)")
    amplitude_up_v: float | None = Field(None, gt=0, description="|V| of up (negative) pulses; default: the card's "
                                         "amplitude-blind steps (the staircase read as identical pulses). Set, the "
                                         "card's amplitude response gives the steps (within the measured range)")
    amplitude_down_v: float | None = Field(None, gt=0, description="|V| of down (positive) pulses; as amplitude_up_v")
    chi_bits: Literal[8, 16, 32] | None = Field(None, description="mixed precision: width of the chi accumulator; "
                                                "None or 32: int32 in Q(31-F).F weight units; 16 or 8: the residual "
                                                "in units of granularity / 2^(bits - 4) (3 bits of headroom above "
                                                "the threshold) with stochastic rounding")

    @property
    def chi_width(self) -> int:
        return 32 if self.chi_bits is None else int(self.chi_bits)

    @property
    def amplitude_aware(self) -> bool:
        return self.amplitude_up_v is not None or self.amplitude_down_v is not None


@dataclass
class CounterReport:
    """Exact event counts of one tile (or a whole board): plain integers, ready for an energy model."""

    counts: dict[str, int]
    pulses_per_device_up: np.ndarray = field(repr=False)
    pulses_per_device_down: np.ndarray = field(repr=False)
    reference_pulses_up: np.ndarray = field(repr=False)
    reference_pulses_down: np.ndarray = field(repr=False)

    @property
    def total_pulses(self) -> int:
        c = self.counts
        return c["pulses_up"] + c["pulses_down"] + c["calibration_pulses_up"] + c["calibration_pulses_down"]

    def to_dict(self) -> dict:
        return dict(self.counts, total_pulses=self.total_pulses,
                    max_pulses_per_device=int(max(self.pulses_per_device_up.max(initial=0),
                                                  self.pulses_per_device_down.max(initial=0))))

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2)


@dataclass
class CalibrationResult:
    """Outcome of the in-situ symmetry-point calibration of a tile."""

    symmetry_points: np.ndarray = field(repr=False)
    pairs: np.ndarray = field(repr=False)
    pulses: int
    reference_missed: int

    def to_dict(self) -> dict:
        sp = self.symmetry_points
        return dict(pulses=self.pulses, reference_missed=self.reference_missed, mean_symmetry_point=float(sp.mean()),
                    std_symmetry_point=float(sp.std()), mean_pairs=float(self.pairs.mean()))


def _device_params(model: PiecewiseStepModel, variation: DeviceVariation, rows: int, cols: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Per-device scale_up, scale_down, w_min, w_max, inv_span with aihwkit's device-to-device conventions."""
    shape = (rows, cols)
    gain = 1.0 + variation.dw_min_dtod * rng.standard_normal(shape)
    r = variation.up_down_dtod * rng.standard_normal(shape)
    up_bias, down_bias = min(model.up_down, 0.0), -max(model.up_down, 0.0)
    params = np.empty((rows, cols, crossbar.N_PARAMS))
    params[..., crossbar.P_SCALE_UP] = np.abs(up_bias + gain + r) * model.dw_min_aihwkit
    params[..., crossbar.P_SCALE_DOWN] = np.abs(down_bias + gain - r) * model.dw_min_aihwkit
    w_max = model.w_max * (1.0 + variation.w_max_dtod * rng.standard_normal(shape))
    w_min = model.w_min * (1.0 + variation.w_min_dtod * rng.standard_normal(shape))
    params[..., crossbar.P_W_MIN] = w_min
    params[..., crossbar.P_W_MAX] = w_max
    params[..., crossbar.P_INV_SPAN] = (len(model.piecewise_up) - 1) / (w_max - w_min)
    return params


@njit(cache=True)
def _any_nonfinite(flat) -> bool:
    """Whether a contiguous float64 vector holds a NaN or an inf (exponent bits all ones): an integer maximum that
    vectorises and allocates nothing (np.isfinite(m).all() allocates a mask: 27 us for a 64 x 785 batch against
    6 us, on every MVM and update call of a training step)."""
    bits = flat.view(np.int64)
    exponent = np.int64(0x7FF0000000000000)
    top = np.int64(0)
    for k in range(bits.shape[0]):
        top = max(top, bits[k] & exponent)
    return top == exponent


@njit(cache=True)
def _decode(codes, scales, out):
    """out[b, k] = codes[b, k] * scales[b]: a batch's digital outputs from its ADC codes (numpy's codes * scales[:,
    None], without its int32 -> float64 temporary)."""
    for b in range(codes.shape[0]):
        s = scales[b]
        for k in range(codes.shape[1]):
            out[b, k] = np.float64(codes[b, k]) * s


@njit(cache=True)
def _mvm_out(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
             noise_management, bound_management, max_bm_rounds, rng, normal_table, codes, counters, out) -> bool:
    """controller.mvm and its digital outputs out = codes * scale in one call from Python, after the finite check of
    vec; False (nothing run, nothing drawn, nothing counted) when vec holds a NaN or an inf. A batch-1 step of a
    three-layer network makes five of these calls and three updates, and on the small layers each call from Python
    cost more than the MVM itself (numba's dispatch of the arguments, the check's own call, numpy's int32 * float
    temporary: docs/performance.md, "Fourth round")."""
    if _any_nonfinite(vec):
        return False
    scale = ctl.mvm(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
                    noise_management, bound_management, max_bm_rounds, rng, normal_table, codes, counters)
    for k in range(codes.shape[0]):
        out[k] = np.float64(codes[k]) * scale
    return True


@njit(cache=True)
def _sgd_checked(state, params, table_up, table_down, c2c_std, x, d, lr, dw_min, bl_max, update_management, rng,
                 normal_table, device_pulses, counters) -> int:
    """controller.stochastic_update after the finite checks of x and d in the same call; -1 (nothing run) when
    either holds a NaN or an inf."""
    if _any_nonfinite(x) or _any_nonfinite(d):
        return -1
    return ctl.stochastic_update(state, params, table_up, table_down, c2c_std, x, d, lr, dw_min, bl_max,
                                 update_management, rng, normal_table, device_pulses, counters)


@njit(cache=True)
def _mp_checked(state, params, table_up, table_down, c2c_std, chi, x, d, lr, chi_frac_bits, x_q, row_mult, eps_up_q,
                eps_down_q, max_pulses, rng, normal_table, device_pulses, counters) -> int:
    """controller.chi_increments and controller.mp_update after the finite checks of x and d in the same call; -1
    (nothing run) when either holds a NaN or an inf."""
    if _any_nonfinite(x) or _any_nonfinite(d):
        return -1
    ctl.chi_increments(x, d, lr, chi_frac_bits, x_q, row_mult)
    return ctl.mp_update(state, params, table_up, table_down, c2c_std, chi, x_q, row_mult, eps_up_q, eps_down_q,
                         max_pulses, rng, normal_table, device_pulses, counters)


def _contiguous(values, length: int, name: str) -> np.ndarray:
    """A contiguous float64 vector of the right length (its values not checked), or a one-line error."""
    v = np.ascontiguousarray(values, np.float64)
    if v.shape != (length,):
        raise EdgelearnError(f"{name} must have shape ({length},), got {v.shape}")
    return v


def _vector(values, length: int, name: str) -> np.ndarray:
    """A contiguous float64 vector of the right length with finite values, or a one-line error."""
    v = _contiguous(values, length, name)
    if _any_nonfinite(v):
        raise EdgelearnError(f"{name} has non-finite values (NaN or inf) at positions "
                             f"{np.nonzero(~np.isfinite(v))[0][:5].tolist()}")
    return v


def epsilon_codes(granularity: float, chi_frac_bits: int, epsilon: float | None = None,
                  epsilon_down: float | None = None) -> tuple[int, int]:
    """The mixed-precision thresholds (up, down) as chi codes: epsilon (default the card's granularity) times
    2^chi_frac_bits; epsilon_down defaults to epsilon. One-line error when they do not fit the int32 accumulator."""
    unit = 2.0 ** chi_frac_bits
    eps_up = epsilon if epsilon is not None else granularity
    eps_down = epsilon_down if epsilon_down is not None else eps_up
    eps_up_q, eps_down_q = int(round(eps_up * unit)), int(round(eps_down * unit))
    if not (0 < eps_up_q < 2**31 and 0 < eps_down_q < 2**31):
        raise EdgelearnError(f"epsilon {eps_up}/{eps_down} does not fit the Q{31 - chi_frac_bits}.{chi_frac_bits} "
                             "accumulator")
    return eps_up_q, eps_down_q


class Tile:
    """A rows x cols crossbar of one device type (a card), with optional reference devices, driven by the controller.

    Weights live in the devices: w = state (- reference state). Each device's step scales and bounds are drawn once
    from the card's device-to-device variation (`variation` overrides it); `c2c_std` overrides the card's
    cycle-to-cycle sigma. One seed drives everything random in the tile.
    """

    def __init__(self, card: DeviceCard | PiecewiseStepModel | str, rows: int, cols: int, *, seed: int = 0,
                 variation: DeviceVariation | None = None, c2c_std: float | None = None, references: bool = False,
                 periphery: PeripheryConfig | None = None, pulses: PulseConfig | None = None):
        if rows < 1 or cols < 1:
            raise EdgelearnError(f"tile size must be positive, got {rows} x {cols}")
        if isinstance(card, str):
            card = load_card(card)
        self.pulse_config = pulses or PulseConfig()
        if self.pulse_config.amplitude_aware:  # the card's amplitude response at these amplitudes
            if not isinstance(card, DeviceCard):
                raise EdgelearnError("pulses.amplitude_up_v / amplitude_down_v need a device card with an amplitude "
                                     "response, not a bare step model")
            model = card.model_at(self.pulse_config.amplitude_up_v, self.pulse_config.amplitude_down_v)
        else:
            model = card.model if isinstance(card, DeviceCard) else card
        if variation is None:
            variation = card.variation if isinstance(card, DeviceCard) else DeviceVariation.none()
        self.card_id = card.card_id if isinstance(card, DeviceCard) else "model"
        self.model, self.variation = model, variation
        self._granularity = model.granularity  # fixed for the tile's life, asked for on every mixed-precision update
        self.rows, self.cols, self.seed = rows, cols, seed
        self.c2c_std = model.dw_min_std if c2c_std is None else float(c2c_std)
        self.periphery = periphery or PeripheryConfig()  # a property: the kernel arguments come with it
        self.dw_min = self.pulse_config.dw_min or model.dw_min_aihwkit
        host_rng = np.random.default_rng(seed)
        self.table_up = np.asarray(model.piecewise_up, np.float64)
        self.table_down = np.asarray(model.piecewise_down, np.float64)
        self.params = _device_params(model, variation, rows, cols, host_rng)
        self.state = np.zeros((rows, cols))
        np.clip(self.state, self.params[..., crossbar.P_W_MIN], self.params[..., crossbar.P_W_MAX], out=self.state)
        self.references = references
        self.ref_params = _device_params(model, variation, rows, cols, host_rng) if references else self.params
        self.ref_state = np.zeros((rows, cols))
        self.rng = fixed.seed_state(int(host_rng.integers(2**63)))
        self.normal_table = fixed.normal_table()
        self.chi = np.zeros((rows, cols), {32: np.int32, 16: np.int16, 8: np.int8}[self.pulse_config.chi_width])
        self._x_q = np.zeros(cols, np.int32)
        self._row_mult = np.zeros(rows, np.int32)
        self._fwd_codes = np.zeros(rows, np.int32)
        self._bwd_codes = np.zeros(cols, np.int32)
        self.reset_counters()

    # -- weights ---------------------------------------------------------------------------------------------------
    @property
    def weights(self) -> np.ndarray:
        """Current weights (device minus reference where references are used); a copy."""
        return self.state - self.ref_state if self.references else self.state.copy()

    def set_weights(self, w: np.ndarray) -> None:
        """Set device states directly (factory initialisation, not counted), clipped to each device's bounds."""
        w = np.asarray(w, float)
        if w.shape != (self.rows, self.cols):
            raise EdgelearnError(f"weights must have shape {(self.rows, self.cols)}, got {w.shape}")
        target = w + self.ref_state if self.references else w
        np.clip(target, self.params[..., crossbar.P_W_MIN], self.params[..., crossbar.P_W_MAX], out=self.state)

    # -- periphery ---------------------------------------------------------------------------------------------------
    @property
    def periphery(self) -> PeripheryConfig:
        """The DAC / ADC settings (frozen); assigning new ones takes effect from the next MVM."""
        return self._periphery

    @periphery.setter
    def periphery(self, value: PeripheryConfig) -> None:
        self._periphery = value
        self._periphery_args = value.kernel_args()

    def _mvm(self, vec, transpose, codes):
        vec = _vector(vec, self.rows if transpose else self.cols, "backward input" if transpose else "forward input")
        scale = ctl.mvm(self.state, self.ref_state, self.references, vec, transpose, *self._periphery_args,
                        self.rng, self.normal_table, codes, self.counters)
        return codes, scale

    def _mvm_digital(self, vec, transpose, codes) -> np.ndarray:
        name = "backward input" if transpose else "forward input"
        vec = _contiguous(vec, self.rows if transpose else self.cols, name)
        out = np.empty(codes.shape[0])
        if not _mvm_out(self.state, self.ref_state, self.references, vec, transpose, *self._periphery_args, self.rng,
                        self.normal_table, codes, self.counters, out):
            _vector(vec, vec.shape[0], name)  # raises the one-line error naming the positions
        return out

    def forward_codes(self, x) -> tuple[np.ndarray, float]:
        """Forward MVM: (ADC codes, scale); the digital output is codes * scale."""
        codes, scale = self._mvm(x, False, self._fwd_codes)
        return codes.copy(), scale

    def forward(self, x) -> np.ndarray:
        return self._mvm_digital(x, False, self._fwd_codes)

    def backward(self, d) -> np.ndarray:
        return self._mvm_digital(d, True, self._bwd_codes)

    def _matrix(self, values, width: int, name: str) -> np.ndarray:
        m = np.ascontiguousarray(values, np.float64)
        if m.ndim != 2 or m.shape[1] != width:
            raise EdgelearnError(f"{name} must have shape (batch, {width}), got {m.shape}")
        if _any_nonfinite(m.reshape(-1)):
            raise EdgelearnError(f"{name} has non-finite values (NaN or inf)")
        return m

    def _mvm_batch(self, vecs, transpose):
        vecs = self._matrix(vecs, self.rows if transpose else self.cols, "backward batch" if transpose else
                            "forward batch")
        codes = np.empty((vecs.shape[0], self.cols if transpose else self.rows), np.int32)
        scales = np.empty(vecs.shape[0])
        ctl.mvm_batch_gemm(self.state, self.ref_state, self.references, vecs, transpose, *self._periphery_args,
                           self.rng, self.normal_table, codes, scales, self.counters)
        out = np.empty(codes.shape)
        _decode(codes, scales, out)
        return out

    def forward_batch(self, xs) -> np.ndarray:
        """forward for each row of xs (batch, cols) -> (batch, rows)."""
        return self._mvm_batch(xs, False)

    def backward_batch(self, ds) -> np.ndarray:
        """backward for each row of ds (batch, rows) -> (batch, cols)."""
        return self._mvm_batch(ds, True)

    # -- updates -------------------------------------------------------------------------------------------------
    def update_sgd(self, x, d, lr: float) -> int:
        """Pulsed rank-1 update W <- W - lr d x^T with stochastic trains; returns the pulses applied."""
        x, d = _contiguous(x, self.cols, "x"), _contiguous(d, self.rows, "d")
        pc = self.pulse_config
        n = _sgd_checked(self.state, self.params, self.table_up, self.table_down, self.c2c_std, x, d, float(lr),
                         self.dw_min, pc.bl_max, pc.update_management, self.rng, self.normal_table,
                         self.device_pulses, self.counters)
        if n < 0:
            _vector(x, self.cols, "x"), _vector(d, self.rows, "d")  # raises the one-line error
        self._account(n)
        return int(n)

    def update_mp(self, x, d, lr: float, epsilon: float | None = None, epsilon_down: float | None = None) -> int:
        """Mixed-precision step: chi += -lr d x^T (int32, Q with chi_frac_bits), pulses where |chi| >= epsilon.
        epsilon defaults to the card's granularity; epsilon_down (if given) is the threshold for down pulses."""
        x, d = _contiguous(x, self.cols, "x"), _contiguous(d, self.rows, "d")
        pc = self.pulse_config
        if pc.chi_width < 32:  # the narrow accumulator has one kernel: a batch of one
            x, d = _vector(x, self.cols, "x"), _vector(d, self.rows, "d")
            return self.update_mp_batch(x[None, :], d[None, :], lr, epsilon, epsilon_down)
        eps_up_q, eps_down_q = self._epsilon_codes(epsilon, epsilon_down)
        n = _mp_checked(self.state, self.params, self.table_up, self.table_down, self.c2c_std, self.chi, x, d,
                        float(lr), pc.chi_frac_bits, self._x_q, self._row_mult, eps_up_q, eps_down_q,
                        pc.max_pulses_per_update, self.rng, self.normal_table, self.device_pulses, self.counters)
        if n < 0:
            _vector(x, self.cols, "x"), _vector(d, self.rows, "d")  # raises the one-line error
        self._account(n)
        return int(n)

    def update_sgd_batch(self, xs, ds, lr: float) -> int:
        """One stochastic pulsed rank-1 update per sample of a mini-batch (in order); returns the pulses."""
        xs, ds = self._matrix(xs, self.cols, "x batch"), self._matrix(ds, self.rows, "d batch")
        if xs.shape[0] != ds.shape[0]:
            raise EdgelearnError(f"x and d batches differ in length: {xs.shape[0]} and {ds.shape[0]}")
        pc = self.pulse_config
        n = ctl.stochastic_update_batch(self.state, self.params, self.table_up, self.table_down, self.c2c_std, xs,
                                        ds, float(lr), self.dw_min, pc.bl_max, pc.update_management, self.rng,
                                        self.normal_table, self.device_pulses, self.counters)
        self._account(n)
        return int(n)

    def update_deterministic_batch(self, xs, ds, lr: float) -> int:
        """Plain SGD with deterministic pulse counts, one update per mini-batch: the controller sums
        g_ij = sum_b d_bi x_bj over the batch (counted as digital MACs), then round(lr |g_ij| / dw_min) pulses (at
        most bl_max) on each device, down where g_ij > 0, no remainder kept; returns the pulses."""
        xs, ds = self._matrix(xs, self.cols, "x batch"), self._matrix(ds, self.rows, "d batch")
        if xs.shape[0] != ds.shape[0]:
            raise EdgelearnError(f"x and d batches differ in length: {xs.shape[0]} and {ds.shape[0]}")
        n = ctl.deterministic_update_batch(self.state, self.params, self.table_up, self.table_down, self.c2c_std, xs,
                                           ds, float(lr), self.dw_min, self.pulse_config.bl_max, self.rng,
                                           self.normal_table, self.device_pulses, self.counters)
        self._account(n)
        return int(n)

    def update_mp_batch(self, xs, ds, lr: float, epsilon: float | None = None,
                        epsilon_down: float | None = None) -> int:
        """Mixed-precision step for a mini-batch: the controller sums d x^T over the batch (counted as digital MACs),
        chi += round(-lr * sum * 2^F), then pulses where |chi| >= epsilon, as update_mp. With pulses.chi_bits 8 or
        16 the accumulator is narrow (firmware_model.lowmem.mp_update_dense_q): units of granularity / 2^(bits-4),
        stochastic rounding, saturation at the integer's range."""
        xs, ds = self._matrix(xs, self.cols, "x batch"), self._matrix(ds, self.rows, "d batch")
        if xs.shape[0] != ds.shape[0]:
            raise EdgelearnError(f"x and d batches differ in length: {xs.shape[0]} and {ds.shape[0]}")
        pc = self.pulse_config
        gradient = ds.T @ xs
        self.counters[ctl.C_MACS] += xs.shape[0] * self.rows * self.cols
        if pc.chi_width < 32:
            frac = pc.chi_width - 4
            unit = self.granularity / 2.0**frac
            eps_up = self.granularity if epsilon is None else epsilon
            eps_down = eps_up if epsilon_down is None else epsilon_down
            eps_up_q, eps_down_q = int(round(eps_up / unit)), int(round(eps_down / unit))
            top = 2 ** (pc.chi_width - 1) - 1
            if not (0 < eps_up_q <= top and 0 < eps_down_q <= top):
                raise EdgelearnError(f"epsilon {eps_up:g}/{eps_down:g} does not fit the int{pc.chi_width} "
                                     f"accumulator (units of {unit:g}, at most {top})")
            n = lowmem.mp_update_dense_q(self.state, self.params, self.table_up, self.table_down, self.c2c_std,
                                         self.chi, gradient, -float(lr) / unit, eps_up_q, eps_down_q, -top, top,
                                         pc.max_pulses_per_update, self.rng, self.normal_table, self.device_pulses,
                                         self.counters)
            self._account(n)
            return int(n)
        eps_up_q, eps_down_q = self._epsilon_codes(epsilon, epsilon_down)
        n = ctl.mp_update_dense(self.state, self.params, self.table_up, self.table_down, self.c2c_std, self.chi,
                                gradient, -float(lr) * 2.0 ** pc.chi_frac_bits, eps_up_q, eps_down_q,
                                pc.max_pulses_per_update, self.rng, self.normal_table, self.device_pulses,
                                self.counters)
        self._account(n)
        return int(n)

    def apply_counts(self, counts) -> int:
        """Apply a signed pulse-count matrix (> 0: that many up pulses, < 0: down), device by device in row-major
        order (the test board's UPDATE command); counted as training pulses. Returns the pulses applied."""
        counts = np.asarray(counts)
        if counts.shape != (self.rows, self.cols) or counts.dtype.kind not in "iu":
            raise EdgelearnError(f"pulse counts must be integers of shape {(self.rows, self.cols)}, got "
                                 f"{counts.dtype} {counts.shape}")
        n = ctl.apply_counts(self.state, self.params, self.table_up, self.table_down, self.c2c_std,
                             counts.astype(np.int64), self.rng, self.normal_table, self.device_pulses, self.counters)
        self._account(n)
        return int(n)

    def _epsilon_codes(self, epsilon, epsilon_down) -> tuple[int, int]:
        return epsilon_codes(self.granularity, self.pulse_config.chi_frac_bits, epsilon, epsilon_down)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    _STATE_FIELDS = ("state", "ref_state", "params", "ref_params", "chi", "rng", "counters", "device_pulses",
                     "_device_totals")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything that changes while the tile runs (for checkpoints); configuration is rebuilt from the card."""
        out = {name: np.array(getattr(self, name), copy=True) for name in self._STATE_FIELDS}
        out["_pulses_since_fold"] = np.array(self._pulses_since_fold)
        return out

    def load_state_dict(self, data: dict[str, np.ndarray]) -> None:
        for name in self._STATE_FIELDS:
            current = getattr(self, name)
            value = np.asarray(data[name])
            if value.shape != current.shape or value.dtype != current.dtype:
                raise EdgelearnError(f"checkpoint field {name}: shape {value.shape} {value.dtype}, expected "
                                     f"{current.shape} {current.dtype} (another network or card?)")
            setattr(self, name, value.copy())
        self._pulses_since_fold = int(data["_pulses_since_fold"])

    @property
    def granularity(self) -> float:
        """Mean of the up and down step at w = 0 of the nominal device (the card's epsilon)."""
        return self._granularity

    # -- calibration -----------------------------------------------------------------------------------------------
    def calibrate_symmetry(self, window: int = 20, max_pairs: int = 5000, tolerance: float | None = None,
                           reference_tolerance: float | None = None, max_program_pulses: int = 2000
                           ) -> CalibrationResult:
        """Symmetry-point shifting: find each trainable device's symmetry point by alternating up/down pulses until
        it settles (it stays there), then program its reference device to that point by write-verify, so that the
        weight (device - reference) is 0 where the device drifts to. All pulses count as calibration."""
        if not self.references:
            raise EdgelearnError("calibrate_symmetry needs a tile built with references=True")
        eps = self.granularity
        tolerance = 0.25 * eps if tolerance is None else tolerance
        reference_tolerance = 0.5 * eps if reference_tolerance is None else reference_tolerance
        settled = np.zeros((self.rows, self.cols))
        pairs = np.zeros((self.rows, self.cols), np.int64)
        before = self.counters[ctl.C_CAL_PULSES_UP] + self.counters[ctl.C_CAL_PULSES_DOWN]
        ctl.symmetry_search(self.state, self.params, self.table_up, self.table_down, self.c2c_std, 0, window,
                            max_pairs, tolerance, self.rng, self.normal_table, settled, pairs, self.device_pulses,
                            self.counters)
        missed = ctl.program_to(self.ref_state, self.ref_params, self.table_up, self.table_down, self.c2c_std, 1,
                                settled, reference_tolerance, max_program_pulses, self.rng, self.normal_table,
                                self.device_pulses, self.counters)
        after = self.counters[ctl.C_CAL_PULSES_UP] + self.counters[ctl.C_CAL_PULSES_DOWN]
        self._account(after - before)
        return CalibrationResult(settled, pairs, int(after - before), int(missed))

    # -- counters ------------------------------------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.counters = np.zeros(ctl.N_COUNTERS, np.int64)
        self.device_pulses = np.zeros((2, self.rows, self.cols, 2), np.int32)
        self._device_totals = np.zeros((2, self.rows, self.cols, 2), np.int64)
        self._pulses_since_fold = 0

    def _account(self, pulses: int) -> None:
        """Fold the int32 per-device counts into int64 totals before they could overflow: no device can have received
        more pulses since the last fold than the tile as a whole."""
        self._pulses_since_fold += int(pulses)
        if self._pulses_since_fold >= _FOLD_LIMIT // 2:
            self._device_totals += self.device_pulses
            self.device_pulses[:] = 0
            self._pulses_since_fold = 0

    def counter_report(self) -> CounterReport:
        totals = self._device_totals + self.device_pulses
        return CounterReport(counts={name: int(v) for name, v in zip(ctl.COUNTER_NAMES, self.counters)},
                             pulses_per_device_up=totals[0, ..., 0], pulses_per_device_down=totals[0, ..., 1],
                             reference_pulses_up=totals[1, ..., 0], reference_pulses_down=totals[1, ..., 1])


class Board(Protocol):
    """What training, characterisation and streaming code may ask of a board (in-process, emulated or real).
    Tiles are addressed by the integer id add_tile returns; batches are (batch, n) float arrays."""

    def add_tile(self, card: DeviceCard | str, rows: int, cols: int, **options) -> int: ...
    def forward(self, tile: int, x: np.ndarray) -> np.ndarray: ...
    def backward(self, tile: int, d: np.ndarray) -> np.ndarray: ...
    def forward_batch(self, tile: int, xs: np.ndarray) -> np.ndarray: ...
    def backward_batch(self, tile: int, ds: np.ndarray) -> np.ndarray: ...
    def update_sgd(self, tile: int, x: np.ndarray, d: np.ndarray, lr: float) -> int: ...
    def update_sgd_batch(self, tile: int, xs: np.ndarray, ds: np.ndarray, lr: float) -> int: ...
    def update_deterministic_batch(self, tile: int, xs: np.ndarray, ds: np.ndarray, lr: float) -> int: ...
    def update_mp(self, tile: int, x: np.ndarray, d: np.ndarray, lr: float, epsilon: float | None = None) -> int: ...
    def update_mp_batch(self, tile: int, xs: np.ndarray, ds: np.ndarray, lr: float, epsilon: float | None = None,
                        epsilon_down: float | None = None) -> int: ...
    def apply_counts(self, tile: int, counts: np.ndarray) -> int: ...
    def calibrate_symmetry(self, tile: int, **options) -> CalibrationResult: ...
    def read_weights(self, tile: int) -> np.ndarray: ...
    def set_weights(self, tile: int, w: np.ndarray) -> None: ...
    def device_states(self, tile: int) -> np.ndarray: ...
    def counters(self, tile: int | None = None) -> CounterReport: ...


class InProcessBoard:
    """The firmware model running in this process: tiles addressed by integer ids, one seed for the board."""

    def __init__(self, seed: int = 0, periphery: PeripheryConfig | None = None, pulses: PulseConfig | None = None):
        self.seed = seed
        self.periphery = periphery
        self.pulses = pulses
        self.tiles: list[Tile] = []

    def add_tile(self, card, rows, cols, **options) -> int:
        options.setdefault("seed", self.seed * 1_000_003 + len(self.tiles))
        options.setdefault("periphery", self.periphery)
        options.setdefault("pulses", self.pulses)
        self.tiles.append(Tile(card, rows, cols, **options))
        return len(self.tiles) - 1

    def tile(self, tile: int) -> Tile:
        """The in-process Tile object behind an id (for notebooks and tests; board-agnostic code uses the methods)."""
        if not 0 <= tile < len(self.tiles):
            raise EdgelearnError(f"no tile {tile} on this board ({len(self.tiles)} tiles)")
        return self.tiles[tile]

    def forward(self, tile, x):
        return self.tile(tile).forward(x)

    def backward(self, tile, d):
        return self.tile(tile).backward(d)

    def forward_batch(self, tile, xs):
        return self.tile(tile).forward_batch(xs)

    def backward_batch(self, tile, ds):
        return self.tile(tile).backward_batch(ds)

    def update_sgd(self, tile, x, d, lr):
        return self.tile(tile).update_sgd(x, d, lr)

    def update_sgd_batch(self, tile, xs, ds, lr):
        return self.tile(tile).update_sgd_batch(xs, ds, lr)

    def update_deterministic_batch(self, tile, xs, ds, lr):
        return self.tile(tile).update_deterministic_batch(xs, ds, lr)

    def update_mp(self, tile, x, d, lr, epsilon=None):
        return self.tile(tile).update_mp(x, d, lr, epsilon)

    def update_mp_batch(self, tile, xs, ds, lr, epsilon=None, epsilon_down=None):
        return self.tile(tile).update_mp_batch(xs, ds, lr, epsilon, epsilon_down)

    def apply_counts(self, tile, counts):
        return self.tile(tile).apply_counts(counts)

    def calibrate_symmetry(self, tile, **options):
        return self.tile(tile).calibrate_symmetry(**options)

    def read_weights(self, tile):
        return self.tile(tile).weights

    def set_weights(self, tile, w):
        self.tile(tile).set_weights(w)

    def device_states(self, tile):
        return self.tile(tile).state.copy()

    def state_dict(self, tile) -> dict:
        return self.tile(tile).state_dict()

    def load_state_dict(self, tile, data) -> None:
        self.tile(tile).load_state_dict(data)

    def counters(self, tile: int | None = None) -> CounterReport:
        """One tile's counters, or all tiles' summed (per-device arrays concatenated, flattened)."""
        if tile is not None:
            return self.tile(tile).counter_report()
        reports = [t.counter_report() for t in self.tiles]
        if not reports:
            raise EdgelearnError("the board has no tiles")
        counts = {k: sum(r.counts[k] for r in reports) for k in reports[0].counts}
        flat = lambda name: np.concatenate([getattr(r, name).ravel() for r in reports])  # noqa: E731
        return CounterReport(counts, flat("pulses_per_device_up"), flat("pulses_per_device_down"),
                             flat("reference_pulses_up"), flat("reference_pulses_down"))
