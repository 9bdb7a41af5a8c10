"""The memory-light kernels (firmware_model/lowmem.py) against slow references, bit for bit: the narrow mixed-precision
accumulator and the transfer buffer, with their random draws, pulses and counters."""

import math

import numpy as np
import pytest

from firmware_model import controller as ctl
from firmware_model import crossbar, fixed, lowmem



def ref_stochastic_round(x, rng):
    x = min(max(x, -lowmem.LIMIT), lowmem.LIMIT)
    fl = math.floor(x)
    threshold = int((x - fl) * 4294967296.0)
    return int(fl) + (1 if int(fixed.rng_u32(rng)) < threshold else 0)


def device_arrays(rows, cols, dw=0.01):
    state = np.zeros((rows, cols))
    params = np.zeros((rows, cols, crossbar.N_PARAMS))
    params[..., crossbar.P_SCALE_UP] = dw
    params[..., crossbar.P_SCALE_DOWN] = dw
    params[..., crossbar.P_W_MIN] = -1.0
    params[..., crossbar.P_W_MAX] = 1.0
    params[..., crossbar.P_INV_SPAN] = 0.5
    return state, params, np.ones(4), np.ones(4)


def ref_mp_q(state, params, tu, td, c2c, chi, gradient, scale, eu, ed, lo, hi, max_pulses, rng, normal, pulses):
    """Slow reference of mp_update_dense_q: cell by cell, the same draws in the same order."""
    total = 0
    for i in range(chi.shape[0]):
        for j in range(chi.shape[1]):
            c = int(chi[i, j]) + ref_stochastic_round(scale * gradient[i, j], rng)
            c = min(max(c, lo), hi)
            if -ed < c < eu:
                chi[i, j] = c
                continue
            eps = eu if c > 0 else ed
            n = int(abs(c) / eps) * (1 if c > 0 else -1)
            if max_pulses > 0:
                n = min(max(n, -max_pulses), max_pulses)
            chi[i, j] = c - n * eps
            down = n < 0
            crossbar.pulse_device(state, params, i, j, abs(n), crossbar.POLARITY_DOWN if down else crossbar.POLARITY_UP,
                                  tu, td, c2c, rng, normal)
            pulses[i, j, 1 if down else 0] += abs(n)
            total += abs(n)
    return total


@pytest.mark.parametrize("dtype,bits,c2c,cap", [(np.int8, 8, 0.0, 0), (np.int16, 16, 0.1, 0), (np.int8, 8, 0.05, 2)])
def test_narrow_mixed_precision_matches_its_reference(dtype, bits, c2c, cap):
    rng0 = np.random.default_rng(bits)
    rows, cols = 7, 9
    top = 2 ** (bits - 1) - 1
    unit_per_eps = 2 ** (bits - 4)
    eu, ed = unit_per_eps, unit_per_eps + 3  # a separate down threshold
    normal = fixed.normal_table()
    state, params, tu, td = device_arrays(rows, cols)
    chi = rng0.integers(-unit_per_eps, unit_per_eps, (rows, cols)).astype(dtype)
    r_state, r_chi = state.copy(), chi.copy()
    rng, r_rng = fixed.seed_state(11), fixed.seed_state(11)
    pulses, r_pulses = np.zeros((2, rows, cols, 2), np.int32), np.zeros((2, rows, cols, 2), np.int64)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    for step in range(6):  # increments from far below a unit to beyond the saturation
        gradient = rng0.normal(0, [0.01, 0.3, 1.0, 3.0, 30.0, 0.001][step], (rows, cols))
        scale = -0.5 * unit_per_eps / 0.01
        n = lowmem.mp_update_dense_q(state, params, tu, td, c2c, chi, gradient, scale, eu, ed, -top, top, cap, rng,
                                     normal, pulses, counters)
        r_n = ref_mp_q(r_state, params, tu, td, c2c, r_chi, gradient, scale, eu, ed, -top, top, cap, r_rng, normal,
                       r_pulses[0])
        assert n == r_n
        np.testing.assert_array_equal(chi, r_chi)
        np.testing.assert_array_equal(state, r_state)
        assert rng[0] == r_rng[0]
    np.testing.assert_array_equal(pulses, r_pulses)
    assert counters[ctl.C_PULSES_UP] + counters[ctl.C_PULSES_DOWN] == r_pulses.sum()
    assert counters[ctl.C_PULSES_UP] == r_pulses[0, ..., 0].sum()
    assert counters[ctl.C_ACC_UPDATES] == counters[ctl.C_RNG_DRAWS] == 6 * rows * cols
    assert counters[ctl.C_UPDATES] == 6
    assert chi.dtype == dtype and np.abs(chi.astype(int)).max() <= top


def test_stochastic_rounding_is_unbiased_where_plain_rounding_loses_everything():
    """An increment of 0.3 units, 10,000 times: rounding to nearest keeps nothing, stochastic rounding about 3,000."""
    rng = fixed.seed_state(5)
    total = sum(int(lowmem.stochastic_round(0.3, rng)) for _ in range(10_000))
    assert abs(total - 3000) < 4 * math.sqrt(10_000 * 0.3 * 0.7)
    assert all(int(lowmem.stochastic_round(2.0, rng)) == 2 for _ in range(100))  # integers stay exact
    assert int(lowmem.stochastic_round(-2.5e30, rng)) == -int(lowmem.LIMIT)


def ref_buffer_transfer(h, col, signal, gain, lo, hi, unit, momentum, forget, max_steps, rng):
    counts = np.zeros(h.shape[0], np.int64)
    for i in range(h.shape[0]):
        v = min(max(int(h[i, col]) + ref_stochastic_round(gain * signal[i], rng), lo), hi)
        n = int(abs(v) / unit) * (1 if v >= 0 else -1)
        if max_steps > 0:
            n = min(max(n, -max_steps), max_steps)
        counts[i] = n
        if n:
            kept = momentum * v if forget else v - (1.0 - momentum) * n * unit
            v = int(math.floor(abs(kept) + 0.5)) * (1 if kept >= 0 else -1)
        h[i, col] = v
    return counts


@pytest.mark.parametrize("bits,momentum,forget,max_steps", [(8, 0.0, True, 1), (8, 0.3, False, 2), (16, 0.1, True, 3),
                                                              (32, 0.0, False, 1)])
def test_buffer_transfer_matches_its_reference(bits, momentum, forget, max_steps):
    rng0 = np.random.default_rng(bits)
    rows, cols = 6, 5
    dtype = {8: np.int8, 16: np.int16, 32: np.int32}[bits]
    top, unit = 2 ** (bits - 1) - 1, 2 ** (bits - 4)
    h = np.zeros((rows, cols), dtype)
    r_h = h.copy()
    rng, r_rng = fixed.seed_state(3), fixed.seed_state(3)
    counts = np.zeros(rows, np.int64)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    for k in range(40):
        col = k % cols
        signal = rng0.normal(0, 0.05, rows)
        gain = unit * rng0.choice([2.0, 20.0, 200.0])
        fired = lowmem.buffer_transfer(h, col, signal, gain, -top, top, unit, momentum, forget, max_steps, rng, counts,
                                       counters)
        expected = ref_buffer_transfer(r_h, col, signal, gain, -top, top, unit, momentum, forget, max_steps, r_rng)
        np.testing.assert_array_equal(counts, expected)
        assert fired == np.count_nonzero(expected)
        np.testing.assert_array_equal(h, r_h)
    assert counters[ctl.C_ACC_UPDATES] == counters[ctl.C_RNG_DRAWS] == 40 * rows
