"""The C port of the firmware kernels (firmware_model/c, bound by firmware_model.cfirmware) against the numba kernels,
bit for bit.

Every test runs a numba kernel and its C port on identical copies of the same seeded inputs and compares, with
np.array_equal and bit patterns for floats, the return value and every array argument afterwards: outputs, device
states, chi, device_pulses, counters and the generator state (so the random streams are the same draw for draw).
No tolerances anywhere: the MVM's analog sum (numba: fastmath, C: sequential) is compared exactly too, on codes,
scale, counters and generator state.
"""

import math
import struct

import numpy as np
import pytest

from firmware_model import cfirmware as cf
from firmware_model import controller as ctl
from firmware_model import crossbar, fixed, frontend
from test_kernels_reference import INT32_MAX, INT32_MIN, INT64_MAX, INT_EDGES, random_ints

NORMAL_TABLE = fixed.normal_table()


# ------------------------------------------------------------------------------------------------------------------
# comparison helpers
# ------------------------------------------------------------------------------------------------------------------
def float_bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def assert_same_array(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert np.array_equal(got, want), f"{what}: {np.argwhere(got != want)[:5].tolist()}"
    if got.dtype.kind == "f":  # bit patterns too: the sign of zero must match
        assert np.array_equal(got.view(np.uint64 if got.itemsize == 8 else np.uint32),
                              want.view(np.uint64 if want.itemsize == 8 else np.uint32)), what


def assert_same(got, want, what):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for k, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{what}[{k}]")
    elif isinstance(want, np.ndarray):
        assert_same_array(got, want, what)
    elif want is None:
        assert got is None, what
    elif isinstance(want, float):
        assert isinstance(got, float) and float_bits(got) == float_bits(want), (what, got, want)
    else:
        assert type(got) is type(want) and got == want, (what, got, want)


def copy_args(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def run_both(numba_fn, c_fn, *args):
    """Call both kernels on copies of args; assert identical results and identical arrays afterwards. Returns the
    numba side's (result, args after the call)."""
    a_numba, a_c = copy_args(args), copy_args(args)
    want = numba_fn(*a_numba)
    got = c_fn(*a_c)
    name = getattr(numba_fn, "__name__", str(numba_fn))
    assert_same(got, want, f"{name} result")
    for k, (g, w) in enumerate(zip(a_c, a_numba)):
        if isinstance(w, np.ndarray):
            assert_same_array(g, w, f"{name} argument {k}")
    return want, a_numba


# ------------------------------------------------------------------------------------------------------------------
# input generators
# ------------------------------------------------------------------------------------------------------------------
def random_tile(rng, rows, cols, nodes_up=None, nodes_down=None):
    """(state, params, table_up, table_down): 2-10 node tables (up and down may differ in length), per-device bounds
    and scales; some devices start at their bounds."""
    n_up = nodes_up or int(rng.integers(2, 11))
    n_down = nodes_down or n_up
    table_up = rng.uniform(0.05, 2.0, n_up)
    table_down = rng.uniform(0.05, 2.0, n_down)
    table_up[rng.random(n_up) < 0.1] = 0.0
    shape = (rows, cols)
    w_min = -rng.uniform(0.3, 1.2, shape)
    w_max = rng.uniform(0.3, 1.2, shape)
    params = np.empty((rows, cols, crossbar.N_PARAMS))
    params[..., crossbar.P_SCALE_UP] = rng.uniform(0.005, 0.3, shape)
    params[..., crossbar.P_SCALE_DOWN] = rng.uniform(0.005, 0.3, shape)
    params[..., crossbar.P_W_MIN] = w_min
    params[..., crossbar.P_W_MAX] = w_max
    params[..., crossbar.P_INV_SPAN] = (n_up - 1) / (w_max - w_min)
    state = rng.uniform(w_min, w_max)
    at_bound = rng.random(shape)
    state[at_bound < 0.1] = w_min[at_bound < 0.1]
    state[at_bound > 0.9] = w_max[at_bound > 0.9]
    return state, params, table_up, table_down


def device_pulses(rng, rows, cols):
    dp = rng.integers(0, 100, (2, rows, cols, 2)).astype(np.int32)
    dp[0, 0, 0, 0] = INT32_MAX - 2  # an int32 slot about to wrap, as numba's int32 store does
    return dp


def counters(rng):
    return rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)


def with_zeros(rng, v, fraction=0.25):
    v = v.copy()
    v[rng.random(v.shape[0]) < fraction] = 0.0
    return v


SHAPES = [(1, 1), (3, 5), (4, 7), (6, 4), (5, 9), (2, 70), (3, 130)]  # > 64 columns: several coincidence blocks

# ------------------------------------------------------------------------------------------------------------------
# fixed
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(2))
def test_integer_helpers(seed):
    rng = np.random.default_rng(seed)
    values = INT_EDGES + random_ints(rng, 200)
    for v in values:
        assert_same(cf.wrap_i32(v), fixed.wrap_i32(v), ("wrap_i32", v))
        assert_same(cf.sat_i32(v), fixed.sat_i32(v), ("sat_i32", v))
        assert_same(cf.popcount32(v & 0xFFFFFFFF), fixed.popcount32(v & 0xFFFFFFFF), ("popcount32", v))
        if v != 0:
            assert_same(cf.lowest_set_bit(v & INT64_MAX or 1), fixed.lowest_set_bit(v & INT64_MAX or 1), v)
    divisors = [1, -1, 2, -2, 3, -3, 7, -7, INT32_MAX, INT32_MIN, 2**40, -(2**40), INT64_MAX]
    for a in values:
        for b in divisors + [int(rng.integers(1, 2**20)) * int(rng.choice([-1, 1]))]:
            assert_same(cf.div_trunc(a, b), fixed.div_trunc(a, b), ("div_trunc", a, b))
    small = [v for v in values if abs(v) < 2**62] + [2**62 - 1, -(2**62) + 1, 2**47, -(2**47), 5, -5, 6, -6]
    for v in small:
        for shift in [0, 1, 2, 3, 15, 16, 31, 32, 47, 62, int(rng.integers(0, 63))]:
            assert_same(cf.shift_round(v, shift), fixed.shift_round(v, shift), ("shift_round", v, shift))


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7])
def test_rng_streams(seed):
    gen_c, gen_n = fixed.seed_state(seed), fixed.seed_state(seed)
    for k in range(600):
        kind = k % 3
        if kind == 0:
            assert_same(cf.rng_next(gen_c), fixed.rng_next(gen_n), k)
        elif kind == 1:
            assert_same(cf.rng_u32(gen_c), fixed.rng_u32(gen_n), k)
        else:
            assert_same(cf.rng_normal(gen_c, NORMAL_TABLE), fixed.rng_normal(gen_n, NORMAL_TABLE), k)
        assert_same_array(gen_c, gen_n, k)


# ------------------------------------------------------------------------------------------------------------------
# rounding
# ------------------------------------------------------------------------------------------------------------------
ROUND_EDGES = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994,
               0.5000000000000001, 1.0, -1.0, 2.0**52 - 0.5, -(2.0**52 - 0.5), 2.0**52, 2.0**52 + 1, 2.0**53,
               2.0**53 + 2, 2.0**63, -(2.0**63), 2.0**64 + 4096, 1e300, -1e300, 5e-324, -5e-324, 2.2250738585072014e-308,
               math.inf, -math.inf, 4503599627370495.5, -4503599627370495.5, 4503599627370496.5, 32766.5, -32767.5]


def test_round_half_away_every_kind_of_double():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**64, 3000, dtype=np.uint64, endpoint=False)
    random_doubles = bits.view(np.float64)
    random_doubles = random_doubles[np.isfinite(random_doubles)].tolist()
    halves = (rng.integers(-2**40, 2**40, 500) + 0.5).tolist()
    near = [math.nextafter(h, math.inf) for h in halves[:200]] + [math.nextafter(h, -math.inf) for h in halves[:200]]
    scaled = (rng.normal(0, 1, 1000) * 10.0 ** rng.uniform(-6, 17, 1000)).tolist()
    for v in ROUND_EDGES + random_doubles + halves + near + scaled:
        assert_same(cf.round_half_away(v), ctl.round_half_away(v), v)


def test_train_length():
    rng = np.random.default_rng(8)
    cases = [(1.0, 1e12, 1e12, 1e-3, 31), (0.01, 1.0, 0.25, 0.001, 31), (1e-9, 1.0, 1.0, 0.001, 31),
             (0.01, 1.0, 1.0, 0.001, 1), (1.0, 1e300, 1e300, 1e-300, 31), (0.1, 0.5, 0.2, 0.01, 31),
             (0.02, 1.0, 1.0, 0.001, 31), (0.003, 1.0, 1.0, 0.001, 31), (-0.5, 1.0, 1.0, 0.001, 31)]
    for _ in range(500):
        cases.append((float(10.0 ** rng.uniform(-5, 1)), float(rng.uniform(0, 3)), float(rng.uniform(0, 3)),
                      float(10.0 ** rng.uniform(-4, -1)), int(rng.choice([1, 2, 7, 31, 1000]))))
    for case in cases:
        assert_same(cf.train_length(*case), ctl.train_length(*case), case)


# ------------------------------------------------------------------------------------------------------------------
# crossbar
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_device_physics(seed):
    rng = np.random.default_rng(100 + seed)
    for nodes in [1, 2, 3, 7, 10]:
        table_up, table_down = rng.uniform(0.05, 2.0, nodes), rng.uniform(0.05, 2.0, nodes + int(rng.integers(0, 3)))
        w_min, w_max = -float(rng.uniform(0.3, 1.2)), float(rng.uniform(0.3, 1.2))
        inv_span = (nodes - 1) / (w_max - w_min)
        scale_up, scale_down = float(rng.uniform(0.005, 0.5)), float(rng.uniform(0.005, 0.5))
        ws = list(rng.uniform(w_min - 0.3, w_max + 0.3, 60)) + [w_min, w_max, 0.0, -0.0]
        for w in map(float, ws):
            assert_same(cf.relative_step(w, table_up, w_min, inv_span),
                        crossbar.relative_step(w, table_up, w_min, inv_span), w)
            noise = float(rng.choice([0.0, rng.normal(0.0, 0.3), -1.5]))  # -1.5: a reversed step, clipped
            for polarity in (crossbar.POLARITY_UP, crossbar.POLARITY_DOWN):
                args = (w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max)
                assert_same(cf.step_state(*args, inv_span, noise), crossbar.step_state(*args, inv_span, noise), args)
                assert_same(cf.apply_pulse(*args, noise), crossbar.apply_pulse(*args, noise), args)
                run_both(crossbar.pulses_to_cross, cf.pulses_to_cross, w, float(rng.uniform(w_min, w_max)), polarity,
                         table_up, table_down, scale_up, scale_down, w_min, w_max, int(rng.integers(0, 200)))
            for max_pairs in (0, 1, 5, 200):
                run_both(crossbar.alternate_until_settled, cf.alternate_until_settled, w, table_up, table_down,
                         scale_up, scale_down, w_min, w_max, max_pairs, float(rng.choice([0.0, 1e-4, 1e-2])))
        for n in (0, 1, 2, 300):
            polarities = rng.choice(np.array([-1, 1], np.int64), n)
            restart = rng.random(n) < 0.1
            restart_w = rng.uniform(w_min, w_max, n)
            run_both(crossbar.replay, cf.replay, float(rng.uniform(w_min, w_max)), polarities, restart, restart_w,
                     table_up, table_down, scale_up, scale_down, w_min, w_max)


@pytest.mark.parametrize("c2c_std", [0.0, 0.1, 0.6])
@pytest.mark.parametrize("seed", range(2))
def test_pulse_device(seed, c2c_std):
    rng = np.random.default_rng(110 + seed)
    for rows, cols in SHAPES[:5]:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        gen = fixed.seed_state(seed)
        for _ in range(30):
            i, j = int(rng.integers(0, rows)), int(rng.integers(0, cols))
            n = int(rng.choice([0, 1, 3, 40]))
            polarity = int(rng.choice([crossbar.POLARITY_UP, crossbar.POLARITY_DOWN]))
            _, after = run_both(crossbar.pulse_device, cf.pulse_device, state, params, i, j, n, polarity, table_up,
                                table_down, c2c_std, gen, NORMAL_TABLE)
            state, gen = after[0], after[9]


# ------------------------------------------------------------------------------------------------------------------
# controller: MVM
# ------------------------------------------------------------------------------------------------------------------
class MvmStats:
    calls = 0
    repeats = 0
    zero = 0


def mvm_case(rng, gen, cnt, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound,
             out_noise, nm_mode, bm, max_rounds, stats):
    n_out = state.shape[1] if transpose else state.shape[0]
    codes = np.full(n_out, 777_777, np.int32)
    before = cnt[ctl.C_BM_REPEATS]
    _, after = run_both(ctl.mvm, cf.mvm, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits,
                        out_bound, out_noise, nm_mode, bm, max_rounds, gen, NORMAL_TABLE, codes, cnt)
    stats.calls += 1
    stats.repeats += after[16][ctl.C_BM_REPEATS] - before
    stats.zero += not vec.any()
    return after[13], after[16]


@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("out_noise", [0.0, 0.05])
@pytest.mark.parametrize("bm", [False, True])
@pytest.mark.parametrize("nm_mode", [ctl.NM_NONE, ctl.NM_ABS_MAX])
@pytest.mark.parametrize("transpose", [False, True])
def test_mvm(transpose, nm_mode, bm, out_noise, use_ref):
    stats = MvmStats()
    for seed in range(3):
        rng = np.random.default_rng([200, seed, int(transpose), nm_mode, int(bm), int(out_noise > 0), int(use_ref)])
        rows, cols = SHAPES[seed + 1 if seed < 2 else 6]
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        ref_state = rng.uniform(-0.5, 0.5, (rows, cols))
        n_in = rows if transpose else cols
        gen, cnt = fixed.seed_state(1000 + seed), counters(rng)
        dac_bits, adc_bits = int(rng.integers(3, 9)), int(rng.integers(2, 11))
        inp_bound = float(rng.uniform(0.5, 2.0))
        out_bound = float(rng.uniform(0.1, 0.8)) * inp_bound * math.sqrt(n_in) * 0.5
        for t in range(10):
            if nm_mode == ctl.NM_ABS_MAX:
                vec = with_zeros(rng, rng.normal(0.0, 1.0, n_in) * 10.0 ** rng.uniform(-3, 3))
            else:
                vec = with_zeros(rng, rng.uniform(-1.5, 1.5, n_in) * inp_bound)
            if t == 0:
                vec[:] = 0.0
            if t == 1:
                vec[:] = -0.0
            gen, cnt = mvm_case(rng, gen, cnt, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound,
                                adc_bits, out_bound, out_noise, nm_mode, bm, int(rng.choice([0, 1, 10])), stats)
    assert stats.zero >= 6
    if bm:
        assert stats.repeats > 0  # bound management did repeat passes in these cases


def test_mvm_bound_management_repeats():
    """Large weights: iterative bound management repeats, and stops at max_bm_rounds with saturated codes."""
    stats = MvmStats()
    for seed in range(4):
        rng = np.random.default_rng(300 + seed)
        rows, cols = SHAPES[seed + 1]
        state = rng.uniform(2.0, 3.0, (rows, cols))
        ref_state = rng.uniform(-0.1, 0.1, (rows, cols))
        gen, cnt = fixed.seed_state(seed), counters(rng)
        for max_rounds in (0, 1, 2, 3, 40):
            for transpose in (False, True):
                n_in = rows if transpose else cols
                vec = rng.uniform(0.5, 1.0, n_in)
                gen, cnt = mvm_case(rng, gen, cnt, state, ref_state, bool(seed % 2), vec, transpose, 7, 1.0, 9, 1.0,
                                    0.02 * (seed % 2), ctl.NM_ABS_MAX, True, max_rounds, stats)
    assert stats.repeats > 20


def test_mvm_dac_rounding_halves():
    """Inputs within an ulp or two of a DAC code boundary: the code must round as numba's does."""
    stats = MvmStats()
    rng = np.random.default_rng(350)
    for rows, cols in SHAPES[1:5]:
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        gen, cnt = fixed.seed_state(rows), counters(rng)
        for _ in range(20):
            dac_bits = int(rng.integers(3, 9))
            dac_max = (1 << (dac_bits - 1)) - 1
            inp_bound = float(rng.uniform(0.3, 3.0))
            for nm_mode in (ctl.NM_NONE, ctl.NM_ABS_MAX):
                vec = (rng.integers(-dac_max, dac_max, cols) + 0.5) * inp_bound / dac_max
                gen, cnt = mvm_case(rng, gen, cnt, state, state, False, vec, False, dac_bits, inp_bound, 10,
                                    4.0 * inp_bound, 0.0, nm_mode, True, 3, stats)


@pytest.mark.parametrize("transpose", [False, True])
def test_mvm_batch(transpose):
    rng = np.random.default_rng(400 + int(transpose))
    for rows, cols in SHAPES[1:5]:
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        ref_state = rng.uniform(-0.5, 0.5, (rows, cols))
        n_in, n_out = (rows, cols) if transpose else (cols, rows)
        for nm_mode in (ctl.NM_NONE, ctl.NM_ABS_MAX):
            batch = int(rng.integers(1, 6))
            vecs = rng.normal(0.0, 1.0, (batch, n_in))
            vecs[0] = 0.0
            codes = np.zeros((batch, n_out), np.int32)
            scales = np.full(batch, -1.0)
            run_both(ctl.mvm_batch, cf.mvm_batch, state, ref_state, True, vecs, transpose, 6, 1.0, 8,
                     0.6 * math.sqrt(n_in), 0.03, nm_mode, True, 5, fixed.seed_state(rows), NORMAL_TABLE, codes,
                     scales, counters(rng))


# ------------------------------------------------------------------------------------------------------------------
# controller: updates
# ------------------------------------------------------------------------------------------------------------------
def test_train_bits():
    rng = np.random.default_rng(500)
    for bl in (0, 1, 2, 13, 31):
        for prob_scale in (0.0, 0.3, 1.0, 5.0, 1e6):
            values = with_zeros(rng, rng.normal(0.0, 1.0, int(rng.integers(1, 40))))
            values[0] = 1.0 / prob_scale if prob_scale else 1.0  # p == 1 exactly: threshold 2**32
            bits = np.full(values.shape[0], 0xDEADBEEF, np.uint32)
            run_both(ctl._train_bits, cf._train_bits, values, prob_scale, bl, fixed.seed_state(bl), bits)


def stochastic_args(rng, rows, cols, c2c_std, bl_max, update_management, x=None, d=None, lr=None):
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    x = with_zeros(rng, rng.normal(0.0, 1.0, cols)) if x is None else x
    d = with_zeros(rng, rng.normal(0.0, 0.3, rows)) if d is None else d
    lr = float(rng.choice([0.01, 0.1, 0.5])) if lr is None else lr
    dw_min = float(rng.choice([0.001, 0.01, 0.05]))
    return (state, params, table_up, table_down, c2c_std, x, d, lr, dw_min, bl_max, update_management,
            fixed.seed_state(int(rng.integers(0, 2**31))), NORMAL_TABLE, device_pulses(rng, rows, cols), counters(rng))


@pytest.mark.parametrize("bl_max", [1, 31])
@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("update_management", [False, True])
def test_stochastic_update(update_management, c2c_std, bl_max):
    rng = np.random.default_rng([600, int(update_management), int(c2c_std > 0), bl_max])
    total = 0
    for rows, cols in SHAPES:
        for _ in range(2):
            result, _ = run_both(ctl.stochastic_update, cf.stochastic_update,
                                 *stochastic_args(rng, rows, cols, c2c_std, bl_max, update_management))
            total += result
    assert total > 0
    # early returns: a zero vector or a zero learning rate (only the update call is counted)
    for x_zero, d_zero, lr in [(True, False, None), (False, True, None), (False, False, 0.0), (True, True, 0.0)]:
        rows, cols = 3, 5
        x = np.zeros(cols) if x_zero else None
        d = np.full(rows, -0.0) if d_zero else None
        result, _ = run_both(ctl.stochastic_update, cf.stochastic_update,
                             *stochastic_args(rng, rows, cols, c2c_std, bl_max, update_management, x, d, lr))
        assert result == 0


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
def test_stochastic_update_batch(c2c_std):
    rng = np.random.default_rng([610, int(c2c_std > 0)])
    for rows, cols in SHAPES[1:]:
        args = list(stochastic_args(rng, rows, cols, c2c_std, 31, True))
        batch = int(rng.integers(1, 5))
        xs = rng.normal(0.0, 1.0, (batch, cols))
        ds = rng.normal(0.0, 0.3, (batch, rows))
        ds[0] = 0.0  # an early-returning sample inside the batch
        args[5], args[6] = xs, ds
        run_both(ctl.stochastic_update_batch, cf.stochastic_update_batch, *args)


@pytest.mark.parametrize("c2c_std", [0.0, 0.3])
def test_coincidence_pulses(c2c_std):
    rng = np.random.default_rng([620, int(c2c_std > 0)])
    for rows, cols in SHAPES:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        x = with_zeros(rng, rng.normal(0.0, 1.0, cols))
        d = with_zeros(rng, rng.normal(0.0, 1.0, rows))
        x_bits = (rng.integers(0, 2**32, cols, dtype=np.uint64) & rng.integers(0, 2**32, cols, dtype=np.uint64))
        d_bits = rng.integers(0, 2**32, rows, dtype=np.uint64)
        x_bits, d_bits = x_bits.astype(np.uint32), d_bits.astype(np.uint32)
        d_bits[rng.random(rows) < 0.3] = 0
        x_bits[rng.random(cols) < 0.3] = 0
        pulses = device_pulses(rng, rows, cols)[0].copy()
        run_both(ctl._coincidence_pulses, cf._coincidence_pulses, state, params, table_up, table_down, c2c_std, x, d,
                 x_bits, d_bits, fixed.seed_state(cols), NORMAL_TABLE, pulses)


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("max_pulses", [0, 1, 3, 1000])
def test_deterministic_update_batch(max_pulses, c2c_std):
    rng = np.random.default_rng([700, max_pulses, int(c2c_std > 0)])
    total = 0
    for rows, cols in SHAPES:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        batch = int(rng.integers(1, 6))
        xs = rng.normal(0.0, 1.0, (batch, cols))
        ds = rng.normal(0.0, 0.1, (batch, rows)) / batch
        xs[:, rng.random(cols) < 0.2] = 0.0
        lr = float(rng.choice([0.01, 0.1, 1.0]))
        result, _ = run_both(ctl.deterministic_update_batch, cf.deterministic_update_batch, state, params, table_up,
                             table_down, c2c_std, xs, ds, lr, float(rng.choice([0.001, 0.01])), max_pulses,
                             fixed.seed_state(rows * cols), NORMAL_TABLE, device_pulses(rng, rows, cols),
                             counters(rng))
        total += result
    if max_pulses > 0:
        assert total > 0


def test_deterministic_update_batch_rounding_halves():
    """Pulse counts within an ulp or two of k + 1/2: (lr |g|) / dw_min must round as numba's does."""
    rng = np.random.default_rng(710)
    for rows, cols in SHAPES[1:5]:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        lr, dw_min = float(rng.uniform(0.01, 1.0)), float(rng.uniform(0.001, 0.1))
        xs = np.ones((1, cols))
        ds = (rng.integers(-6, 6, (1, rows)) + 0.5) * dw_min / lr
        run_both(ctl.deterministic_update_batch, cf.deterministic_update_batch, state, params, table_up, table_down,
                 0.0, xs, ds, lr, dw_min, 100, fixed.seed_state(rows), NORMAL_TABLE, device_pulses(rng, rows, cols),
                 counters(rng))


def test_chi_increments():
    rng = np.random.default_rng(800)
    for rows, cols in SHAPES:
        for case in range(8):
            x = with_zeros(rng, rng.normal(0.0, 1.0, cols) * 10.0 ** rng.uniform(-4, 4))
            d = with_zeros(rng, rng.normal(0.0, 1.0, rows) * 10.0 ** rng.uniform(-4, 4))
            lr = float(10.0 ** rng.uniform(-4, 0))
            frac = int(rng.choice([-3, 0, 8, 16, 24, 30, 40]))
            if case in (3, 4):  # quotients within an ulp or two of a rounding half: the operation order decides
                x_max = float(rng.uniform(0.1, 3.0))
                x = (rng.integers(-32767, 32767, cols) + 0.5) * x_max / 32767.0
                x[0] = x_max
                k = rng.integers(-10**6, 10**6, rows) + 0.5
                d = k / (-lr * x_max * 2.0**frac)
            if case == 0:
                x[:] = 0.0  # zero input: everything zero
            if case == 1:
                lr = 1e12  # saturates row_mult to INT32_MIN / INT32_MAX
            if case == 2:
                x[int(rng.integers(0, cols))] = -0.5 * 10.0 ** rng.uniform(-3, 3)  # a negative maximum
            run_both(ctl.chi_increments, cf.chi_increments, x, d, lr, frac, np.full(cols, 99, np.int32),
                     np.full(rows, 99, np.int32))


def mp_tile_args(rng, rows, cols, c2c_std, extremes):
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    chi = rng.integers(-3000, 3000, (rows, cols)).astype(np.int32)
    if extremes:  # accumulators at the int32 limits: the increment saturates
        chi.flat[rng.random(rows * cols) < 0.1] = INT32_MAX - int(rng.integers(0, 5))
        chi.flat[rng.random(rows * cols) < 0.1] = INT32_MIN + int(rng.integers(0, 5))
    return state, params, table_up, table_down, c2c_std, chi


def mp_eps(rng, max_pulses, case):
    """Thresholds: small ones fire often; without a pulse cap, the saturating cases (1, 2) get thresholds near 2**23
    so that a saturated chi fires hundreds of pulses, not billions."""
    low, high = (2**22, 2**24) if max_pulses == 0 and case > 0 else (1, 3000)
    eps_up, eps_down = int(rng.integers(low, high)), int(rng.integers(low, high))
    return (eps_up, eps_up) if case == 0 else (eps_up, eps_down)


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("max_pulses", [0, 1, 4])
def test_mp_update(max_pulses, c2c_std):
    rng = np.random.default_rng([900, max_pulses, int(c2c_std > 0)])
    total = 0
    for rows, cols in SHAPES:
        for case in range(3):
            tile = mp_tile_args(rng, rows, cols, c2c_std, case > 0)
            x_q = np.zeros(cols, np.int32)
            row_mult = np.zeros(rows, np.int32)
            x = with_zeros(rng, rng.normal(0.0, 1.0, cols))
            d = rng.normal(0.0, 1.0, rows)
            ctl.chi_increments(x, d, 1e4 if case == 2 else 0.5, 12, x_q, row_mult)
            if case == 1:  # extremes: the widest products
                x_q[:] = rng.choice(np.array([INT32_MIN, INT32_MAX, -32767, 32767, 0], np.int32), cols)
                row_mult[:] = rng.choice(np.array([INT32_MIN, INT32_MAX, -1, 1], np.int32), rows)
            eps_up, eps_down = mp_eps(rng, max_pulses, case)
            result, _ = run_both(ctl.mp_update, cf.mp_update, *tile, x_q, row_mult, eps_up, eps_down, max_pulses,
                                 fixed.seed_state(case), NORMAL_TABLE, device_pulses(rng, rows, cols), counters(rng))
            total += result
    assert total > 0


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("max_pulses", [0, 1, 4])
def test_mp_update_dense(max_pulses, c2c_std):
    rng = np.random.default_rng([910, max_pulses, int(c2c_std > 0)])
    total = 0
    for rows, cols in SHAPES:
        for case in range(3):
            tile = mp_tile_args(rng, rows, cols, c2c_std, case > 0)
            gradient = rng.normal(0.0, 1.0, (rows, cols)) * 10.0 ** rng.uniform(-3, 1)
            gradient[rng.random((rows, cols)) < 0.2] = 0.0
            scale = -float(rng.uniform(0.01, 1.0)) * 2.0 ** 12
            if case == 1:
                gradient[0, 0], gradient[-1, -1] = 1e300, -1e300  # beyond int32 before and after the scale
            if case == 2:
                gradient = (rng.integers(-40, 40, (rows, cols)) + 0.5) / -scale  # exact halves in chi units
            eps_up, eps_down = mp_eps(rng, max_pulses, case)
            result, _ = run_both(ctl.mp_update_dense, cf.mp_update_dense, *tile, gradient, scale, eps_up, eps_down,
                                 max_pulses, fixed.seed_state(case + 10), NORMAL_TABLE, device_pulses(rng, rows, cols),
                                 counters(rng))
            total += result
    assert total > 0


# ------------------------------------------------------------------------------------------------------------------
# controller: calibration and direct pulses
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.15])
def test_symmetry_search(c2c_std, device_set):
    rng = np.random.default_rng([1000, int(c2c_std > 0), device_set])
    for rows, cols in SHAPES[:5]:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        for window, max_pairs, tolerance in [(1, 30, 1e-3), (3, 40, 1e-2), (2, 0, 1e-3), (4, 5, 0.0)]:
            _, after = run_both(ctl.symmetry_search, cf.symmetry_search, state, params, table_up, table_down,
                                c2c_std, device_set, window, max_pairs, tolerance, fixed.seed_state(window),
                                NORMAL_TABLE, np.full((rows, cols), np.nan), np.full((rows, cols), -1, np.int64),
                                device_pulses(rng, rows, cols), counters(rng))
            state = after[0]


@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.15])
def test_program_to(c2c_std, device_set):
    rng = np.random.default_rng([1100, int(c2c_std > 0), device_set])
    missed = 0
    for rows, cols in SHAPES[:5]:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        for tolerance, max_pulses in [(0.02, 100), (1e-3, 20), (0.0, 5), (0.05, 0)]:
            target = rng.uniform(params[..., crossbar.P_W_MIN] - 0.1, params[..., crossbar.P_W_MAX] + 0.1)
            result, after = run_both(ctl.program_to, cf.program_to, state, params, table_up, table_down, c2c_std,
                                     device_set, target, tolerance, max_pulses, fixed.seed_state(max_pulses),
                                     NORMAL_TABLE, device_pulses(rng, rows, cols), counters(rng))
            state = after[0]
            missed += result
    assert missed > 0


@pytest.mark.parametrize("c2c_std", [0.0, 0.25])
def test_apply_counts(c2c_std):
    rng = np.random.default_rng([1200, int(c2c_std > 0)])
    clipped = 0
    for rows, cols in SHAPES:
        state, params, table_up, table_down = random_tile(rng, rows, cols)
        for scale in (0, 3, 50):
            counts = rng.integers(-scale, scale + 1, (rows, cols)).astype(np.int32)
            counts[rng.random((rows, cols)) < 0.2] = 0
            _, after = run_both(ctl.apply_counts, cf.apply_counts, state, params, table_up, table_down, c2c_std,
                                counts, fixed.seed_state(scale), NORMAL_TABLE, device_pulses(rng, rows, cols),
                                counters(rng))
            state = after[0]
            clipped += int(((state == params[..., crossbar.P_W_MIN]) | (state == params[..., crossbar.P_W_MAX])).sum())
    assert clipped > 0  # bound clipping did happen


# ------------------------------------------------------------------------------------------------------------------
# frontend
# ------------------------------------------------------------------------------------------------------------------
def test_isqrt64_and_window_count():
    rng = np.random.default_rng(1300)
    values = [0, 1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 2**31, 2**32 - 1, 2**32, 2**62, INT64_MAX, -1, -5]
    roots = rng.integers(0, 3037000499, 300, dtype=np.int64)
    values += [int(r) * int(r) + k for r in roots for k in (-1, 0, 1) if int(r) * int(r) + k >= 0]
    values += [int(v) for v in rng.integers(0, INT64_MAX, 300, dtype=np.int64)]
    for v in values:
        assert_same(cf.isqrt64(v), frontend.isqrt64(v), v)
    for n in (0, 1, 5, 64, 100, 1001):
        for length in (1, 5, 64, 200):
            for hop in (1, 3, 32, 64):
                assert_same(cf.window_count(n, length, hop), frontend.window_count(n, length, hop), (n, length, hop))


@pytest.mark.parametrize("seed", range(3))
def test_window_features_and_decimate(seed):
    rng = np.random.default_rng(1400 + seed)
    for n, channels in [(0, 3), (10, 1), (200, 3), (333, 6)]:
        codes = rng.integers(-32768, 32768, (n, channels)).astype(np.int16)
        if n:
            codes[rng.random((n, channels)) < 0.1] = -32768
            codes[rng.random((n, channels)) < 0.1] = 32767
            codes[: n // 4, 0] = int(rng.integers(-32768, 32768))  # a flat stretch: zero variance
        for length, hop in [(1, 1), (10, 5), (64, 32), (100, 100), (300, 7)]:
            windows = frontend.window_count(n, length, hop)
            out = np.full((windows + int(seed == 1), channels * frontend.N_FEATURES + int(seed == 2)), 12345, np.int32)
            run_both(frontend.window_features, cf.window_features, codes, length, hop, out)
            for factor in (1, 2, 3, 7):
                per = length // factor
                raw = np.full((windows, channels * per + int(seed == 2)), 999, np.int16)
                run_both(frontend.decimate, cf.decimate, codes, length, hop, factor, raw)


@pytest.mark.parametrize("seed", range(3))
def test_normalise(seed):
    rng = np.random.default_rng(1500 + seed)
    for n_windows, n in [(0, 4), (1, 1), (20, 15), (50, 30)]:
        features = rng.integers(-32768, 32769, (n_windows, n)).astype(np.int32)
        offset = rng.integers(-32768, 32769, n).astype(np.int32)
        shift = rng.integers(0, 48, n).astype(np.int32)
        multiplier = (rng.integers(2**14, 2**15 + 1, n)).astype(np.int32)
        if n > 2:
            shift[0], multiplier[0] = 0, int(rng.integers(0, 3))  # shift 0: nothing added
            multiplier[1] = 0  # a constant feature
            shift[2], multiplier[2] = 47, INT32_MAX  # the widest product
        out = np.full((n_windows, n), 7, np.int16)
        result, _ = run_both(frontend.normalise, cf.normalise, features, offset, multiplier, shift, out)
        if n_windows * n > 100:
            assert result > 0  # random scales do saturate some outputs


# ------------------------------------------------------------------------------------------------------------------
# errors: where numba raises ZeroDivisionError, so does the binding
# ------------------------------------------------------------------------------------------------------------------
def test_division_by_zero_raises_like_numba():
    rng = np.random.default_rng(1700)
    state, params, table_up, table_down = random_tile(rng, 2, 3)
    cases = [
        (fixed.div_trunc, cf.div_trunc, (5, 0)),
        (frontend.window_count, cf.window_count, (10, 3, 0)),
        (crossbar.apply_pulse, cf.apply_pulse, (0.1, 1, table_up, table_down, 0.1, 0.1, 0.5, 0.5, 0.0)),
        (ctl.train_length, cf.train_length, (0.1, 1.0, 1.0, 0.0, 31)),
        (ctl.mvm, cf.mvm, (state, state, False, np.ones(3), False, 4, 1.0, 1, 1.0, 0.0, ctl.NM_NONE, False, 0,
                           fixed.seed_state(0), NORMAL_TABLE, np.zeros(2, np.int32), counters(rng))),
        (ctl.mvm, cf.mvm, (state, state, False, np.ones(3), False, 4, 0.0, 6, 1.0, 0.0, ctl.NM_ABS_MAX, False, 0,
                           fixed.seed_state(0), NORMAL_TABLE, np.zeros(2, np.int32), counters(rng))),
        (ctl.stochastic_update, cf.stochastic_update, (state, params, table_up, table_down, 0.0, np.ones(3),
                                                       np.ones(2), 0.1, 0.0, 31, True, fixed.seed_state(0),
                                                       NORMAL_TABLE, device_pulses(rng, 2, 3), counters(rng))),
        (ctl.deterministic_update_batch, cf.deterministic_update_batch,
         (state, params, table_up, table_down, 0.0, np.ones((2, 3)), np.ones((2, 2)), 0.1, 0.0, 5, fixed.seed_state(0),
          NORMAL_TABLE, device_pulses(rng, 2, 3), counters(rng))),
        (ctl.symmetry_search, cf.symmetry_search,
         (state, params, table_up, table_down, 0.0, 0, 0, 4, 1e-3, fixed.seed_state(0), NORMAL_TABLE,
          np.zeros((2, 3)), np.zeros((2, 3), np.int64), device_pulses(rng, 2, 3), counters(rng))),
    ]
    for numba_fn, c_fn, args in cases:
        a_numba, a_c = copy_args(args), copy_args(args)
        with pytest.raises(ZeroDivisionError):
            numba_fn(*a_numba)
        with pytest.raises(ZeroDivisionError):
            c_fn(*a_c)
        for g, w in zip(a_c, a_numba):
            if isinstance(w, np.ndarray):
                assert_same_array(g, w, numba_fn.__name__)
    # an all-zero input with abs-max noise management returns before any division
    run_both(ctl.mvm, cf.mvm, state, state, False, np.zeros(3), False, 4, 0.0, 6, 1.0, 0.0, ctl.NM_ABS_MAX, False, 0,
             fixed.seed_state(0), NORMAL_TABLE, np.ones(2, np.int32), counters(rng))


# ------------------------------------------------------------------------------------------------------------------
# array checks
# ------------------------------------------------------------------------------------------------------------------
def test_bindings_check_arrays():
    rng = np.random.default_rng(1600)
    state, params, table_up, table_down = random_tile(rng, 3, 4)
    good = (state, params, table_up, table_down, 0.0, np.zeros((3, 4), np.int32), fixed.seed_state(0), NORMAL_TABLE,
            np.zeros((2, 3, 4, 2), np.int32), np.zeros(ctl.N_COUNTERS, np.int64))
    assert cf.apply_counts(*good) == 0
    bad = [(5, np.zeros((3, 4), np.int64)), (0, np.asfortranarray(state)), (1, params[:, :, :4]),
           (6, np.zeros(1, np.int64)), (7, NORMAL_TABLE[:100]), (8, np.zeros((1, 3, 4, 2), np.int32)),
           (9, np.zeros(ctl.N_COUNTERS, np.int32)), (0, state.astype(np.float32))]
    for index, value in bad:
        args = list(good)
        args[index] = value
        with pytest.raises(ValueError):
            cf.apply_counts(*args)
    read_only = np.zeros(ctl.N_COUNTERS, np.int64)
    read_only.flags.writeable = False
    with pytest.raises(ValueError):
        cf.apply_counts(*good[:9], read_only)
