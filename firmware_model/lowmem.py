"""Memory-light training kernels of the controller: mixed precision with a narrow (int8 / int16) chi accumulator, and
the digital buffer of the transfer algorithms (Tiki-Taka v2, chopped TTv2, AGAD).

Both keep their state in narrow integers with stochastic rounding: a value x (in the integer's units) is stored as
floor(x) + 1 with probability frac(x), decided by one xorshift64* draw per cell (rng_u32 < trunc(frac(x) 2^32)), so
small increments are kept on average instead of being rounded away. Each draw is counted (C_RNG_DRAWS), as is each
accumulator read-modify-write (C_ACC_UPDATES).

Kernels take plain arrays and scalars (docs/algorithms.md); every one has a slow reference in
tests/test_lowmem_kernels.py.
"""

import math

import numpy as np
from numba import njit

from .controller import C_ACC_UPDATES, C_PULSES_DOWN, C_PULSES_UP, C_RNG_DRAWS, C_UPDATES
from .crossbar import POLARITY_DOWN, POLARITY_UP, pulse_device
from .fixed import rng_u32

TWO32 = 4294967296.0
LIMIT = 1099511627776.0  # 2^40


@njit(cache=True, inline="always")
def stochastic_round(x, rng):
    """floor(x) + 1 with probability frac(x), from one 32-bit draw; x is first limited to +-2^40 (far beyond any
    accumulator, which saturates afterwards); x must not be NaN."""
    x = min(max(x, -LIMIT), LIMIT)
    fl = math.floor(x)
    threshold = np.uint64((x - fl) * TWO32)  # in [0, 2^32)
    up = np.int64(1) if rng_u32(rng) < threshold else np.int64(0)
    return np.int64(fl) + up


@njit(cache=True)
def mp_update_dense_q(state, params, table_up, table_down, c2c_std, chi, gradient, scale, eps_up_q, eps_down_q,
                      chi_min, chi_max, max_pulses, rng, normal_table, device_pulses, counters):
    """Mixed precision on a narrow accumulator: chi (int8 or int16 array) holds the residual in units of
    granularity / 2^F. chi_ij += stochastic_round(scale * gradient_ij) (scale = -lr 2^F / granularity), saturating
    at [chi_min, chi_max]; then n = trunc(chi / eps) (eps = eps_up_q when chi > 0, else eps_down_q), capped at
    max_pulses (> 0), chi -= n eps and |n| pulses, up for n > 0. Returns the pulses applied. One draw and one
    accumulator update per cell. The fire-and-count block repeats controller._fire_row's rather than calling it: here
    a cell's rounding draw and its pulses' draws interleave on the one stream, so the two-pass row of
    controller.mp_update_dense would change the random stream (which the C port reproduces)."""
    rows, cols = state.shape
    counters[C_UPDATES] += 1
    eps_up = np.int64(eps_up_q)
    eps_down = np.int64(eps_down_q)
    lo = np.int64(chi_min)
    hi = np.int64(chi_max)
    total = 0
    net_up = 0
    pulses = device_pulses[0]
    for i in range(rows):
        for j in range(cols):
            c = np.int64(chi[i, j]) + stochastic_round(scale * gradient[i, j], rng)
            c = min(max(c, lo), hi)
            if -eps_down < c < eps_up:
                chi[i, j] = c
                continue
            eps = eps_up if c > 0 else eps_down
            n = abs(c) // eps
            if c < 0:
                n = -n
            if max_pulses > 0:
                n = min(max(n, -max_pulses), max_pulses)
            chi[i, j] = c - n * eps
            down = n < 0
            count = -n if down else n
            pulse_device(state, params, i, j, count, POLARITY_DOWN if down else POLARITY_UP, table_up, table_down,
                         c2c_std, rng, normal_table)
            pulses[i, j, 1 if down else 0] += np.int32(count)
            total += count
            net_up += n
    counters[C_PULSES_UP] += (total + net_up) // 2
    counters[C_PULSES_DOWN] += (total - net_up) // 2
    counters[C_ACC_UPDATES] += rows * cols
    counters[C_RNG_DRAWS] += rows * cols
    return total


@njit(cache=True)
def buffer_transfer(h, col, signal, gain, h_min, h_max, unit, momentum, forget, max_steps, rng, counts, counters):
    """One transfer event of a buffered transfer algorithm, for one column of the fast array A.

    h: the digital buffer H (int8 / int16 / int32 array, rows x cols) in units of 1 / unit of a slow-array pulse;
    signal: the column's read, chopper sign and reference already applied (weight units, length rows); gain: H units
    per weight unit (transfer_lr * unit / granularity of the slow array). For each row i:
    H[i, col] += stochastic_round(gain * signal[i]) (saturating at [h_min, h_max]); n = trunc(H / unit), capped at
    max_steps; where n != 0, H keeps momentum * H (forget) or loses (1 - momentum) n unit (not forget), rounded half
    away from zero; counts[i] = n (the pulses for the slow array's device (i, col), up for n > 0).
    Returns the number of devices that fire."""
    rows = h.shape[0]
    u = np.int64(unit)
    lo = np.int64(h_min)
    hi = np.int64(h_max)
    fired = 0
    for i in range(rows):
        v = np.int64(h[i, col]) + stochastic_round(gain * signal[i], rng)
        v = min(max(v, lo), hi)
        n = abs(v) // u
        if v < 0:
            n = -n
        if max_steps > 0:
            n = min(max(n, -max_steps), max_steps)
        counts[i] = n
        if n != 0:
            fired += 1
            if forget:
                kept = momentum * v
            else:
                kept = v - (1.0 - momentum) * n * u
            r = math.floor(abs(kept) + 0.5)
            v = np.int64(r) if kept >= 0 else -np.int64(r)
        h[i, col] = v
    counters[C_ACC_UPDATES] += rows
    counters[C_RNG_DRAWS] += rows
    return fired
