"""The host side of the board link: `SerialLink` (framing, sequence numbers, timeouts, retries) and `SerialBoard`, the
Board API over it, so training and characterisation code runs unchanged against a test board or its emulator.

A command is sent with a fresh sequence number and retried with the *same* number when no valid answer arrives in
time (or a corrupted frame arrives); the board answers a repeated request from its cache without executing it again,
so a retried command is never applied twice. Anything that is not a valid frame is skipped and the decoder
resynchronises on the next delimiter.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from firmware_model import protocol as p

from ..board import CounterReport, PeripheryConfig, PulseConfig, epsilon_codes
from ..devices import DeviceCard, load_card
from ..errors import EdgelearnError


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (the controller's rounding), as floats."""
    return np.where(values >= 0, np.floor(values + 0.5), -np.floor(-values + 0.5))


class HilError(EdgelearnError):
    """The link or the board failed: names the port, the command and what happened."""


class BoardReportedError(HilError):
    """The board understood the command and refused it (status != OK)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class LinkStats:
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    rejected_frames: int = 0
    stale_frames: int = 0
    naks: int = 0
    write_timeouts: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


def open_port(url: str, timeout: float, baudrate: int = 115200, exclusive: bool = True):
    """Open a pyserial URL with one-line errors for the usual failures. `exclusive` locks a serial device or pty
    (flock) so that a second host on the same port is refused instead of interleaving its commands with ours."""
    import serial

    try:
        port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=max(1.0, timeout),
                                     exclusive=exclusive if not url.startswith(("socket://", "loop://", "spy://",
                                                                                "rfc2217://")) else None)
    except serial.SerialException as exc:
        code = exc.errno if exc.errno is not None else getattr(exc.__context__, "errno", None)
        text = str(exc)
        if code == errno.ENOENT or "No such file" in text:
            raise HilError(f"{url}: port not found (is the board plugged in? is the path right?)") from None
        if code == errno.EACCES or "Permission denied" in text:
            raise HilError(f"{url}: permission denied (add yourself to the group owning the port, e.g. "
                           "dialout, or fix its udev rule)") from None
        if code in (errno.EBUSY, errno.EAGAIN) or "busy" in text.lower() or "exclusively lock" in text:
            raise HilError(f"{url}: port busy (another program has it open; two hosts on one board would "
                           "interleave their commands)") from None
        raise HilError(f"{url}: cannot open port ({text})") from None
    except ValueError as exc:
        raise HilError(f"{url}: not a usable port URL ({exc})") from None
    try:
        port.reset_input_buffer()  # answers left unread by an earlier session are no answers to us
    except Exception:  # noqa: BLE001 - not every URL handler supports it
        pass
    return port


class _RttEstimator:
    """Retransmission timeout of one command kind (RFC 6298: SRTT + 4 RTTVAR; Karn's rule: only first attempts are
    sampled; a timeout doubles the timeout until the command is answered)."""

    def __init__(self, initial: float):
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial

    def sample(self, rtt: float, lo: float, hi: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2.0
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(hi, max(lo, self.srtt + 4.0 * self.rttvar))

    def back_off(self, hi: float) -> None:
        self.rto = min(hi, 2.0 * self.rto)

    def answered(self, lo: float, hi: float) -> None:
        """An answer arrived after resends: no sample (it is ambiguous which copy was answered), but the board is
        alive, so the backed-off timeout returns to the estimate (as Linux TCP does), instead of staying long and
        slowing every later command."""
        if self.srtt is not None:
            self.rto = min(hi, max(lo, self.srtt + 4.0 * self.rttvar))


class SerialLink:
    """Request/response over a pyserial port (any URL: /dev/ttyACM0, /dev/pts/N, socket://host:port, loop://,
    spy://...).

    `timeout` is the time budget of one command, every resend included (default 30 s: long enough for a board that
    is slow to come up or a cable with bursts of noise). Within it a request is resent with the same sequence number
    after an adaptive per-command timeout (measured round-trip time + 4 deviations, at least `min_rto`, doubling
    after each silent attempt up to `max_rto`), at once after a NAK saying the board did not get it or after a
    damaged frame arrives; `retries`, if given, also caps the resends. The board executes a request once whatever
    the number of copies it receives. A session id (random, per link) tells the board which host is talking; `close`
    sends CLOSE so the board is free for another host at once."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int | None = None, baudrate: int = 115200,
                 port=None, *, initial_rto: float = 1.0, min_rto: float = 0.03, max_rto: float = 2.0,
                 exclusive: bool = True):
        if not (timeout > 0 and np.isfinite(timeout)) or (retries is not None and retries < 0):
            raise EdgelearnError(f"--timeout must be a positive number of seconds and --retries >= 0, got {timeout} "
                                 f"and {retries}")
        if not 0 < min_rto <= initial_rto and min_rto <= max_rto:
            raise EdgelearnError(f"need 0 < min_rto <= initial_rto and min_rto <= max_rto, got {min_rto}, "
                                 f"{initial_rto}, {max_rto}")
        self.url, self.timeout, self.retries = url, float(timeout), retries
        self.initial_rto, self.min_rto, self.max_rto = float(initial_rto), float(min_rto), float(max_rto)
        self.port = port if port is not None else open_port(url, min(timeout, 1.0), baudrate, exclusive)
        self.decoder = p.FrameDecoder()
        # a random start: a new session's first request is unlikely (1 in 65536) to repeat the board's cached one
        self.session = int.from_bytes(os.urandom(2), "little")
        self.seq = int.from_bytes(os.urandom(2), "little")
        self.stats = LinkStats()
        self.rtt: dict[int, _RttEstimator] = {}
        self.closed = False

    def close(self) -> None:
        """Release the board (CLOSE, one short try: a dead link must not delay the error that got us here) and the
        port."""
        if self.closed:
            return
        self.closed = True
        try:
            saved = self.timeout, self.retries
            self.timeout, self.retries = min(self.timeout, 0.5), 2
            self.request(p.CLOSE)
        except Exception:  # noqa: BLE001 - best effort: the board's lease frees it anyway
            pass
        finally:
            self.timeout, self.retries = saved
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - closing a dead port must not mask the error that got us here
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _lost(self, name: str, exc: Exception) -> HilError:
        return HilError(f"{self.url}: connection lost during {name} ({exc})")

    def request(self, command: int, body: bytes = b"") -> bytes:
        """Send one command and return the body of its OK response; HilError / BoardReportedError otherwise."""
        import serial

        name = p.COMMAND_NAMES.get(command, f"0x{command:02x}")
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        frame = p.encode_frame(p.Message(p.PROTOCOL_VERSION, seq, command, 0, body, self.session).pack())
        self.stats.requests += 1
        rtt = self.rtt.setdefault(command, _RttEstimator(self.initial_rto))
        deadline = time.monotonic() + self.timeout
        attempts = 0
        self._in_flight = 0  # copies sent whose reply (answer, NAK or damaged frame) has not arrived
        while True:
            now = time.monotonic()
            if now >= deadline or (self.retries is not None and attempts > self.retries):
                break
            attempts += 1
            self.stats.attempts += 1
            if attempts > 1:
                self.stats.retries += 1
            sent = time.monotonic()
            try:
                self.port.write(frame)
                self.stats.bytes_out += len(frame)
                self._in_flight += 1
            except serial.SerialTimeoutException:
                self.stats.write_timeouts += 1  # the line is stalled: try again while the budget lasts
                rtt.back_off(self.max_rto)
                continue
            except (serial.SerialException, OSError) as exc:
                raise self._lost(name, exc) from None
            try:
                outcome, answer = self._await(seq, command, min(deadline, sent + rtt.rto))
            except (serial.SerialException, OSError) as exc:
                raise self._lost(name, exc) from None
            if outcome == "timeout":
                self.stats.timeouts += 1
                rtt.back_off(self.max_rto)
                continue
            if outcome == "resend":
                continue
            if attempts == 1:
                rtt.sample(time.monotonic() - sent, self.min_rto, self.max_rto)
            else:
                rtt.answered(self.min_rto, self.max_rto)
            return self._checked(answer, name)
        raise HilError(f"{self.url}: board not answering ({name}: no valid response in {self.timeout:g} s, "
                       f"{attempts} attempts; the board may or may not have executed it)")

    def _checked(self, answer: p.Message, name: str) -> bytes:
        if answer.status == p.OK:
            return answer.body
        reason = p.STATUS_NAMES.get(answer.status, f"status {answer.status}")
        try:
            detail = p.Reader(answer.body, name).text()
        except p.ProtocolError:
            detail = ""
        if answer.status == p.E_BUSY:
            raise BoardReportedError(f"{self.url}: board busy: {detail}", answer.status)
        raise BoardReportedError(f"{self.url}: board rejected {name}: {reason}: {detail}", answer.status)

    def _await(self, seq: int, command: int, until: float) -> tuple[str, p.Message | None]:
        """("answer", message) for the response to (seq, command); ("resend", None) when a NAK says the board did not
        get our request or a damaged frame arrived (perhaps our answer: a resend is cheaper than waiting);
        ("timeout", None) when nothing useful arrived before `until`."""
        rejected = self.decoder.rejected
        while True:
            if time.monotonic() >= until:
                return "timeout", None
            if self.port.timeout != 0.01:
                self.port.timeout = 0.01  # poll: a pyserial timeout change reconfigures the port, so set it once
            data = self.port.read(1)
            if not data:
                continue
            waiting = self.port.in_waiting
            if waiting:
                data += self.port.read(waiting)
            self.stats.bytes_in += len(data)
            for payload in self.decoder.feed(data):
                if payload[0] != p.PROTOCOL_VERSION:
                    raise HilError(f"{self.url}: protocol version mismatch: host speaks {p.PROTOCOL_VERSION}, board "
                                   f"answered in {payload[0]}" + self._foreign_detail(payload))
                try:
                    msg = p.parse_message(payload)
                except p.ProtocolError:
                    self.stats.rejected_frames += 1
                    continue
                if msg.seq == seq and msg.session == self.session and msg.command == (command | p.RESPONSE):
                    return "answer", msg
                if msg.command == p.RESPONSE and msg.status == p.E_BAD_FRAME:
                    self.stats.naks += 1
                    self._in_flight = max(0, self._in_flight - 1)
                    try:
                        last = p.NAK_BODY.unpack(msg.body)
                    except struct.error:
                        last = None
                    if last != (self.session, seq) or self._in_flight == 0:
                        return "resend", None  # the board has not got it, or its answer is spent: resend now
                    continue  # it has, and answers another copy we sent: that answer is on its way
                self.stats.stale_frames += 1  # an answer to an earlier attempt, or not an answer: skip it
            if self.decoder.rejected != rejected:
                self.stats.rejected_frames += self.decoder.rejected - rejected
                self._in_flight = max(0, self._in_flight - (self.decoder.rejected - rejected))
                return "resend", None

    @staticmethod
    def _foreign_detail(payload: bytes) -> str:
        """The text of an E_VERSION answer in the version-1 layout, if that is what arrived."""
        if len(payload) > p.V1_HEADER.size and payload[p.V1_HEADER.size - 1] == p.E_VERSION:
            try:
                return f" ({p.Reader(payload[p.V1_HEADER.size:], 'version').text()})"
            except p.ProtocolError:
                pass
        return ""


class _Answer(p.Reader):
    """A board's answer body: a malformed one is a HilError naming the port and the command, not a traceback."""

    def __init__(self, body: bytes, what: str, url: str):
        super().__init__(body, what)
        self.url = url

    def _wrap(self, method, *args):
        try:
            return method(*args)
        except p.ProtocolError as exc:
            raise HilError(f"{self.url}: malformed {self.what} answer ({exc})") from None

    def take(self, fmt: str):
        return self._wrap(super().take, fmt)

    def array(self, dtype: str, count: int):
        return self._wrap(super().array, dtype, count)

    def text(self) -> str:
        return self._wrap(super().text)

    def done(self) -> None:
        return self._wrap(super().done)


@dataclass
class BoardInfo:
    """What IDENTIFY reports."""

    url: str
    protocol: int
    firmware: str
    device_id: str
    rows: int
    cols: int
    dac_bits: int
    adc_bits: int
    read_bits: int
    n_counters: int
    max_payload: int
    max_pulses: int
    lease_s: float
    pulse_widths_ns: list[int]
    amplitude_ranges_mv: list[tuple[int, int]]
    read_offset_s: float
    read_scale_s: float

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self), indent=2)


def identify(link: SerialLink) -> BoardInfo:
    body = link.request(p.IDENTIFY)
    if body[:1] and body[0] != p.PROTOCOL_VERSION:
        raise HilError(f"{link.url}: protocol version mismatch: host speaks {p.PROTOCOL_VERSION}, board {body[0]}")
    try:
        r = p.Reader(body, "identify")
        (protocol, rows, cols, dac_bits, adc_bits, read_bits, n_counters, max_payload, max_pulses, lease_ms,
         n_widths) = r.take("BHHBBBBIIIB")
        widths, ranges = [], []
        for _ in range(n_widths):
            width, low, high = r.take("Ihh")
            widths.append(width)
            ranges.append((low, high))
        offset, scale = r.take("dd")
        firmware, device_id = r.text(), r.text()
        r.done()
    except p.ProtocolError as exc:
        raise HilError(f"{link.url}: malformed identify answer ({exc})") from None
    problems = [what for what, bad in (
        ("array size", not (rows >= 1 and cols >= 1)), ("DAC bits", not 2 <= dac_bits <= 16),
        ("ADC bits", not 2 <= adc_bits <= 16), ("pulse widths", not widths or min(widths) < 1),
        ("amplitude ranges", any(not 0 < lo <= hi for lo, hi in ranges)),
        ("read scale", not (np.isfinite(offset) and np.isfinite(scale) and scale > 0)),
        ("max payload", max_payload < 64))if bad]
    if problems:
        raise HilError(f"{link.url}: malformed identify answer (implausible {', '.join(problems)})")
    return BoardInfo(link.url, protocol, firmware, device_id, rows, cols, dac_bits, adc_bits, read_bits, n_counters,
                     min(max_payload, p.MAX_PAYLOAD), max_pulses, lease_ms / 1000.0, widths, ranges, offset, scale)


def parse_width_ns(text: str | float) -> int:
    """'20ns', '2us', '2µs', '200e-9' (seconds) -> nanoseconds."""
    if isinstance(text, (int, float)):
        return int(round(float(text) * 1e9))
    t = text.strip().replace("µ", "u")
    for suffix, factor in (("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)):
        if t.endswith(suffix):
            try:
                return int(round(float(t[:-len(suffix)]) * factor))
            except ValueError:
                break
    try:
        return int(round(float(t) * 1e9))
    except ValueError:
        raise EdgelearnError(f"pulse width '{text}': expected e.g. 20ns, 2us, 200us or seconds") from None


@dataclass
class _SerialTile:
    row0: int
    rows: int
    cols: int
    card: DeviceCard
    pulse_config: PulseConfig
    periphery: PeripheryConfig
    chi: np.ndarray
    pulses: np.ndarray  # [rows, cols, 2] host-tracked pulses sent (up, down)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


class SerialBoard:
    """The Board API over the link. Tiles are horizontal bands of the board's one physical array (row offsets in
    order of `add_tile`); the host plays the controller's digital part (noise management and DAC codes, the
    mixed-precision accumulator, pulse counts), the board its analog part (MVM through its converters, pulses,
    reads). Event counters come from the board (whole array); per-device pulse counts are tracked by the host from
    the updates it sent. Not available over the link: reference devices (symmetry-point shifting) and checkpoints of
    device states (a physical array cannot be restored)."""

    def __init__(self, url: str | None = None, *, link: SerialLink | None = None, timeout: float = 30.0,
                 retries: int | None = None, seed: int = 0):
        if link is None:
            if url is None:
                raise EdgelearnError("SerialBoard needs a port URL or a link")
            link = SerialLink(url, timeout=timeout, retries=retries)
        self.link = link
        try:
            self.info = identify(link)
        except BaseException:
            link.close()  # release the port (and its lock) at once
            raise
        self.seed = seed
        self.tiles: list[_SerialTile] = []
        self.next_row = 0
        self.configured: tuple[int, int] | None = None

    def close(self) -> None:
        self.link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw commands ---------------------------------------------------------------------------------------------
    def _answer(self, body: bytes, what: str) -> "_Answer":
        return _Answer(body, what, self.link.url)

    def check_device(self, row: int, col: int) -> None:
        """EdgelearnError unless (row, col) is a device of the board's array."""
        if not (0 <= row < self.info.rows and 0 <= col < self.info.cols):
            raise EdgelearnError(f"{self.link.url}: device ({row}, {col}) outside the board's {self.info.rows} x "
                                 f"{self.info.cols} array (rows 0..{self.info.rows - 1}, columns 0..{self.info.cols - 1})")

    def amplitude_range_mv(self, width_ns: int) -> tuple[int, int]:
        if width_ns not in self.info.pulse_widths_ns:
            raise EdgelearnError(f"{self.link.url}: the board does not support {width_ns} ns pulses (it has "
                                 f"{', '.join(f'{w} ns' for w in self.info.pulse_widths_ns)})")
        return self.info.amplitude_ranges_mv[self.info.pulse_widths_ns.index(width_ns)]

    def configure_pulse(self, width_ns: int, amplitude_mv: int) -> None:
        low, high = self.amplitude_range_mv(int(width_ns))
        if not low <= abs(amplitude_mv) <= high:
            raise EdgelearnError(f"{self.link.url}: amplitude {abs(amplitude_mv) / 1000:g} V outside the board's "
                                 f"{low / 1000:g}..{high / 1000:g} V at {width_ns} ns")
        body = self.link.request(p.CONFIGURE_PULSE, struct.pack("<Ih", int(width_ns), int(amplitude_mv)))
        r = self._answer(body, "configure-pulse")
        echoed = r.take("Ih")
        r.done()
        if echoed != (int(width_ns), abs(int(amplitude_mv))):
            raise HilError(f"{self.link.url}: board configured {echoed[0]} ns at {echoed[1]} mV, asked for "
                           f"{width_ns} ns at {abs(amplitude_mv)} mV")
        self.configured = (int(width_ns), int(amplitude_mv))

    def _selected(self, selection: int, row: int, col: int) -> int:
        """Devices a selection covers, after checking it against the array."""
        if selection == p.SEL_DEVICE:
            self.check_device(row, col)
            return 1
        if selection == p.SEL_ROW:
            self.check_device(row, 0)
            return self.info.cols
        if selection == p.SEL_COLUMN:
            self.check_device(0, col)
            return self.info.rows
        if selection == p.SEL_ALL:
            return self.info.rows * self.info.cols
        raise EdgelearnError(f"selection {selection} unknown (0 device, 1 row, 2 column, 3 all)")

    def apply_pulses(self, row: int, col: int, polarity: int, count: int = 1, selection: int = p.SEL_DEVICE) -> int:
        """`count` pulses of `polarity` (+1 up, -1 down) on each selected device; any count is split into commands
        within the protocol's u16 and the board's per-command pulse limit. Returns the pulses applied."""
        if polarity not in (p.UP, p.DOWN):
            raise EdgelearnError(f"polarity {polarity}: expected +1 (up) or -1 (down)")
        if count < 0:
            raise EdgelearnError(f"pulse count must be >= 0, got {count}")
        devices = self._selected(selection, row, col)
        per_command = min(0xFFFF, max(1, self.info.max_pulses // devices))
        if devices > self.info.max_pulses:
            raise EdgelearnError(f"{devices} devices exceed the board's limit of {self.info.max_pulses} pulses per "
                                 "command: select fewer devices")
        total = 0
        while count > 0:
            n = min(count, per_command)
            body = self.link.request(p.APPLY_PULSES, struct.pack("<BHHbH", selection, row, col, polarity, n))
            r = self._answer(body, "apply-pulses")
            applied = r.take("I")
            r.done()
            if applied != n * devices:
                raise HilError(f"{self.link.url}: board applied {applied} pulses, expected {n} x {devices}")
            total += applied
            count -= n
        return total

    def read_codes(self, selection: int = p.SEL_ALL, row: int = 0, col: int = 0) -> tuple[np.ndarray, float, float]:
        """(int16 codes, offset S, scale S per code): conductance = offset + code * scale."""
        devices = self._selected(selection, row, col)
        r = self._answer(self.link.request(p.READ, struct.pack("<BHH", selection, row, col)), "read")
        offset, scale, n = r.take("ddH")
        codes = r.array("<i2", n)
        r.done()
        if n != devices or not (np.isfinite(offset) and np.isfinite(scale) and scale > 0):
            raise HilError(f"{self.link.url}: malformed read answer ({n} codes for {devices} devices, offset "
                           f"{offset:g} S, scale {scale:g} S)")
        return codes, offset, scale

    def read_conductance(self, row: int, col: int) -> float:
        codes, offset, scale = self.read_codes(p.SEL_DEVICE, row, col)
        return float(offset + int(codes[0]) * scale)

    def board_counters(self) -> dict[str, int]:
        from firmware_model.controller import COUNTER_NAMES

        r = self._answer(self.link.request(p.READ_COUNTERS), "read-counters")
        n = r.take("B")
        values = r.array("<i8", n)
        r.done()
        if n != len(COUNTER_NAMES):
            raise HilError(f"{self.link.url}: board reports {n} counters, expected {len(COUNTER_NAMES)} "
                           f"({', '.join(COUNTER_NAMES)})")
        return {name: int(v) for name, v in zip(COUNTER_NAMES, values)}

    def reset_counters(self) -> None:
        self._answer(self.link.request(p.RESET_COUNTERS), "reset-counters").done()
        for t in self.tiles:
            t.pulses[:] = 0

    # -- Board API ------------------------------------------------------------------------------------------------
    def add_tile(self, card: DeviceCard | str, rows: int, cols: int, *, seed: int | None = None,
                 references: bool = False, periphery: PeripheryConfig | None = None,
                 pulses: PulseConfig | None = None, variation=None, **options) -> int:
        if variation is not None:
            raise EdgelearnError("device variation is the board's own: it cannot be set over the serial link")
        if references:
            raise EdgelearnError("reference devices (symmetry-point shifting) are not available over the serial link")
        if options:
            raise EdgelearnError(f"tile options not available over the serial link: {', '.join(options)}")
        card = load_card(card) if isinstance(card, str) else card
        if cols > self.info.cols or self.next_row + rows > self.info.rows:
            raise EdgelearnError(f"the board's {self.info.rows} x {self.info.cols} array has no room for a {rows} x "
                                 f"{cols} tile ({self.next_row} rows already used)")
        width_ns = int(round(card.pulse_width_s * 1e9))
        if width_ns not in self.info.pulse_widths_ns:
            raise EdgelearnError(f"card {card.card_id} is for {width_ns} ns pulses; the board supports "
                                 f"{', '.join(f'{w} ns' for w in self.info.pulse_widths_ns)}")
        if self.configured is None or self.configured[0] != width_ns:
            low, high = self.info.amplitude_ranges_mv[self.info.pulse_widths_ns.index(width_ns)]
            self.configure_pulse(width_ns, high)
        periphery = (periphery or PeripheryConfig()).model_copy(update={"dac_bits": self.info.dac_bits,
                                                                         "adc_bits": self.info.adc_bits})
        tile_seed = self.seed * 1_000_003 + len(self.tiles) if seed is None else seed
        self.tiles.append(_SerialTile(self.next_row, rows, cols, card, pulses or PulseConfig(), periphery,
                                      np.zeros((rows, cols), np.int64), np.zeros((rows, cols, 2), np.int64),
                                      np.random.default_rng(tile_seed)))
        self.next_row += rows
        return len(self.tiles) - 1

    def tile(self, tile: int) -> _SerialTile:
        if not 0 <= tile < len(self.tiles):
            raise EdgelearnError(f"no tile {tile} on this board ({len(self.tiles)} tiles)")
        return self.tiles[tile]

    def _region(self, t: _SerialTile) -> bytes:
        return p.REGION.pack(t.row0, t.rows, 0, t.cols)

    def _mvm(self, tile: int, vec, transpose: bool) -> np.ndarray:
        t = self.tile(tile)
        vec = np.asarray(vec, np.float64).ravel()
        n_in = t.rows if transpose else t.cols
        if vec.shape[0] != n_in or not np.isfinite(vec).all():
            raise EdgelearnError(f"{'backward' if transpose else 'forward'} input must be {n_in} finite values")
        vmax = float(np.abs(vec).max(initial=0.0))
        n_out = t.cols if transpose else t.rows
        if vmax == 0.0:
            return np.zeros(n_out)
        dac_max = (1 << (self.info.dac_bits - 1)) - 1
        nm = vmax / t.periphery.inp_bound  # abs-max noise management, on the host
        q = vec * (dac_max / (nm * t.periphery.inp_bound))
        codes = np.clip(_round_half_away(q), -dac_max, dac_max)
        body = self._region(t) + codes.astype("<i2").tobytes()
        r = self._answer(self.link.request(p.BACKWARD if transpose else p.FORWARD, body), "mvm")
        scale, n = r.take("dH")
        out = r.array("<i2", n)
        r.done()
        if n != n_out or not (np.isfinite(scale) and scale > 0):
            raise HilError(f"{self.link.url}: malformed mvm answer ({n} outputs, expected {n_out}; scale {scale:g})")
        return out.astype(np.float64) * (scale * nm)

    def forward(self, tile, x):
        return self._mvm(tile, x, False)

    def backward(self, tile, d):
        return self._mvm(tile, d, True)

    def forward_batch(self, tile, xs):
        return np.array([self._mvm(tile, x, False) for x in np.atleast_2d(xs)])

    def backward_batch(self, tile, ds):
        return np.array([self._mvm(tile, d, True) for d in np.atleast_2d(ds)])

    def send_counts(self, tile: int, counts: np.ndarray) -> int:
        """Apply a signed pulse-count matrix to a tile (> 0 up, < 0 down), split into int8 UPDATE commands."""
        t = self.tile(tile)
        counts = np.asarray(counts, np.int64)
        if counts.shape != (t.rows, t.cols):
            raise EdgelearnError(f"pulse counts must have shape {(t.rows, t.cols)}, got {counts.shape}")
        t.pulses[..., 0] += np.maximum(counts, 0)
        t.pulses[..., 1] += np.maximum(-counts, 0)
        total = 0
        band = max(1, (self.info.max_payload - p.HEADER.size - p.REGION.size) // t.cols)  # rows per UPDATE frame
        for r0 in range(0, t.rows, band):
            remaining = counts[r0:r0 + band].copy()
            region = p.REGION.pack(t.row0 + r0, remaining.shape[0], 0, t.cols)
            while remaining.any():  # more than 127 pulses: several UPDATEs, each within int8
                step = np.clip(remaining, -127, 127)
                remaining -= step
                r = self._answer(self.link.request(p.UPDATE, region + step.astype(np.int8).tobytes()), "update")
                applied = r.take("I")
                r.done()
                if applied != int(np.abs(step).sum()):
                    raise HilError(f"{self.link.url}: board applied {applied} pulses, expected {np.abs(step).sum()}")
                total += applied
        return total

    def apply_counts(self, tile, counts):
        """The Board API's apply_counts: a signed pulse-count matrix (> 0 up, < 0 down), as send_counts."""
        counts = np.asarray(counts)
        if counts.dtype.kind not in "iu":
            raise EdgelearnError(f"pulse counts must be integers, got {counts.dtype}")
        return self.send_counts(tile, counts)

    def update_mp(self, tile, x, d, lr, epsilon=None, epsilon_down=None):
        return self.update_mp_batch(tile, np.atleast_2d(x), np.atleast_2d(d), lr, epsilon, epsilon_down)

    def update_mp_batch(self, tile, xs, ds, lr, epsilon=None, epsilon_down=None):
        """Mixed precision with the accumulator on the host (the same arithmetic as the controller's
        mp_update_dense: chi += round(-lr 2^F sum d x^T), saturating int32; n = trunc(chi / eps); chi -= n eps)."""
        t = self.tile(tile)
        if t.pulse_config.chi_width < 32:
            raise EdgelearnError(f"pulses.chi_bits {t.pulse_config.chi_bits}: the narrow accumulator runs in the "
                                 "controller (in-process board), not over the serial link; use chi_bits 32")
        frac = t.pulse_config.chi_frac_bits
        eu, ed = epsilon_codes(t.card.model.granularity, frac, epsilon, epsilon_down)
        grad = np.asarray(ds, float).T @ np.asarray(xs, float)
        v = np.clip(_round_half_away(-float(lr) * 2.0**frac * grad), -2.0**31, 2.0**31 - 1)
        c = np.clip(t.chi + v.astype(np.int64), -(2**31), 2**31 - 1)
        eps = np.where(c > 0, eu, ed)
        n = np.where((c >= eu) | (c <= -ed), np.trunc(c / eps).astype(np.int64), 0)
        if t.pulse_config.max_pulses_per_update > 0:
            cap = t.pulse_config.max_pulses_per_update
            n = np.clip(n, -cap, cap)
        t.chi = c - n * eps
        return self.send_counts(tile, n)

    def update_deterministic_batch(self, tile, xs, ds, lr):
        """Per mini-batch, round(lr |sum_b d_b x_b^T| / dw_min) pulses (at most bl_max) per device toward -lr sum d x^T,
        sent as one pulse-count matrix (the batch sum formed in the order of the firmware model's kernel)."""
        t = self.tile(tile)
        dw_min = t.pulse_config.dw_min or t.card.model.dw_min_aihwkit
        xs, ds = np.atleast_2d(xs), np.atleast_2d(ds)
        g = np.zeros((ds.shape[1], xs.shape[1]))
        for x, d in zip(xs, ds):
            g += np.outer(d, x)
        dw = -float(lr) * g / dw_min
        n = np.clip(_round_half_away(dw), -t.pulse_config.bl_max, t.pulse_config.bl_max).astype(np.int64)
        return self.send_counts(tile, n) if n.any() else 0

    def update_sgd(self, tile, x, d, lr):
        return self.update_sgd_batch(tile, np.atleast_2d(x), np.atleast_2d(d), lr)

    def update_sgd_batch(self, tile, xs, ds, lr):
        """Stochastic pulse trains drawn on the host (aihwkit's scheme: BL slots, update management), coincidences
        summed per device and sent as one pulse-count matrix per sample."""
        t = self.tile(tile)
        pc = t.pulse_config
        dw_min = pc.dw_min or t.card.model.dw_min_aihwkit
        total = 0
        for x, d in zip(np.atleast_2d(xs), np.atleast_2d(ds)):
            x_max, d_max = float(np.abs(x).max(initial=0.0)), float(np.abs(d).max(initial=0.0))
            if x_max == 0.0 or d_max == 0.0:
                continue
            bl = int(min(pc.bl_max, np.ceil(float(lr) * x_max * d_max / dw_min)))
            bl = max(bl, 1)
            a = np.sqrt(float(lr) / (dw_min * bl))
            b = a
            if pc.update_management:
                a, b = a * np.sqrt(d_max / x_max), b * np.sqrt(x_max / d_max)
            px = np.minimum(np.abs(x) * a, 1.0)
            pd = np.minimum(np.abs(d) * b, 1.0)
            xb = t.rng.random((bl, x.size)) < px
            db = t.rng.random((bl, d.size)) < pd
            coincidences = db.T.astype(np.int64) @ xb.astype(np.int64)
            n = -np.sign(np.outer(d, x)).astype(np.int64) * coincidences
            total += self.send_counts(tile, n)
        return total

    def calibrate_symmetry(self, tile, **options):
        raise EdgelearnError("symmetry-point calibration needs reference devices, not available over the serial link")

    def _weights_from_codes(self, t: _SerialTile, codes: np.ndarray, offset: float, scale: float) -> np.ndarray:
        g = offset + codes.astype(np.float64) * scale
        return t.card.weight_from_conductance(g)

    def read_weights(self, tile) -> np.ndarray:
        t = self.tile(tile)
        rows = []
        for i in range(t.rows):
            codes, offset, scale = self.read_codes(p.SEL_ROW, t.row0 + i, 0)
            rows.append(self._weights_from_codes(t, codes[:t.cols], offset, scale))
        return np.array(rows)

    def device_states(self, tile) -> np.ndarray:
        return self.read_weights(tile)

    def set_weights(self, tile, w, tolerance: float | None = None, max_rounds: int = 400) -> int:
        """Program the tile toward w by parallel write-verify over the link: read every device, send one pulse
        toward its target to each device still outside the tolerance (default half the card's granularity), repeat.
        The pulses are counted by the board like any other. Returns the devices that missed."""
        t = self.tile(tile)
        w = np.asarray(w, float)
        if w.shape != (t.rows, t.cols):
            raise EdgelearnError(f"weights must have shape {(t.rows, t.cols)}, got {w.shape}")
        tolerance = 0.5 * t.card.model.granularity if tolerance is None else tolerance
        last_error = None
        for _ in range(max_rounds):
            error = w - self.read_weights(tile)
            outside = np.abs(error) > tolerance
            if not outside.any():
                return 0
            # a device whose error changed sign has overshot: it is as close as single pulses get
            if last_error is not None:
                outside &= np.sign(error) == np.sign(last_error)
                if not outside.any():
                    break
            self.send_counts(tile, np.where(outside, np.sign(error), 0).astype(np.int64))
            last_error = error
        return int((np.abs(w - self.read_weights(tile)) > tolerance).sum())

    def state_dict(self, tile) -> dict:
        raise EdgelearnError("device states of a physical array cannot be checkpointed (serial board)")

    def load_state_dict(self, tile, data) -> None:
        raise EdgelearnError("device states of a physical array cannot be restored (serial board)")

    def counters(self, tile: int | None = None) -> CounterReport:
        """The board's event counters (whole array); per-device pulses as sent by this host (one tile, or all tiles
        flattened)."""
        counts = self.board_counters()
        chosen = self.tiles if tile is None else [self.tile(tile)]
        up = np.concatenate([t.pulses[..., 0].ravel() for t in chosen]) if chosen else np.zeros(0, np.int64)
        down = np.concatenate([t.pulses[..., 1].ravel() for t in chosen]) if chosen else np.zeros(0, np.int64)
        if tile is not None:
            up, down = up.reshape(chosen[0].rows, chosen[0].cols), down.reshape(chosen[0].rows, chosen[0].cols)
        return CounterReport(counts, up, down, np.zeros_like(up), np.zeros_like(down))
