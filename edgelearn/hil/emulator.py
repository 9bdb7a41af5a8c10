"""The test board, emulated: the board firmware (`firmware_model.board`: the protocol interpreter and its crossbar
HAL) over an array built from device cards, served over a pseudo-terminal or a TCP socket, with optional fault
injection (a bad cable: dropped, corrupted and delayed bytes).

`BoardFirmware.handle(payload)` is the whole command interpreter (bytes in, bytes out, no I/O), so it can be fuzzed
and tested without a port; `BoardEmulator` serves it over a pty or a socket in one non-blocking thread (or in the
foreground for `edgelearn board-emulator`). The firmware, its kernels (`firmware_model.controller`) and the protocol
codec (`firmware_model.protocol`) are the device's and import nothing from here; this module only builds the
emulated array from cards (through the host's `Tile`, which draws each device's parameters) and owns the transport.

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
from collections import deque
from dataclasses import dataclass

from firmware_model import board as fw
from firmware_model import protocol as p

from ..board import PeripheryConfig, PulseConfig, Tile
from ..devices import DeviceCard, DeviceVariation

FIRMWARE = "edgelearn-board-emulator 1.0"


FIRMWARES = ("python", "c")


class BoardFirmware:
    """The board firmware over an emulated array built from device cards, one card per supported pulse width: the
    Python interpreter (`firmware_model.board.BoardFirmware`, firmware "python") or the C firmware's
    (`firmware_model.cboard.CBoardFirmware`, firmware "c"; built for the host on first use), both over the same
    arrays. `firmware` None: $EDGELEARN_BOARD_FIRMWARE, else "python". Everything else the interpreter offers
    (`main`, `executed`, `configured`, `amplitude_range_mv`, ...) is reached through this object.

    `ideal=True` removes device-to-device variation and cycle-to-cycle noise (and the MVM output noise): every device
    is the card's nominal device and a pulse schedule has exactly one outcome, which `hil compare` uses.

    `amplitude_aware=True` makes the configured amplitude matter: the devices follow each card's amplitude response
    (steps = tables at the reference amplitude x A(|V|) / A(reference), edgelearn.amplitude), and the board offers the
    amplitudes both directions were measured at. Without it (the default) every amplitude gives the card's
    amplitude-blind steps, as before."""

    def __init__(self, cards: list[DeviceCard], rows: int = 8, cols: int = 8, seed: int = 0, ideal: bool = False,
                 periphery: PeripheryConfig | None = None, lease_s: float = fw.DEFAULT_LEASE_S,
                 max_pulses: int = fw.MAX_PULSES_PER_COMMAND, amplitude_aware: bool = False,
                 firmware: str | None = None):
        firmware = firmware or os.environ.get("EDGELEARN_BOARD_FIRMWARE") or "python"
        if firmware not in FIRMWARES:
            raise ValueError(f"firmware: expected one of {', '.join(FIRMWARES)}, got '{firmware}'")
        if not cards:
            raise ValueError("the board needs at least one device card")
        if not (1 <= rows <= 1024 and 1 <= cols <= 1024):
            raise ValueError(f"array size must be 1..1024 x 1..1024, got {rows} x {cols}")
        self.implementation = firmware
        self.ideal = ideal
        self.amplitude_aware = bool(amplitude_aware)
        periphery = periphery or PeripheryConfig()
        if ideal:
            periphery = periphery.model_copy(update={"out_noise": 0.0})
        # the DAC codes arrive from the host (which did the noise management); the board does bound management
        self.periphery = periphery.model_copy(update={"noise_management": "none"})
        widths, first = [], None
        for card in cards:
            width_ns = int(round(card.pulse_width_s * 1e9))
            if any(w.width_ns == width_ns for w in widths):
                raise ValueError(f"two cards for the pulse width {width_ns} ns")
            pulses, response = None, None
            if self.amplitude_aware:
                a = card.amplitude
                if a is None:
                    raise ValueError(f"card {card.card_id} has no amplitude response: the amplitude-aware board "
                                     "needs cards fitted from amplitude staircases (edgelearn device fit)")
                pulses = PulseConfig(amplitude_up_v=a.reference_up_v, amplitude_down_v=a.reference_down_v)
                response = (a.v0_up_v, a.vs_up_v, a.reference_up_v, a.v0_down_v, a.vs_down_v, a.reference_down_v)
            # the host's Tile draws each device's parameters (same seed for every width: a device keeps its identity)
            tile = Tile(card, rows, cols, seed=seed, variation=DeviceVariation.none() if ideal else None,
                        c2c_std=0.0 if ideal else None, periphery=self.periphery, pulses=pulses)
            first = first or tile
            widths.append(fw.PulseWidth(width_ns, tile.table_up, tile.table_down, tile.params, tile.c2c_std,
                                        self._amplitude_range_mv(card), response))
        self.cards = {int(round(c.pulse_width_s * 1e9)): c for c in cards}
        array = fw.EmulatedCrossbar(first.state, widths, self.periphery.kernel_args(), first.rng, first.normal_table)
        card0 = cards[0]
        g_range = card0.g_max_s - card0.g_min_s
        if firmware == "c":
            from firmware_model.cboard import CBoardFirmware as interpreter
        else:
            interpreter = fw.BoardFirmware
        self.impl = interpreter(
            array, FIRMWARE + (" (C firmware)" if firmware == "c" else "") + (" (ideal devices)" if ideal else "")
            + (" (amplitude-aware)" if self.amplitude_aware else ""), card0.device_id, read_offset_s=card0.g_ref_s,
            read_scale_s=fw.READ_SPAN_W / (2**fw.READ_BITS - 1) * g_range / 2.0,  # siemens per code
            dac_bits=self.periphery.dac_bits, adc_bits=self.periphery.adc_bits, inp_bound=self.periphery.inp_bound,
            lease_s=lease_s, max_pulses=max_pulses)

    def handle(self, payload: bytes, now: float | None = None) -> bytes | None:
        """One request payload -> the response payload (or None): the interpreter's handle."""
        return self.impl.handle(payload, now)

    def release(self, session: int) -> None:
        self.impl.release(session)

    def __getattr__(self, name: str):
        impl = self.__dict__.get("impl")
        if impl is None:
            raise AttributeError(name)
        return getattr(impl, name)

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


def warm_up(card: DeviceCard, amplitude_aware: bool = False, firmware: str | None = None) -> None:
    """Run every kernel once on a scratch 2 x 2 board, so numba compiles (or loads from its cache) before the board
    answers its first host (and the C firmware is built): a real board is ready when it enumerates, not seconds into
    its first command."""
    board = BoardFirmware([card], 2, 2, amplitude_aware=amplitude_aware, firmware=firmware)
    width_ns = int(round(card.pulse_width_s * 1e9))
    low, high = board.amplitude_range_mv(width_ns)
    region = p.REGION.pack(0, 2, 0, 2)
    for k, (command, body) in enumerate([
            (p.CONFIGURE_PULSE, struct.pack("<Ih", width_ns, high)),
            (p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 1)),
            (p.UPDATE, region + bytes([1, 255, 0, 1])),
            (p.FORWARD, region + struct.pack("<2h", 10, -10)),
            (p.BACKWARD, region + struct.pack("<2h", 10, -10)),
            (p.READ, struct.pack("<BHH", p.SEL_ALL, 0, 0))]):
        board.handle(p.Message(p.PROTOCOL_VERSION, k + 1, command, 0, body).pack())


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
