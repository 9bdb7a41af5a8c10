"""The test board's firmware, emulated: serves the link protocol (docs/protocol.md) from the same numba controller and
crossbar as the in-process emulator, over a pseudo-terminal or a TCP socket, with optional fault injection (a bad
cable: dropped, corrupted and delayed bytes).

`BoardFirmware.handle(payload)` is the whole command interpreter (bytes in, bytes out, no I/O), so it can be fuzzed
and tested without a port; `serve()` runs it over any byte stream; `BoardEmulator` opens a pty or a socket and runs
`serve()` in a thread (or in the foreground for `edgelearn board-emulator`).

One physical array of rows x cols devices of one device type. Each card given is one supported pulse width (its d2d
draw uses the same seed, so a device keeps its identity across widths); all widths share the device states, the
counters and the random generator.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgelearn.board import PeripheryConfig, Tile
from edgelearn.devices import DeviceCard, DeviceVariation
from edgelearn.hil import protocol as p

from . import controller as ctl

FIRMWARE = "edgelearn-board-emulator 1.0"
READ_BITS = 16
READ_SPAN_W = 4.0  # read codes cover w in [-2, 2] of the first card's normalisation


class CommandError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BoardFirmware:
    """The command interpreter of the emulated board.

    `ideal=True` removes device-to-device variation and cycle-to-cycle noise (and the MVM output noise): every device
    is the card's nominal device and a pulse schedule has exactly one outcome, which `hil compare` uses."""

    def __init__(self, cards: list[DeviceCard], rows: int = 8, cols: int = 8, seed: int = 0, ideal: bool = False,
                 periphery: PeripheryConfig | None = None):
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
        first = None
        for card in cards:
            width_ns = int(round(card.pulse_width_s * 1e9))
            if width_ns in self.tiles:
                raise ValueError(f"two cards for the pulse width {width_ns} ns")
            tile = Tile(card, rows, cols, seed=seed, variation=DeviceVariation.none() if ideal else None,
                        c2c_std=0.0 if ideal else None, periphery=self.periphery)
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
        self.last: tuple[int, bytes, bytes] | None = None  # (seq, request payload, response payload)
        self.executed = 0
        self.duplicates = 0

    # -- the interpreter -------------------------------------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | None:
        """One request payload (CRC already checked) -> the response payload, or None for a frame that is not a
        request. A repeated request (same sequence number and bytes as the last one) is answered from the cache and
        not executed again."""
        try:
            msg = p.parse_message(payload)
        except p.ProtocolError:
            return None
        if msg.is_response:
            return None
        if self.last is not None and self.last[0] == msg.seq and self.last[1] == payload:
            self.duplicates += 1
            return self.last[2]
        if msg.version != p.PROTOCOL_VERSION:
            status, body = p.E_VERSION, p.text(f"board speaks protocol {p.PROTOCOL_VERSION}, got {msg.version}")
        else:
            try:
                status, body = p.OK, self._execute(msg.command, msg.body)
                self.executed += 1
            except CommandError as exc:
                status, body = exc.status, p.text(str(exc))
            except p.ProtocolError as exc:
                status, body = p.E_BAD_LENGTH, p.text(str(exc))
            except Exception as exc:  # noqa: BLE001 - firmware must answer, never die: report and go on
                status, body = p.E_INTERNAL, p.text(f"{type(exc).__name__}: {exc}")
        response = p.Message(p.PROTOCOL_VERSION, msg.seq, (msg.command | p.RESPONSE) & 0xFF, status, body).pack()
        self.last = (msg.seq, bytes(payload), response)
        return response

    def _execute(self, command: int, body: bytes) -> bytes:
        handler = {p.IDENTIFY: self._identify, p.CONFIGURE_PULSE: self._configure, p.APPLY_PULSES: self._apply,
                   p.READ: self._read, p.FORWARD: self._forward, p.BACKWARD: self._backward,
                   p.UPDATE: self._update, p.READ_COUNTERS: self._read_counters,
                   p.RESET_COUNTERS: self._reset_counters}.get(command)
        if handler is None:
            raise CommandError(p.E_UNKNOWN_COMMAND, f"unknown command 0x{command:02x}")
        return handler(p.Reader(body, p.COMMAND_NAMES[command]))

    @staticmethod
    def _amplitude_range_mv(card: DeviceCard) -> tuple[int, int]:
        vr = card.provenance.voltage_range
        if vr is None:
            return 100, 10000
        low = min(vr.get("pos_start_v", 0.1), abs(vr.get("neg_start_v", -0.1)))
        high = max(vr.get("pos_end_v", 10.0), abs(vr.get("neg_end_v", -10.0)))
        return int(round(low * 1000)), int(round(high * 1000))

    def _identify(self, r: p.Reader) -> bytes:
        r.done()
        pc = self.periphery
        out = struct.pack("<BHHBBBBIB", p.PROTOCOL_VERSION, self.rows, self.cols, pc.dac_bits, pc.adc_bits, READ_BITS,
                          ctl.N_COUNTERS, p.MAX_PAYLOAD, len(self.cards))
        for width_ns, card in self.cards.items():
            low, high = self._amplitude_range_mv(card)
            out += struct.pack("<Ihh", width_ns, low, high)
        out += struct.pack("<dd", self.read_offset_s, self.read_scale_s)
        out += p.text(FIRMWARE + (" (ideal devices)" if self.ideal else "")) + p.text(self.device_id)
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
        return int(ctl.apply_counts(tile.state[rs, cs], tile.params[rs, cs], tile.table_up, tile.table_down,
                                    tile.c2c_std, counts, tile.rng, tile.normal_table,
                                    tile.device_pulses[:, rs, cs, :], tile.counters))

    def _apply(self, r: p.Reader) -> bytes:
        kind, row, col, polarity, count = r.take("BHHbH")
        r.done()
        if polarity not in (p.UP, p.DOWN):
            raise CommandError(p.E_BAD_ARGUMENT, f"polarity {polarity}: expected +1 (up) or -1 (down)")
        rs, cs = self._selection(kind, row, col)
        tile = self._pulse_tile()
        counts = np.full((rs.stop - rs.start, cs.stop - cs.start), polarity * count, np.int32)
        return struct.pack("<I", self._pulse(tile, rs, cs, counts))

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


# ---------------------------------------------------------------------------------------------------- the cable

@dataclass
class Faults:
    """A bad cable: each byte, in either direction, is dropped with probability `drop` or has one random bit flipped
    with probability `corrupt`; each response is held back `delay_ms` before it is sent."""

    drop: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    seed: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.dropped = 0
        self.corrupted = 0

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


def serve(read, write, firmware: BoardFirmware, faults: Faults | None = None, stop: threading.Event | None = None):
    """Serve the protocol over a byte stream: `read()` returns the bytes available (b"" at end of stream, None when
    nothing arrived yet), `write(data)` sends. Returns when the stream ends or `stop` is set."""
    faults = faults or Faults()
    decoder = p.FrameDecoder()
    while stop is None or not stop.is_set():
        data = read()
        if data is None:
            continue
        if data == b"":
            return
        rejected = decoder.rejected
        payloads = decoder.feed(faults.apply(data))
        if decoder.rejected != rejected:  # a damaged frame: ask for a resend now rather than after the host's timeout
            write(faults.apply(p.encode_frame(p.NAK)))
        for payload in payloads:
            response = firmware.handle(payload)
            if response is None:
                continue
            if faults.delay_ms > 0:
                time.sleep(faults.delay_ms / 1000.0)
            write(faults.apply(p.encode_frame(response)))


class BoardEmulator:
    """The board on a pseudo-terminal (`url` is its /dev/pts path) or a TCP socket (`socket://host:port`)."""

    def __init__(self, firmware: BoardFirmware, faults: Faults | None = None, transport: str = "pty",
                 host: str = "127.0.0.1", port: int = 0):
        self.firmware, self.faults = firmware, faults or Faults()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.transport = transport
        if transport == "pty":
            import tty

            self.master, self.slave = os.openpty()
            tty.setraw(self.slave)
            self.url = os.ttyname(self.slave)
        elif transport == "tcp":
            self.server = socket.create_server((host, port))
            self.url = f"socket://{host}:{self.server.getsockname()[1]}"
        else:
            raise ValueError(f"transport must be pty or tcp, got {transport}")

    def _read_fd(self):
        try:
            ready, _, _ = select.select([self.master], [], [], 0.05)
        except (OSError, ValueError):
            return b""  # the port was closed under us: stop serving
        if not ready:
            return None
        try:
            return os.read(self.master, 65536)
        except OSError:
            if self.stop_event.is_set():
                return b""
            return None  # EIO while no host has the port open: keep waiting

    def _write_fd(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except OSError:
                return  # host gone: the response is lost, as on a real cable
            view = view[n:]

    def run(self) -> None:
        """Serve until stop() (pty: across host sessions; tcp: one connection after another)."""
        if self.transport == "pty":
            serve(self._read_fd, self._write_fd, self.firmware, self.faults, self.stop_event)
            return
        self.server.settimeout(0.1)
        while not self.stop_event.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames: no Nagle delay

            def read(conn=conn):
                try:
                    return conn.recv(65536)
                except (TimeoutError, socket.timeout):
                    return None
                except OSError:
                    return b""

            def write(data, conn=conn):
                try:
                    conn.sendall(data)
                except OSError:
                    pass

            serve(read, write, self.firmware, self.faults, self.stop_event)
            conn.close()

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
