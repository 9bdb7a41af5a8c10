"""ctypes bindings of the C port of the memory-light kernels (firmware_model/c/el_lowmem.c), one function per numba
kernel of firmware_model/lowmem.py, with its signature and semantics (same arguments, same in-place writes, same
return value), bit-exact with it random streams included: tests/test_firmware_c_lowmem.py compares them.

Arrays must already have the dtype, shape and layout the host gives the numba kernels (cfirmware's conventions, and
its argument checks: a wrong one raises a one-line ValueError instead of being converted, because the kernels write
into their arguments). chi is int8 or int16 and h int8, int16 or int32 (the C function is picked by the dtype);
buffer_transfer's signal is float64 [rows] and counts int64 [rows]; col may be negative, as a numpy index.

Where the numba kernels would divide by zero (eps_up_q, eps_down_q or unit zero) or divide by a negative step (which
the firmware does not support), the binding raises ValueError before calling C, as cfirmware.mp_update does.
"""

from __future__ import annotations

import ctypes as ct

import numpy as np

from .cbuild import load
from .cfirmware import _arr, _counters, _int, _normal, _pulses, _rng, _tile

_lib = load(("el_fixed", "el_crossbar", "el_lowmem"))

_D, _I, _B, _P = ct.c_double, ct.c_int64, ct.c_bool, ct.c_void_p
_TILE = (_P, _P, _I, _I, _P, _I, _P, _I, _D)  # state, params, rows, cols, table_up, n_up, table_down, n_down, c2c


def _bind(name, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_MP = (*_TILE, _P, _P, _D, _I, _I, _I, _I, _I, _P, _P, _P, _P)
_BUF = (_P, _I, _I, _I, _P, _D, _I, _I, _I, _D, _B, _I, _P, _P, _P)
_c = {
    "stochastic_round": _bind("el_stochastic_round", _I, _D, _P),
    "mp_update_dense_q": {np.dtype(np.int8): _bind("el_mp_update_dense_q_i8", _I, *_MP),
                          np.dtype(np.int16): _bind("el_mp_update_dense_q_i16", _I, *_MP)},
    "buffer_transfer": {np.dtype(np.int8): _bind("el_buffer_transfer_i8", _I, *_BUF),
                        np.dtype(np.int16): _bind("el_buffer_transfer_i16", _I, *_BUF),
                        np.dtype(np.int32): _bind("el_buffer_transfer_i32", _I, *_BUF)},
}


def _narrow(a, kernels, shape, name):
    """The C function for `a`'s dtype and its data pointer, after checking a C-contiguous writable array."""
    fn = kernels.get(getattr(a, "dtype", None))
    if fn is None:
        wants = " or ".join(str(d) for d in kernels)
        what = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".strip()
        raise ValueError(f"{name} must be a C-contiguous writable array of {wants} of shape {shape}, got {what}")
    return fn, _arr(a, a.dtype, shape, name, True)


def _positive(value, name):
    v = _int(value)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


def stochastic_round(x, rng):
    return int(_c["stochastic_round"](float(x), _rng(rng)))


def mp_update_dense_q(state, params, table_up, table_down, c2c_std, chi, gradient, scale, eps_up_q, eps_down_q,
                      chi_min, chi_max, max_pulses, rng, normal_table, device_pulses, counters):
    tile = _tile(state, params, table_up, table_down, c2c_std)
    rows, cols = state.shape
    fn, chi_p = _narrow(chi, _c["mp_update_dense_q"], (rows, cols), "chi")
    return int(fn(*tile, chi_p, _arr(gradient, np.float64, (rows, cols), "gradient"), float(scale),
                  _positive(eps_up_q, "eps_up_q"), _positive(eps_down_q, "eps_down_q"), _int(chi_min), _int(chi_max),
                  _int(max_pulses), _rng(rng), _normal(normal_table), _pulses(device_pulses, rows, cols),
                  _counters(counters)))


def buffer_transfer(h, col, signal, gain, h_min, h_max, unit, momentum, forget, max_steps, rng, counts, counters):
    if not isinstance(h, np.ndarray) or h.ndim != 2:
        raise ValueError(f"h must be a 2-D int8, int16 or int32 array, got {getattr(h, 'shape', type(h).__name__)}")
    rows, cols = h.shape
    fn, h_p = _narrow(h, _c["buffer_transfer"], (rows, cols), "h")
    col = _int(col)
    if not -cols <= col < cols:
        raise ValueError(f"col {col} is outside the buffer's {cols} columns")
    return int(fn(h_p, rows, cols, col + cols if col < 0 else col, _arr(signal, np.float64, (rows,), "signal"),
                  float(gain), _int(h_min), _int(h_max), _positive(unit, "unit"), float(momentum), bool(forget),
                  _int(max_steps), _rng(rng), _arr(counts, np.int64, (rows,), "counts", True), _counters(counters)))
