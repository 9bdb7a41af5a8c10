"""Amplitude-aware device steps (docs/devices.md, "Amplitude-aware steps").

The LBE247 traces are amplitude staircases: each branch starts at a low |V| and ends at a high one. A card's step
tables are amplitude-blind (each pulse is read as the same pulse, so the ramp is absorbed into the state dependence).
The amplitude response fits, on the same trace and by the same replay objective, step tables at a reference
amplitude (the top of the measured range) jointly with one sigmoid amplitude factor per direction:

    step(w, V) = table(w) * A(|V|) / A(V_ref),   A(v) = 1 / (1 + exp(-(v - v0) / vs))

so that the emulator can run a pulse amplitude the user chooses (within the measured range; `PulseConfig.amplitude_*`),
the energy models price the pulse at that amplitude, and the board emulator's `--amplitude-aware` mode answers a HIL
amplitude sweep. `cross_validate_amplitude` puts the amplitude-aware model's blocked out-of-sample error beside the
amplitude-blind card's on the same folds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
from numba import njit

from firmware_model import crossbar

from .devices import (DEFAULT_NODES, DEFAULT_SMOOTHING, MAX_FIT_ITERATIONS, AmplitudeResponse, DeviceCard,
                      PiecewiseStepModel, _flat_outside, _initial_tables, _local_steps, _second_difference,
                      amplitude_sigmoid, fit_inputs, fit_subset, to_weight)
from .errors import EdgelearnError, EdgelearnWarning
from .traces import Trace

MIN_AMPLITUDE_SPAN_V = 0.05  # a direction whose pulses span less than this in |V| has no amplitude dependence to fit


@njit(cache=True)
def replay_scaled(w_start, polarities, multipliers, restart, restart_w, table_up, table_down, w_min, w_max):
    """crossbar.replay with absolute step tables and a per-pulse step multiplier (the amplitude factor of pulse k)."""
    n = polarities.shape[0]
    out = np.empty(n)
    inv_span = (table_up.shape[0] - 1) / (w_max - w_min)
    w = w_start
    for k in range(n):
        if k == 0:
            w = w_start
        elif restart[k]:
            w = restart_w[k]
        else:
            m = multipliers[k]
            w = crossbar.step_state(w, polarities[k], table_up, table_down, m, m, w_min, w_max, inv_span, 0.0)
        out[k] = w
    return out


def replay_scaled_reference(w_start, polarities, multipliers, restart, restart_w, table_up, table_down, w_min,
                            w_max) -> np.ndarray:
    """Slow reference of replay_scaled in plain Python floats (the test compares them exactly)."""
    n_sections = len(table_up) - 1
    inv_span = n_sections / (w_max - w_min)

    def interp(table, w):
        position = (w - w_min) * inv_span
        if position <= 0.0:
            return float(table[0])
        if position >= n_sections:
            return float(table[n_sections])
        i = int(position)
        t = position - i
        return float(table[i]) + t * (float(table[i + 1]) - float(table[i]))

    out, w = [], float(w_start)
    for k in range(len(polarities)):
        if k == 0:
            w = float(w_start)
        elif restart[k]:
            w = float(restart_w[k])
        else:
            m = float(multipliers[k])
            if polarities[k] > 0:
                w = w - m * interp(table_down, w)
            else:
                w = w + m * interp(table_up, w)
            w = min(max(w, w_min), w_max)
        out.append(w)
    return np.array(out)


def _ranges(trace: Trace) -> tuple[tuple[float, float], tuple[float, float]]:
    volts = np.abs(trace.amplitude_v.astype(float))
    up, down = volts[trace.polarity < 0], volts[trace.polarity > 0]
    return (float(up.min()), float(up.max())), (float(down.min()), float(down.max()))


def has_amplitude_range(trace: Trace) -> bool:
    """Whether both directions' pulses span at least MIN_AMPLITUDE_SPAN_V (something to fit a response on)."""
    if not ((trace.polarity < 0).any() and (trace.polarity > 0).any()):
        return False
    (ul, uh), (dl, dh) = _ranges(trace)
    return uh - ul >= MIN_AMPLITUDE_SPAN_V and dh - dl >= MIN_AMPLITUDE_SPAN_V


def ramps(trace: Trace) -> dict:
    """Per direction, how many trains (runs of consecutive pulses of one polarity, at least 3) ramp |V| up, down or
    not at all: {"up": {"rising": n, "falling": n, "flat": n}, "down": {...}}."""
    volts = np.abs(trace.amplitude_v.astype(float))
    out = {d: {"rising": 0, "falling": 0, "flat": 0} for d in ("up", "down")}
    breaks = trace.anchors | np.r_[True, trace.polarity[1:] != trace.polarity[:-1]]
    starts = np.nonzero(breaks)[0]
    for a, b in zip(starts, np.r_[starts[1:], len(volts)]):
        if b - a < 3:
            continue
        slope = np.polyfit(np.arange(b - a), volts[a:b], 1)[0] * (b - a)  # change of |V| over the train
        kind = "flat" if abs(slope) < MIN_AMPLITUDE_SPAN_V else ("rising" if slope > 0 else "falling")
        out["down" if trace.polarity[a] > 0 else "up"][kind] += 1
    return out


def identified(r: dict) -> bool:
    """Whether trains of each direction ramp both ways (see AmplitudeResponse.identified)."""
    return all(r[d]["rising"] > 0 and r[d]["falling"] > 0 for d in ("up", "down"))


def multipliers(volts: np.ndarray, polarity: np.ndarray, sigmoid: tuple, reference: tuple) -> np.ndarray:
    """A(|V_k|) / A(V_ref) per pulse; sigmoid = (v0_up, vs_up, v0_down, vs_down), reference = (up, down)."""
    v0u, vsu, v0d, vsd = sigmoid
    up = amplitude_sigmoid(volts, v0u, vsu) / amplitude_sigmoid(reference[0], v0u, vsu)
    down = amplitude_sigmoid(volts, v0d, vsd) / amplitude_sigmoid(reference[1], v0d, vsd)
    return np.where(polarity > 0, down, up)


@dataclass
class _Fit:
    response: AmplitudeResponse
    g_scale: tuple  # (g_ref, g_min, g_max) of the fitted rows: the w scale of response.model


def _fit(trace: Trace, nodes: int, smoothing: float, start: PiecewiseStepModel | None) -> _Fit:
    from scipy.optimize import least_squares

    from .families import fit_family

    where = trace.path or trace.meta.source or "trace"
    if not has_amplitude_range(trace):
        raise EdgelearnError(f"{where}: each direction's pulses need amplitudes spanning at least "
                             f"{MIN_AMPLITUDE_SPAN_V:g} V to fit an amplitude response")
    scale, w, grid, before, step, pol = fit_inputs(trace, nodes)
    w_min, w_max = float(grid[0]), float(grid[-1])
    range_up, range_down = _ranges(trace)
    reference = (range_up[1], range_down[1])
    full_trace, full_w = trace, w
    subset = fit_subset(len(trace))
    if subset is not None:
        trace = replace(trace, pulse=trace.pulse[subset], amplitude_v=trace.amplitude_v[subset],
                        polarity=trace.polarity[subset], conductance_s=trace.conductance_s[subset])
        w = w[subset]
    volts = np.abs(trace.amplitude_v.astype(float))
    polarity = trace.polarity.astype(np.int64)
    anchors = trace.anchors
    compared = ~anchors
    # start: the amplitude-aware family's sigmoids, and tables whose steps at each pulse's amplitude match the
    # amplitude-blind ones on average
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgelearnWarning)
        family = fit_family(trace, "power-amplitude", scale)
    sig0 = (family.p_up[2], family.p_up[3], family.p_down[2], family.p_down[3])
    m0 = multipliers(volts, polarity, sig0, reference)
    b, s, p = _local_steps(w, trace)
    starts = [_initial_tables(b, s, p, grid, smoothing)]
    if start is not None:
        starts.append((start.step_up(grid), start.step_down(grid)))
    d2 = _second_difference(nodes)
    reg = math.sqrt(smoothing)
    v_top = max(reference) + 5.0

    def unpack(theta):
        return (np.exp(theta[:nodes]), np.exp(theta[nodes:2 * nodes]),
                (theta[2 * nodes], math.exp(theta[2 * nodes + 1]), theta[2 * nodes + 2], math.exp(theta[2 * nodes + 3])))

    def residuals(theta):
        up, down, sig = unpack(theta)
        m = multipliers(volts, polarity, sig, reference)
        replayed = replay_scaled(w[0], polarity, m, anchors, w, up, down, w_min, w_max)
        return np.concatenate([(replayed - w)[compared], reg * (d2 @ theta[:nodes]),
                               reg * (d2 @ theta[nodes:2 * nodes])])

    lo_t, hi_t = math.log(1e-6 * (w_max - w_min)), math.log(w_max - w_min)
    lower = [lo_t] * (2 * nodes) + [0.0, math.log(0.01), 0.0, math.log(0.01)]
    upper = [hi_t] * (2 * nodes) + [v_top, math.log(5.0), v_top, math.log(5.0)]
    # several starting points (the objective is not convex), the lowest cost wins: the local slopes of the trace and
    # the amplitude-blind tables if given, each divided by the mean starting amplitude factor of its direction
    result = None
    for up0, down0 in starts:
        up0 = up0 / max(float(np.mean(m0[polarity < 0])), 1e-3)
        down0 = down0 / max(float(np.mean(m0[polarity > 0])), 1e-3)
        theta0 = np.concatenate([np.log(np.maximum(up0, 1e-12)), np.log(np.maximum(down0, 1e-12)),
                                 [sig0[0], math.log(sig0[1]), sig0[2], math.log(sig0[3])]])
        theta0 = np.clip(theta0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        candidate = least_squares(residuals, theta0, bounds=(lower, upper), method="trf", diff_step=1e-3,
                                  max_nfev=MAX_FIT_ITERATIONS)
        if result is None or candidate.cost < result.cost:
            result = candidate
    up, down, sig = unpack(result.x)
    trace, w = full_trace, full_w
    before, step, pol = _local_steps(w, trace)
    up = _flat_outside(up, grid, before[pol < 0])
    down = _flat_outside(down, grid, before[pol > 0])
    volts = np.abs(trace.amplitude_v.astype(float))
    polarity = trace.polarity.astype(np.int64)
    m = multipliers(volts, polarity, sig, reference)
    # cycle-to-cycle noise as the card's: robust spread of measured / predicted step (read noise included)
    m_compared = m[~trace.anchors]
    predicted = np.where(pol < 0, np.interp(before, grid, up), np.interp(before, grid, down)) * m_compared
    ratio = step / predicted - 1.0
    c2c = float(1.4826 * np.median(np.abs(ratio - np.median(ratio)))) if ratio.size else 0.0
    model = PiecewiseStepModel.from_absolute(w_min, w_max, up, down, dw_min_std=min(c2c, 100.0))
    replayed = replay_scaled(w[0], polarity, m, trace.anchors, w, up, down, w_min, w_max)
    err = (replayed - w)[~trace.anchors]
    nrmse = float(np.sqrt(np.mean(err ** 2)) / (w.max() - w.min()))
    response = AmplitudeResponse(
        model=model, v0_up_v=float(sig[0]), vs_up_v=float(sig[1]), v0_down_v=float(sig[2]), vs_down_v=float(sig[3]),
        reference_up_v=reference[0], reference_down_v=reference[1], range_up_v=range_up, range_down_v=range_down,
        nrmse=nrmse, parameters=2 * nodes + 4, ramps=(r := ramps(trace)), identified=identified(r),
        fit=dict(nodes=nodes, smoothing=smoothing, method="least_squares(trf) on replay residuals, tables and "
                 "sigmoids jointly (start: the power-amplitude family)", cost=float(result.cost),
                 evaluations=int(result.nfev), status=int(result.status),
                 **({} if subset is None else dict(pulses_fitted=int(len(subset))))))
    return _Fit(response, scale)


def fit_amplitude(trace: Trace, card: DeviceCard | None = None, nodes: int | None = None,
                  smoothing: float | None = None) -> AmplitudeResponse:
    """The amplitude response of the device behind `trace` (on the w scale of `card`, the amplitude-blind fit of the
    same trace, whose nodes and smoothing it reuses and whose tables it starts from; without a card, the trace's own
    scale and DEFAULT_NODES / DEFAULT_SMOOTHING)."""
    if card is not None:
        nodes = nodes or int(card.provenance.fit.get("nodes", len(card.model.piecewise_up)))
        smoothing = card.provenance.fit.get("smoothing", DEFAULT_SMOOTHING) if smoothing is None else smoothing
    nodes, smoothing = nodes or DEFAULT_NODES, DEFAULT_SMOOTHING if smoothing is None else smoothing
    return _fit(trace, int(nodes), float(smoothing), card.model if card is not None else None).response


def _held_out_errors_g(fit: _Fit, trace: Trace, start: int, stop: int) -> np.ndarray:
    """Conductance errors of replaying rows start..stop of `trace` from the measured state before them."""
    rows = np.arange(max(0, start - 1), stop)
    part = replace(trace, pulse=trace.pulse[rows], amplitude_v=trace.amplitude_v[rows],
                   polarity=trace.polarity[rows], conductance_s=trace.conductance_s[rows])
    r = fit.response
    w = to_weight(part.conductance_s, fit.g_scale)
    m = multipliers(np.abs(part.amplitude_v.astype(float)), part.polarity, (r.v0_up_v, r.vs_up_v, r.v0_down_v,
                    r.vs_down_v), (r.reference_up_v, r.reference_down_v))
    mdl = r.model
    grid = mdl.nodes
    replayed = replay_scaled(float(w[0]), part.polarity.astype(np.int64), m, part.anchors, w, mdl.step_up(grid),
                             mdl.step_down(grid), mdl.w_min, mdl.w_max)
    return (replayed - w)[~part.anchors] * (fit.g_scale[2] - fit.g_scale[1]) / 2.0


@dataclass
class AmplitudeValidation:
    """Blocked cross-validation of the amplitude-aware model, with the amplitude-blind card's on the same folds."""

    folds: int
    nodes: int
    smoothing: float
    parameters: int
    in_sample_nrmse: float
    out_of_sample_nrmse: float
    blind_in_sample_nrmse: float
    blind_out_of_sample_nrmse: float

    def to_dict(self) -> dict:
        return asdict(self)


def cross_validate_amplitude(trace: Trace, folds: int = 10, nodes: int = DEFAULT_NODES,
                             smoothing: float = DEFAULT_SMOOTHING, blind=None,
                             full: AmplitudeResponse | None = None) -> AmplitudeValidation:
    """edgelearn.validation.cross_validate's folds for the amplitude-aware model beside the amplitude-blind fit.
    `blind`: that fit's CrossValidation on the same folds, if already made (then each fold's amplitude fit starts from
    its own local slopes rather than from the fold's blind fit); `full`: the whole-trace response, if already made."""
    from .validation import _quiet_fit, _rows, _stretch_errors_g, fold_bounds

    n = len(trace)
    g = trace.conductance_s
    g_range = float(g.max() - g.min())
    rms = lambda e: float(np.sqrt(np.mean(np.concatenate(e) ** 2)) / g_range)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgelearnWarning)
        blind_full = _quiet_fit(trace, nodes, smoothing) if full is None or blind is None else None
        if full is None:
            full = _fit(trace, nodes, smoothing, blind_full.model).response
        errors, blind_errors = [], []
        for start, stop in fold_bounds(n, folds):
            train = _rows(trace, np.r_[np.arange(0, start), np.arange(stop, n)])
            fold_blind = None if blind is not None else _quiet_fit(train, nodes, smoothing)
            errors.append(_held_out_errors_g(_fit(train, nodes, smoothing, fold_blind and fold_blind.model), trace,
                                             start, stop))
            if fold_blind is not None:
                blind_errors.append(_stretch_errors_g(fold_blind.model, (fold_blind.g_ref_s, fold_blind.g_min_s,
                                                                         fold_blind.g_max_s), trace, start, stop))
    if blind is not None:
        blind_in, blind_out = blind.in_sample_nrmse, blind.out_of_sample_nrmse
    else:
        blind_in, blind_out = blind_full.figures.nrmse, rms(blind_errors)
    return AmplitudeValidation(folds=folds, nodes=nodes, smoothing=smoothing, parameters=2 * nodes + 4,
                               in_sample_nrmse=full.nrmse, out_of_sample_nrmse=rms(errors),
                               blind_in_sample_nrmse=blind_in, blind_out_of_sample_nrmse=blind_out)
