"""ctypes bindings of the C board firmware (firmware_model/c/el_board.c, the command interpreter, over the host HAL
firmware_model/c/el_hal_emulated.c), with the interface of `firmware_model.board.BoardFirmware`.

`CBoardFirmware(array, firmware, device_id, read_offset_s, read_scale_s, dac_bits, adc_bits, inp_bound, lease_s,
max_pulses)` takes the same arguments as BoardFirmware; `array` is an `EmulatedCrossbar` (or anything with its
attributes: rows, cols, state, widths {width_ns: PulseWidth}, periphery, rng, normal_table, counters, device_pulses,
ref_zero). The C code works in place on that array's own numpy arrays (state, counters, device_pulses, rng), exactly
as BoardFirmware's numba kernels do, so `board.main.state` etc. show what the C firmware wrote; they must already
have the host's dtypes, shapes and C-contiguous layout (a wrong one raises ValueError instead of being copied).

Time: the C board runs on a microsecond clock; `handle(payload, now)` passes round(now * 1e6). The lease must be a
whole number of milliseconds (IDENTIFY's lease_ms). With `now` values exact in both (e.g. multiples of 1/64 s) the
answers are byte-identical to BoardFirmware's (tests/test_firmware_c_board.py).

Configurations the Python board could not IDENTIFY (fields that do not fit their wire types) or that the C buffers
do not hold (rows or cols > 4096, more than 16 widths) raise ValueError here; so do peripheries on which the numba
MVM would raise (dac_bits or adc_bits < 2, inp_bound or out_bound 0).
"""

from __future__ import annotations

import ctypes as ct
import math
import time

import numpy as np

from .board import DEFAULT_LEASE_S, MAX_PULSES_PER_COMMAND, READ_BITS, READ_SPAN_W
from .cbuild import load

N_COUNTERS = 16
N_PARAMS = 5
NORMAL_TABLE_SIZE = 1 << 12
MAX_DIM = 4096  # EL_BOARD_MAX_DIM
MAX_WIDTHS = 16  # EL_BOARD_MAX_WIDTHS
MAX_RESPONSE = 16384  # EL_BOARD_MAX_RESPONSE
CACHE_DEPTH = 32  # EL_BOARD_CACHE_DEPTH

_lib = load(("el_protocol", "el_fixed", "el_crossbar", "el_controller", "el_frontend", "el_board", "el_hal_emulated"))

_P, _D, _I64, _SZ = ct.c_void_p, ct.c_double, ct.c_int64, ct.c_size_t


def _bind(name, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_board_size = _bind("el_board_size", _SZ)
_hal_size = _bind("el_board_hal_size", _SZ)
_emu_size = _bind("el_hal_emulated_size", _SZ)
_emu_init = _bind("el_hal_emulated_init", ct.c_int, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _I64, _D, _I64, _D, _D,
                  _I64, ct.c_bool, _I64, _P, _P, _P, _P, _P, _P)
_emu_add_width = _bind("el_hal_emulated_add_width", ct.c_int, _P, ct.c_uint32, _P, _I64, _P, _I64, _P, _D, _P)
_emu_bind = _bind("el_hal_emulated_bind", None, _P, _P)
_emu_factors = _bind("el_hal_emulated_factors", ct.c_char_p, _P, ct.c_uint32, ct.c_int32, _P)
_board_init = _bind("el_board_init", ct.c_int, _P, ct.c_uint16, ct.c_uint16, ct.c_uint8, ct.c_uint8, _D, _D, _D,
                    ct.c_uint32, ct.c_uint32, ct.c_char_p, _SZ, ct.c_char_p, _SZ, _P)
_board_add_width = _bind("el_board_add_width", ct.c_int, _P, ct.c_uint32, ct.c_int16, ct.c_int16)
_board_handle = _bind("el_board_handle", _SZ, _P, ct.c_char_p, _SZ, _I64, _P, _SZ)
_board_release = _bind("el_board_release", None, _P, ct.c_uint16)
_board_status = _bind("el_board_status", None, _P, _P)
_board_cache_seqs = _bind("el_board_cache_seqs", _SZ, _P, _P)
_format_1f = _bind("el_board_format_seconds_1f", _SZ, _I64, _P)
_format_g = _bind("el_board_format_lease_g", _SZ, ct.c_uint32, _P)


def _aligned(nbytes: int):
    return (ct.c_uint64 * max(1, (nbytes + 7) // 8))()


def _arr(a, dtype, shape, name, writable=False) -> int:
    """The data pointer of `a` after checking it is a C-contiguous ndarray of `dtype` and `shape`."""
    dtype = np.dtype(dtype)
    if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == tuple(shape) and a.flags.c_contiguous
            and (a.flags.writeable or not writable)):
        what = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".strip()
        raise ValueError(f"{name} must be a C-contiguous{' writable' if writable else ''} {dtype} array of shape "
                         f"{tuple(shape)}, got {what}")
    return a.ctypes.data


def _in_range(value, low, high, name) -> int:
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} {value} outside {low}..{high}")
    return value


def format_seconds_1f(diff_us: int) -> str:
    """The C formatter of the E_BUSY text's seconds: f"{diff_us / 1e6:.1f}"."""
    out = (ct.c_uint8 * 64)()
    n = _format_1f(int(diff_us), out)
    return bytes(out[:n]).decode()


def format_lease_g(lease_ms: int) -> str:
    """The C formatter of the E_BUSY text's lease: f"{lease_ms / 1000:g}"."""
    out = (ct.c_uint8 * 64)()
    n = _format_g(int(lease_ms), out)
    return bytes(out[:n]).decode()


class CBoardFirmware:
    """board.BoardFirmware over the C interpreter and the C emulated-crossbar HAL (see the module's doc)."""

    def __init__(self, array, firmware: str, device_id: str, read_offset_s: float, read_scale_s: float,
                 dac_bits: int, adc_bits: int, inp_bound: float, lease_s: float = DEFAULT_LEASE_S,
                 max_pulses: int = MAX_PULSES_PER_COMMAND):
        self.main = array
        self.rows, self.cols = int(array.rows), int(array.cols)
        rows = _in_range(self.rows, 1, MAX_DIM, "rows")
        cols = _in_range(self.cols, 1, MAX_DIM, "cols")
        self.firmware, self.device_id = firmware, device_id
        self.read_offset_s, self.read_scale_s = float(read_offset_s), float(read_scale_s)
        self.w_per_code = READ_SPAN_W / (2**READ_BITS - 1)
        self.dac_bits = _in_range(dac_bits, 2, 63, "dac_bits")
        self.adc_bits = _in_range(adc_bits, 0, 255, "adc_bits")
        self.inp_bound = float(inp_bound)
        self.lease_s = float(lease_s)
        lease_ms = int(round(self.lease_s * 1000)) if math.isfinite(self.lease_s) else -1
        if not (0 <= lease_ms < 2**32 and lease_ms / 1000 == self.lease_s):
            raise ValueError(f"lease_s {lease_s} must be a whole number of milliseconds within 0..{2**32 - 1} ms")
        self.max_pulses = _in_range(max_pulses, 0, 2**32 - 1, "max_pulses")

        keep = []  # everything the C side points to stays alive with the board

        def ro(a, dtype, shape, name):  # read-only inputs may be converted (the C side never writes them)
            a = np.ascontiguousarray(a, dtype=dtype)
            keep.append(a)
            return _arr(a, dtype, shape, name)

        state = _arr(array.state, np.float64, (rows, cols), "state", True)
        counters = _arr(array.counters, np.int64, (N_COUNTERS,), "counters", True)
        pulses = _arr(array.device_pulses, np.int32, (2, rows, cols, 2), "device_pulses", True)
        rng = _arr(array.rng, np.uint64, (1,), "rng", True)
        normal = ro(array.normal_table, np.float64, (NORMAL_TABLE_SIZE,), "normal_table")
        ref_zero = ro(getattr(array, "ref_zero", np.zeros((rows, cols))), np.float64, (rows, cols), "ref_zero")
        keep += [array.state, array.counters, array.device_pulses, array.rng]
        (p_dac, p_inp, p_adc, p_out_bound, p_out_noise, p_nm, p_bm, p_rounds) = tuple(array.periphery)
        p_dac = _in_range(p_dac, 2, 62, "periphery dac_bits")
        p_adc = _in_range(p_adc, 2, 62, "periphery adc_bits")
        if float(p_inp) == 0.0 or float(p_out_bound) == 0.0:
            raise ValueError("periphery inp_bound and out_bound must not be 0 (the MVM divides by them)")
        vec = max(rows, cols)
        scratch = [np.zeros(rows * cols), np.zeros(rows * cols * N_PARAMS), np.zeros(2 * rows * cols * 2, np.int32),
                   np.zeros(rows * cols, np.int32), np.zeros(vec), np.zeros(vec)]
        keep += scratch
        self._emu = _aligned(_emu_size())
        if _emu_init(self._emu, rows, cols, state, ref_zero, rng, normal, counters, pulses, p_dac, float(p_inp), p_adc,
                     float(p_out_bound), float(p_out_noise), int(p_nm), bool(p_bm), int(p_rounds),
                     *(s.ctypes.data for s in scratch)) != 0:
            raise ValueError("el_hal_emulated_init refused the array")
        widths = list(array.widths.values())
        if not 1 <= len(widths) <= MAX_WIDTHS:
            raise ValueError(f"the array needs 1..{MAX_WIDTHS} pulse widths, got {len(widths)}")
        for w in widths:
            width_ns = _in_range(w.width_ns, 0, 2**32 - 1, "width_ns")
            low, high = (_in_range(v, -32768, 32767, "amplitude (mV)") for v in w.amplitude_range_mv)
            up = ro(w.table_up, np.float64, (np.shape(w.table_up)[0],), "table_up")
            down = ro(w.table_down, np.float64, (np.shape(w.table_down)[0],), "table_down")
            params = ro(w.params, np.float64, (rows, cols, N_PARAMS), "params")
            response = None
            if w.amplitude_response is not None:
                response = ro(np.array([float(v) for v in w.amplitude_response]), np.float64, (6,),
                              "amplitude_response")
            if _emu_add_width(self._emu, width_ns, up, len(w.table_up), down, len(w.table_down), params,
                              float(w.c2c_std), response) != 0:
                raise ValueError(f"el_hal_emulated_add_width refused the width {width_ns} ns")
        self._hal = _aligned(_hal_size())
        _emu_bind(self._emu, self._hal)
        self._board = _aligned(_board_size())
        fw_bytes, id_bytes = firmware.encode("utf-8")[:255], device_id.encode("utf-8")[:255]
        if _board_init(self._board, rows, cols, self.dac_bits, self.adc_bits, self.inp_bound, self.read_offset_s,
                       self.read_scale_s, lease_ms, self.max_pulses, fw_bytes, len(fw_bytes), id_bytes,
                       len(id_bytes), self._hal) != 0:
            raise ValueError("el_board_init refused the configuration")
        for w in widths:
            low, high = w.amplitude_range_mv
            if _board_add_width(self._board, int(w.width_ns), int(low), int(high)) != 0:
                raise ValueError(f"el_board_add_width refused the width {w.width_ns} ns")
        self._keep = keep
        self._out = (ct.c_uint8 * MAX_RESPONSE)()

    # -- the interpreter -------------------------------------------------------------------------------------------
    def handle(self, payload: bytes, now: float | None = None) -> bytes | None:
        """One request payload -> the response payload, or None (BoardFirmware.handle)."""
        payload = bytes(payload)
        now = time.monotonic() if now is None else now
        n = _board_handle(self._board, payload, len(payload), int(round(now * 1e6)), self._out, MAX_RESPONSE)
        return bytes(self._out[:n]) if n else None

    def release(self, session: int) -> None:
        _board_release(self._board, session & 0xFFFF)

    def amplitude_range_mv(self, width_ns: int) -> tuple[int, int]:
        return self.main.widths[width_ns].amplitude_range_mv

    def factors(self, width_ns: int, amplitude_mv: int) -> tuple[float, float]:
        """The C HAL's PulseWidth.factors; ArithmeticError with the Python exception's text where that raises."""
        out = (ct.c_double * 2)()
        err = _emu_factors(self._emu, width_ns, amplitude_mv, out)
        if err is not None:
            raise ArithmeticError(err.decode())
        return out[0], out[1]

    # -- the session state -----------------------------------------------------------------------------------------
    def _status(self) -> list[int]:
        out = (ct.c_int64 * 12)()
        _board_status(self._board, out)
        return list(out)

    executed = property(lambda self: self._status()[0])
    duplicates = property(lambda self: self._status()[1])
    stale = property(lambda self: self._status()[2])
    busy = property(lambda self: self._status()[3])

    @property
    def owner(self) -> int | None:
        v = self._status()[4]
        return None if v < 0 else v

    @property
    def owner_seen(self) -> float:
        return self._status()[5] / 1e6

    @property
    def high_seq(self) -> int | None:
        v = self._status()[6]
        return None if v < 0 else v

    @property
    def last_received(self) -> tuple[int, int]:
        s = self._status()
        return s[7], s[8]

    @property
    def configured(self) -> tuple[int, int] | None:
        s = self._status()
        return (s[10], s[11]) if s[9] else None

    @property
    def cache_seqs(self) -> list[int]:
        """The duplicate cache's seqs, oldest first (list(BoardFirmware.cache))."""
        out = (ct.c_uint16 * CACHE_DEPTH)()
        n = _board_cache_seqs(self._board, out)
        return list(out[:n])
