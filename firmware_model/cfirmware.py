"""ctypes bindings of the C port of the firmware kernels (firmware_model/c/el_*.c), one function per numba kernel.

Every function here has the signature and the semantics of its numba counterpart in fixed, crossbar, controller or
frontend (same arguments, same in-place writes, same return value) and is bit-exact with it: tests/
test_firmware_c_kernels.py compares them on seeded inputs, random streams included. Arrays must already have the
dtype, shape and layout the host gives the numba kernels (C-contiguous; float64 state, params [rows, cols, 5], int32
device_pulses [2, rows, cols, 2], int64 counters [16], uint64 generator state [1], float64 normal table [4096]); a
wrong one raises a one-line ValueError instead of being converted, because the kernels write into their arguments.
Scratch arrays that the numba kernels allocate (u, y, g, x_bits, d_bits, replay's output) are allocated here.

Where a numba kernel raises ZeroDivisionError (numba checks every division), the binding raises it before calling C
(the C firmware has no exceptions); the checks cover the divisions the kernels reach on their documented inputs.
Integer parameters must be integers (operator.index), float parameters anything float() accepts.
"""

from __future__ import annotations

import ctypes as ct
import operator

import numpy as np

from .cbuild import load

N_COUNTERS = 16
N_PARAMS = 5
NORMAL_TABLE_SIZE = 1 << 12
N_FEATURES = 5
NM_ABS_MAX = 1

_lib = load(("el_fixed", "el_crossbar", "el_controller", "el_frontend"))

_D, _I, _U, _B, _P = ct.c_double, ct.c_int64, ct.c_uint64, ct.c_bool, ct.c_void_p
_TILE = (_P, _P, _I, _I, _P, _I, _P, _I, _D)  # state, params, rows, cols, table_up, n_up, table_down, n_down, c2c
_DEV = (_D, _I, _P, _I, _P, _I)  # w-like scalar, polarity, table_up, n_up, table_down, n_down


def _bind(name, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_c = {
    "wrap_i32": _bind("el_wrap_i32", ct.c_int32, _I),
    "sat_i32": _bind("el_sat_i32", ct.c_int32, _I),
    "div_trunc": _bind("el_div_trunc", _I, _I, _I),
    "shift_round": _bind("el_shift_round", _I, _I, _I),
    "rng_next": _bind("el_rng_next", _U, _P),
    "rng_u32": _bind("el_rng_u32", _U, _P),
    "rng_normal": _bind("el_rng_normal", _D, _P, _P),
    "popcount32": _bind("el_popcount32", _I, _U),
    "lowest_set_bit": _bind("el_lowest_set_bit", _I, _U),
    "relative_step": _bind("el_relative_step", _D, _D, _P, _I, _D, _D),
    "step_state": _bind("el_step_state", _D, *_DEV, _D, _D, _D, _D, _D, _D),
    "apply_pulse": _bind("el_apply_pulse", _D, *_DEV, _D, _D, _D, _D, _D),
    "pulse_device": _bind("el_pulse_device", None, _P, _P, _I, _I, _I, _I, _I, _I, _P, _I, _P, _I, _D, _P, _P),
    "replay": _bind("el_replay", None, _D, _P, _P, _P, _I, _P, _I, _P, _I, _D, _D, _D, _D, _P),
    "alternate_until_settled": _bind("el_alternate_until_settled", _D, _D, _P, _I, _P, _I, _D, _D, _D, _D, _I, _D,
                                     _P),
    "pulses_to_cross": _bind("el_pulses_to_cross", _I, _D, *_DEV, _D, _D, _D, _D, _I),
    "round_half_away": _bind("el_round_half_away", _D, _D),
    "mvm": _bind("el_mvm", _D, _P, _P, _I, _I, _B, _P, _B, _I, _D, _I, _D, _D, _I, _B, _I, _P, _P, _P, _P, _P, _P),
    "mvm_batch": _bind("el_mvm_batch", None, _P, _P, _I, _I, _B, _P, _I, _B, _I, _D, _I, _D, _D, _I, _B, _I, _P, _P,
                       _P, _P, _P, _P, _P),
    "train_bits": _bind("el_train_bits", None, _P, _I, _D, _I, _P, _P),
    "train_length": _bind("el_train_length", _I, _D, _D, _D, _D, _I),
    "coincidence_pulses": _bind("el_coincidence_pulses", _I, *_TILE[:8], _D, _P, _P, _P, _P, _P, _P, _P, _P),
    "stochastic_update": _bind("el_stochastic_update", _I, *_TILE, _P, _P, _D, _D, _I, _B, _P, _P, _P, _P, _P, _P),
    "stochastic_update_batch": _bind("el_stochastic_update_batch", _I, *_TILE, _P, _P, _I, _D, _D, _I, _B, _P, _P,
                                     _P, _P, _P, _P),
    "deterministic_update_batch": _bind("el_deterministic_update_batch", _I, *_TILE, _P, _P, _I, _D, _D, _I, _P, _P,
                                        _P, _P, _P),
    "chi_increments": _bind("el_chi_increments", None, _P, _I, _P, _I, _D, _I, _P, _P),
    "mp_update": _bind("el_mp_update", _I, *_TILE, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P),
    "mp_update_dense": _bind("el_mp_update_dense", _I, *_TILE, _P, _P, _D, _I, _I, _I, _P, _P, _P, _P),
    "symmetry_search": _bind("el_symmetry_search", None, *_TILE, _I, _I, _I, _D, _P, _P, _P, _P, _P, _P),
    "program_to": _bind("el_program_to", _I, *_TILE, _I, _P, _D, _I, _P, _P, _P, _P),
    "apply_counts": _bind("el_apply_counts", _I, *_TILE, _P, _P, _P, _P, _P),
    "isqrt64": _bind("el_isqrt64", _I, _I),
    "window_count": _bind("el_window_count", _I, _I, _I, _I),
    "window_features": _bind("el_window_features", _I, _P, _I, _I, _I, _I, _P, _I),
    "decimate": _bind("el_decimate", _I, _P, _I, _I, _I, _I, _I, _P, _I),
    "normalise": _bind("el_normalise", _I, _P, _I, _I, _P, _P, _P, _P),
}


# ---- argument checks ----------------------------------------------------------------------------------------------
def _arr(a, dtype, shape, name, writable=False):
    """The data pointer of `a` after checking it is a C-contiguous ndarray of `dtype` and `shape` (None: any size)."""
    dtype = np.dtype(dtype)
    if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == len(shape) and a.flags.c_contiguous
            and all(want is None or got == want for got, want in zip(a.shape, shape))
            and (a.flags.writeable or not writable)):
        what = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".strip()
        want = tuple("n" if s is None else s for s in shape)
        raise ValueError(f"{name} must be a C-contiguous{' writable' if writable else ''} {dtype} array of shape "
                         f"{want}, got {what}")
    return a.ctypes.data


def _int(v):
    return operator.index(v)


def _table(t, name):
    _arr(t, np.float64, (None,), name)
    if t.shape[0] < 1:
        raise ValueError(f"{name} must have at least one node")
    return t.ctypes.data, t.shape[0]


def _tile(state, params, table_up, table_down, c2c_std):
    """The shared leading C arguments of the tile kernels (state, params, rows, cols, tables, c2c_std)."""
    if not isinstance(state, np.ndarray) or state.ndim != 2:
        raise ValueError(f"state must be a 2-D float64 array, got {getattr(state, 'shape', type(state).__name__)}")
    rows, cols = state.shape
    return (_arr(state, np.float64, (rows, cols), "state", True), _arr(params, np.float64, (rows, cols, N_PARAMS),
                                                                       "params"),
            rows, cols, *_table(table_up, "table_up"), *_table(table_down, "table_down"), float(c2c_std))


def _rng(rng):
    return _arr(rng, np.uint64, (1,), "rng", True)


def _normal(table):
    return _arr(table, np.float64, (NORMAL_TABLE_SIZE,), "normal_table")


def _pulses(device_pulses, rows, cols):
    return _arr(device_pulses, np.int32, (2, rows, cols, 2), "device_pulses", True)


def _counters(counters):
    return _arr(counters, np.int64, (N_COUNTERS,), "counters", True)


def _set(device_set):
    s = _int(device_set)
    if not -2 <= s < 2:
        raise ValueError(f"device_set must be 0 or 1 (or -2, -1), got {s}")
    return s + 2 if s < 0 else s


def _span(w_min, w_max):
    if float(w_max) - float(w_min) == 0.0:
        raise ZeroDivisionError("division by zero (w_max == w_min)")


# ---- fixed ---------------------------------------------------------------------------------------------------------
def wrap_i32(value):
    return int(_c["wrap_i32"](_int(value)))


def sat_i32(value):
    return int(_c["sat_i32"](_int(value)))


def div_trunc(a, b):
    if _int(b) == 0:
        raise ZeroDivisionError("integer division by zero")
    return int(_c["div_trunc"](_int(a), _int(b)))


def shift_round(value, shift):
    shift = _int(shift)
    if not 0 <= shift < 64:
        raise ValueError(f"shift must be in [0, 63], got {shift}")
    return int(_c["shift_round"](_int(value), shift))


def rng_next(state):
    return int(_c["rng_next"](_rng(state)))


def rng_u32(state):
    return int(_c["rng_u32"](_rng(state)))


def rng_normal(state, normal_table):
    return float(_c["rng_normal"](_rng(state), _normal(normal_table)))


def popcount32(value):
    return int(_c["popcount32"](_int(value) & 0xFFFFFFFFFFFFFFFF))


def lowest_set_bit(mask):
    mask = _int(mask) & 0xFFFFFFFFFFFFFFFF
    if mask == 0:
        raise ValueError("lowest_set_bit needs a non-zero mask")
    return int(_c["lowest_set_bit"](mask))


# ---- crossbar ------------------------------------------------------------------------------------------------------
def relative_step(w, table, w_min, inv_span):
    return float(_c["relative_step"](float(w), *_table(table, "table"), float(w_min), float(inv_span)))


def step_state(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, inv_span, noise):
    return float(_c["step_state"](float(w), _int(polarity), *_table(table_up, "table_up"),
                                  *_table(table_down, "table_down"), float(scale_up), float(scale_down),
                                  float(w_min), float(w_max), float(inv_span), float(noise)))


def apply_pulse(w, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, noise):
    _span(w_min, w_max)
    return float(_c["apply_pulse"](float(w), _int(polarity), *_table(table_up, "table_up"),
                                   *_table(table_down, "table_down"), float(scale_up), float(scale_down),
                                   float(w_min), float(w_max), float(noise)))


def pulse_device(state, params, i, j, n, polarity, table_up, table_down, c2c_std, rng, normal_table):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    i, j = _int(i), _int(j)
    i, j = i + rows if i < 0 else i, j + cols if j < 0 else j
    if not (0 <= i < rows and 0 <= j < cols):
        raise ValueError(f"device ({i}, {j}) is outside the {rows} x {cols} tile")
    st, pa, _, _, up, n_up, down, n_down, c2c = tile
    _c["pulse_device"](st, pa, rows, cols, i, j, _int(n), _int(polarity), up, n_up, down, n_down, c2c, _rng(rng),
                       _normal(normal_table))


def replay(w_start, polarities, restart, restart_w, table_up, table_down, scale_up, scale_down, w_min, w_max):
    _arr(polarities, np.int64, (None,), "polarities")
    n = polarities.shape[0]
    _span(w_min, w_max)
    out = np.empty(n)
    _c["replay"](float(w_start), polarities.ctypes.data, _arr(restart, np.bool_, (n,), "restart"),
                 _arr(restart_w, np.float64, (n,), "restart_w"), n, *_table(table_up, "table_up"),
                 *_table(table_down, "table_down"), float(scale_up), float(scale_down), float(w_min), float(w_max),
                 out.ctypes.data)
    return out


def alternate_until_settled(w_start, table_up, table_down, scale_up, scale_down, w_min, w_max, max_pairs, tolerance):
    _span(w_min, w_max)
    pairs = ct.c_int64(0)
    mean = _c["alternate_until_settled"](float(w_start), *_table(table_up, "table_up"),
                                         *_table(table_down, "table_down"), float(scale_up), float(scale_down),
                                         float(w_min), float(w_max), _int(max_pairs), float(tolerance),
                                         ct.addressof(pairs))
    return float(mean), int(pairs.value)


def pulses_to_cross(w_from, w_to, polarity, table_up, table_down, scale_up, scale_down, w_min, w_max, max_pulses):
    _span(w_min, w_max)
    return int(_c["pulses_to_cross"](float(w_from), float(w_to), _int(polarity), *_table(table_up, "table_up"),
                                     *_table(table_down, "table_down"), float(scale_up), float(scale_down),
                                     float(w_min), float(w_max), _int(max_pulses)))


# ---- controller ----------------------------------------------------------------------------------------------------
def round_half_away(value):
    return float(_c["round_half_away"](float(value)))


def _mvm_raises(vec, n_out, dac_bits, inp_bound, adc_bits, out_bound, noise_management):
    """Whether numba's mvm raises ZeroDivisionError on this input (the divisions it reaches, in its order)."""
    adc_max = (1 << (adc_bits - 1)) - 1
    if adc_max == 0:
        return True
    out_step = out_bound / adc_max
    nm = 1.0
    if noise_management == NM_ABS_MAX:
        if not (np.abs(vec) > 0.0).any():  # numba's running max never takes a NaN: vmax == 0 exactly then
            return False
        if inp_bound == 0.0:
            return True
        vmax = 0.0
        for v in np.abs(vec).tolist():
            vmax = v if v > vmax else vmax
        nm = vmax / inp_bound
    dac_max = (1 << (dac_bits - 1)) - 1
    return dac_max == 0 or nm * 1.0 * inp_bound == 0.0 or (out_step == 0.0 and n_out > 0)


def _mvm_args(state, ref_state, use_ref, transpose, dac_bits, adc_bits):
    if not isinstance(state, np.ndarray) or state.ndim != 2:
        raise ValueError(f"state must be a 2-D float64 array, got {getattr(state, 'shape', type(state).__name__)}")
    rows, cols = state.shape
    dac_bits, adc_bits = _int(dac_bits), _int(adc_bits)
    if not (1 <= dac_bits <= 63 and 1 <= adc_bits <= 63):
        raise ValueError(f"dac_bits and adc_bits must be in [1, 63], got {dac_bits} and {adc_bits}")
    transpose = bool(transpose)
    return (_arr(state, np.float64, (rows, cols), "state"), _arr(ref_state, np.float64, (rows, cols), "ref_state"),
            rows, cols, bool(use_ref), transpose, rows if transpose else cols, cols if transpose else rows,
            dac_bits, adc_bits)


def mvm(state, ref_state, use_ref, vec, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
        noise_management, bound_management, max_bm_rounds, rng, normal_table, codes, counters):
    st, ref, rows, cols, use_ref, transpose, n_in, n_out, dac_bits, adc_bits = _mvm_args(
        state, ref_state, use_ref, transpose, dac_bits, adc_bits)
    vp = _arr(vec, np.float64, (n_in,), "vec")
    cp = _arr(codes, np.int32, (n_out,), "codes", True)
    inp_bound, out_bound, noise_management = float(inp_bound), float(out_bound), _int(noise_management)
    if _mvm_raises(vec, n_out, dac_bits, inp_bound, adc_bits, out_bound, noise_management):
        raise ZeroDivisionError("division by zero (mvm: a bound, a converter range or the scale is zero)")
    u, y = np.empty(n_in), np.empty(n_out)
    return float(_c["mvm"](st, ref, rows, cols, use_ref, vp, transpose, dac_bits, inp_bound, adc_bits, out_bound,
                           float(out_noise), noise_management, bool(bound_management), _int(max_bm_rounds), _rng(rng),
                           _normal(normal_table), cp, _counters(counters), u.ctypes.data, y.ctypes.data))


def mvm_batch(state, ref_state, use_ref, vecs, transpose, dac_bits, inp_bound, adc_bits, out_bound, out_noise,
              noise_management, bound_management, max_bm_rounds, rng, normal_table, codes, scales, counters):
    st, ref, rows, cols, use_ref, transpose, n_in, n_out, dac_bits, adc_bits = _mvm_args(
        state, ref_state, use_ref, transpose, dac_bits, adc_bits)
    vp = _arr(vecs, np.float64, (None, n_in), "vecs")
    batch = vecs.shape[0]
    cp = _arr(codes, np.int32, (batch, n_out), "codes", True)
    sp = _arr(scales, np.float64, (batch,), "scales", True)
    inp_bound, out_bound, noise_management = float(inp_bound), float(out_bound), _int(noise_management)
    if any(_mvm_raises(v, n_out, dac_bits, inp_bound, adc_bits, out_bound, noise_management) for v in vecs):
        for b in range(batch):  # sample by sample, so the samples before the failing one take effect as in numba
            scales[b] = mvm(state, ref_state, use_ref, vecs[b], transpose, dac_bits, inp_bound, adc_bits, out_bound,
                            out_noise, noise_management, bound_management, max_bm_rounds, rng, normal_table, codes[b],
                            counters)
        return
    u, y = np.empty(n_in), np.empty(n_out)
    _c["mvm_batch"](st, ref, rows, cols, use_ref, vp, batch, transpose, dac_bits, inp_bound, adc_bits, out_bound,
                    float(out_noise), noise_management, bool(bound_management), _int(max_bm_rounds), _rng(rng),
                    _normal(normal_table), cp, sp, _counters(counters), u.ctypes.data, y.ctypes.data)


def _train_bits(values, prob_scale, bl, rng, bits):
    vp = _arr(values, np.float64, (None,), "values")
    _c["train_bits"](vp, values.shape[0], float(prob_scale), _int(bl), _rng(rng),
                     _arr(bits, np.uint32, values.shape, "bits", True))


def train_length(lr, x_max, d_max, dw_min, bl_max):
    if float(dw_min) == 0.0:
        raise ZeroDivisionError("division by zero (dw_min)")
    return int(_c["train_length"](float(lr), float(x_max), float(d_max), float(dw_min), _int(bl_max)))


def _coincidence_pulses(state, params, table_up, table_down, c2c_std, x, d, x_bits, d_bits, rng, normal_table,
                        pulses):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    n_down = ct.c_int64(0)
    total = _c["coincidence_pulses"](*tile, _arr(x, np.float64, (cols,), "x"), _arr(d, np.float64, (rows,), "d"),
                                     _arr(x_bits, np.uint32, (cols,), "x_bits"),
                                     _arr(d_bits, np.uint32, (rows,), "d_bits"), _rng(rng), _normal(normal_table),
                                     _arr(pulses, np.int32, (rows, cols, 2), "pulses", True), ct.addressof(n_down))
    return int(total), int(n_down.value)


def _bl_max(bl_max):
    bl_max = _int(bl_max)
    if bl_max < 1:
        raise ValueError(f"bl_max must be at least 1, got {bl_max}")
    return bl_max


def _stochastic_reaches_division(x, d, lr):
    """numba's stochastic_update divides by dw_min only past its early return (x, d and lr all non-zero)."""
    return bool((np.abs(x) > 0.0).any() and (np.abs(d) > 0.0).any() and float(lr) != 0.0)


def stochastic_update(state, params, table_up, table_down, c2c_std, x, d, lr, dw_min, bl_max, update_management,
                      rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    xp, dp = _arr(x, np.float64, (cols,), "x"), _arr(d, np.float64, (rows,), "d")
    args = (_rng(rng), _normal(normal_table), _pulses(device_pulses, rows, cols), _counters(counters))
    if float(dw_min) == 0.0 and _stochastic_reaches_division(x, d, lr):
        counters[15] += 1  # numba counts the update call before it fails
        raise ZeroDivisionError("division by zero (dw_min)")
    x_bits, d_bits = np.empty(cols, np.uint32), np.empty(rows, np.uint32)
    return int(_c["stochastic_update"](*tile, xp, dp, float(lr), float(dw_min), _bl_max(bl_max),
                                       bool(update_management), *args, x_bits.ctypes.data, d_bits.ctypes.data))


def stochastic_update_batch(state, params, table_up, table_down, c2c_std, xs, ds, lr, dw_min, bl_max,
                            update_management, rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    xp = _arr(xs, np.float64, (None, cols), "xs")
    batch = xs.shape[0]
    dp = _arr(ds, np.float64, (batch, rows), "ds")
    args = (_rng(rng), _normal(normal_table), _pulses(device_pulses, rows, cols), _counters(counters))
    if float(dw_min) == 0.0:  # sample by sample, so the failing sample raises where numba's does
        total = 0
        for b in range(batch):
            total += stochastic_update(state, params, table_up, table_down, c2c_std, xs[b], ds[b], lr, dw_min,
                                       bl_max, update_management, rng, normal_table, device_pulses, counters)
        return total
    x_bits, d_bits = np.empty(cols, np.uint32), np.empty(rows, np.uint32)
    return int(_c["stochastic_update_batch"](*tile, xp, dp, batch, float(lr), float(dw_min), _bl_max(bl_max),
                                             bool(update_management), *args, x_bits.ctypes.data, d_bits.ctypes.data))


def deterministic_update_batch(state, params, table_up, table_down, c2c_std, xs, ds, lr, dw_min, max_pulses, rng,
                               normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    xp = _arr(xs, np.float64, (None, cols), "xs")
    batch = xs.shape[0]
    dp = _arr(ds, np.float64, (batch, rows), "ds")
    args = (_rng(rng), _normal(normal_table), _pulses(device_pulses, rows, cols), _counters(counters))
    if float(dw_min) == 0.0 and rows * cols > 0:
        counters[15] += 1
        counters[11] += batch * rows * cols
        raise ZeroDivisionError("division by zero (dw_min)")
    g = np.empty(cols)
    return int(_c["deterministic_update_batch"](*tile, xp, dp, batch, float(lr), float(dw_min), _int(max_pulses),
                                                *args, g.ctypes.data))


def chi_increments(x, d, lr, chi_frac_bits, x_q, row_mult):
    xp, dp = _arr(x, np.float64, (None,), "x"), _arr(d, np.float64, (None,), "d")
    _c["chi_increments"](xp, x.shape[0], dp, d.shape[0], float(lr), _int(chi_frac_bits),
                         _arr(x_q, np.int32, x.shape, "x_q", True), _arr(row_mult, np.int32, d.shape, "row_mult", True))


def _eps(eps_up_q, eps_down_q):
    eps_up, eps_down = _int(eps_up_q), _int(eps_down_q)
    if eps_up <= 0 or eps_down <= 0:
        raise ValueError(f"eps_up_q and eps_down_q must be positive, got {eps_up} and {eps_down}")
    return eps_up, eps_down


def mp_update(state, params, table_up, table_down, c2c_std, chi, x_q, row_mult, eps_up_q, eps_down_q, max_pulses,
              rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    return int(_c["mp_update"](*tile, _arr(chi, np.int32, (rows, cols), "chi", True),
                               _arr(x_q, np.int32, (cols,), "x_q"), _arr(row_mult, np.int32, (rows,), "row_mult"),
                               *_eps(eps_up_q, eps_down_q), _int(max_pulses), _rng(rng), _normal(normal_table),
                               _pulses(device_pulses, rows, cols), _counters(counters)))


def mp_update_dense(state, params, table_up, table_down, c2c_std, chi, gradient, scale, eps_up_q, eps_down_q,
                    max_pulses, rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    return int(_c["mp_update_dense"](*tile, _arr(chi, np.int32, (rows, cols), "chi", True),
                                     _arr(gradient, np.float64, (rows, cols), "gradient"), float(scale),
                                     *_eps(eps_up_q, eps_down_q), _int(max_pulses), _rng(rng), _normal(normal_table),
                                     _pulses(device_pulses, rows, cols), _counters(counters)))


def symmetry_search(state, params, table_up, table_down, c2c_std, device_set, window, max_pairs, tolerance, rng,
                    normal_table, settled, pairs_used, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    window, max_pairs = _int(window), _int(max_pairs)
    args = (_rng(rng), _normal(normal_table), _arr(settled, np.float64, (rows, cols), "settled", True),
            _arr(pairs_used, np.int64, (rows, cols), "pairs_used", True), _pulses(device_pulses, rows, cols),
            _counters(counters))
    if window == 0 and max_pairs > 0 and rows * cols > 0:
        raise ZeroDivisionError("division by zero (window)")
    _c["symmetry_search"](*tile, _set(device_set), window, max_pairs, float(tolerance), *args)


def program_to(state, params, table_up, table_down, c2c_std, device_set, target, tolerance, max_pulses, rng,
               normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    return int(_c["program_to"](*tile, _set(device_set), _arr(target, np.float64, (rows, cols), "target"),
                                float(tolerance), _int(max_pulses), _rng(rng), _normal(normal_table),
                                _pulses(device_pulses, rows, cols), _counters(counters)))


def apply_counts(state, params, table_up, table_down, c2c_std, counts, rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    return int(_c["apply_counts"](*tile, _arr(counts, np.int32, (rows, cols), "counts"), _rng(rng),
                                  _normal(normal_table), _pulses(device_pulses, rows, cols), _counters(counters)))


# ---- frontend ------------------------------------------------------------------------------------------------------
def isqrt64(value):
    return int(_c["isqrt64"](_int(value)))


def window_count(n_samples, length, hop):
    n_samples, length, hop = _int(n_samples), _int(length), _int(hop)
    if hop == 0 and n_samples >= length:
        raise ZeroDivisionError("integer division by zero (hop)")
    return int(_c["window_count"](n_samples, length, hop))


def _codes(codes):
    if not isinstance(codes, np.ndarray) or codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D int16 array, got {getattr(codes, 'shape', type(codes).__name__)}")
    return _arr(codes, np.int16, codes.shape, "codes"), codes.shape[0], codes.shape[1]


def _out(out, dtype, windows, width):
    """out must hold `windows` rows of at least `width` columns (numba indexes it with its own row stride)."""
    _arr(out, dtype, (None, None), "out", True)
    if out.shape[0] < windows or out.shape[1] < width:
        raise ValueError(f"out must have at least shape ({windows}, {width}), got {out.shape}")
    return out.ctypes.data, out.shape[1]


def window_features(codes, length, hop, out):
    cp, n, channels = _codes(codes)
    length, hop = _int(length), _int(hop)
    windows = window_count(n, length, hop)
    if length == 0 and windows > 0 and channels > 0:
        raise ZeroDivisionError("integer division by zero (length)")
    return int(_c["window_features"](cp, n, channels, length, hop, *_out(out, np.int32, windows,
                                                                         channels * N_FEATURES)))


def decimate(codes, length, hop, factor, out):
    cp, n, channels = _codes(codes)
    length, hop, factor = _int(length), _int(hop), _int(factor)
    windows = window_count(n, length, hop)
    if factor == 0:
        raise ZeroDivisionError("integer division by zero (factor)")
    per = length // factor
    if windows > 0 and per > 0 and (factor < 0 or (windows - 1) * hop + (per - 1) * factor >= n):
        raise ValueError(f"decimate would read beyond the {n} samples (length {length}, factor {factor})")
    return int(_c["decimate"](cp, n, channels, length, hop, factor, *_out(out, np.int16, windows, channels * per)))


def normalise(features, offset, multiplier, shift, out):
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise ValueError(f"features must be a 2-D int32 array, got {getattr(features, 'shape', '?')}")
    n_windows, n = features.shape
    sp = _arr(shift, np.int32, (n,), "shift")
    if n and not ((shift >= 0) & (shift < 64)).all():
        raise ValueError("shift must be in [0, 63]")
    return int(_c["normalise"](_arr(features, np.int32, (n_windows, n), "features"), n_windows, n,
                               _arr(offset, np.int32, (n,), "offset"), _arr(multiplier, np.int32, (n,), "multiplier"),
                               sp, _arr(out, np.int16, (n_windows, n), "out", True)))
