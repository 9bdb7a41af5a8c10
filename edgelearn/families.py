"""Low-dimensional device models to weigh the piecewise cards against (docs/devices.md, "Out-of-sample validation").

Each family gives the absolute step of a pulse from the device's state w (normalised as in a card) and, for the
amplitude-aware family, the pulse's amplitude |V| (the LBE247 traces are amplitude staircases: each branch starts at a
low amplitude and ends at a high one, so a model blind to amplitude must read the ramp as a state dependence):

    down pulse:  dw = a_d * s_d(w)^g_d * A_d(|V|),  s_d = (w - w_min) / (w_max - w_min)   (soft bound at w_min)
    up pulse:    dw = a_u * s_u(w)^g_u * A_u(|V|),  s_u = (w_max - w) / (w_max - w_min)   (soft bound at w_max)
    A(|V|) = 1 / (1 + exp(-(|V| - v0) / vs))  (amplitude-aware family only; otherwise 1)

| family | parameters | state factor | amplitude factor |
|---|---|---|---|
| `constant` | 2 (a_u, a_d) | 1 | 1 |
| `soft-bounds` | 2 | s (g = 1, aihwkit's SoftBounds) | 1 |
| `power` | 4 (a, g per direction) | s^g | 1 |
| `power-amplitude` | 8 (a, g, v0, vs per direction) | s^g | sigmoid in |V| |

The state is clipped to [w_min, w_max]. Fitted, like the cards, by least squares on the replay of the trace from its
measured anchors (`fit_family`), so in-sample and out-of-sample errors compare one to one with a card's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .devices import conductance_scale, to_weight
from .errors import EdgelearnError
from .traces import Trace

FAMILIES = {"constant": (0, False), "soft-bounds": (1, False), "power": (2, False), "power-amplitude": (2, True)}
# state exponent kind: 0 constant (g = 0), 1 soft bounds (g = 1), 2 free g


@njit(cache=True)
def _step(w, polarity, volts, p_up, p_down, kind, use_amp, w_min, w_max):
    """The state after one pulse (polarity +1 down, -1 up) of amplitude magnitude volts; p = (a, g, v0, vs)."""
    span = w_max - w_min
    p = p_down if polarity > 0 else p_up
    s = (w - w_min) / span if polarity > 0 else (w_max - w) / span
    s = min(max(s, 0.0), 1.0)
    if kind == 0:
        factor = 1.0
    elif kind == 1:
        factor = s
    else:
        factor = s ** p[1] if s > 0.0 else 0.0
    if use_amp:
        factor /= 1.0 + math.exp(-(volts - p[2]) / p[3])
    dw = p[0] * factor
    w = w - dw if polarity > 0 else w + dw
    return min(max(w, w_min), w_max)


@njit(cache=True)
def replay_family(w_start, polarities, volts, restart, restart_w, p_up, p_down, kind, use_amp, w_min, w_max):
    """Noise-free replay of a pulse sequence under a family model (as firmware_model.crossbar.replay: pulse 0 starts
    from its anchor w_start, restart[k] re-anchors on restart_w[k])."""
    n = polarities.shape[0]
    out = np.empty(n)
    w = w_start
    for k in range(n):
        if k == 0:
            w = w_start
        elif restart[k]:
            w = restart_w[k]
        else:
            w = _step(w, polarities[k], volts[k], p_up, p_down, kind, use_amp, w_min, w_max)
        out[k] = w
    return out


def replay_family_reference(w_start, polarities, volts, restart, restart_w, p_up, p_down, kind, use_amp, w_min,
                            w_max) -> np.ndarray:
    """Slow reference of replay_family in plain Python floats (the test compares them exactly)."""
    out, w, span = [], float(w_start), w_max - w_min
    for k in range(len(polarities)):
        if k == 0:
            w = float(w_start)
        elif restart[k]:
            w = float(restart_w[k])
        else:
            down = polarities[k] > 0
            a, g, v0, vs = (p_down if down else p_up)
            s = min(max(((w - w_min) if down else (w_max - w)) / span, 0.0), 1.0)
            factor = 1.0 if kind == 0 else (s if kind == 1 else (s ** g if s > 0.0 else 0.0))
            if use_amp:
                factor /= 1.0 + math.exp(-(volts[k] - v0) / vs)
            w = w - a * factor if down else w + a * factor
            w = min(max(w, w_min), w_max)
        out.append(w)
    return np.array(out)


@dataclass
class FamilyModel:
    """A fitted family model in a trace's w scale (w = 2 (G - g_ref) / (g_max - g_min))."""

    family: str
    p_up: tuple
    p_down: tuple
    w_min: float
    w_max: float
    g_scale: tuple  # (g_ref, g_min, g_max) of the fitted rows
    parameters: int
    cost: float

    def replay_g_errors(self, trace: Trace) -> np.ndarray:
        """Conductance errors of replaying `trace` from its anchors (anchors not compared)."""
        w = to_weight(trace.conductance_s, self.g_scale)
        kind, use_amp = FAMILIES[self.family]
        out = replay_family(float(w[0]), trace.polarity.astype(np.int64), np.abs(trace.amplitude_v).astype(float),
                            trace.anchors, w, np.array(self.p_up, float), np.array(self.p_down, float), kind,
                            use_amp, self.w_min, self.w_max)
        return (out - w)[~trace.anchors] * (self.g_scale[2] - self.g_scale[1]) / 2.0


def fit_family(trace: Trace, family: str, g_scale: tuple | None = None) -> FamilyModel:
    """Least squares on the replay of `trace` (from its anchors) for one family; w scale from `g_scale` or the
    trace's own (mean, min, max conductance), bounds at the measured w range."""
    from scipy.optimize import least_squares

    if family not in FAMILIES:
        raise EdgelearnError(f"family: expected one of {', '.join(FAMILIES)}, got '{family}'")
    kind, use_amp = FAMILIES[family]
    g_scale = tuple(g_scale) if g_scale is not None else conductance_scale(trace.conductance_s)
    w = to_weight(trace.conductance_s, g_scale)
    w_min, w_max = float(w.min()), float(w.max())
    span = w_max - w_min
    polarity = trace.polarity.astype(np.int64)
    volts = np.abs(trace.amplitude_v).astype(float)
    anchors = trace.anchors
    compared = ~anchors
    steps = np.abs(np.diff(w))[compared[1:]]
    a0 = max(float(np.median(steps)) if steps.size else 1e-3, 1e-6 * span)
    v_up = float(np.median(volts[polarity < 0])) if (polarity < 0).any() else 1.0
    v_down = float(np.median(volts[polarity > 0])) if (polarity > 0).any() else 1.0
    # theta per direction: log a, [log g], [v0, log vs]
    free_g = kind == 2
    per = 1 + int(free_g) + 2 * int(use_amp)

    def unpack(theta):
        out = []
        for d in range(2):
            t = theta[d * per:(d + 1) * per]
            a = math.exp(t[0])
            gg = math.exp(t[1]) if free_g else (1.0 if kind == 1 else 0.0)
            v0, vs = (t[1 + int(free_g)], math.exp(t[2 + int(free_g)])) if use_amp else (0.0, 1.0)
            out.append(np.array([a, gg, v0, vs]))
        return out  # up, down

    def residuals(theta):
        p_up, p_down = unpack(theta)
        return (replay_family(w[0], polarity, volts, anchors, w, p_up, p_down, kind, use_amp, w_min, w_max)
                - w)[compared]

    lower, upper, theta0 = [], [], []
    for v_mid in (v_up, v_down):
        theta0.append(math.log(a0 * (3.0 if kind else 1.0)))
        lower.append(math.log(1e-6 * span))
        upper.append(math.log(span))
        if free_g:
            theta0.append(0.0)
            lower.append(math.log(0.05))
            upper.append(math.log(8.0))
        if use_amp:
            theta0 += [v_mid, math.log(0.3)]
            lower += [0.0, math.log(0.01)]
            upper += [10.0, math.log(5.0)]
    theta0 = np.clip(theta0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    result = least_squares(residuals, theta0, bounds=(lower, upper), method="trf", diff_step=1e-3, max_nfev=400)
    p_up, p_down = unpack(result.x)
    return FamilyModel(family=family, p_up=tuple(map(float, p_up)), p_down=tuple(map(float, p_down)), w_min=w_min,
                       w_max=w_max, g_scale=g_scale, parameters=2 * per, cost=float(result.cost))
