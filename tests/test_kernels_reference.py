"""The numba kernels of firmware_model against slow pure-Python references, compared bit-exactly.

The references below are written from the documented semantics with Python ints, floats and loops; integer results
must match exactly, and float device physics is written in the same operation order as the kernels, so it matches
exactly in IEEE double too. The one exception is the analog summation of the MVM (`_analog_mvm` is compiled with
fastmath, so the kernel may reassociate the sum): there ADC codes may differ by one where the reference's pre-ADC
value lies within 1e-9 of a rounding boundary, and such cases must stay rare.

Rounding and truncation in the references use exact rational arithmetic (fractions.Fraction), not the kernels'
floor(x + 0.5) / abs-and-shift idioms, so the references are independent of the kernel code.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from firmware_model import controller as ctl
from firmware_model import crossbar, fixed

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MASK64 = (1 << 64) - 1
XORSHIFT_MULT = 0x2545F4914F6CDD1D
BOUNDARY = 1e-9  # pre-ADC distance to a .5 rounding boundary (in codes) inside which a +-1 code difference is excused

NORMAL_TABLE = fixed.normal_table()
NORMAL_LIST = NORMAL_TABLE.tolist()
SHAPES = [(3, 5), (4, 7), (6, 4), (8, 12), (5, 9)]


# ------------------------------------------------------------------------------------------------------------------
# references: integer helpers
# ------------------------------------------------------------------------------------------------------------------
def ref_wrap_i32(v):
    return (v + 2**31) % 2**32 - 2**31


def ref_sat_i32(v):
    return max(INT32_MIN, min(INT32_MAX, v))


def ref_div_trunc(a, b):
    return math.trunc(Fraction(a, b))


def ref_round_half_away(q):
    """Nearest integer to the exact value of q (int, float or Fraction), halves away from zero."""
    q = Fraction(q)
    m = math.floor(abs(q) + Fraction(1, 2))
    return m if q >= 0 else -m


def ref_shift_round(v, shift):
    return ref_round_half_away(Fraction(v, 2**shift))


def ref_popcount32(v):
    return bin(v & 0xFFFFFFFF).count("1")


class RefRng:
    """xorshift64* on a Python int."""

    def __init__(self, state_array):
        self.s = int(state_array[0])

    def next(self):
        x = self.s
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.s = x
        return (x * XORSHIFT_MULT) & MASK64

    def u32(self):
        return self.next() >> 32

    def normal(self):
        return NORMAL_LIST[self.next() >> (64 - fixed.NORMAL_TABLE_BITS)]


# ------------------------------------------------------------------------------------------------------------------
# references: device physics
# ------------------------------------------------------------------------------------------------------------------
def ref_relative_step(w, table, w_min, inv_span):
    last = len(table) - 1
    position = (w - w_min) * inv_span
    if position <= 0.0:
        return table[0]
    if position >= last:
        return table[last]
    k = math.floor(position)
    t = position - k
    return table[k] + t * (table[k + 1] - table[k])


class RefTile:
    """Python-list copy of a tile: state[i][j], params[i][j] = [scale_up, scale_down, w_min, w_max, inv_span]."""

    def __init__(self, state, params, table_up, table_down, c2c_std):
        self.w = state.tolist()
        self.p = params.tolist()
        self.up = table_up.tolist()
        self.down = table_down.tolist()
        self.c2c = float(c2c_std)

    def pulse(self, i, j, n, polarity, rng):
        """n pulses on device (i, j); polarity +1 = down, -1 = up; one normal draw per pulse when c2c > 0."""
        s_up, s_down, w_min, w_max, inv_span = self.p[i][j]
        w = self.w[i][j]
        for _ in range(n):
            noise = self.c2c * rng.normal() if self.c2c > 0.0 else 0.0
            if polarity > 0:
                w = w - s_down * ref_relative_step(w, self.down, w_min, inv_span) * (1.0 + noise)
            else:
                w = w + s_up * ref_relative_step(w, self.up, w_min, inv_span) * (1.0 + noise)
            w = min(max(w, w_min), w_max)
        self.w[i][j] = w

    def state(self):
        return np.array(self.w)


# ------------------------------------------------------------------------------------------------------------------
# references: controller
# ------------------------------------------------------------------------------------------------------------------
def ref_mvm(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise, nm_mode,
            bound_management, max_bm_rounds, rng):
    """Returns (codes, scale, counter increments, pre-ADC values in codes, smallest |(|y| - out_bound)| over the
    passes whose bound check decided something)."""
    rows, cols = len(state), len(state[0])
    n_in, n_out = (rows, cols) if transpose else (cols, rows)
    dac_max = 2 ** (dac_bits - 1) - 1
    adc_max = 2 ** (adc_bits - 1) - 1
    out_step = out_bound / adc_max
    inc = [0] * ctl.N_COUNTERS
    nm = 1.0
    if nm_mode == ctl.NM_ABS_MAX:
        vmax = max(abs(v) for v in vec)
        if vmax == 0.0:
            return [0] * n_out, 0.0, inc, [], math.inf
        nm = vmax / inp_bound
    weight = [[state[i][j] - ref_state[i][j] if use_ref else state[i][j] for j in range(cols)] for i in range(rows)]
    f = 1.0
    rounds = 0
    margin = math.inf
    while True:
        per_code = inp_bound / dac_max
        to_code = dac_max / (nm * f * inp_bound)
        u = [min(max(ref_round_half_away(v * to_code), -dac_max), dac_max) * per_code for v in vec]
        y = []
        for o in range(n_out):
            acc = 0.0
            for k in range(n_in):
                acc += (weight[k][o] if transpose else weight[o][k]) * u[k]
            y.append(acc)
        inc[ctl.C_MVM_BACKWARD if transpose else ctl.C_MVM_FORWARD] += 1
        inc[ctl.C_CELL_READS] += rows * cols
        inc[ctl.C_DAC] += n_in
        if out_noise > 0.0:
            y = [yo + out_noise * rng.normal() for yo in y]
            inc[ctl.C_RNG_DRAWS] += n_out
        if bound_management and rounds < max_bm_rounds:
            margin = min(margin, min(abs(abs(yo) - out_bound) for yo in y))
            if any(abs(yo) > out_bound for yo in y):
                f *= 2.0
                rounds += 1
                inc[ctl.C_BM_REPEATS] += 1
                continue
        break
    pre_adc = [yo / out_step for yo in y]
    codes = [min(max(ref_round_half_away(r), -adc_max), adc_max) for r in pre_adc]
    inc[ctl.C_ADC] += n_out
    return codes, out_step * nm * f, inc, pre_adc, margin


def near_half(r):
    a = abs(r)
    return abs(a - math.floor(a) - 0.5) < BOUNDARY


def ref_train_length(lr, x_max, d_max, dw_min, bl_max):
    return min(max(math.ceil(lr * x_max * d_max / dw_min), 1), bl_max)


def ref_train_bits(values, prob_scale, bl, rng):
    words = []
    for v in values:
        threshold = int(4294967296.0 * min(prob_scale * abs(v), 1.0))
        word = 0
        for k in range(bl):
            if rng.u32() < threshold:
                word |= 1 << k
        words.append(word)
    return words


def ref_stochastic_update(tile, x, d, lr, dw_min, bl_max, update_management, rng, device_pulses, counters):
    rows, cols = len(d), len(x)
    counters[ctl.C_UPDATES] += 1
    x_max = max(abs(v) for v in x)
    d_max = max(abs(v) for v in d)
    if x_max == 0.0 or d_max == 0.0 or lr == 0.0:
        return 0
    bl = ref_train_length(lr, x_max, d_max, dw_min, bl_max)
    a = b = math.sqrt(lr / (dw_min * bl))
    if update_management:
        a *= math.sqrt(x_max / d_max)
        b *= math.sqrt(d_max / x_max)
    x_bits = ref_train_bits(x, b, bl, rng)
    d_bits = ref_train_bits(d, a, bl, rng)
    counters[ctl.C_RNG_DRAWS] += bl * (rows + cols)
    up = down = 0
    for i in range(rows):
        for j in range(cols):
            n = ref_popcount32(d_bits[i] & x_bits[j])
            if n == 0:
                continue
            if (d[i] > 0) == (x[j] > 0):  # d x > 0: the descent step lowers the weight: positive (down) pulses
                tile.pulse(i, j, n, +1, rng)
                device_pulses[0, i, j, 1] += n
                down += n
            else:
                tile.pulse(i, j, n, -1, rng)
                device_pulses[0, i, j, 0] += n
                up += n
    counters[ctl.C_PULSES_UP] += up
    counters[ctl.C_PULSES_DOWN] += down
    counters[ctl.C_COINCIDENCES] += up + down
    return up + down


def ref_deterministic_update_batch(tile, xs, ds, lr, dw_min, max_pulses, rng, device_pulses, counters):
    """One update per mini-batch: g_ij = sum_b d_bi x_bj (Python floats, b ascending), then
    min(round(lr |g_ij| / dw_min), max_pulses) pulses on device (i, j), down when g_ij > 0."""
    batch, rows, cols = len(xs), len(ds[0]), len(xs[0])
    counters[ctl.C_UPDATES] += 1
    counters[ctl.C_MACS] += batch * rows * cols
    up = down = 0
    for i in range(rows):
        for j in range(cols):
            g = 0.0
            for b in range(batch):
                g += ds[b][i] * xs[b][j]
            n = min(ref_round_half_away(lr * abs(g) / dw_min), max_pulses)
            if n == 0:
                continue
            if g > 0:  # the descent step lowers the weight: positive (down) pulses
                tile.pulse(i, j, n, +1, rng)
                device_pulses[0, i, j, 1] += n
                down += n
            else:
                tile.pulse(i, j, n, -1, rng)
                device_pulses[0, i, j, 0] += n
                up += n
    counters[ctl.C_PULSES_UP] += up
    counters[ctl.C_PULSES_DOWN] += down
    return up + down


def ref_chi_increments(x, d, lr, chi_frac_bits):
    x_max = max(abs(v) for v in x)
    if x_max == 0.0:
        return [0] * len(x), [0] * len(d)
    x_q = [ref_round_half_away(v / x_max * 32767.0) for v in x]
    unit = 2.0**chi_frac_bits
    row_mult = [ref_sat_i32(ref_round_half_away(-lr * v * x_max * unit)) for v in d]
    return x_q, row_mult


def ref_mp_update(tile, chi, x_q, row_mult, eps_up, eps_down, max_pulses, rng, device_pulses, counters):
    rows, cols = len(row_mult), len(x_q)
    counters[ctl.C_UPDATES] += 1
    up = down = 0
    for i in range(rows):
        for j in range(cols):
            c = ref_sat_i32(int(chi[i, j]) + ref_shift_round(int(row_mult[i]) * int(x_q[j]), 15))
            eps = eps_up if c > 0 else eps_down
            n = ref_div_trunc(c, eps)
            if max_pulses > 0:
                n = max(-max_pulses, min(max_pulses, n))
            chi[i, j] = c - n * eps
            if n > 0:
                tile.pulse(i, j, n, -1, rng)
                device_pulses[0, i, j, 0] += n
                up += n
            elif n < 0:
                tile.pulse(i, j, -n, +1, rng)
                device_pulses[0, i, j, 1] += -n
                down += -n
    counters[ctl.C_PULSES_UP] += up
    counters[ctl.C_PULSES_DOWN] += down
    counters[ctl.C_MACS] += rows * cols
    counters[ctl.C_ACC_UPDATES] += rows * cols
    return up + down


def ref_symmetry_search(tile, device_set, window, max_pairs, tolerance, rng, settled, pairs_used, device_pulses,
                        counters):
    for i in range(len(tile.w)):
        for j in range(len(tile.w[0])):
            previous = math.inf
            mean = tile.w[i][j]
            pairs = 0
            while pairs < max_pairs:
                reads = []
                for _ in range(window):
                    tile.pulse(i, j, 1, -1, rng)
                    reads.append(tile.w[i][j])
                    tile.pulse(i, j, 1, +1, rng)
                    reads.append(tile.w[i][j])
                    pairs += 1
                total = 0.0
                for r in reads:
                    total += r
                mean = total / (2 * window)
                if abs(mean - previous) < tolerance:
                    break
                previous = mean
            settled[i, j] = mean
            pairs_used[i, j] = pairs
            device_pulses[device_set, i, j, :] += pairs
            counters[ctl.C_CAL_PULSES_UP] += pairs
            counters[ctl.C_CAL_PULSES_DOWN] += pairs
            counters[ctl.C_DEVICE_READS] += 2 * pairs


def ref_program_to(tile, device_set, target, tolerance, max_pulses, rng, device_pulses, counters):
    missed = 0
    for i in range(len(tile.w)):
        for j in range(len(tile.w[0])):
            goal = float(target[i, j])
            counters[ctl.C_DEVICE_READS] += 1
            n = 0
            while n < max_pulses and abs(tile.w[i][j] - goal) > tolerance:
                if tile.w[i][j] < goal:
                    tile.pulse(i, j, 1, -1, rng)
                    device_pulses[device_set, i, j, 0] += 1
                    counters[ctl.C_CAL_PULSES_UP] += 1
                else:
                    tile.pulse(i, j, 1, +1, rng)
                    device_pulses[device_set, i, j, 1] += 1
                    counters[ctl.C_CAL_PULSES_DOWN] += 1
                counters[ctl.C_DEVICE_READS] += 1
                n += 1
            missed += abs(tile.w[i][j] - goal) > tolerance
    return missed


# ------------------------------------------------------------------------------------------------------------------
# random inputs
# ------------------------------------------------------------------------------------------------------------------
def random_tile(rng, rows, cols):
    """(state, params, table_up, table_down): shared 2-10 node tables, per-device bounds and scales."""
    nodes = int(rng.integers(2, 11))
    table_up = rng.uniform(0.05, 2.0, nodes)
    table_down = rng.uniform(0.05, 2.0, nodes)
    table_up[rng.random(nodes) < 0.1] = 0.0
    shape = (rows, cols)
    w_min = -rng.uniform(0.3, 1.2, shape)
    w_max = rng.uniform(0.3, 1.2, shape)
    params = np.empty((rows, cols, crossbar.N_PARAMS))
    params[..., crossbar.P_SCALE_UP] = rng.uniform(0.005, 0.08, shape)
    params[..., crossbar.P_SCALE_DOWN] = rng.uniform(0.005, 0.08, shape)
    params[..., crossbar.P_W_MIN] = w_min
    params[..., crossbar.P_W_MAX] = w_max
    params[..., crossbar.P_INV_SPAN] = (nodes - 1) / (w_max - w_min)
    state = rng.uniform(w_min, w_max)
    at_bound = rng.random(shape)
    state[at_bound < 0.08] = w_min[at_bound < 0.08]
    state[at_bound > 0.92] = w_max[at_bound > 0.92]
    return state, params, table_up, table_down


def random_device_pulses(rng, rows, cols):
    return rng.integers(0, 100, (2, rows, cols, 2)).astype(np.int32)


def with_zeros(rng, v, fraction=0.25):
    v = v.copy()
    v[rng.random(v.shape[0]) < fraction] = 0.0
    return v


# ------------------------------------------------------------------------------------------------------------------
# fixed: integer helpers and the generator
# ------------------------------------------------------------------------------------------------------------------
INT_EDGES = [0, 1, -1, 2, -2, 3, -3, INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1, INT32_MAX + 1,
             INT32_MIN - 1, 2**32, -(2**32), 2**32 - 1, 2**32 + 1, 2**40 + 12345, -(2**40) - 12345, 2**62, -(2**62),
             INT64_MAX, INT64_MIN + 1]


def random_ints(rng, n):
    """int64 values of all magnitudes: int32 range, just beyond it, and wide int64."""
    out = list(rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True, dtype=np.int64))
    out += list(rng.integers(-(2**34), 2**34, n, dtype=np.int64))
    out += list(rng.integers(-1000, 1000, n, dtype=np.int64))
    out += list(rng.integers(INT64_MIN // 2, INT64_MAX // 2, n, dtype=np.int64))
    return [int(v) for v in out]


@pytest.mark.parametrize("seed", range(3))
def test_wrap_and_saturate_match_reference(seed):
    rng = np.random.default_rng(seed)
    values = INT_EDGES + random_ints(rng, 300)
    for v in values:
        assert int(fixed.wrap_i32(v)) == ref_wrap_i32(v), v
        assert int(fixed.sat_i32(v)) == ref_sat_i32(v), v
    assert int(fixed.wrap_i32(INT32_MAX + 1)) == INT32_MIN
    assert int(fixed.sat_i32(INT32_MAX + 1)) == INT32_MAX


@pytest.mark.parametrize("seed", range(3))
def test_div_trunc_is_c_division(seed):
    rng = np.random.default_rng(10 + seed)
    numerators = INT_EDGES + random_ints(rng, 200)
    divisors = [1, -1, 2, -2, 3, -3, 7, -7, INT32_MAX, INT32_MIN, 2**40, -(2**40)]
    divisors += [int(b) for b in rng.integers(-(2**31), 2**31, 100) if b != 0]
    for a in numerators:
        for b in rng.choice(divisors, 8):
            b = int(b)
            if a == INT64_MIN + 1 and b == -1:
                continue
            assert int(fixed.div_trunc(a, b)) == ref_div_trunc(a, b), (a, b)
    # C truncation, not floor: -7 / 2 == -3
    assert int(fixed.div_trunc(-7, 2)) == -3 and int(fixed.div_trunc(7, -2)) == -3
    assert int(fixed.div_trunc(INT32_MIN, -1)) == 2**31  # int64 arithmetic: no int32 overflow


@pytest.mark.parametrize("seed", range(3))
def test_shift_round_rounds_half_away_from_zero(seed):
    rng = np.random.default_rng(20 + seed)
    values = [v for v in INT_EDGES + random_ints(rng, 200) if abs(v) <= 2**62]
    for s in [0, 1, 2, 3, 15, 16, 31, 40]:
        ties = [(2 * k + 1) << (s - 1) for k in range(-4, 4)] if s > 0 else []
        for v in values + ties + [t + 1 for t in ties] + [t - 1 for t in ties]:
            assert int(fixed.shift_round(v, s)) == ref_shift_round(v, s), (v, s)
    assert int(fixed.shift_round(-3, 1)) == -2 and int(fixed.shift_round(3, 1)) == 2
    assert int(fixed.shift_round(-5, 2)) == -1 and int(fixed.shift_round(-6, 2)) == -2
    assert int(fixed.shift_round(-12345, 0)) == -12345


def test_popcount32_matches_reference():
    rng = np.random.default_rng(30)
    values = [0, 1, 2**31, 2**32 - 1, 0x55555555, 0xAAAAAAAA] + [int(v) for v in rng.integers(0, 2**32, 2000)]
    for v in values:
        assert int(fixed.popcount32(v)) == ref_popcount32(v), v
    assert int(fixed.popcount32(2**32 - 1)) == 32


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7])
def test_rng_sequences_match_reference(seed):
    n = 10_000
    assert len(NORMAL_TABLE) == 1 << fixed.NORMAL_TABLE_BITS
    for kind in ("next", "u32", "normal"):
        state = fixed.seed_state(seed)
        assert state.dtype == np.uint64 and state.shape == (1,) and state[0] != 0
        ref = RefRng(state)
        if kind == "next":
            got = [int(fixed.rng_next(state)) for _ in range(n)]
            want = [ref.next() for _ in range(n)]
        elif kind == "u32":
            got = [int(fixed.rng_u32(state)) for _ in range(n)]
            want = [ref.u32() for _ in range(n)]
            assert max(got) < 2**32 and max(got) > 2**31
        else:
            got = [float(fixed.rng_normal(state, NORMAL_TABLE)) for _ in range(n)]
            want = [ref.normal() for _ in range(n)]
            assert abs(np.mean(got)) < 0.05 and abs(np.std(got) - 1.0) < 0.05
        assert got == want, kind
        assert len(set(got)) > {"next": n - 1, "u32": n - 5, "normal": n // 10}[kind]
        assert int(state[0]) == ref.s, kind


def test_round_half_away_matches_exact_rounding():
    rng = np.random.default_rng(40)
    values = [0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 1.4999999999999998, -1.4999999999999998, 2.5000000000000004,
              1e15 + 0.5, -(1e15 + 0.5), 2.0**52, 2.0**53]
    values += [(k + 0.5) for k in range(-50, 50)]
    values += list(rng.normal(0, 100, 2000)) + list(rng.uniform(-3, 3, 2000))
    for v in values:
        assert int(ctl.round_half_away(float(v))) == ref_round_half_away(float(v)), v


@pytest.mark.parametrize("v", [0.49999999999999994, -0.49999999999999994, float(2**52 + 1)])
def test_round_half_away_float_edge_cases(v):
    assert int(ctl.round_half_away(v)) == ref_round_half_away(v)


# ------------------------------------------------------------------------------------------------------------------
# crossbar: pulse_device with cycle-to-cycle noise
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c2c_std", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(3))
def test_pulse_device_matches_reference(seed, c2c_std):
    rng = np.random.default_rng(100 + seed)
    rows, cols = SHAPES[seed]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    initial = state.copy()
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    for _ in range(150):
        i, j = int(rng.integers(rows)), int(rng.integers(cols))
        n = int(rng.integers(0, 25))
        polarity = int(rng.choice([crossbar.POLARITY_UP, crossbar.POLARITY_DOWN]))
        before = int(gen[0])
        crossbar.pulse_device(state, params, i, j, n, polarity, table_up, table_down, c2c_std, gen, NORMAL_TABLE)
        ref.pulse(i, j, n, polarity, ref_gen)
        assert int(gen[0]) == ref_gen.s
        if c2c_std == 0.0 or n == 0:
            assert int(gen[0]) == before
    np.testing.assert_array_equal(state, ref.state())
    assert (state != initial).sum() > rows * cols // 2


# ------------------------------------------------------------------------------------------------------------------
# controller: MVM
# ------------------------------------------------------------------------------------------------------------------
class MvmStats:
    def __init__(self):
        self.codes = self.excused = self.cases = self.skipped = self.repeats = self.zero_input = 0


def check_mvm(rng, gen, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound,
              out_noise, nm_mode, bm, max_rounds, stats):
    rows, cols = state.shape
    n_out = cols if transpose else rows
    codes = np.full(n_out, 777_777, np.int32)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    counters_before = counters.copy()
    ref_gen = RefRng(gen)
    want_codes, want_scale, inc, pre_adc, margin = ref_mvm(
        state.tolist(), ref_state.tolist(), use_ref, vec.tolist(), transpose, dac_bits, inp_bound, adc_bits,
        out_bound, out_noise, nm_mode, bm, max_rounds, ref_gen)
    scale = ctl.mvm(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
                    nm_mode, bm, max_rounds, gen, NORMAL_TABLE, codes, counters)
    stats.cases += 1
    if margin < BOUNDARY:  # the reference's bound check sat on the edge: the kernel's fastmath sum may decide otherwise
        stats.skipped += 1
        gen[0] = np.uint64(ref_gen.s)
        return
    assert scale == want_scale
    np.testing.assert_array_equal(counters - counters_before, inc)
    assert int(gen[0]) == ref_gen.s
    for k in range(n_out):
        stats.codes += 1
        if pre_adc and near_half(pre_adc[k]):
            stats.excused += 1
            assert abs(int(codes[k]) - want_codes[k]) <= 1
        else:
            assert int(codes[k]) == want_codes[k], (k, pre_adc[k] if pre_adc else None)
    stats.repeats += inc[ctl.C_BM_REPEATS]
    stats.zero_input += not vec.any()


@pytest.mark.parametrize("use_ref", [False, True])
@pytest.mark.parametrize("out_noise", [0.0, 0.05])
@pytest.mark.parametrize("bm", [False, True])
@pytest.mark.parametrize("nm_mode", [ctl.NM_NONE, ctl.NM_ABS_MAX])
@pytest.mark.parametrize("transpose", [False, True])
def test_mvm_matches_reference(transpose, nm_mode, bm, out_noise, use_ref):
    stats = MvmStats()
    for seed in range(3):
        rng = np.random.default_rng([200, seed, int(transpose), nm_mode, int(bm), int(out_noise > 0), int(use_ref)])
        rows, cols = SHAPES[seed + 1]
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        ref_state = rng.uniform(-0.5, 0.5, (rows, cols))
        n_in = rows if transpose else cols
        gen = fixed.seed_state(1000 + seed)
        dac_bits, adc_bits = int(rng.integers(3, 9)), int(rng.integers(4, 11))
        inp_bound = float(rng.uniform(0.5, 2.0))
        out_bound = float(rng.uniform(0.5, 2.0)) * inp_bound * math.sqrt(n_in) * 0.5
        for t in range(12):
            if nm_mode == ctl.NM_ABS_MAX:
                vec = with_zeros(rng, rng.normal(0.0, 1.0, n_in) * 10.0 ** rng.uniform(-3, 3))
            else:
                vec = with_zeros(rng, rng.uniform(-1.5, 1.5, n_in) * inp_bound)
            if t == 0:
                vec[:] = 0.0
            check_mvm(rng, gen, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound,
                      out_noise, nm_mode, bm, 10, stats)
    assert stats.skipped <= 1
    assert stats.excused <= max(1, stats.codes // 1000)
    assert stats.zero_input >= 3
    if bm:
        assert stats.repeats > 0  # the inputs do drive the outputs past out_bound


def test_mvm_bound_management_repeats_exactly():
    """Large weights: iterative bound management must repeat, and stop at max_bm_rounds with saturated codes."""
    stats = MvmStats()
    for seed in range(4):
        rng = np.random.default_rng(300 + seed)
        rows, cols = SHAPES[seed]
        state = rng.uniform(2.0, 3.0, (rows, cols))
        ref_state = rng.uniform(-0.1, 0.1, (rows, cols))
        gen = fixed.seed_state(seed)
        for transpose in (False, True):
            n_in = rows if transpose else cols
            for max_rounds, out_noise in ((10, 0.0), (10, 0.02), (1, 0.0), (0, 0.01)):
                vec = rng.uniform(0.5, 1.0, n_in)
                counters = np.zeros(ctl.N_COUNTERS, np.int64)
                codes = np.zeros(cols if transpose else rows, np.int32)
                ref_gen = RefRng(gen)
                want = ref_mvm(state.tolist(), ref_state.tolist(), True, vec.tolist(), transpose, 7, 1.0, 9, 1.0,
                               out_noise, ctl.NM_ABS_MAX, True, max_rounds, ref_gen)
                scale = ctl.mvm(state, ref_state, True, vec, transpose, 7, 1.0, 9, 1.0, out_noise, ctl.NM_ABS_MAX,
                                True, max_rounds, gen, NORMAL_TABLE, codes, counters)
                assert want[4] >= BOUNDARY
                assert counters[ctl.C_BM_REPEATS] == want[2][ctl.C_BM_REPEATS]
                np.testing.assert_array_equal(counters, want[2])
                assert scale == want[1] and int(gen[0]) == ref_gen.s
                assert (counters[ctl.C_MVM_BACKWARD if transpose else ctl.C_MVM_FORWARD]
                        == 1 + counters[ctl.C_BM_REPEATS])
                assert scale == (1.0 / 255) * vec.max() * 2.0 ** counters[ctl.C_BM_REPEATS]
                if max_rounds == 10:
                    assert counters[ctl.C_BM_REPEATS] >= 2
                else:
                    assert counters[ctl.C_BM_REPEATS] == max_rounds
                    assert (codes == 255).any()  # still out of range after the allowed rounds: ADC saturates
                for k, r in enumerate(want[3]):
                    if near_half(r):
                        stats.excused += 1
                        assert abs(int(codes[k]) - want[0][k]) <= 1
                    else:
                        assert int(codes[k]) == want[0][k]
    assert stats.excused <= 1


def test_mvm_dac_and_adc_round_halves_away_from_zero():
    """Exact ties (identity weights, unit DAC and ADC steps): codes round half away from zero and saturate."""
    n = 8
    dac_bits, adc_bits = 4, 6  # dac_max = 7, adc_max = 31
    gen = fixed.seed_state(5)
    for gain in (1.0, 0.5):
        state = np.eye(n) * gain
        vec = np.array([2.5, -2.5, 0.5, -0.5, 6.5, -6.5, 9.0, -1.5])
        codes = np.zeros(n, np.int32)
        counters = np.zeros(ctl.N_COUNTERS, np.int64)
        scale = ctl.mvm(state, state, False, vec, False, dac_bits, 7.0, adc_bits, 31.0, 0.0, ctl.NM_NONE, False, 0,
                        gen, NORMAL_TABLE, codes, counters)
        dac = np.array([3, -3, 1, -1, 7, -7, 7, -2])
        want = dac if gain == 1.0 else np.array([2, -2, 1, -1, 4, -4, 4, -1])  # 1.5 -> 2, 0.5 -> 1, 3.5 -> 4
        np.testing.assert_array_equal(codes, want)
        assert scale == 1.0
        ref_codes = ref_mvm(state.tolist(), state.tolist(), False, vec.tolist(), False, dac_bits, 7.0, adc_bits, 31.0,
                            0.0, ctl.NM_NONE, False, 0, RefRng(gen))[0]
        assert ref_codes == want.tolist()


@pytest.mark.parametrize("nm_mode", [ctl.NM_NONE, ctl.NM_ABS_MAX])
def test_mvm_all_zero_input(nm_mode):
    rng = np.random.default_rng(400)
    state = rng.uniform(-1, 1, (4, 6))
    gen = fixed.seed_state(9)
    before = int(gen[0])
    codes = np.full(4, 5, np.int32)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    scale = ctl.mvm(state, state, False, np.zeros(6), False, 7, 1.0, 9, 12.0, 0.0, nm_mode, True, 10, gen,
                    NORMAL_TABLE, codes, counters)
    assert (codes == 0).all() and int(gen[0]) == before
    if nm_mode == ctl.NM_ABS_MAX:  # abs-max: no pass at all, scale 0
        assert scale == 0.0 and not counters.any()
    else:  # no noise management: one real pass of zeros
        assert scale == 12.0 / 255 and counters[ctl.C_MVM_FORWARD] == 1 and counters[ctl.C_ADC] == 4


# ------------------------------------------------------------------------------------------------------------------
# controller: stochastic update
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_train_bits_match_reference(seed):
    rng = np.random.default_rng(500 + seed)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    for bl in (1, 5, 17, 31):
        values = with_zeros(rng, rng.uniform(-1.0, 1.0, 40))
        values[:2] = [10.0, -10.0]  # p >= 1: every slot fires
        prob_scale = float(rng.uniform(0.2, 1.0))
        bits = np.full(40, 0xDEADBEEF, np.uint32)
        ctl._train_bits(values, prob_scale, bl, gen, bits)
        want = ref_train_bits(values.tolist(), prob_scale, bl, ref_gen)
        assert bits.tolist() == want
        assert int(gen[0]) == ref_gen.s
        assert all(int(b) == 0 for b, v in zip(bits, values) if v == 0.0)
        assert int(bits[0]) == int(bits[1]) == 2**bl - 1
        assert all(int(b) < 2**bl for b in bits)


def test_train_length_matches_reference():
    rng = np.random.default_rng(600)
    cases = [(0.01, 1.0, 1.0, 0.01, 31), (0.03, 1.0, 1.0, 0.01, 31), (0.5, 1.0, 0.25, 0.0625, 31),
             (1e-9, 1e-3, 1e-3, 0.1, 31), (10.0, 5.0, 5.0, 0.001, 31), (0.1, 1.0, 1.0, 0.01, 4)]
    for _ in range(500):
        cases.append((float(10 ** rng.uniform(-4, 0)), float(rng.uniform(0, 3)), float(rng.uniform(0, 3)),
                      float(10 ** rng.uniform(-3, -1)), int(rng.integers(1, 32))))
    for lr, x_max, d_max, dw_min, bl_max in cases:
        assert int(ctl.train_length(lr, x_max, d_max, dw_min, bl_max)) == ref_train_length(lr, x_max, d_max, dw_min,
                                                                                           bl_max)
    assert ctl.train_length(0.03, 1.0, 1.0, 0.01, 31) == 3  # 0.03 / 0.01 = 2.9999999999999996 -> 3
    assert ctl.train_length(0.5, 1.0, 0.25, 0.0625, 31) == 2  # exact 2.0 is not rounded up
    assert ctl.train_length(1e-9, 1e-3, 1e-3, 0.1, 31) == 1
    assert ctl.train_length(10.0, 5.0, 5.0, 0.001, 31) == 31


def assert_same_tile(got, want, gen, ref_gen, state, ref, device_pulses, ref_pulses, counters, ref_counters):
    """A kernel's result, random state, device states, per-device pulses and counters equal the reference's."""
    assert got == want
    assert int(gen[0]) == ref_gen.s
    np.testing.assert_array_equal(state, ref.state())
    np.testing.assert_array_equal(device_pulses, ref_pulses)
    np.testing.assert_array_equal(counters, ref_counters)


def assert_both_directions_pulsed(totals, device_pulses, pulses_before):
    assert sum(totals) > 50
    assert (device_pulses[0, ..., 0] > pulses_before[0, ..., 0]).any()  # both directions were pulsed
    assert (device_pulses[0, ..., 1] > pulses_before[0, ..., 1]).any()
    np.testing.assert_array_equal(device_pulses[1], pulses_before[1])  # reference devices untouched


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("update_management", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_stochastic_update_matches_reference(seed, update_management, c2c_std):
    rng = np.random.default_rng([700, seed, int(update_management), int(c2c_std > 0)])
    rows, cols = SHAPES[seed + 2]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    pulses_before = device_pulses.copy()
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    totals = []
    for t in range(6):
        x = with_zeros(rng, rng.uniform(-1.0, 1.0, cols))
        d = with_zeros(rng, rng.uniform(-0.3, 0.3, rows) * 10.0 ** rng.uniform(-0.7, 0.7))
        lr = float(rng.choice([0.05, 0.2, 0.5]))
        bl_max = 31 if t % 3 else 4  # bl_max 4 clamps BL, so probabilities can exceed 1
        got = ctl.stochastic_update(state, params, table_up, table_down, c2c_std, x, d, lr, 0.003, bl_max,
                                    update_management, gen, NORMAL_TABLE, device_pulses, counters)
        want = ref_stochastic_update(ref, x.tolist(), d.tolist(), lr, 0.003, bl_max, update_management, ref_gen,
                                     ref_pulses, ref_counters)
        assert_same_tile(got, want, gen, ref_gen, state, ref, device_pulses, ref_pulses, counters, ref_counters)
        totals.append(got)
    assert_both_directions_pulsed(totals, device_pulses, pulses_before)


@pytest.mark.parametrize("sparse", [False, True])
def test_stochastic_update_over_several_mask_blocks_matches_reference(sparse):
    """Tiles wider than one 64-column mask block, with dense inputs and with sparse ones (under a quarter of the
    columns nonzero, so under a quarter of the trains can fire: the kernel then sets each active row's coincidence
    bits from the list of fired columns), including nonzero columns at the blocks' edges."""
    rng = np.random.default_rng([710, int(sparse)])
    rows, cols = 12, 150
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, 0.2)
    gen = fixed.seed_state(11)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    pulses_before = device_pulses.copy()
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    totals = []
    for t in range(6):
        x = rng.uniform(-1.0, 1.0, cols)
        if sparse:
            keep = np.zeros(cols, bool)
            keep[[0, 63, 64, 127, 128, 149]] = True  # the blocks' first and last columns
            keep[rng.choice(cols, 20, replace=False)] = True
            x[~keep] = 0.0
            assert 4 * np.count_nonzero(x) < cols
        d = rng.uniform(-0.3, 0.3, rows)
        got = ctl.stochastic_update(state, params, table_up, table_down, 0.2, x, d, 0.5, 0.003, 31 if t % 2 else 3,
                                    True, gen, NORMAL_TABLE, device_pulses, counters)
        want = ref_stochastic_update(ref, x.tolist(), d.tolist(), 0.5, 0.003, 31 if t % 2 else 3, True, ref_gen,
                                     ref_pulses, ref_counters)
        assert_same_tile(got, want, gen, ref_gen, state, ref, device_pulses, ref_pulses, counters, ref_counters)
        totals.append(got)
    assert_both_directions_pulsed(totals, device_pulses, pulses_before)


def test_stochastic_update_early_return():
    rng = np.random.default_rng(800)
    rows, cols = 4, 6
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    gen = fixed.seed_state(3)
    device_pulses = random_device_pulses(rng, rows, cols)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    x, d = rng.uniform(-1, 1, cols), rng.uniform(-1, 1, rows)
    for xx, dd, lr in ((np.zeros(cols), d, 0.1), (x, np.zeros(rows), 0.1), (x, d, 0.0)):
        before = (state.copy(), int(gen[0]), device_pulses.copy(), counters.copy())
        got = ctl.stochastic_update(state, params, table_up, table_down, 0.1, xx, dd, lr, 0.01, 31, True, gen,
                                    NORMAL_TABLE, device_pulses, counters)
        assert got == 0
        np.testing.assert_array_equal(state, before[0])
        assert int(gen[0]) == before[1]
        np.testing.assert_array_equal(device_pulses, before[2])
        expected = before[3].copy()
        expected[ctl.C_UPDATES] += 1
        np.testing.assert_array_equal(counters, expected)


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("seed", range(3))
def test_deterministic_update_batch_matches_reference(seed, c2c_std):
    rng = np.random.default_rng([750, seed, int(c2c_std > 0)])
    rows, cols = SHAPES[seed + 1]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    pulses_before = device_pulses.copy()
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    dw_min = 2.0**-8  # powers of two for dw_min and lr, so the half-pulse case below is exact
    totals = []
    for t in range(6):
        batch = int(rng.integers(1, 9))
        xs = np.stack([with_zeros(rng, rng.uniform(-1.0, 1.0, cols)) for _ in range(batch)])
        # deltas with the 1/batch factor, as Network.gradients gives them
        ds = np.stack([with_zeros(rng, rng.uniform(-0.3, 0.3, rows)) for _ in range(batch)]) / batch
        ds *= 10.0 ** rng.uniform(-1.5, 0.3)
        lr = float(rng.choice([0.0625, 0.25, 1.0]))
        if t == 0:  # on half-pulse boundaries: lr |g| / dw_min = k / 2 exactly (halves round away from zero)
            xs[:] = 1.0
            ds[:] = 0.0
            ds[0] = rng.integers(-6, 7, rows) * 0.5 * dw_min / lr
        max_pulses = 31 if t % 3 else 4
        got = ctl.deterministic_update_batch(state, params, table_up, table_down, c2c_std, xs, ds, lr, dw_min,
                                             max_pulses, gen, NORMAL_TABLE, device_pulses, counters)
        want = ref_deterministic_update_batch(ref, xs.tolist(), ds.tolist(), lr, dw_min, max_pulses, ref_gen,
                                              ref_pulses, ref_counters)
        assert_same_tile(got, want, gen, ref_gen, state, ref, device_pulses, ref_pulses, counters, ref_counters)
        totals.append(got)
    assert_both_directions_pulsed(totals, device_pulses, pulses_before)


def test_deterministic_update_batch_rounds_the_sum_not_each_sample():
    """Eight samples each asking for 0.3 pulses (0 when rounded alone) give round(2.4) = 2 pulses; a product that
    cancels over the batch gives none; an empty batch still counts one update call and no MACs."""
    rng = np.random.default_rng(760)
    state, params, table_up, table_down = random_tile(rng, 2, 3)
    gen = fixed.seed_state(0)
    device_pulses = np.zeros((2, 2, 3, 2), np.int32)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    dw_min, lr, batch = 0.01, 0.1, 8
    xs = np.tile([1.0, 0.0, 0.0], (batch, 1))
    xs[:, 2] = [1.0, -1.0] * (batch // 2)
    ds = np.tile([0.03, 0.0], (batch, 1))
    got = ctl.deterministic_update_batch(state, params, table_up, table_down, 0.0, xs, ds, lr, dw_min, 31, gen,
                                         NORMAL_TABLE, device_pulses, counters)
    assert got == 2 and device_pulses[0, 0, 0].tolist() == [0, 2] and device_pulses.sum() == 2
    assert counters[ctl.C_UPDATES] == 1 and counters[ctl.C_MACS] == batch * 2 * 3
    assert counters[ctl.C_PULSES_DOWN] == 2 and counters[ctl.C_PULSES_UP] == 0
    got = ctl.deterministic_update_batch(state, params, table_up, table_down, 0.0, xs[:0], ds[:0], lr, dw_min, 31,
                                         gen, NORMAL_TABLE, device_pulses, counters)
    assert got == 0 and counters[ctl.C_UPDATES] == 2 and counters[ctl.C_MACS] == batch * 2 * 3


# ------------------------------------------------------------------------------------------------------------------
# controller: mixed precision
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_chi_increments_match_reference(seed):
    rng = np.random.default_rng(900 + seed)
    for t in range(20):
        rows, cols = SHAPES[(seed + t) % len(SHAPES)]
        x = with_zeros(rng, rng.normal(0, 1, cols) * 10.0 ** rng.uniform(-3, 2))
        d = with_zeros(rng, rng.normal(0, 1, rows) * 10.0 ** rng.uniform(-6, 1))
        if t == 0:
            x[:] = 0.0
        lr = float(10 ** rng.uniform(-4, 0))
        frac = int(rng.integers(8, 29))
        if t == 1:  # saturates row_mult at both ends (within the int64 range of the intermediate)
            d[:] = [1e6, -1e6] + [0.0] * (rows - 2)
            lr, frac = 1.0, 24
            x[0] = max(abs(x[0]), 1e-2)
        x_q = np.full(cols, 99, np.int32)
        row_mult = np.full(rows, 99, np.int32)
        ctl.chi_increments(x, d, lr, frac, x_q, row_mult)
        want_x_q, want_row_mult = ref_chi_increments(x.tolist(), d.tolist(), lr, frac)
        assert x_q.tolist() == want_x_q
        assert row_mult.tolist() == want_row_mult
        if t == 1 and x.any():
            assert {INT32_MIN, INT32_MAX} <= set(row_mult.tolist())
        if x.any():
            assert 32767 in np.abs(x_q)


def test_chi_increments_huge_positive_increment_saturates_to_int32_max():
    x_q, row_mult = np.zeros(1, np.int32), np.zeros(1, np.int32)
    ctl.chi_increments(np.array([1.0]), np.array([-1e12]), 1.0, 24, x_q, row_mult)
    assert row_mult.tolist() == ref_chi_increments([1.0], [-1e12], 1.0, 24)[1] == [INT32_MAX]


def run_mp_case(rng, seed, rows, cols, chi, x_q, row_mult, eps_up, eps_down, max_pulses, c2c_std):
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    ref_pulses, ref_counters, ref_chi = device_pulses.astype(np.int64), counters.copy(), chi.astype(np.int64)
    got = ctl.mp_update(state, params, table_up, table_down, c2c_std, chi, x_q, row_mult, eps_up, eps_down,
                        max_pulses, gen, NORMAL_TABLE, device_pulses, counters)
    want = ref_mp_update(ref, ref_chi, x_q.tolist(), row_mult.tolist(), eps_up, eps_down, max_pulses, ref_gen,
                         ref_pulses, ref_counters)
    assert got == want
    np.testing.assert_array_equal(chi, ref_chi)
    np.testing.assert_array_equal(state, ref.state())
    np.testing.assert_array_equal(device_pulses, ref_pulses)
    np.testing.assert_array_equal(counters, ref_counters)
    assert int(gen[0]) == ref_gen.s
    return got


@pytest.mark.parametrize("c2c_std", [0.0, 0.25])
@pytest.mark.parametrize("max_pulses", [0, 3])
@pytest.mark.parametrize("seed", range(3))
def test_mp_update_matches_reference(seed, max_pulses, c2c_std):
    rng = np.random.default_rng([1000, seed, max_pulses, int(c2c_std > 0)])
    rows, cols = SHAPES[seed + 1]
    eps_up = int(rng.integers(2**22, 2**25))
    eps_down = int(rng.integers(2**22, 2**25))
    chi = rng.integers(-3 * eps_down, 3 * eps_up, (rows, cols)).astype(np.int32)
    # a few accumulators next to the int32 limits, so that adding saturates
    chi[0, 0], chi[0, 1], chi[1, 0] = INT32_MAX - 5, INT32_MIN + 5, INT32_MAX
    x_q = rng.integers(-32767, 32768, cols).astype(np.int32)
    x_q[:3] = [32767, -32767, 0]
    row_mult = rng.integers(-(2**27), 2**27, rows).astype(np.int32)
    row_mult[:2] = [INT32_MAX, INT32_MIN]
    total = run_mp_case(rng, seed, rows, cols, chi, x_q, row_mult, eps_up, eps_down, max_pulses, c2c_std)
    assert total > 0
    if max_pulses:
        assert total <= max_pulses * rows * cols


@pytest.mark.parametrize("seed", range(3))
def test_mixed_precision_chain_matches_reference(seed):
    """chi_increments then mp_update repeatedly, with realistic floats and one averaged or two separate epsilons."""
    rng = np.random.default_rng(1100 + seed)
    rows, cols = SHAPES[seed + 2]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    c2c_std, frac = 0.1, 24
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    chi = np.zeros((rows, cols), np.int32)
    ref_chi = np.zeros((rows, cols), np.int64)
    device_pulses = np.zeros((2, rows, cols, 2), np.int32)
    counters = np.zeros(ctl.N_COUNTERS, np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    eps_up = int(round(0.01 * 2**frac))
    eps_down = eps_up if seed == 0 else int(round(0.013 * 2**frac))
    x_q, row_mult = np.zeros(cols, np.int32), np.zeros(rows, np.int32)
    for t in range(8):
        x = with_zeros(rng, rng.uniform(-1, 1, cols))
        d = with_zeros(rng, rng.normal(0, 0.5, rows))
        ctl.chi_increments(x, d, 0.1, frac, x_q, row_mult)
        want_x_q, want_row_mult = ref_chi_increments(x.tolist(), d.tolist(), 0.1, frac)
        assert x_q.tolist() == want_x_q and row_mult.tolist() == want_row_mult
        got = ctl.mp_update(state, params, table_up, table_down, c2c_std, chi, x_q, row_mult, eps_up, eps_down, 0,
                            gen, NORMAL_TABLE, device_pulses, counters)
        want = ref_mp_update(ref, ref_chi, want_x_q, want_row_mult, eps_up, eps_down, 0, ref_gen, ref_pulses,
                             ref_counters)
        assert got == want
    np.testing.assert_array_equal(chi, ref_chi)
    np.testing.assert_array_equal(state, ref.state())
    np.testing.assert_array_equal(device_pulses, ref_pulses)
    np.testing.assert_array_equal(counters, ref_counters)
    assert int(gen[0]) == ref_gen.s
    assert counters[ctl.C_PULSES_UP] > 0 and counters[ctl.C_PULSES_DOWN] > 0
    assert (np.abs(chi) < max(eps_up, eps_down)).all()


# ------------------------------------------------------------------------------------------------------------------
# controller: calibration
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("seed", range(2))
def test_symmetry_search_matches_reference(seed, c2c_std, device_set):
    rng = np.random.default_rng([1200, seed, int(c2c_std > 0), device_set])
    rows, cols = SHAPES[seed]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    for window, max_pairs, tolerance in ((1, 40, 1e-3), (4, 80, 2e-3), (5, 12, 1e-4), (3, 0, 1e-3)):
        settled = np.full((rows, cols), np.nan)
        pairs_used = np.full((rows, cols), -1, np.int64)
        ref_settled, ref_pairs_used = np.full((rows, cols), np.nan), np.full((rows, cols), -1, np.int64)
        ctl.symmetry_search(state, params, table_up, table_down, c2c_std, device_set, window, max_pairs, tolerance,
                            gen, NORMAL_TABLE, settled, pairs_used, device_pulses, counters)
        ref_symmetry_search(ref, device_set, window, max_pairs, tolerance, ref_gen, ref_settled, ref_pairs_used,
                            ref_pulses, ref_counters)
        np.testing.assert_array_equal(settled, ref_settled)
        np.testing.assert_array_equal(pairs_used, ref_pairs_used)
        np.testing.assert_array_equal(state, ref.state())
        np.testing.assert_array_equal(device_pulses, ref_pulses)
        np.testing.assert_array_equal(counters, ref_counters)
        assert int(gen[0]) == ref_gen.s
        if max_pairs == 0:
            np.testing.assert_array_equal(settled, state)
            assert (pairs_used == 0).all()
        elif window == 1:
            assert len(np.unique(pairs_used)) > 1  # some devices settle earlier than others


@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(2))
def test_program_to_matches_reference(seed, c2c_std, device_set):
    rng = np.random.default_rng([1300, seed, int(c2c_std > 0), device_set])
    rows, cols = SHAPES[seed + 2]
    state, params, table_up, table_down = random_tile(rng, rows, cols)
    ref = RefTile(state, params, table_up, table_down, c2c_std)
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    device_pulses = random_device_pulses(rng, rows, cols)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    ref_pulses, ref_counters = device_pulses.astype(np.int64), counters.copy()
    missed_total = 0
    for tolerance, max_pulses in ((0.02, 60), (0.004, 30), (0.05, 0)):
        target = rng.uniform(params[..., crossbar.P_W_MIN], params[..., crossbar.P_W_MAX])
        got = ctl.program_to(state, params, table_up, table_down, c2c_std, device_set, target, tolerance, max_pulses,
                             gen, NORMAL_TABLE, device_pulses, counters)
        want = ref_program_to(ref, device_set, target, tolerance, max_pulses, ref_gen, ref_pulses, ref_counters)
        assert got == want
        np.testing.assert_array_equal(state, ref.state())
        np.testing.assert_array_equal(device_pulses, ref_pulses)
        np.testing.assert_array_equal(counters, ref_counters)
        assert int(gen[0]) == ref_gen.s
        missed_total += got
        if tolerance == 0.02:
            assert got < rows * cols  # most devices reach a loose tolerance
    assert missed_total > 0


def test_train_length_saturates_for_huge_ratios():
    # a diverging update must give the longest train, not wrap through int64 to a short one
    assert ctl.train_length(1.0, 1e12, 1e12, 1e-3, 31) == 31
    assert ctl.train_length(0.01, 1.0, 0.25, 0.001, 31) == 3
    assert ctl.train_length(1e-9, 1.0, 1.0, 0.001, 31) == 1


def ref_apply_counts(tile, counts, rng, device_pulses, counters):
    counters[ctl.C_UPDATES] += 1
    total = 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            n = int(counts[i, j])
            if n > 0:
                tile.pulse(i, j, n, -1, rng)
                device_pulses[0, i, j, 0] += n
                counters[ctl.C_PULSES_UP] += n
            elif n < 0:
                tile.pulse(i, j, -n, +1, rng)
                device_pulses[0, i, j, 1] += -n
                counters[ctl.C_PULSES_DOWN] += -n
            total += abs(n)
    return total


@pytest.mark.parametrize("seed, c2c_std, region", [(0, 0.0, False), (1, 0.2, False), (2, 0.2, True)])
def test_apply_counts_matches_reference(seed, c2c_std, region):
    """The test board's UPDATE / APPLY_PULSES kernel, also on a region view of a bigger array (as the board uses)."""
    rng = np.random.default_rng(1300 + seed)
    rows, cols = 5, 7
    state, params, table_up, table_down = random_tile(rng, rows + 3, cols + 4)
    counts = rng.integers(-127, 128, (rows, cols)).astype(np.int32)
    counts[rng.random((rows, cols)) < 0.3] = 0
    device_pulses = random_device_pulses(rng, rows + 3, cols + 4)
    counters = rng.integers(0, 1000, ctl.N_COUNTERS).astype(np.int64)
    r0, c0 = (2, 3) if region else (0, 0)
    view = (slice(r0, r0 + rows), slice(c0, c0 + cols))
    ref = RefTile(state[view], params[view], table_up, table_down, c2c_std)
    ref_pulses = device_pulses[:, view[0], view[1], :].astype(np.int64)
    ref_counters = counters.copy()
    gen = fixed.seed_state(seed)
    ref_gen = RefRng(gen)
    want = ref_apply_counts(ref, counts, ref_gen, ref_pulses, ref_counters)
    outside = state.copy()
    got = ctl.apply_counts(state[view], params[view], table_up, table_down, c2c_std, counts, gen,
                           fixed.normal_table(), device_pulses[:, view[0], view[1], :], counters)
    assert got == want == np.abs(counts).sum()
    np.testing.assert_array_equal(state[view], ref.state())
    outside[view] = state[view]
    np.testing.assert_array_equal(state, outside)  # nothing outside the region moved
    np.testing.assert_array_equal(device_pulses[:, view[0], view[1], :], ref_pulses)
    np.testing.assert_array_equal(counters, ref_counters)
    assert int(gen[0]) == ref_gen.s
