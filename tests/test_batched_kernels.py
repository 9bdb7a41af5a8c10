"""The batched forms of the controller kernels (issue 18) against the per-sample kernels they replace in the tiles:
mvm_batch_gemm (the batch's analog sums as one matrix product) against mvm_batch, and the two-pass
mp_update_dense against a one-pass reference of its arithmetic."""

import numpy as np
import pytest

from firmware_model import controller as ctl
from firmware_model import fixed

NORMAL = fixed.normal_table()


def periphery(rng, n_in, nm_mode, bm, noise):
    dac_bits, adc_bits = int(rng.integers(4, 9)), int(rng.integers(6, 11))
    inp_bound = float(rng.uniform(0.5, 2.0))
    out_bound = float(rng.uniform(0.3, 1.0)) * inp_bound * np.sqrt(n_in)
    return dac_bits, inp_bound, adc_bits, out_bound, noise, nm_mode, bm, 6


def both(state, ref_state, use_ref, vecs, transpose, args, seed):
    """(codes, scales, rng, counters) of mvm_batch and of mvm_batch_gemm on the same inputs."""
    n_out = state.shape[1] if transpose else state.shape[0]
    out = []
    for kernel in (ctl.mvm_batch, ctl.mvm_batch_gemm):
        codes = np.full((vecs.shape[0], n_out), -99, np.int32)
        scales = np.full(vecs.shape[0], -1.0)
        gen, counters = fixed.seed_state(seed), np.zeros(ctl.N_COUNTERS, np.int64)
        kernel(state, ref_state, use_ref, vecs, transpose, *args, gen, NORMAL, codes, scales, counters)
        out.append((codes, scales, gen, counters))
    return out


@pytest.mark.parametrize("margin", [ctl.BM_MARGIN, 0.0])
@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("nm_mode", [ctl.NM_NONE, ctl.NM_ABS_MAX])
def test_mvm_batch_gemm_equals_mvm_batch(transpose, nm_mode, use_ref, margin, monkeypatch):
    """Same codes, scales, random stream and counters, with noise, bound-management repeats and all-zero inputs;
    with the default margin the repeats are summed ahead, with none the noise pushes some samples over unforeseen
    and their repeats are summed per sample."""
    monkeypatch.setattr(ctl, "BM_MARGIN", margin)
    repeats = 0
    for seed, (rows, cols) in enumerate([(7, 13), (64, 129), (256, 785)]):
        rng = np.random.default_rng([600, seed, int(transpose), nm_mode, int(use_ref)])
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        ref_state = rng.uniform(-0.3, 0.3, (rows, cols))
        n_in = rows if transpose else cols
        for noise, bm in ((0.0, True), (0.05, True), (0.05, False)):
            vecs = rng.normal(0.0, 1.0, (9, n_in)) * rng.uniform(0.1, 3.0, (9, 1))
            vecs[2] = 0.0
            vecs[5, rng.uniform(size=n_in) < 0.5] = 0.0
            args = periphery(rng, n_in, nm_mode, bm, noise)
            (c0, s0, g0, n0), (c1, s1, g1, n1) = both(state, ref_state, use_ref, vecs, transpose, args, seed)
            np.testing.assert_array_equal(c1, c0)
            np.testing.assert_array_equal(s1, s0)
            np.testing.assert_array_equal(g1, g0)
            np.testing.assert_array_equal(n1, n0)
            repeats += int(n0[ctl.C_BM_REPEATS])
    assert repeats > 0  # the bound-management path (summed per sample) was exercised


def test_mvm_batch_gemm_one_hot_reads_and_first_pass_sums():
    """A batch of one-hot reads takes mvm_batch's column sum; mvm_batch_inputs flags it, and the first-pass DAC
    inputs it returns are those whose product mvm_batch_outputs consumes."""
    rng = np.random.default_rng(610)
    state = rng.uniform(-1.0, 1.0, (32, 40))
    vecs = np.zeros((5, 40))
    vecs[np.arange(5), [0, 7, 7, 39, 12]] = [1.0, -0.5, 2.0, 0.25, 1.0]
    us = np.empty_like(vecs)
    assert ctl.mvm_batch_inputs(vecs, 6, 1.0, ctl.NM_ABS_MAX, 1.0, us) == 0
    args = (6, 1.0, 9, 4.0, 0.02, ctl.NM_ABS_MAX, True, 4)
    (c0, s0, g0, n0), (c1, s1, g1, n1) = both(state, state, False, vecs, False, args, 3)
    for a, b in zip((c0, s0, g0, n0), (c1, s1, g1, n1)):
        np.testing.assert_array_equal(a, b)
    dense = rng.normal(0.0, 1.0, (4, 40))
    assert ctl.mvm_batch_inputs(dense, 6, 1.0, ctl.NM_ABS_MAX, 1.0, np.empty_like(dense)) == 4
    y = np.empty(32)
    us = np.empty_like(dense)
    ctl.mvm_batch_inputs(dense, 6, 1.0, ctl.NM_ABS_MAX, 1.0, us)
    for b in range(4):
        ctl._analog_mvm(state, state, False, us[b], False, y)
        np.testing.assert_allclose(us[b] @ state.T, y, rtol=0, atol=1e-12)


def ref_mp_dense(state, params, tu, td, c2c, chi, gradient, scale, eu, ed, cap, rng, normal, pulses):
    """One pass over the cells in row-major order, as mp_update_dense was written before its two-pass form."""
    from firmware_model.crossbar import POLARITY_DOWN, POLARITY_UP, pulse_device

    total = 0
    for i in range(state.shape[0]):
        for j in range(state.shape[1]):
            v = min(max(ctl.round_half_away(scale * gradient[i, j]), -2147483648.0), 2147483647.0)
            c = int(min(max(int(chi[i, j]) + int(v), -2 ** 31), 2 ** 31 - 1))
            if -ed < c < eu:
                chi[i, j] = c
                continue
            eps = eu if c > 0 else ed
            n = abs(c) // eps * (1 if c > 0 else -1)
            if cap > 0:
                n = min(max(n, -cap), cap)
            chi[i, j] = c - n * eps
            if n == 0:
                continue
            pulse_device(state, params, i, j, abs(n), POLARITY_DOWN if n < 0 else POLARITY_UP, tu, td, c2c, rng,
                         normal)
            pulses[i, j, 1 if n < 0 else 0] += abs(n)
            total += abs(n)
    return total


@pytest.mark.parametrize("cap", [0, 2])
def test_two_pass_mp_update_dense_equals_one_pass(cap):
    from test_lowmem_kernels import device_arrays

    rng = np.random.default_rng(620 + cap)
    rows, cols = 9, 70
    state, params, tu, td = device_arrays(rows, cols)
    eu, ed = 1000, 1300
    chi = rng.integers(-1500, 1500, (rows, cols)).astype(np.int32)
    want_state, want_chi = state.copy(), chi.copy()
    want_pulses = np.zeros((rows, cols, 2), np.int64)
    want_rng = fixed.seed_state(cap)
    device_pulses = np.zeros((2, rows, cols, 2), np.int32)
    got_rng = fixed.seed_state(cap)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    for step in range(6):
        gradient = rng.normal(0.0, 1.0, (rows, cols)) * 10.0 ** rng.uniform(-2, 1, (rows, 1))
        gradient[0, :3] = [1e300, -1e300, 0.0]  # saturation both ways
        want = ref_mp_dense(want_state, params, tu, td, 0.3, want_chi, gradient, -400.0, eu, ed, cap, want_rng,
                            NORMAL, want_pulses)
        got = ctl.mp_update_dense(state, params, tu, td, 0.3, chi, gradient, -400.0, eu, ed, cap, got_rng, NORMAL,
                                  device_pulses, counters)
        assert got == want
        np.testing.assert_array_equal(chi, want_chi)
        np.testing.assert_array_equal(state, want_state)
        np.testing.assert_array_equal(got_rng, want_rng)
        np.testing.assert_array_equal(device_pulses[0], want_pulses)
    assert counters[ctl.C_PULSES_UP] + counters[ctl.C_PULSES_DOWN] == want_pulses.sum() > 0


def test_abs_max_beyond_and_host_checks_match_numpy():
    """The eight-lane abs-max (any length, a remainder past the lanes, all zeros), the rows beyond a reach, the
    tiles' finite check (NaN, infinities, the largest finite, subnormals, -0.0) and the batch decode, against numpy."""
    from edgelearn.board import _any_nonfinite, _decode

    rng = np.random.default_rng(1800)
    for n in (0, 1, 7, 8, 9, 64, 785):
        v = rng.normal(0.0, 1.0, n) * 10.0 ** rng.uniform(-300, 300, n)
        assert ctl._abs_max(v, n) == (np.abs(v).max() if n else 0.0)
        assert ctl._abs_max(np.zeros(n), n) == 0.0
    values = rng.normal(0.0, 3.0, (50, 37))
    for reach in (0.0, 3.0, 8.0, 1e9):
        np.testing.assert_array_equal(ctl._beyond(values, reach), np.flatnonzero(np.abs(values).max(axis=1) > reach))
    base = rng.normal(0.0, 1.0, 300)
    for special in (np.nan, np.inf, -np.inf, np.finfo(float).max, -np.finfo(float).max, 5e-324, -0.0):
        for where in (0, 137, 299):
            v = base.copy()
            v[where] = special
            assert _any_nonfinite(v) == (not np.isfinite(v).all())
    assert not _any_nonfinite(np.zeros(0))
    codes = rng.integers(-255, 256, (9, 40)).astype(np.int32)
    scales = rng.uniform(0.0, 2.0, 9)
    scales[3] = 0.0
    out = np.empty(codes.shape)
    _decode(codes, scales, out)
    np.testing.assert_array_equal(out, codes * scales[:, None])
