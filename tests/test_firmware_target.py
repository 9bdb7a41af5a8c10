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
