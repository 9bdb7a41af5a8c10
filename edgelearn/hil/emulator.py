"""The test board's firmware, emulated: serves the link protocol (docs/protocol.md) from the same numba controller and
crossbar as the in-process emulator, over a pseudo-terminal or a TCP socket, with optional fault injection (a bad
cable: dropped, corrupted and delayed bytes).

`BoardFirmware.handle(payload)` is the whole command interpreter (bytes in, bytes out, no I/O), so it can be fuzzed
and tested without a port; `BoardEmulator` serves it over a pty or a socket in one non-blocking thread (or in the
foreground for `edgelearn board-emulator`). It lives on the host's floor because it builds its array from the host's
`Tile`; the kernels (`firmware_model.controller`) and the protocol codec (`firmware_model.protocol`) are the
device's.

One physical array of rows x cols devices of one device type. Each card given is one supported pulse width (its d2d
draw uses the same seed, so a device keeps its identity across widths); all widths share the device states, the
counters and the random generator.
"""

from __future__ import annotations

import math
import os
import random
import select
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from firmware_model import controller as ctl
from firmware_model import crossbar
from firmware_model import protocol as p

from ..board import PeripheryConfig, PulseConfig, Tile
from ..devices import DeviceCard, DeviceVariation

FIRMWARE = "edgelearn-board-emulator 1.0"
READ_BITS = 16
READ_SPAN_W = 4.0  # read codes cover w in [-2, 2] of the first card's normalisation
CACHE_DEPTH = 32  # answers kept per session for repeated requests
DEFAULT_LEASE_S = 10.0  # a session that sent nothing for this long no longer holds the board
MAX_PULSES_PER_COMMAND = 1 << 24  # count x devices of one APPLY_PULSES / UPDATE (about 0.1 s of emulator work)


class CommandError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BoardFirmware:
    """The command interpreter of the emulated board.

    `ideal=True` removes device-to-device variation and cycle-to-cycle noise (and the MVM output noise): every device
    is the card's nominal device and a pulse schedule has exactly one outcome, which `hil compare` uses.

    `amplitude_aware=True` makes the configured amplitude matter: the devices follow each card's amplitude response
    (steps = tables at the reference amplitude x A(|V|) / A(reference), edgelearn.amplitude), and the board offers the
    amplitudes both directions were measured at. Without it (the default) every amplitude gives the card's
    amplitude-blind steps, as before."""

    def __init__(self, cards: list[DeviceCard], rows: int = 8, cols: int = 8, seed: int = 0, ideal: bool = False,
                 periphery: PeripheryConfig | None = None, lease_s: float = DEFAULT_LEASE_S,
                 max_pulses: int = MAX_PULSES_PER_COMMAND, amplitude_aware: bool = False):
        if not cards:
            raise ValueError("the board needs at least one device card")
        if not (1 <= rows <= 1024 and 1 <= cols <= 1024):
            raise ValueError(f"array size must be 1..1024 x 1..1024, got {rows} x {cols}")
        self.rows, self.cols, self.ideal = rows, cols, ideal
        periphery = periphery or PeripheryConfig()
        if ideal:
            periphery = periphery.model_copy(update={"out_noise": 0.0})
        # the DAC codes arrive from the host (which did the noise management); the board does bound management
        self.periphery = periphery.model_copy(update={"noise_management": "none"})
        self.tiles: dict[int, Tile] = {}
        self.amplitude_aware = bool(amplitude_aware)
        first = None
        for card in cards:
            width_ns = int(round(card.pulse_width_s * 1e9))
            if width_ns in self.tiles:
                raise ValueError(f"two cards for the pulse width {width_ns} ns")
            pulses = None
            if self.amplitude_aware:
                if card.amplitude is None:
                    raise ValueError(f"card {card.card_id} has no amplitude response: the amplitude-aware board "
                                     "needs cards fitted from amplitude staircases (edgelearn device fit)")
                pulses = PulseConfig(amplitude_up_v=card.amplitude.reference_up_v,
                                     amplitude_down_v=card.amplitude.reference_down_v)
            tile = Tile(card, rows, cols, seed=seed, variation=DeviceVariation.none() if ideal else None,
                        c2c_std=0.0 if ideal else None, periphery=self.periphery, pulses=pulses)
            if first is None:
                first = tile
            else:  # one physical array: shared states, counters, generator
                tile.state, tile.counters, tile.device_pulses, tile.rng = (first.state, first.counters,
                                                                           first.device_pulses, first.rng)
            self.tiles[width_ns] = tile
        self.cards = {int(round(c.pulse_width_s * 1e9)): c for c in cards}
        self.main = first
        card0 = cards[0]
        self.device_id = card0.device_id
        g_range = card0.g_max_s - card0.g_min_s
        self.read_offset_s = card0.g_ref_s
        self.read_scale_s = READ_SPAN_W / (2**READ_BITS - 1) * g_range / 2.0  # siemens per code
        self.w_per_code = READ_SPAN_W / (2**READ_BITS - 1)
        self.configured: tuple[int, int] | None = None  # (width_ns, amplitude_mV)
        self.ref_zero = np.zeros((rows, cols))
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

    def _amplitude_range_mv(self, card: DeviceCard) -> tuple[int, int]:
        if self.amplitude_aware:  # where both directions' response was measured
            a = card.amplitude
            low, high = max(a.range_up_v[0], a.range_down_v[0]), min(a.range_up_v[1], a.range_down_v[1])
            return int(math.ceil(low * 1000 - 1e-9)), int(math.floor(high * 1000 + 1e-9))
        vr = card.provenance.voltage_range
        if vr is None:
            return 100, 10000
        low = min(vr.get("pos_start_v", 0.1), abs(vr.get("neg_start_v", -0.1)))
        high = max(vr.get("pos_end_v", 10.0), abs(vr.get("neg_end_v", -10.0)))
        return int(round(low * 1000)), int(round(high * 1000))

    def _identify(self, r: p.Reader) -> bytes:
        r.done()
        pc = self.periphery
        out = struct.pack("<BHHBBBBIIIB", p.PROTOCOL_VERSION, self.rows, self.cols, pc.dac_bits, pc.adc_bits,
                          READ_BITS, ctl.N_COUNTERS, p.MAX_PAYLOAD, self.max_pulses, int(round(self.lease_s * 1000)),
                          len(self.cards))
        for width_ns, card in self.cards.items():
            low, high = self._amplitude_range_mv(card)
            out += struct.pack("<Ihh", width_ns, low, high)
        out += struct.pack("<dd", self.read_offset_s, self.read_scale_s)
        out += p.text(FIRMWARE + (" (ideal devices)" if self.ideal else "")
                      + (" (amplitude-aware)" if self.amplitude_aware else "")) + p.text(self.device_id)
        return out

    def _configure(self, r: p.Reader) -> bytes:
        width_ns, amplitude_mv = r.take("Ih")
        r.done()
        if width_ns not in self.cards:
            raise CommandError(p.E_UNSUPPORTED, f"pulse width {width_ns} ns not supported (board has "
                                                f"{', '.join(f'{w} ns' for w in self.cards)})")
        low, high = self._amplitude_range_mv(self.cards[width_ns])
        if not low <= abs(amplitude_mv) <= high:
            raise CommandError(p.E_UNSUPPORTED, f"amplitude {amplitude_mv} mV outside {low}..{high} mV at "
                                                f"{width_ns} ns")
        self.configured = (width_ns, abs(amplitude_mv))
        return struct.pack("<Ih", width_ns, abs(amplitude_mv))

    def _pulse_tile(self) -> Tile:
        if self.configured is None:
            raise CommandError(p.E_NOT_CONFIGURED, "configure the pulse (width, amplitude) before pulsing")
        return self.tiles[self.configured[0]]

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

    def _pulse(self, tile: Tile, rs: slice, cs: slice, counts: np.ndarray) -> int:
        params = tile.params[rs, cs]
        if self.amplitude_aware:  # the steps at the configured amplitude
            response = self.cards[self.configured[0]].amplitude
            volts = self.configured[1] / 1000.0
            params = params.copy()
            params[..., crossbar.P_SCALE_UP] *= response.factor(volts, "up")
            params[..., crossbar.P_SCALE_DOWN] *= response.factor(volts, "down")
        return int(ctl.apply_counts(tile.state[rs, cs], params, tile.table_up, tile.table_down,
                                    tile.c2c_std, counts, tile.rng, tile.normal_table,
                                    tile.device_pulses[:, rs, cs, :], tile.counters))

    def _apply(self, r: p.Reader) -> bytes:
        kind, row, col, polarity, count = r.take("BHHbH")
        r.done()
        if polarity not in (p.UP, p.DOWN):
            raise CommandError(p.E_BAD_ARGUMENT, f"polarity {polarity}: expected +1 (up) or -1 (down)")
        rs, cs = self._selection(kind, row, col)
        devices = (rs.stop - rs.start) * (cs.stop - cs.start)
        self._check_pulses(count * devices, f"{count} pulses x {devices} devices")
        tile = self._pulse_tile()
        counts = np.full((rs.stop - rs.start, cs.stop - cs.start), polarity * count, np.int32)
        return struct.pack("<I", self._pulse(tile, rs, cs, counts))

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
        w = self.main.state[rs, cs]
        codes = np.clip(np.round(w / self.w_per_code), -32768, 32767).astype("<i2").ravel()
        if len(codes) * 2 + 32 > p.MAX_PAYLOAD:
            raise CommandError(p.E_BAD_ARGUMENT, f"{len(codes)} devices do not fit one frame: read by rows")
        self.main.counters[ctl.C_DEVICE_READS] += len(codes)
        return struct.pack("<ddH", self.read_offset_s, self.read_scale_s, len(codes)) + codes.tobytes()

    def _mvm(self, r: p.Reader, transpose: bool) -> bytes:
        rs, cs = self._region(r)
        nr, nc = rs.stop - rs.start, cs.stop - cs.start
        n_in, n_out = (nr, nc) if transpose else (nc, nr)
        codes_in = r.array("<i2", n_in)
        r.done()
        dac_max = (1 << (self.periphery.dac_bits - 1)) - 1
        if np.abs(codes_in.astype(np.int64)).max(initial=0) > dac_max:
            raise CommandError(p.E_BAD_ARGUMENT, f"input codes exceed the {self.periphery.dac_bits}-bit DAC "
                                                 f"(|code| <= {dac_max})")
        vec = codes_in.astype(np.float64) * (self.periphery.inp_bound / dac_max)
        out = np.zeros(n_out, np.int32)
        m = self.main
        scale = ctl.mvm(m.state[rs, cs], self.ref_zero[rs, cs], False, vec, transpose,
                        *self.periphery.kernel_args(), m.rng, m.normal_table, out, m.counters)
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
        tile = self._pulse_tile()
        counts = counts.astype(np.int32).reshape(rs.stop - rs.start, cs.stop - cs.start)
        return struct.pack("<I", self._pulse(tile, rs, cs, counts))

    def _read_counters(self, r: p.Reader) -> bytes:
        r.done()
        return struct.pack("<B", ctl.N_COUNTERS) + self.main.counters.astype("<i8").tobytes()

    def _reset_counters(self, r: p.Reader) -> bytes:
        r.done()
        self.main.counters[:] = 0
        self.main.device_pulses[:] = 0
        return b""

    def _close(self, r: p.Reader) -> bytes:
        r.done()  # the release itself happens in handle(), once the answer is cached
        return b""


def warm_up(card: DeviceCard, amplitude_aware: bool = False) -> None:
    """Run every kernel once on a scratch 2 x 2 board, so numba compiles (or loads from its cache) before the board
    answers its first host: a real board is ready when it enumerates, not seconds into its first command."""
    fw = BoardFirmware([card], 2, 2, amplitude_aware=amplitude_aware)
    width_ns = int(round(card.pulse_width_s * 1e9))
    low, high = fw._amplitude_range_mv(card)
    region = p.REGION.pack(0, 2, 0, 2)
    for k, (command, body) in enumerate([
            (p.CONFIGURE_PULSE, struct.pack("<Ih", width_ns, high)),
            (p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 1)),
            (p.UPDATE, region + bytes([1, 255, 0, 1])),
            (p.FORWARD, region + struct.pack("<2h", 10, -10)),
            (p.BACKWARD, region + struct.pack("<2h", 10, -10)),
            (p.READ, struct.pack("<BHH", p.SEL_ALL, 0, 0))]):
        fw.handle(p.Message(p.PROTOCOL_VERSION, k + 1, command, 0, body).pack())


# ---------------------------------------------------------------------------------------------------- the cable

@dataclass
class Faults:
    """A bad cable: each byte, in either direction, is dropped with probability `drop` or has one random bit flipped
    with probability `corrupt`; each response is held back `delay_ms`, plus `spike_ms` with probability `spike_rate`
    (a latency spike: a busy USB stack, a host that is descheduled), and the board's first response `first_delay_ms`
    more (a board that is slow to come up)."""

    drop: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    seed: int = 0
    spike_ms: float = 0.0
    spike_rate: float = 0.0
    first_delay_ms: float = 0.0

    def __post_init__(self):
        for name in ("drop", "corrupt", "spike_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"fault {name} must be a probability in [0, 1), got {value}")
        if self.drop + self.corrupt >= 1.0:
            raise ValueError(f"fault drop + corrupt must stay below 1, got {self.drop + self.corrupt}")
        for name in ("delay_ms", "spike_ms", "first_delay_ms"):
            value = getattr(self, name)
            if not 0.0 <= value <= 600_000:
                raise ValueError(f"fault {name} must be in 0..600000 ms, got {value}")
        self.rng = random.Random(self.seed)
        self.dropped = 0
        self.corrupted = 0
        self.spikes = 0
        self.responses = 0

    @property
    def active(self) -> bool:
        return self.drop > 0 or self.corrupt > 0

    def apply(self, data: bytes) -> bytes:
        if not self.active:
            return data
        out = bytearray()
        for byte in data:
            u = self.rng.random()
            if u < self.drop:
                self.dropped += 1
                continue
            if u < self.drop + self.corrupt:
                byte ^= 1 << self.rng.randrange(8)
                self.corrupted += 1
            out.append(byte)
        return bytes(out)

    def response_delay_s(self) -> float:
        """How long the next response is held back."""
        delay = self.delay_ms
        if self.responses == 0:
            delay += self.first_delay_ms
        if self.spike_rate > 0 and self.rng.random() < self.spike_rate:
            delay += self.spike_ms
            self.spikes += 1
        self.responses += 1
        return delay / 1000.0


MAX_PENDING_OUT = 1 << 20  # bytes of answers a host may leave unread before the board drops them
MAX_CONNECTIONS = 8  # TCP: simultaneous connections (one holds the board; the others are told it is busy)
DEFAULT_IDLE_TIMEOUT_S = 60.0  # TCP: a connection that sends nothing for this long is closed


class _Channel:
    """One byte stream to a host (the pty, or one TCP connection): its frame decoder, the answers waiting to be sent
    (each with the time it may go, so a held-back answer never blocks the board) and the sessions seen on it."""

    def __init__(self, now: float):
        self.decoder = p.FrameDecoder()
        self.out: deque[list] = deque()  # [due time, bytes not yet written]
        self.pending = 0
        self.last_rx = now
        self.last_due = now
        self.sessions: set[int] = set()
        self.dropped_bytes = 0

    def queue(self, data: bytes, due: float) -> bool:
        """Queue bytes for sending at `due` (never before what is queued already); False when the host has left more
        than MAX_PENDING_OUT unread, and the bytes were dropped."""
        if not data:
            return True
        if self.pending + len(data) > MAX_PENDING_OUT:
            self.dropped_bytes += len(data)
            return False
        self.last_due = max(due, self.last_due)
        self.out.append([self.last_due, data])
        self.pending += len(data)
        return True

    def next_due(self) -> float | None:
        return self.out[0][0] if self.out else None

    def flush(self, now: float, send) -> None:
        """Write what is due; `send(view)` returns the bytes written (0 when the stream would block)."""
        while self.out and self.out[0][0] <= now:
            item = self.out[0]
            n = send(memoryview(item[1]))
            if n <= 0:
                return
            self.pending -= n
            if n < len(item[1]):
                item[1] = item[1][n:]
                return
            self.out.popleft()


def feed_channel(firmware: BoardFirmware, faults: Faults, channel: _Channel, data: bytes, now: float) -> bool:
    """The board's side of one read: decode frames, answer each request (a NAK at once for a damaged frame), queue
    the answers. False when the host let too many answers pile up unread."""
    channel.last_rx = now
    rejected = channel.decoder.rejected
    payloads = channel.decoder.feed(faults.apply(data))
    ok = True
    if channel.decoder.rejected != rejected:  # a damaged frame: ask for a resend now rather than after a timeout
        ok &= channel.queue(faults.apply(p.encode_frame(p.nak(*firmware.last_received))), now)
    for payload in payloads:
        response = firmware.handle(payload, now)
        if response is None:
            continue
        if len(payload) >= p.HEADER.size and payload[0] == p.PROTOCOL_VERSION:
            channel.sessions.add(p.HEADER.unpack_from(payload)[1])
        ok &= channel.queue(faults.apply(p.encode_frame(response)), now + faults.response_delay_s())
    return ok


class BoardEmulator:
    """The board on a pseudo-terminal (`url` is its /dev/pts path) or a TCP socket (`socket://host:port`).

    One thread serves every stream without ever blocking on one: reads and writes are non-blocking, held-back answers
    wait in a queue with their due time, a host that does not read its answers loses them (pty) or its connection
    (TCP) once MAX_PENDING_OUT bytes pile up, and a TCP connection idle for `idle_timeout_s` is closed. Over TCP up to
    MAX_CONNECTIONS hosts may connect; the firmware's session lease decides which one the board serves."""

    def __init__(self, firmware: BoardFirmware, faults: Faults | None = None, transport: str = "pty",
                 host: str = "127.0.0.1", port: int = 0, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S):
        self.firmware, self.faults = firmware, faults or Faults()
        self.idle_timeout_s = float(idle_timeout_s)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.transport = transport
        self.closed_idle = 0
        self.closed_unread = 0
        self.refused = 0
        if transport == "pty":
            import tty

            self.master, self.slave = os.openpty()
            tty.setraw(self.slave)
            os.set_blocking(self.master, False)
            self.url = os.ttyname(self.slave)
        elif transport == "tcp":
            self.server = socket.create_server((host, port))
            self.server.setblocking(False)
            self.url = f"socket://{host}:{self.server.getsockname()[1]}"
        else:
            raise ValueError(f"transport must be pty or tcp, got {transport}")

    def run(self) -> None:
        """Serve until stop() (pty: across host sessions; tcp: many connections, one holding the board)."""
        try:
            self._run_pty() if self.transport == "pty" else self._run_tcp()
        except (OSError, ValueError):
            if not self.stop_event.is_set():
                raise  # a real failure; after stop() the closed descriptors end the loop

    def _wait(self, channels) -> float:
        """Seconds until the next answer is due (at most 0.05: the stop flag is checked that often)."""
        dues = [d for d in (c.next_due() for c in channels) if d is not None]
        if not dues:
            return 0.05
        return min(0.05, max(0.0, min(dues) - time.monotonic()))

    def _run_pty(self) -> None:
        fd = self.master
        channel = _Channel(time.monotonic())

        def send(view):
            try:
                return os.write(fd, view)
            except BlockingIOError:
                return 0
            except OSError:  # no host: the bytes are lost, as on a cable nobody listens to
                channel.out.clear()
                channel.pending = 0
                return 0

        while not self.stop_event.is_set():
            want_write = [fd] if channel.out and channel.next_due() <= time.monotonic() else []
            readable, writable, _ = select.select([fd], want_write, [], self._wait([channel]))
            now = time.monotonic()
            if readable:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    if self.stop_event.is_set():
                        return
                    data = None  # EIO while no host has the port open: keep waiting
                    time.sleep(0.01)
                if data:
                    feed_channel(self.firmware, self.faults, channel, data, now)
            channel.flush(time.monotonic(), send)

    def _run_tcp(self) -> None:
        conns: dict[socket.socket, _Channel] = {}

        def drop(conn):
            channel = conns.pop(conn)
            for session in channel.sessions:
                self.firmware.release(session)
            try:
                conn.close()
            except OSError:
                pass

        while not self.stop_event.is_set():
            now = time.monotonic()
            writers = [c for c, ch in conns.items() if ch.out and ch.next_due() <= now]
            readable, writable, _ = select.select([self.server, *conns], writers, [],
                                                  self._wait(conns.values()))
            now = time.monotonic()
            for sock in readable:
                if sock is self.server:
                    try:
                        conn, _ = self.server.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    if len(conns) >= MAX_CONNECTIONS:
                        self.refused += 1
                        conn.close()
                        continue
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames: no Nagle delay
                    conns[conn] = _Channel(now)
                    continue
                if sock not in conns:
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(sock)
                elif not feed_channel(self.firmware, self.faults, conns[sock], data, now):
                    self.closed_unread += 1
                    drop(sock)  # the host does not read its answers: it cannot hold the board
            for conn, channel in list(conns.items()):
                def send(view, conn=conn):
                    try:
                        return conn.send(view)
                    except (BlockingIOError, InterruptedError):
                        return 0
                    except OSError:
                        return -1

                channel.flush(time.monotonic(), send)
                if now - channel.last_rx > self.idle_timeout_s and not channel.out:
                    self.closed_idle += 1
                    drop(conn)
        for conn in list(conns):
            drop(conn)

    def start(self) -> "BoardEmulator":
        self.thread = threading.Thread(target=self.run, name="board-emulator", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port at once, even while a response is being held back: to a connected host
        this is the cable being pulled."""
        self.stop_event.set()
        if self.transport == "pty":
            for fd in (self.master, self.slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
        else:
            self.server.close()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
