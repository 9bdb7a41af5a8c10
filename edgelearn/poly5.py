"""A thesis-compatible fit (`--method poly5`): the common published pipeline, for comparison with our replay fit.

The published pipeline (thesis and the aihwkit device-fitting examples it follows) estimates the step of each pulse as
`np.gradient` of the measured states within each branch, fits a degree-5 polynomial of that step against the state for
each direction, and evaluates it on the PiecewiseStepDevice's 32 equally spaced nodes. `fit_poly5` does exactly that
on our normalisation and returns an ordinary `DeviceCard`, so its figures (replay nrmse, symmetry point, states, ...)
are computed by the same code as `fit_device`'s and the two cards of one trace compare directly.
"""

from __future__ import annotations

import warnings

import numpy as np

from .devices import (DEFAULT_NODES, MAX_NODES, DeviceCard, DeviceVariation, PiecewiseStepModel, card_from_fit,
                      fit_inputs, fitted_noise)
from .errors import EdgelearnError, InputError
from .traces import Trace

DEFAULT_DEGREE = 5
MAX_DEGREE = 12  # beyond this Polynomial.fit on ~100 states per direction is interpolating noise
STEP_FLOOR = 0.01  # evaluated steps are clipped to this fraction of the direction's median measured step
METHOD = "poly5: np.gradient per branch, degree-5 polynomial per direction (published pipeline)"


def branches(trace: Trace) -> list[tuple[int, int]]:
    """[start, stop) of every maximal run of consecutive pulses of one polarity without a gap in the pulse numbering.

    A run starts at an anchor (first pulse, or after a gap: `Trace.anchors`) or where the polarity changes.
    """
    breaks = trace.anchors | np.r_[True, trace.polarity[1:] != trace.polarity[:-1]]
    starts = np.nonzero(breaks)[0]
    return list(zip(starts.tolist(), np.r_[starts[1:], len(trace)].tolist()))


def gradient_steps(w: np.ndarray, trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state, step in the pulse's direction, polarity) from `np.gradient` of w within each branch.

    The state is the branch's measured state w[i] itself (where the central difference (w[i+1] - w[i-1]) / 2 is
    centred), the step is the gradient times -polarity: positive when w moves the way the pulse pushes it (up pulses,
    polarity -1, raise w; down pulses, polarity +1, lower it), negative for a step against it. The sign is kept rather
    than taking |.|, so noise around small steps averages out instead of biasing the fit upward. Branches of a single
    pulse have no gradient and are skipped. Only the branch's own states enter (as the published pipeline, which splits
    the conductance array into up and down segments); the state before a branch's first pulse does not.
    """
    states, steps, pols = [], [], []
    for a, b in branches(trace):
        if b - a < 2:
            continue
        states.append(w[a:b])
        steps.append(np.gradient(w[a:b]) * -float(trace.polarity[a]))
        pols.append(np.full(b - a, trace.polarity[a], dtype=np.int64))
    if not states:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(states), np.concatenate(steps), np.concatenate(pols)


def fit_poly5(trace: Trace, degree: int = DEFAULT_DEGREE, nodes: int = DEFAULT_NODES,
              variation: DeviceVariation | None = None) -> DeviceCard:
    """Fit the published pipeline's PiecewiseStep model: a degree-`degree` polynomial of step vs state per direction.

    1. w = 2 (G - mean G) / (G_max - G_min), as `fit_device`, so the card's g_ref/g_min/g_max match its card's.
    2. Per branch (`branches`), the step of each pulse is `np.gradient(w_branch)` in the pulse's direction
       (`gradient_steps`: signed, -polarity times the gradient).
    3. Per direction, `np.polynomial.Polynomial.fit(state, step, degree)` over all its branches, evaluated on `nodes`
       equally spaced nodes over [w_min, w_max] of the trace, clipped below at STEP_FLOOR (1 %) of the direction's
       median |step| so the tables are positive (aihwkit needs positive steps), then
       `PiecewiseStepModel.from_absolute`. The polynomial is used as it is between the nodes' ends, also where a
       direction's branches did not go (no flattening, unlike `fit_device`): that is the published pipeline.
    4. Cycle-to-cycle sigma, figures and provenance by the same rules and helpers as `fit_device`.

    Node grid vs the published literal [-1, 1]: the published pipeline min-max normalises, w' = 2 (G - G_min) /
    (G_max - G_min) - 1, and puts its nodes over w' in [-1, 1]. Our w = w' + c with c = 1 + w_min (it is centred on the
    mean of G, not on the middle of the range; its range is exactly 2, like w'). Hence nodes over [w_min, w_max] in w
    are, node for node, the published nodes over [-1, 1] in w', and the tables (steps per node) are the same numbers;
    a literal [-1, 1] grid in our w would instead cut |c| off one end and extrapolate |c| past the other, so it is not
    offered. What differs is only where w = 0 sits: aihwkit's dw_min and up_down are the steps at w = 0, which is mid
    range for a published card and the mean conductance for ours; compare step tables (or steps at a conductance), not
    dw_min, between a published card and this one.

    Errors as `fit_device`: EdgelearnError for bad settings, one-line InputError for a degenerate trace, including a
    direction with fewer than degree + 1 gradient points (or distinct states) to fit its polynomial.
    """
    if not isinstance(degree, (int, np.integer)) or isinstance(degree, bool) or not 1 <= degree <= MAX_DEGREE:
        raise EdgelearnError(f"degree: expected an integer from 1 to {MAX_DEGREE}, got {degree!r}")
    degree = int(degree)
    if not 3 <= nodes <= MAX_NODES:
        raise EdgelearnError(f"nodes: expected 3 to {MAX_NODES}, got {nodes}")
    where = trace.path or trace.meta.source or "trace"
    scale, w, grid, before, step, pol = fit_inputs(trace, nodes)
    w_min, w_max = float(grid[0]), float(grid[-1])

    state, gstep, gpol = gradient_steps(w, trace)
    tables, fit_info = [], {}
    for direction, name, key in ((-1, "up (negative)", "up"), (1, "down (positive)", "down")):
        sel = gpol == direction
        x, y = state[sel], gstep[sel]
        distinct = np.unique(x).size
        if x.size < degree + 1 or distinct < degree + 1:
            raise InputError(where, f"the {name} branches give {x.size} gradient points at {distinct} distinct "
                             f"states, fewer than degree + 1 = {degree + 1}: cannot fit a degree-{degree} polynomial "
                             "to their steps")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            poly = np.polynomial.Polynomial.fit(x, y, degree)
        typical = float(np.median(np.abs(y)))
        floor = STEP_FLOOR * typical if typical > 0.0 else 1e-6 * (w_max - w_min)
        raw = poly(grid)
        table = np.maximum(raw, floor)
        if not np.isfinite(table).all():
            raise InputError(where, f"the {name} polynomial is not finite on the nodes: cannot fit its steps")
        table = np.minimum(table, w_max - w_min)  # as fit_device's bound: a step is at most the whole range
        tables.append(table)
        fit_info[key] = dict(points=int(x.size), branches=int(sum(1 for a, b in branches(trace)
                                                                  if b - a >= 2 and trace.polarity[a] == direction)),
                             coefficients=[float(c) for c in poly.convert().coef], floor=floor,
                             nodes_floored=int(np.count_nonzero(raw < floor)))
    up, down = tables

    c2c, read_noise = fitted_noise(w, trace, grid, up, down)
    model = PiecewiseStepModel.from_absolute(w_min, w_max, up, down, dw_min_std=c2c)
    fit = dict(nodes=nodes, degree=degree, method=METHOD.replace("degree-5", f"degree-{degree}"),
               grid="nodes over [w_min, w_max] of w = 2 (G - mean G) / (G_max - G_min): node for node the published "
                    "grid over [-1, 1] of min-max normalised G",
               step="np.gradient per branch, signed in the pulse's direction, at the branch's own states",
               coefficients="power basis in w, lowest order first", floor_fraction=STEP_FLOOR, **fit_info)
    return card_from_fit(trace, w, scale, model, before, pol, variation, fit, read_noise,
                         2 * (degree + 1))

