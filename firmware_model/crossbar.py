"""Device physics of the crossbar: how ferroelectric synapses answer programming pulses.

Plain arrays and scalars in, plain arrays out; the host (edgelearn) turns a device card into these arrays once.

Semantics follow aihwkit's PiecewiseStepDevice so that results compare one to one:
- the relative step at state w is the linear interpolation of a node table whose nodes are equally spaced from the
  device's w_min to w_max (`inv_span` = (nodes - 1) / (w_max - w_min), precomputed per device);
- the absolute step is that value times the direction's scale (dw_min, up/down asymmetry and device-to-device gain
  folded in) times (1 + c2c_std * xi) for cycle-to-cycle noise;
- polarity +1 is a "down" pulse (positive voltage lowers the conductance), polarity -1 an "up" pulse;
- the weight is clipped to the device's [w_min, w_max] after every pulse.

A tile's devices are one float64 array `state[rows, cols]` and one `params[rows, cols, N_PARAMS]` array holding each
device's own scale_up, scale_down, w_min, w_max, inv_span (drawn once from the card's device-to-device variation), so
everything one pulse needs sits in one cache line.
"""

import numpy as np
from numba import njit

from .fixed import rng_normal

POLARITY_DOWN = 1
POLARITY_UP = -1

P_SCALE_UP = 0
P_SCALE_DOWN = 1
P_W_MIN = 2
P_W_MAX = 3
P_INV_SPAN = 4
N_PARAMS = 5


@njit(cache=True, inline="always")
def relative_step(w, table, w_min, inv_span):
    """Linear interpolation of `table` (nodes equally spaced from w_min) at state w, flat outside the nodes."""
    n_sections = table.shape[0] - 1
    position = (w - w_min) * inv_span
    if position <= 0.0:
        return table[0]
    if position >= n_sections:
        return table[n_sections]
    index = np.uint64(position)  # 0 <= position < n_sections here: unsigned, so no negative-index wraparound code
    t = position - index         # in the hot loops (about 10 % of a pulsed update; the same values as int())
    return table[index] + t * (table[index + np.uint64(1)] - table[index])


@njit(cache=True, inline="always")
def step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, noise):
    """State after one pulse. `noise` is the already-scaled cycle-to-cycle factor c2c_std*xi (0.0 for none)."""
    if polarity > 0:
        w = w - scale_down * relative_step(w, table_down, w_min, inv_span) * (1.0 + noise)
    else:
        w = w + scale_up * relative_step(w, table_up, w_min, inv_span) * (1.0 + noise)
    if w < w_min:
        return w_min
    if w > w_max:
        return w_max
    return w


@njit(cache=True)
def apply_pulse(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, noise):
    """One pulse on a device given by its bounds (inv_span computed here); see step_state."""
    inv_span = (table_up.shape[0] - 1) / (w_max - w_min)
    return step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, noise)


@njit(cache=True, inline="always")
def pulse_device(state, params, i, j, n, polarity, table_up, table_down, c2c_std, rng, normal_table):
    """Apply n pulses of one polarity to device (i, j) of a tile, each with its own cycle-to-cycle draw."""
    w = state[i, j]
    scale_up = params[i, j, P_SCALE_UP]
    scale_down = params[i, j, P_SCALE_DOWN]
    w_min = params[i, j, P_W_MIN]
    w_max = params[i, j, P_W_MAX]
    inv_span = params[i, j, P_INV_SPAN]
    if c2c_std > 0.0:
        for _ in range(n):
            noise = c2c_std * rng_normal(rng, normal_table)
            w = step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, noise)
    else:
        for _ in range(n):
            w = step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, 0.0)
    state[i, j] = w


@njit(cache=True)
def replay(w_start, polarities, restart, restart_w, table_up, table_down, scale_up, scale_down, w_min, w_max):
    """Noise-free replay of a pulse sequence on one device; returns the state after each pulse.

    Pulse k takes the state after pulse k-1 to the state after pulse k. Where restart[k] is true, the state after
    pulse k is set to restart_w[k] instead (a measured anchor, e.g. the first pulse of a segment whose predecessors
    were not recorded). Pulse 0 always starts from its anchor w_start.
    """
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
            w = step_state(w, polarities[k], table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, 0.0)
        out[k] = w
    return out


@njit(cache=True)
def alternate_until_settled(w_start, table_up, table_down, scale_up, scale_down, w_min, w_max, max_pairs, tolerance):
    """Alternate up and down pulses from w_start until the mean of an up/down pair stops moving.

    Returns (settled weight = mean state over the last pair, number of pairs applied). This is what the controller's
    in-situ symmetry-point search does on a noise-free device.
    """
    inv_span = (table_up.shape[0] - 1) / (w_max - w_min)
    w = w_start
    previous = w_start
    mean = w_start
    for pair in range(max_pairs):
        w = step_state(w, POLARITY_UP, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, 0.0)
        w_after_up = w
        w = step_state(w, POLARITY_DOWN, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, 0.0)
        mean = 0.5 * (w_after_up + w)
        if pair > 0 and abs(mean - previous) < tolerance:
            return mean, pair + 1
        previous = mean
    return mean, max_pairs


@njit(cache=True)
def pulses_to_cross(w_from, w_to, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, max_pulses):
    """Number of noise-free pulses of one polarity needed to move from w_from past w_to (max_pulses if never)."""
    inv_span = (table_up.shape[0] - 1) / (w_max - w_min)
    w = w_from
    for k in range(max_pulses):
        w = step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, 0.0)
        if polarity > 0 and w <= w_to:
            return k + 1
        if polarity < 0 and w >= w_to:
            return k + 1
    return max_pulses
