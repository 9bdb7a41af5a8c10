"""The C firmware cross-compiled for a Cortex-M4F and run in an emulated CPU (firmware_model.measure), against the
Python protocol and the numba kernels, bit for bit: CRC, COBS and frames byte-exact, random streams draw for draw, and
the update kernels' chi, device states (soft-float device physics included), pulse counters, counters and generator
state exactly. Also the code size, and a feasibility bound on the chi update's instruction count.

Skips when ziglang (the cross compiler), unicorn (the emulator) or pyelftools is not installed.
"""

import importlib.util
import struct

import numpy as np
import pytest

for _module, _package in (("ziglang", "ziglang"), ("unicorn", "unicorn"), ("elftools", "pyelftools")):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"the target measurements need the `{_package}` package (pip install {_package})",
                    allow_module_level=True)

from firmware_model import controller as ctl  # noqa: E402
from firmware_model import fixed, frontend, protocol  # noqa: E402
from firmware_model import measure as m  # noqa: E402

NORMAL_TABLE = fixed.normal_table()
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture(scope="module")
def elf():
    return m.build_elf("cortex-m4")


@pytest.fixture(scope="module")
def target(elf):
    return m.Target(elf, "cortex-m4")


def same_array(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if got.dtype.kind == "f":
        got, want = got.view(np.uint64), want.view(np.uint64)  # bit patterns: the sign of zero must match too
    assert np.array_equal(got, want), f"{what}: differs at {np.argwhere(got != want)[:5].tolist()}"


def random_tile(rng, rows, cols):
    state, params, up, down = m.random_tile(rng, rows, cols, nodes=int(rng.integers(2, 9)))
    at_bound = rng.random((rows, cols))
    state[at_bound < 0.1] = params[..., 2][at_bound < 0.1]
    state[at_bound > 0.9] = params[..., 3][at_bound > 0.9]
    return state, params, up, down


def device_pulses(rng, rows, cols):
    dp = rng.integers(0, 100, (2, rows, cols, 2)).astype(np.int32)
    dp[0, 0, 0, 0] = INT32_MAX - 2  # about to wrap, as numba's int32 store does
    return dp


# ------------------------------------------------------------------------------------------------------------------
# build, sizes, counting
# ------------------------------------------------------------------------------------------------------------------
def test_sizes(elf, record_property):
    sizes = m.sizes(elf)
    report = ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "functions")
    print(f"cortex-m4 firmware: {report}")
    record_property("firmware_sizes", report)
    assert sizes["text"] > 0 and sizes["rodata"] > 0 and sizes["flash"] > 0, report
    assert sizes["text_kernels"] > 0 and sizes["text_protocol"] > 0 and sizes["text_runtime"] > 0, report
    assert set(m.prototypes()) <= set(sizes["functions"]), "a public el_* function was not linked"
    assert all(size > 0 for size in sizes["functions"].values())
    # kernels + protocol + compiler-rt fit a small MCU's flash with room to spare, and need no static RAM
    assert sizes["flash"] < 64 * 1024, report
    assert sizes["static_ram"] < 1024, report


def test_block_counting_matches_a_code_hook(target):
    data = bytes(np.random.default_rng(1).integers(1, 256, 300).astype(np.uint8))
    crc, counts = target.call("el_crc16", data, len(data))
    assert crc == protocol.crc16(data)
    assert counts.instructions == target.count_instructions_per_step("el_crc16", data, len(data))
    assert counts.cycles >= counts.instructions


# ------------------------------------------------------------------------------------------------------------------
# protocol
# ------------------------------------------------------------------------------------------------------------------
def payloads(rng):
    out = [b"", b"\x00", b"\x01", b"123456789", b"\x00" * 300, bytes(range(256)) * 2]
    for n in (1, 2, 253, 254, 255, 256, 507, 508, 509, 1000):
        out.append(bytes(rng.integers(1, 256, n).astype(np.uint8)))  # no zero: full 254-byte COBS blocks
        out.append(bytes(rng.integers(0, 256, n).astype(np.uint8)))
    for _ in range(20):
        n = int(rng.integers(0, 700))
        data = rng.integers(0, 256, n).astype(np.uint8)
        data[rng.random(n) < rng.uniform(0, 0.3)] = 0
        out.append(bytes(data))
    return out


def test_crc16_cobs_and_frames(target):
    rng = np.random.default_rng(2)
    for data in payloads(rng):
        n = len(data)
        crc, _ = target.call("el_crc16", data, n)
        assert crc == protocol.crc16(data), (n, data[:16])
        cap = n + n // 254 + 1
        out = np.zeros(cap + 1, np.uint8)
        length, _ = target.call("el_cobs_encode", data, n, out, cap)
        assert out[:length].tobytes() == protocol.cobs_encode(data), (n, data[:16])
        cap = 1 + (n + 2) + (n + 2) // 254 + 1 + 2
        frame = np.zeros(cap, np.uint8)
        length, _ = target.call("el_encode_frame", data, n, frame, cap)
        wire = protocol.encode_frame(data)
        assert frame[:length].tobytes() == wire, (n, data[:16])
        if n:  # and the decoder gets the payload back
            dec = np.zeros(target.call("el_decoder_size")[0], np.uint8)
            target.call("el_decoder_init", dec)
            payload = np.zeros(n + 4, np.uint8)
            got, _ = target.call("el_decoder_feed", dec, wire, len(wire), payload, n + 4, None)
            assert got == n and payload[:n].tobytes() == data


# ------------------------------------------------------------------------------------------------------------------
# kernels against numba
# ------------------------------------------------------------------------------------------------------------------
def test_rng_streams(target):
    for seed in (0, 1, 12345, 2**63 + 7):
        gen_t, gen_n = fixed.seed_state(seed), fixed.seed_state(seed)
        for k in range(90):
            kind = k % 3
            if kind == 0:
                got, want = target.call("el_rng_next", gen_t)[0], int(fixed.rng_next(gen_n))
            elif kind == 1:
                got, want = target.call("el_rng_u32", gen_t)[0], int(fixed.rng_u32(gen_n))
            else:
                got = target.call("el_rng_normal", gen_t, NORMAL_TABLE)[0]
                want = float(fixed.rng_normal(gen_n, NORMAL_TABLE))
                got, want = struct.pack("<d", got), struct.pack("<d", want)
            assert got == want, (seed, k)
            assert np.array_equal(gen_t, gen_n), (seed, k)


def test_chi_increments(target):
    rng = np.random.default_rng(3)
    for rows, cols in [(1, 1), (3, 5), (6, 11)]:
        for case in range(4):
            x = rng.normal(0.0, 1.0, cols) * 10.0 ** rng.uniform(-4, 4)
            d = rng.normal(0.0, 1.0, rows) * 10.0 ** rng.uniform(-4, 4)
            lr = 1e12 if case == 1 else float(10.0 ** rng.uniform(-4, 0))
            if case == 0:
                x[:] = 0.0
            frac = int(rng.choice([0, 12, 24]))
            x_q_n, rm_n = np.full(cols, 99, np.int32), np.full(rows, 99, np.int32)
            x_q_t, rm_t = x_q_n.copy(), rm_n.copy()
            ctl.chi_increments(x, d, lr, frac, x_q_n, rm_n)
            target.call("el_chi_increments", x, cols, d, rows, lr, frac, x_q_t, rm_t)
            same_array(x_q_t, x_q_n, "x_q")
            same_array(rm_t, rm_n, "row_mult")


@pytest.mark.parametrize("max_pulses,c2c_std", [(0, 0.0), (4, 0.2)])
def test_mp_update(target, max_pulses, c2c_std):
    rng = np.random.default_rng([4, max_pulses])
    fired = 0
    for rows, cols in [(1, 1), (3, 5), (4, 7), (2, 70)]:
        for case in range(3):
            state, params, up, down = random_tile(rng, rows, cols)
            chi = rng.integers(-3000, 3000, (rows, cols)).astype(np.int32)
            if case > 0:
                chi.flat[rng.random(rows * cols) < 0.1] = INT32_MAX - int(rng.integers(0, 5))
                chi.flat[rng.random(rows * cols) < 0.1] = INT32_MIN + int(rng.integers(0, 5))
            x_q = np.zeros(cols, np.int32)
            row_mult = np.zeros(rows, np.int32)
            ctl.chi_increments(rng.normal(0.0, 1.0, cols), rng.normal(0.0, 1.0, rows), 1e4 if case == 2 else 0.5, 12,
                               x_q, row_mult)
            if case == 1:
                x_q[:] = rng.choice(np.array([INT32_MIN, INT32_MAX, -32767, 32767, 0], np.int32), cols)
                row_mult[:] = rng.choice(np.array([INT32_MIN, INT32_MAX, -1, 1], np.int32), rows)
            low, high = (2**22, 2**24) if max_pulses == 0 and case > 0 else (1, 3000)
            eps_up, eps_down = int(rng.integers(low, high)), int(rng.integers(low, high))
            arrays = [state, params, up, down, chi, x_q, row_mult, fixed.seed_state(case),
                      device_pulses(rng, rows, cols), rng.integers(0, 1000, 16).astype(np.int64)]
            a_n = [a.copy() for a in arrays]
            a_t = [a.copy() for a in arrays]
            want = ctl.mp_update(*a_n[:4], c2c_std, *a_n[4:7], eps_up, eps_down, max_pulses, a_n[7], NORMAL_TABLE,
                                 a_n[8], a_n[9])
            got, _ = target.call("el_mp_update", *m.tile_args(*a_t[:4], c2c_std), *a_t[4:7], eps_up, eps_down,
                                 max_pulses, a_t[7], NORMAL_TABLE, a_t[8], a_t[9])
            assert got == want, (rows, cols, case)
            for name, g, w in zip(("state", "params", "up", "down", "chi", "x_q", "row_mult", "rng", "device_pulses",
                                   "counters"), a_t, a_n):
                same_array(g, w, f"{name} ({rows}x{cols}, case {case})")
            fired += want
    assert fired > 0


@pytest.mark.parametrize("seed", range(2))
def test_window_features(target, seed):
    rng = np.random.default_rng(5 + seed)
    for n, channels in [(0, 3), (10, 1), (200, 3), (333, 6)]:
        codes = rng.integers(-32768, 32768, (n, channels)).astype(np.int16)
        if n:
            codes[rng.random((n, channels)) < 0.1] = -32768
            codes[rng.random((n, channels)) < 0.1] = 32767
            codes[: n // 4, 0] = int(rng.integers(-32768, 32768))  # a flat stretch: zero variance
        for length, hop in [(1, 1), (10, 5), (64, 32), (100, 100), (300, 7)]:
            windows = frontend.window_count(n, length, hop)
            out_n = np.full((windows + seed, channels * frontend.N_FEATURES + seed), 12345, np.int32)
            out_t = out_n.copy()
            want = frontend.window_features(codes, length, hop, out_n)
            got, _ = target.call("el_window_features", codes, n, channels, length, hop, out_t, out_t.shape[1])
            assert got == want
            same_array(out_t, out_n, f"window_features {n}x{channels}, {length}/{hop}")


@pytest.mark.parametrize("c2c_std", [0.0, 0.1])
def test_apply_counts(target, c2c_std):
    rng = np.random.default_rng([6, int(c2c_std > 0)])
    clipped = 0
    for rows, cols in [(1, 1), (3, 5), (5, 9)]:
        state, params, up, down = random_tile(rng, rows, cols)
        for scale in (0, 3, 40):
            counts = rng.integers(-scale, scale + 1, (rows, cols)).astype(np.int32)
            counts[rng.random((rows, cols)) < 0.2] = 0
            arrays = [state, fixed.seed_state(scale), device_pulses(rng, rows, cols),
                      rng.integers(0, 1000, 16).astype(np.int64)]
            a_n = [a.copy() for a in arrays]
            a_t = [a.copy() for a in arrays]
            want = ctl.apply_counts(a_n[0], params, up, down, c2c_std, counts, a_n[1], NORMAL_TABLE, a_n[2], a_n[3])
            got, _ = target.call("el_apply_counts", *m.tile_args(a_t[0], params, up, down, c2c_std), counts, a_t[1],
                                 NORMAL_TABLE, a_t[2], a_t[3])
            assert got == want
            for name, g, w in zip(("state", "rng", "device_pulses", "counters"), a_t, a_n):
                same_array(g, w, f"apply_counts {name} ({rows}x{cols}, scale {scale})")
            state = a_n[0]
            clipped += int(((state == params[..., 2]) | (state == params[..., 3])).sum())
    assert clipped > 0  # the clip to the device's bounds happened too


# ------------------------------------------------------------------------------------------------------------------
# more kernels against numba: MVM, stochastic and deterministic updates, dense mixed precision, calibration, front end
# ------------------------------------------------------------------------------------------------------------------
def varied_tile(rng, rows, cols):
    """A tile whose up and down tables differ in length, with some zero table entries and devices at their bounds."""
    n_up, n_down = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    table_up = rng.uniform(0.05, 2.0, n_up)
    table_down = rng.uniform(0.05, 2.0, n_down)
    table_up[rng.random(n_up) < 0.1] = 0.0
    shape = (rows, cols)
    w_min = -rng.uniform(0.3, 1.2, shape)
    w_max = rng.uniform(0.3, 1.2, shape)
    params = np.empty((rows, cols, 5))
    params[..., 0] = rng.uniform(0.005, 0.3, shape)
    params[..., 1] = rng.uniform(0.005, 0.3, shape)
    params[..., 2] = w_min
    params[..., 3] = w_max
    params[..., 4] = (n_up - 1) / (w_max - w_min)
    state = rng.uniform(w_min, w_max)
    at_bound = rng.random(shape)
    state[at_bound < 0.1] = w_min[at_bound < 0.1]
    state[at_bound > 0.9] = w_max[at_bound > 0.9]
    return state, params, table_up, table_down


def counters(rng):
    return rng.integers(0, 1000, 16).astype(np.int64)


def same_scalar(got, want, what):
    if isinstance(want, float):
        assert isinstance(got, float), (what, got, want)
        assert struct.pack("<d", got) == struct.pack("<d", want), (what, got, want)
    else:
        assert got == int(want), (what, got, want)


def same_arrays(names, got, want, what):
    for name, g, w in zip(names, got, want):
        same_array(g, w, f"{what}: {name}")


def mvm_both(target, state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
             nm_mode, bm, max_rounds, gen, cnt):
    """el_mvm on the target and ctl.mvm on identical copies: codes, scale, counters and generator state must agree
    bit for bit. Returns (gen, cnt) after the call. On a mismatch, says whether the analog sums differ (numba's
    _analog_mvm is fastmath: a reassociated sum can differ in the last bit from the C port's sequential one)."""
    rows, cols = state.shape
    n_in, n_out = (rows, cols) if transpose else (cols, rows)
    codes_n = np.full(n_out, 777_777, np.int32)
    codes_t = codes_n.copy()
    gen_n, gen_t, cnt_n, cnt_t = gen.copy(), gen.copy(), cnt.copy(), cnt.copy()
    want = ctl.mvm(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
                   nm_mode, bm, max_rounds, gen_n, NORMAL_TABLE, codes_n, cnt_n)
    got, _ = target.call("el_mvm", state, ref_state, rows, cols, use_ref, vec, transpose, dac_bits, inp_bound,
                         adc_bits, out_bound, out_noise, nm_mode, bm, max_rounds, gen_t, NORMAL_TABLE, codes_t, cnt_t,
                         np.zeros(n_in), np.zeros(n_out))
    what = f"mvm {rows}x{cols} transpose={transpose} nm={nm_mode} bm={bm}/{max_rounds} noise={out_noise}"
    if not np.array_equal(codes_t, codes_n):
        u = np.full(n_in, 0.5)  # a diagnostic only: does the analog sum itself differ between numba and the target?
        y_n, y_t = np.zeros(n_out), np.zeros(n_out)
        ctl._analog_mvm(state, ref_state, use_ref, u, transpose, y_n)
        target.call("el_analog_mvm", state, ref_state, rows, cols, use_ref, u, transpose, y_t)
        sums = "the analog sums differ" if not np.array_equal(y_t.view(np.uint64), y_n.view(np.uint64)) else \
            "the analog sums agree on a probe vector"
        raise AssertionError(f"{what}: codes differ at {np.argwhere(codes_t != codes_n)[:5].tolist()} "
                             f"(target {codes_t.tolist()}, numba {codes_n.tolist()}; {sums})")
    same_scalar(got, float(want), f"{what}: scale")
    same_arrays(("codes", "rng", "counters"), (codes_t, gen_t, cnt_t), (codes_n, gen_n, cnt_n), what)
    return gen_n, cnt_n


@pytest.mark.parametrize("nm_mode", [ctl.NM_NONE, ctl.NM_ABS_MAX])
@pytest.mark.parametrize("transpose", [False, True])
def test_mvm(target, transpose, nm_mode):
    repeats = draws = zero = 0
    for seed, (rows, cols) in enumerate([(1, 1), (3, 5), (4, 7), (6, 4), (2, 33)]):  # 33: a vector body + a tail
        rng = np.random.default_rng([10, seed, int(transpose), nm_mode])
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        ref_state = rng.uniform(-0.5, 0.5, (rows, cols))
        n_in = rows if transpose else cols
        gen, cnt = fixed.seed_state(100 + seed), counters(rng)
        dac_bits, adc_bits = int(rng.integers(3, 9)), int(rng.integers(2, 11))
        inp_bound = float(rng.uniform(0.5, 2.0))
        out_bound = float(rng.uniform(0.1, 0.8)) * inp_bound * np.sqrt(n_in) * 0.5
        for t in range(6):
            if nm_mode == ctl.NM_ABS_MAX:
                vec = rng.normal(0.0, 1.0, n_in) * 10.0 ** rng.uniform(-3, 3)
            else:
                vec = rng.uniform(-1.5, 1.5, n_in) * inp_bound
            vec[rng.random(n_in) < 0.25] = 0.0
            if t == 0:
                vec[:] = 0.0
            if t == 1:
                vec[:] = -0.0
            out_noise = 0.0 if t == 2 else float(rng.choice([0.02, 0.1]))
            bm, max_rounds = t != 3, int(rng.choice([0, 1, 3, 10]))
            before = cnt.copy()
            gen, cnt = mvm_both(target, state, ref_state, bool((seed + t) % 2), vec, transpose, dac_bits, inp_bound,
                                adc_bits, out_bound, out_noise, nm_mode, bm, max_rounds, gen, cnt)
            repeats += int(cnt[ctl.C_BM_REPEATS] - before[ctl.C_BM_REPEATS])
            draws += int(cnt[ctl.C_RNG_DRAWS] - before[ctl.C_RNG_DRAWS])
            zero += not vec.any()
    assert zero >= 8 and draws > 0 and repeats > 0


def test_mvm_bound_management_repeats(target):
    """Large weights: bound management repeats, and stops at max_bm_rounds with saturated codes; with output noise."""
    repeats = 0
    for seed, (rows, cols) in enumerate([(3, 5), (4, 7)]):
        rng = np.random.default_rng(20 + seed)
        state = rng.uniform(2.0, 3.0, (rows, cols))
        ref_state = rng.uniform(-0.1, 0.1, (rows, cols))
        gen, cnt = fixed.seed_state(seed), counters(rng)
        for max_rounds in (0, 1, 3, 40):
            for transpose in (False, True):
                n_in = rows if transpose else cols
                before = int(cnt[ctl.C_BM_REPEATS])
                gen, cnt = mvm_both(target, state, ref_state, bool(seed % 2), rng.uniform(0.5, 1.0, n_in), transpose,
                                    7, 1.0, 9, 1.0, 0.02, ctl.NM_ABS_MAX, True, max_rounds, gen, cnt)
                repeats += int(cnt[ctl.C_BM_REPEATS]) - before
    assert repeats > 10


def test_mvm_dac_rounding_halves(target):
    """Inputs on a DAC code's rounding half: the codes must round as numba's do."""
    rng = np.random.default_rng(30)
    for rows, cols in [(3, 5), (4, 7)]:
        state = rng.uniform(-1.0, 1.0, (rows, cols))
        gen, cnt = fixed.seed_state(rows), counters(rng)
        for _ in range(4):
            dac_bits = int(rng.integers(3, 9))
            dac_max = (1 << (dac_bits - 1)) - 1
            inp_bound = float(rng.uniform(0.3, 3.0))
            for nm_mode in (ctl.NM_NONE, ctl.NM_ABS_MAX):
                vec = (rng.integers(-dac_max, dac_max, cols) + 0.5) * inp_bound / dac_max
                gen, cnt = mvm_both(target, state, state, False, vec, False, dac_bits, inp_bound, 10, 4.0 * inp_bound,
                                    0.0, nm_mode, True, 3, gen, cnt)


STOCHASTIC_NAMES = ("state", "rng", "device_pulses", "counters")


def stochastic_both(target, rng, rows, cols, c2c_std, bl_max, update_management, x=None, d=None, lr=None):
    state, params, up, down = varied_tile(rng, rows, cols)
    if x is None:
        x = rng.normal(0.0, 1.0, cols)
        x[rng.random(cols) < 0.25] = 0.0
    if d is None:
        d = rng.normal(0.0, 0.3, rows)
        d[rng.random(rows) < 0.25] = 0.0
    lr = float(rng.choice([0.01, 0.1, 0.5])) if lr is None else lr
    dw_min = float(rng.choice([0.001, 0.01, 0.05]))
    arrays = [state, fixed.seed_state(int(rng.integers(0, 2**31))), device_pulses(rng, rows, cols), counters(rng)]
    a_n = [a.copy() for a in arrays]
    a_t = [a.copy() for a in arrays]
    want = ctl.stochastic_update(a_n[0], params, up, down, c2c_std, x, d, lr, dw_min, bl_max, update_management,
                                 a_n[1], NORMAL_TABLE, a_n[2], a_n[3])
    got, _ = target.call("el_stochastic_update", *m.tile_args(a_t[0], params, up, down, c2c_std), x, d, lr, dw_min,
                         bl_max, update_management, a_t[1], NORMAL_TABLE, a_t[2], a_t[3],
                         np.full(cols, 0xDEADBEEF, np.uint32), np.full(rows, 0xDEADBEEF, np.uint32))
    what = f"stochastic_update {rows}x{cols} c2c={c2c_std} bl_max={bl_max} um={update_management}"
    same_scalar(got, want, what)
    same_arrays(STOCHASTIC_NAMES, a_t, a_n, what)
    return want


@pytest.mark.parametrize("bl_max", [1, 31])
@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("update_management", [False, True])
def test_stochastic_update(target, update_management, c2c_std, bl_max):
    rng = np.random.default_rng([40, int(update_management), int(c2c_std > 0), bl_max])
    total = 0
    for rows, cols in [(1, 1), (3, 5), (4, 7), (2, 70)]:  # 70 columns: two coincidence blocks of 64
        for _ in range(2):
            total += stochastic_both(target, rng, rows, cols, c2c_std, bl_max, update_management)
    assert total > 0
    # early returns: a zero vector or a zero learning rate (only the update call is counted)
    for x_zero, d_zero, lr in [(True, False, None), (False, True, None), (False, False, 0.0)]:
        x = np.zeros(5) if x_zero else None
        d = np.full(3, -0.0) if d_zero else None
        assert stochastic_both(target, rng, 3, 5, c2c_std, bl_max, update_management, x, d, lr) == 0


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("max_pulses", [0, 1, 1000])
def test_deterministic_update_batch(target, max_pulses, c2c_std):
    rng = np.random.default_rng([50, max_pulses, int(c2c_std > 0)])
    total = 0
    for rows, cols in [(1, 1), (3, 5), (4, 7), (2, 11)]:
        state, params, up, down = varied_tile(rng, rows, cols)
        batch = int(rng.integers(1, 5))
        xs = rng.normal(0.0, 1.0, (batch, cols))
        ds = rng.normal(0.0, 0.1, (batch, rows)) / batch
        xs[:, rng.random(cols) < 0.2] = 0.0
        lr, dw_min = float(rng.choice([0.01, 0.1, 1.0])), float(rng.choice([0.001, 0.01]))
        if rows == 2:  # pulse counts on a rounding half
            xs, ds = np.ones((1, cols)), (rng.integers(-6, 6, (1, rows)) + 0.5) * dw_min / lr
        arrays = [state, fixed.seed_state(rows * cols), device_pulses(rng, rows, cols), counters(rng)]
        a_n = [a.copy() for a in arrays]
        a_t = [a.copy() for a in arrays]
        want = ctl.deterministic_update_batch(a_n[0], params, up, down, c2c_std, xs, ds, lr, dw_min, max_pulses,
                                              a_n[1], NORMAL_TABLE, a_n[2], a_n[3])
        got, _ = target.call("el_deterministic_update_batch", *m.tile_args(a_t[0], params, up, down, c2c_std), xs, ds,
                             xs.shape[0], lr, dw_min, max_pulses, a_t[1], NORMAL_TABLE, a_t[2], a_t[3],
                             np.full(cols, np.nan))
        what = f"deterministic_update_batch {rows}x{cols} max_pulses={max_pulses}"
        same_scalar(got, want, what)
        same_arrays(STOCHASTIC_NAMES, a_t, a_n, what)
        total += want
    assert (total > 0) == (max_pulses > 0)


def test_chi_increments_edges(target):
    """Negative and large fraction bits, quotients on a rounding half, a negative maximum, zeros in the vectors."""
    rng = np.random.default_rng(60)
    for rows, cols in [(1, 1), (3, 5), (4, 7)]:
        for case in range(6):
            x = rng.normal(0.0, 1.0, cols) * 10.0 ** rng.uniform(-4, 4)
            d = rng.normal(0.0, 1.0, rows) * 10.0 ** rng.uniform(-4, 4)
            x[rng.random(cols) < 0.25] = 0.0
            d[rng.random(rows) < 0.25] = 0.0
            lr = float(10.0 ** rng.uniform(-4, 0))
            frac = int(rng.choice([-3, 0, 8, 16, 30, 40]))
            if case in (0, 1):  # halves: the operation order decides the rounding
                x_max = float(rng.uniform(0.1, 3.0))
                x = (rng.integers(-32767, 32767, cols) + 0.5) * x_max / 32767.0
                x[0] = x_max
                d = (rng.integers(-10**6, 10**6, rows) + 0.5) / (-lr * x_max * 2.0**frac)
            if case == 2:
                x[int(rng.integers(0, cols))] = -0.5 * 10.0 ** rng.uniform(-3, 3)
            if case == 3:
                x[:] = -0.0
            x_q_n, rm_n = np.full(cols, 99, np.int32), np.full(rows, 99, np.int32)
            x_q_t, rm_t = x_q_n.copy(), rm_n.copy()
            ctl.chi_increments(x, d, lr, frac, x_q_n, rm_n)
            target.call("el_chi_increments", x, cols, d, rows, lr, frac, x_q_t, rm_t)
            same_array(x_q_t, x_q_n, f"x_q ({rows}x{cols}, case {case}, frac {frac})")
            same_array(rm_t, rm_n, f"row_mult ({rows}x{cols}, case {case}, frac {frac})")


@pytest.mark.parametrize("c2c_std", [0.0, 0.2])
@pytest.mark.parametrize("max_pulses", [0, 1, 4])
def test_mp_update_dense(target, max_pulses, c2c_std):
    rng = np.random.default_rng([70, max_pulses, int(c2c_std > 0)])
    total = 0
    for rows, cols in [(1, 1), (3, 5), (4, 7)]:
        for case in range(3):
            state, params, up, down = varied_tile(rng, rows, cols)
            chi = rng.integers(-3000, 3000, (rows, cols)).astype(np.int32)
            if case > 0:
                chi.flat[rng.random(rows * cols) < 0.1] = INT32_MAX - int(rng.integers(0, 5))
                chi.flat[rng.random(rows * cols) < 0.1] = INT32_MIN + int(rng.integers(0, 5))
            gradient = rng.normal(0.0, 1.0, (rows, cols)) * 10.0 ** rng.uniform(-3, 1)
            gradient[rng.random((rows, cols)) < 0.2] = 0.0
            scale = -float(rng.uniform(0.01, 1.0)) * 2.0**12
            if case == 1:
                gradient[0, 0], gradient[-1, -1] = 1e300, -1e300  # beyond int32 before and after the scale
            if case == 2:
                gradient = (rng.integers(-40, 40, (rows, cols)) + 0.5) / -scale  # exact halves in chi units
            low, high = (2**22, 2**24) if max_pulses == 0 and case > 0 else (1, 3000)
            eps_up, eps_down = int(rng.integers(low, high)), int(rng.integers(low, high))
            if case == 0:
                eps_down = eps_up
            arrays = [state, chi, fixed.seed_state(case + 10), device_pulses(rng, rows, cols), counters(rng)]
            a_n = [a.copy() for a in arrays]
            a_t = [a.copy() for a in arrays]
            want = ctl.mp_update_dense(a_n[0], params, up, down, c2c_std, a_n[1], gradient, scale, eps_up, eps_down,
                                       max_pulses, a_n[2], NORMAL_TABLE, a_n[3], a_n[4])
            got, _ = target.call("el_mp_update_dense", *m.tile_args(a_t[0], params, up, down, c2c_std), a_t[1],
                                 gradient, scale, eps_up, eps_down, max_pulses, a_t[2], NORMAL_TABLE, a_t[3], a_t[4])
            what = f"mp_update_dense {rows}x{cols} case {case}"
            same_scalar(got, want, what)
            same_arrays(("state", "chi", "rng", "device_pulses", "counters"), a_t, a_n, what)
            total += want
    assert total > 0


@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.15])
def test_symmetry_search(target, c2c_std, device_set):
    rng = np.random.default_rng([80, int(c2c_std > 0), device_set])
    for rows, cols in [(1, 1), (2, 3)]:
        state, params, up, down = varied_tile(rng, rows, cols)
        for window, max_pairs, tolerance in [(1, 30, 1e-3), (3, 40, 1e-2), (2, 0, 1e-3), (4, 5, 0.0)]:
            arrays = [state, fixed.seed_state(window), np.full((rows, cols), np.nan),
                      np.full((rows, cols), -1, np.int64), device_pulses(rng, rows, cols), counters(rng)]
            a_n = [a.copy() for a in arrays]
            a_t = [a.copy() for a in arrays]
            ctl.symmetry_search(a_n[0], params, up, down, c2c_std, device_set, window, max_pairs, tolerance, a_n[1],
                                NORMAL_TABLE, a_n[2], a_n[3], a_n[4], a_n[5])
            got, _ = target.call("el_symmetry_search", *m.tile_args(a_t[0], params, up, down, c2c_std), device_set,
                                 window, max_pairs, tolerance, a_t[1], NORMAL_TABLE, a_t[2], a_t[3], a_t[4], a_t[5])
            assert got is None
            same_arrays(("state", "rng", "settled", "pairs_used", "device_pulses", "counters"), a_t, a_n,
                        f"symmetry_search {rows}x{cols} window {window} max_pairs {max_pairs}")
            state = a_n[0]


@pytest.mark.parametrize("device_set", [0, 1])
@pytest.mark.parametrize("c2c_std", [0.0, 0.15])
def test_program_to(target, c2c_std, device_set):
    rng = np.random.default_rng([90, int(c2c_std > 0), device_set])
    missed = 0
    for rows, cols in [(1, 1), (3, 4)]:
        state, params, up, down = varied_tile(rng, rows, cols)
        for tolerance, max_pulses in [(0.02, 100), (1e-3, 20), (0.0, 5), (0.05, 0)]:
            goal = rng.uniform(params[..., 2] - 0.1, params[..., 3] + 0.1)
            arrays = [state, fixed.seed_state(max_pulses), device_pulses(rng, rows, cols), counters(rng)]
            a_n = [a.copy() for a in arrays]
            a_t = [a.copy() for a in arrays]
            want = ctl.program_to(a_n[0], params, up, down, c2c_std, device_set, goal, tolerance, max_pulses, a_n[1],
                                  NORMAL_TABLE, a_n[2], a_n[3])
            got, _ = target.call("el_program_to", *m.tile_args(a_t[0], params, up, down, c2c_std), device_set, goal,
                                 tolerance, max_pulses, a_t[1], NORMAL_TABLE, a_t[2], a_t[3])
            what = f"program_to {rows}x{cols} tolerance {tolerance} max_pulses {max_pulses}"
            same_scalar(got, want, what)
            same_arrays(STOCHASTIC_NAMES, a_t, a_n, what)
            state = a_n[0]
            missed += want
    assert missed > 0


@pytest.mark.parametrize("seed", range(2))
def test_normalise(target, seed):
    rng = np.random.default_rng(100 + seed)
    saturated = 0
    for n_windows, n in [(0, 4), (1, 1), (20, 15), (30, 9)]:
        features = rng.integers(-32768, 32769, (n_windows, n)).astype(np.int32)
        offset = rng.integers(-32768, 32769, n).astype(np.int32)
        shift = rng.integers(0, 48, n).astype(np.int32)
        multiplier = rng.integers(2**14, 2**15 + 1, n).astype(np.int32)
        if n > 2:
            shift[0], multiplier[0] = 0, int(rng.integers(0, 3))  # shift 0: nothing added
            multiplier[1] = 0  # a constant feature
            shift[2], multiplier[2] = 47, INT32_MAX  # the widest product
        out_n = np.full((n_windows, n), 7, np.int16)
        out_t = out_n.copy()
        want = frontend.normalise(features, offset, multiplier, shift, out_n)
        got, _ = target.call("el_normalise", features, n_windows, n, offset, multiplier, shift, out_t)
        assert got == want, (n_windows, n)
        same_array(out_t, out_n, f"normalise {n_windows}x{n}")
        saturated += want
    assert saturated > 0


@pytest.mark.parametrize("seed", range(2))
def test_decimate(target, seed):
    rng = np.random.default_rng(110 + seed)
    for n, channels in [(0, 3), (10, 1), (200, 3), (333, 2)]:
        codes = rng.integers(-32768, 32768, (n, channels)).astype(np.int16)
        for length, hop in [(1, 1), (10, 5), (64, 32), (100, 100), (300, 7)]:
            windows = frontend.window_count(n, length, hop)
            for factor in (1, 2, 3, 7):
                per = length // factor
                out_n = np.full((windows + seed, channels * per + seed), 999, np.int16)
                out_t = out_n.copy()
                want = frontend.decimate(codes, length, hop, factor, out_n)
                got, _ = target.call("el_decimate", codes, n, channels, length, hop, factor, out_t, out_t.shape[1])
                assert got == want, (n, channels, length, hop, factor)
                same_array(out_t, out_n, f"decimate {n}x{channels}, {length}/{hop}/{factor}")


# ------------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------------
def test_measure_feasibility():
    result = m.measure("cortex-m4")
    ops = result["operations"]
    per_cell = ops["mp_update_chi_per_cell"]["instructions"]
    print(f"chi update: {per_cell} instructions per cell ({ops['mp_update_chi_per_cell']['cycles']} cycles est.)")
    assert 5 <= per_cell <= 100, per_cell
    assert result["source_hash"] == m.source_hash() and result["compiler"].startswith("zig")
    for name, op in ops.items():
        if "instructions" in op and op.get("unit") != "call":
            assert op["instructions"] > 0, name
            assert op["cycles"] >= op["instructions"], name
    assert 0 < ops["crc16_per_byte"]["instructions"] < 20
    assert ops["step_state_call"]["instructions"] > ops["rng_normal_call"]["instructions"]
