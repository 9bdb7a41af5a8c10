"""The test board's firmware: the protocol v2 command interpreter (docs/protocol.md) over the board's crossbar.

What the firmware owns lives here, on the device's floor, and imports nothing from the host package: the command
interpreter (`BoardFirmware.handle`: request payload in, response payload out, no I/O; sessions, the duplicate cache,
stale and busy refusals, every command and status) and the array it drives through a small hardware-abstraction
layer (`Crossbar`: pulse a region with signed counts at the configured width and amplitude, read devices, run an MVM
on DAC codes). `EmulatedCrossbar` is the host's HAL: the numba crossbar and controller kernels on plain arrays
(device states, per-device parameters, step tables per pulse width, counters, the random generator), which the host
(`edgelearn.hil.emulator`) builds from device cards. A board port implements the same three operations on real
hardware; the C firmware (firmware_model/c) follows the same structure.

One physical array of rows x cols devices of one device type. Each supported pulse width has its own step tables and
per-device parameters (a device keeps its identity across widths); all widths share the device states, the counters
and the random generator.
"""

from __future__ import annotations

import math
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import controller as ctl
from . import crossbar
from . import protocol as p

READ_BITS = 16
READ_SPAN_W = 4.0  # read codes cover w in [-2, 2] of the first width's normalisation
CACHE_DEPTH = 32  # answers kept per session for repeated requests
DEFAULT_LEASE_S = 10.0  # a session that sent nothing for this long no longer holds the board
MAX_PULSES_PER_COMMAND = 1 << 24  # count x devices of one APPLY_PULSES / UPDATE (about 0.1 s of emulator work)


class CommandError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class PulseWidth:
    """One pulse width the array supports: the steps a pulse of that width makes and the amplitudes it takes.
    `amplitude_response` (v0_up, vs_up, ref_up, v0_down, vs_down, ref_down) in volts, or None: the configured amplitude
    scales each direction's steps by A(|V|) / A(ref), A(v) = 1 / (1 + exp(-(v - v0) / vs)) (an amplitude-aware
    array); None: every amplitude in range gives the same steps."""

    width_ns: int
    table_up: np.ndarray
    table_down: np.ndarray
    params: np.ndarray  # (rows, cols, crossbar.N_PARAMS) float64, each device's own
    c2c_std: float
    amplitude_range_mv: tuple[int, int]
    amplitude_response: tuple | None = None

    def factors(self, amplitude_mv: int) -> tuple[float, float]:
        """(up, down) step factors at this amplitude."""
        if self.amplitude_response is None:
            return 1.0, 1.0
        v = abs(amplitude_mv) / 1000.0
        v0u, vsu, refu, v0d, vsd, refd = self.amplitude_response

        def a(x, v0, vs):
            return 1.0 / (1.0 + math.exp(-(x - v0) / vs))

        return a(v, v0u, vsu) / a(refu, v0u, vsu), a(v, v0d, vsd) / a(refd, v0d, vsd)


class EmulatedCrossbar:
    """The HAL over an emulated array: plain arrays and the numba kernels. `periphery` is the tuple
    firmware_model.controller.mvm takes after `transpose` (dac_bits, inp_bound, adc_bits, out_bound, out_noise,
    noise_management, bound_management, max_bm_rounds)."""

    def __init__(self, state: np.ndarray, widths: list[PulseWidth], periphery: tuple, rng: np.ndarray,
                 normal_table: np.ndarray):
        if not widths:
            raise ValueError("the array needs at least one pulse width")
        self.rows, self.cols = state.shape
        self.state = state
        self.widths = {}
        for w in widths:
            if w.width_ns in self.widths:
                raise ValueError(f"two setups for the pulse width {w.width_ns} ns")
            self.widths[w.width_ns] = w
        self.periphery = tuple(periphery)
        self.rng, self.normal_table = rng, normal_table
        self.counters = np.zeros(ctl.N_COUNTERS, np.int64)
        self.device_pulses = np.zeros((2, self.rows, self.cols, 2), np.int32)
        self.ref_zero = np.zeros_like(state)
        self._scaled: tuple | None = None  # ((width, amplitude), params at that amplitude): the last one used

    def pulse(self, width_ns: int, amplitude_mv: int, rs: slice, cs: slice, counts: np.ndarray) -> int:
        """Apply signed pulse counts (> 0 up, < 0 down) to a region, device by device in row-major order."""
        w = self.widths[width_ns]
        params = w.params
        if w.amplitude_response is not None:  # one amplitude at a time is what a staircase needs
            key = (width_ns, amplitude_mv)
            if self._scaled is None or self._scaled[0] != key:
                up, down = w.factors(amplitude_mv)
                scaled = params.copy()
                scaled[..., crossbar.P_SCALE_UP] *= up
                scaled[..., crossbar.P_SCALE_DOWN] *= down
                self._scaled = (key, scaled)
            params = self._scaled[1]
        return int(ctl.apply_counts(self.state[rs, cs], params[rs, cs], w.table_up, w.table_down, w.c2c_std, counts,
                                    self.rng, self.normal_table, self.device_pulses[:, rs, cs, :], self.counters))

    def read(self, rs: slice, cs: slice) -> np.ndarray:
        """The devices' states (w) of a region; counts one device read each."""
        w = self.state[rs, cs]
        self.counters[ctl.C_DEVICE_READS] += w.size
        return w

    def mvm(self, rs: slice, cs: slice, vec: np.ndarray, transpose: bool, codes: np.ndarray) -> float:
        """One array pass on a region through DAC and ADC (firmware_model.controller.mvm); returns the code scale."""
        return float(ctl.mvm(self.state[rs, cs], self.ref_zero[rs, cs], False, vec, transpose, *self.periphery,
                             self.rng, self.normal_table, codes, self.counters))

    def reset_counters(self) -> None:
        self.counters[:] = 0
        self.device_pulses[:] = 0


class BoardFirmware:
    """The command interpreter of the board over a crossbar HAL (`main`, an EmulatedCrossbar on the host).

    `firmware` and `device_id` are what IDENTIFY reports; reads are quantised to READ_BITS codes of w_per_code, and
    reported in siemens as read_offset_s + code * read_scale_s."""

    def __init__(self, array: EmulatedCrossbar, firmware: str, device_id: str, read_offset_s: float,
                 read_scale_s: float, dac_bits: int, adc_bits: int, inp_bound: float, lease_s: float = DEFAULT_LEASE_S,
                 max_pulses: int = MAX_PULSES_PER_COMMAND):
        self.main = array
        self.rows, self.cols = array.rows, array.cols
        self.firmware, self.device_id = firmware, device_id
        self.read_offset_s, self.read_scale_s = float(read_offset_s), float(read_scale_s)
        self.w_per_code = READ_SPAN_W / (2**READ_BITS - 1)
        self.dac_bits, self.adc_bits, self.inp_bound = int(dac_bits), int(adc_bits), float(inp_bound)
        self.configured: tuple[int, int] | None = None  # (width_ns, amplitude_mV)
        self.lease_s = float(lease_s)
        self.max_pulses = int(max_pulses)
        self.owner: int | None = None  # the session that holds the board
        self.owner_seen = 0.0  # when it last sent a request (time.monotonic)
        self.cache: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # seq -> (request, response), owner's
        self.high_seq: int | None = None  # the owner's last executed seq
        self.last_received = (0, 0)  # (session, seq) of the last intact request: what a NAK names
        self.executed = 0
        self.duplicates = 0
        self.stale = 0
        self.busy = 0

    # -- the interpreter -------------------------------------------------------------------------------------------
    def handle(self, payload: bytes, now: float | None = None) -> bytes | None:
        """One request payload (CRC already checked) -> the response payload, or None for a frame that is not a
        request. Exactly once: a request whose (session, seq) was executed recently is answered from the cache; one
        older than the cache is refused with E_STALE; neither is executed again. While one host's session holds the
        board (it sent a request in the last `lease_s` seconds and has not sent CLOSE), other sessions get E_BUSY."""
        if not payload:
            return None
        if payload[0] != p.PROTOCOL_VERSION:
            return self._foreign_version(payload)
        try:
            msg = p.parse_message(payload)
        except p.ProtocolError:
            return None
        if msg.is_response:
            return None
        now = time.monotonic() if now is None else now
        if self.owner is not None and msg.session != self.owner and now - self.owner_seen < self.lease_s:
            self.busy += 1
            return self._answer(msg, p.E_BUSY, p.text(
                f"in use by another host (session 0x{self.owner:04x}, last request {now - self.owner_seen:.1f} s ago); "
                f"free when that host closes its link or after {self.lease_s:g} s without requests"))
        if msg.session != self.owner:  # the board is free (or the owner's lease ran out): this session takes it
            self.owner, self.cache, self.high_seq = msg.session, OrderedDict(), None
        self.owner_seen = now
        self.last_received = (msg.session, msg.seq)
        cached = self.cache.get(msg.seq)
        if cached is not None:
            if cached[0] == payload:
                self.duplicates += 1
                return cached[1]
            self.stale += 1
            return self._answer(msg, p.E_STALE, p.text(f"seq {msg.seq} was already used for another request of this "
                                                       "session: not executed"))
        if self.high_seq is not None and 0 < (self.high_seq - msg.seq) & 0xFFFF < 0x8000:
            self.stale += 1
            return self._answer(msg, p.E_STALE, p.text(f"request seq {msg.seq} is older than the last one executed "
                                                       f"({self.high_seq}): a late duplicate, not executed again"))
        try:
            status, body = p.OK, self._execute(msg.command, msg.body)
            self.executed += 1
        except CommandError as exc:
            status, body = exc.status, p.text(str(exc))
        except p.ProtocolError as exc:
            status, body = p.E_BAD_LENGTH, p.text(str(exc))
        except Exception as exc:  # noqa: BLE001 - firmware must answer, never die: report and go on
            status, body = p.E_INTERNAL, p.text(f"{type(exc).__name__}: {exc}")
        response = self._answer(msg, status, body)
        self.cache[msg.seq] = (bytes(payload), response)
        self.high_seq = msg.seq
        while len(self.cache) > CACHE_DEPTH:
            self.cache.popitem(last=False)
        if msg.command == p.CLOSE and status == p.OK:
            self.release(msg.session)
        return response

    @staticmethod
    def _answer(msg: p.Message, status: int, body: bytes) -> bytes:
        return p.Message(p.PROTOCOL_VERSION, msg.seq, (msg.command | p.RESPONSE) & 0xFF, status, body,
                         msg.session).pack()

    @staticmethod
    def _foreign_version(payload: bytes) -> bytes | None:
        """A request of another protocol version is not executed: E_VERSION in the version-1 header layout (the
        oldest one), carrying this board's version, so a host of any version can report the mismatch."""
        if len(payload) < p.V1_HEADER.size:
            return None
        version, seq, command, _ = p.V1_HEADER.unpack_from(payload)
        if command & p.RESPONSE:
            return None
        return p.V1_HEADER.pack(p.PROTOCOL_VERSION, seq, command | p.RESPONSE, p.E_VERSION) + p.text(
            f"board speaks protocol {p.PROTOCOL_VERSION}, got {version}")

    def release(self, session: int) -> None:
        """The session's host is gone (CLOSE, or its TCP connection ended): the board is free for another host."""
        if self.owner == session:
            self.owner, self.cache, self.high_seq = None, OrderedDict(), None

    def _execute(self, command: int, body: bytes) -> bytes:
        handler = {p.IDENTIFY: self._identify, p.CONFIGURE_PULSE: self._configure, p.APPLY_PULSES: self._apply,
                   p.READ: self._read, p.FORWARD: self._forward, p.BACKWARD: self._backward,
                   p.UPDATE: self._update, p.READ_COUNTERS: self._read_counters,
                   p.RESET_COUNTERS: self._reset_counters, p.CLOSE: self._close}.get(command)
        if handler is None:
            raise CommandError(p.E_UNKNOWN_COMMAND, f"unknown command 0x{command:02x}")
        return handler(p.Reader(body, p.COMMAND_NAMES[command]))

    def amplitude_range_mv(self, width_ns: int) -> tuple[int, int]:
        return self.main.widths[width_ns].amplitude_range_mv

    def _identify(self, r: p.Reader) -> bytes:
        r.done()
        out = struct.pack("<BHHBBBBIIIB", p.PROTOCOL_VERSION, self.rows, self.cols, self.dac_bits, self.adc_bits,
                          READ_BITS, ctl.N_COUNTERS, p.MAX_PAYLOAD, self.max_pulses, int(round(self.lease_s * 1000)),
                          len(self.main.widths))
        for width_ns, w in self.main.widths.items():
            low, high = w.amplitude_range_mv
            out += struct.pack("<Ihh", width_ns, low, high)
        out += struct.pack("<dd", self.read_offset_s, self.read_scale_s)
        out += p.text(self.firmware) + p.text(self.device_id)
        return out

    def _configure(self, r: p.Reader) -> bytes:
        width_ns, amplitude_mv = r.take("Ih")
        r.done()
        if width_ns not in self.main.widths:
            raise CommandError(p.E_UNSUPPORTED, f"pulse width {width_ns} ns not supported (board has "
                                                f"{', '.join(f'{w} ns' for w in self.main.widths)})")
        low, high = self.amplitude_range_mv(width_ns)
        if not low <= abs(amplitude_mv) <= high:
            raise CommandError(p.E_UNSUPPORTED, f"amplitude {amplitude_mv} mV outside {low}..{high} mV at "
                                                f"{width_ns} ns")
        self.configured = (width_ns, abs(amplitude_mv))
        return struct.pack("<Ih", width_ns, abs(amplitude_mv))

    def _require_configured(self) -> tuple[int, int]:
        if self.configured is None:
            raise CommandError(p.E_NOT_CONFIGURED, "configure the pulse (width, amplitude) before pulsing")
        return self.configured

    def _selection(self, kind: int, row: int, col: int) -> tuple[slice, slice]:
        if kind == p.SEL_DEVICE:
            self._check_index(row, col)
            return slice(row, row + 1), slice(col, col + 1)
        if kind == p.SEL_ROW:
            self._check_index(row, 0)
            return slice(row, row + 1), slice(0, self.cols)
        if kind == p.SEL_COLUMN:
            self._check_index(0, col)
            return slice(0, self.rows), slice(col, col + 1)
        if kind == p.SEL_ALL:
            return slice(0, self.rows), slice(0, self.cols)
        raise CommandError(p.E_BAD_ARGUMENT, f"selection {kind} unknown (0 device, 1 row, 2 column, 3 all)")

    def _check_index(self, row: int, col: int) -> None:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise CommandError(p.E_BAD_ARGUMENT, f"device ({row}, {col}) outside the {self.rows} x {self.cols} array")

    def _region(self, r: p.Reader) -> tuple[slice, slice]:
        row0, rows, col0, cols = r.take("HHHH")
        if rows < 1 or cols < 1 or row0 + rows > self.rows or col0 + cols > self.cols:
            raise CommandError(p.E_BAD_ARGUMENT, f"region rows {row0}+{rows}, cols {col0}+{cols} outside the "
                                                 f"{self.rows} x {self.cols} array")
        return slice(row0, row0 + rows), slice(col0, col0 + cols)

    def _apply(self, r: p.Reader) -> bytes:
        kind, row, col, polarity, count = r.take("BHHbH")
        r.done()
        if polarity not in (p.UP, p.DOWN):
            raise CommandError(p.E_BAD_ARGUMENT, f"polarity {polarity}: expected +1 (up) or -1 (down)")
        rs, cs = self._selection(kind, row, col)
        devices = (rs.stop - rs.start) * (cs.stop - cs.start)
        self._check_pulses(count * devices, f"{count} pulses x {devices} devices")
        width_ns, amplitude_mv = self._require_configured()
        counts = np.full((rs.stop - rs.start, cs.stop - cs.start), polarity * count, np.int32)
        return struct.pack("<I", self.main.pulse(width_ns, amplitude_mv, rs, cs, counts))

    def _check_pulses(self, total: int, what: str) -> None:
        """Refuse, before any device is touched, a command whose pulses exceed the board's per-command limit: it
        would hold the board for minutes (and its count would not fit the u32 answer)."""
        if total > self.max_pulses:
            raise CommandError(p.E_BAD_ARGUMENT, f"{what} = {total} pulses exceed the board's limit of "
                                                 f"{self.max_pulses} per command: split it")

    def _read(self, r: p.Reader) -> bytes:
        kind, row, col = r.take("BHH")
        r.done()
        rs, cs = self._selection(kind, row, col)
        n = (rs.stop - rs.start) * (cs.stop - cs.start)
        if n * 2 + 32 > p.MAX_PAYLOAD:
            raise CommandError(p.E_BAD_ARGUMENT, f"{n} devices do not fit one frame: read by rows")
        w = self.main.read(rs, cs)
        codes = np.clip(np.round(w / self.w_per_code), -32768, 32767).astype("<i2").ravel()
        return struct.pack("<ddH", self.read_offset_s, self.read_scale_s, len(codes)) + codes.tobytes()

    def _mvm(self, r: p.Reader, transpose: bool) -> bytes:
        rs, cs = self._region(r)
        nr, nc = rs.stop - rs.start, cs.stop - cs.start
        n_in, n_out = (nr, nc) if transpose else (nc, nr)
        codes_in = r.array("<i2", n_in)
        r.done()
        dac_max = (1 << (self.dac_bits - 1)) - 1
        if np.abs(codes_in.astype(np.int64)).max(initial=0) > dac_max:
            raise CommandError(p.E_BAD_ARGUMENT, f"input codes exceed the {self.dac_bits}-bit DAC "
                                                 f"(|code| <= {dac_max})")
        vec = codes_in.astype(np.float64) * (self.inp_bound / dac_max)
        out = np.zeros(n_out, np.int32)
        scale = self.main.mvm(rs, cs, vec, transpose, out)
        return struct.pack("<dH", scale, n_out) + out.astype("<i2").tobytes()

    def _forward(self, r: p.Reader) -> bytes:
        return self._mvm(r, False)

    def _backward(self, r: p.Reader) -> bytes:
        return self._mvm(r, True)

    def _update(self, r: p.Reader) -> bytes:
        rs, cs = self._region(r)
        counts = r.array("i1", (rs.stop - rs.start) * (cs.stop - cs.start))
        r.done()
        self._check_pulses(int(np.abs(counts.astype(np.int64)).sum()), "update")
        width_ns, amplitude_mv = self._require_configured()
        counts = counts.astype(np.int32).reshape(rs.stop - rs.start, cs.stop - cs.start)
        return struct.pack("<I", self.main.pulse(width_ns, amplitude_mv, rs, cs, counts))

    def _read_counters(self, r: p.Reader) -> bytes:
        r.done()
        return struct.pack("<B", ctl.N_COUNTERS) + self.main.counters.astype("<i8").tobytes()

    def _reset_counters(self, r: p.Reader) -> bytes:
        r.done()
        self.main.reset_counters()
        return b""

    def _close(self, r: p.Reader) -> bytes:
        r.done()  # the release itself happens in handle(), once the answer is cached
        return b""
