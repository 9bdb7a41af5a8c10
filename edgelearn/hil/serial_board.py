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

from ..board import CounterReport, PeripheryConfig, PulseConfig, epsilon_codes
from ..devices import DeviceCard, load_card
from ..errors import EdgelearnError
from . import protocol as p


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
    rejected_frames: int = 0
    stale_frames: int = 0
    naks: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


def open_port(url: str, timeout: float, baudrate: int = 115200):
    """Open a pyserial URL with one-line errors for the usual failures."""
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=max(1.0, timeout))
    except serial.SerialException as exc:
        code = exc.errno if exc.errno is not None else getattr(exc.__context__, "errno", None)
        text = str(exc)
        if code == errno.ENOENT or "No such file" in text:
            raise HilError(f"{url}: port not found (is the board plugged in? is the path right?)") from None
        if code == errno.EACCES or "Permission denied" in text:
            raise HilError(f"{url}: permission denied (add yourself to the group owning the port, e.g. "
                           "dialout, or fix its udev rule)") from None
        if code == errno.EBUSY or "busy" in text.lower():
            raise HilError(f"{url}: port busy (another program has it open)") from None
        raise HilError(f"{url}: cannot open port ({text})") from None
    except ValueError as exc:
        raise HilError(f"{url}: not a usable port URL ({exc})") from None


class SerialLink:
    """Request/response over a pyserial port (any URL: /dev/ttyACM0, /dev/pts/N, socket://host:port, loop://,
    spy://...). `timeout` is per attempt, `retries` the attempts after the first."""

    def __init__(self, url: str, timeout: float = 1.0, retries: int = 10, baudrate: int = 115200, port=None):
        if timeout <= 0 or retries < 0:
            raise EdgelearnError(f"timeout must be > 0 and retries >= 0, got {timeout} and {retries}")
        self.url, self.timeout, self.retries = url, timeout, retries
        self.port = port if port is not None else open_port(url, timeout, baudrate)
        self.decoder = p.FrameDecoder()
        # a random start: a new session's first request is unlikely (1 in 65536) to repeat the board's cached one
        self.seq = int.from_bytes(os.urandom(2), "little")
        self.stats = LinkStats()

    def close(self) -> None:
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
        frame = p.encode_frame(p.Message(p.PROTOCOL_VERSION, seq, command, 0, body).pack())
        self.stats.requests += 1
        for attempt in range(self.retries + 1):
            self.stats.attempts += 1
            if attempt:
                self.stats.retries += 1
            try:
                self.port.write(frame)
                self.stats.bytes_out += len(frame)
                answer = self._await(seq, command)
            except (serial.SerialException, OSError) as exc:
                raise self._lost(name, exc) from None
            if answer is None:
                continue
            if answer.version != p.PROTOCOL_VERSION:
                raise HilError(f"{self.url}: protocol version mismatch: host speaks {p.PROTOCOL_VERSION}, board "
                               f"answered in {answer.version}")
            if answer.status != p.OK:
                reason = p.STATUS_NAMES.get(answer.status, f"status {answer.status}")
                try:
                    detail = p.Reader(answer.body, name).text()
                except p.ProtocolError:
                    detail = ""
                if answer.status == p.E_VERSION:
                    raise BoardReportedError(f"{self.url}: protocol version mismatch: host speaks "
                                             f"{p.PROTOCOL_VERSION}, board says: {detail}", answer.status)
                raise BoardReportedError(f"{self.url}: board rejected {name}: {reason}: {detail}", answer.status)
            return answer.body
        raise HilError(f"{self.url}: board not answering ({name}: no valid response after {self.retries + 1} "
                       f"attempts of {self.timeout:g} s)")

    def _await(self, seq: int, command: int) -> p.Message | None:
        """The response to (seq, command), or None when the attempt timed out or a corrupted frame arrived (then a
        resend is cheaper than waiting)."""
        deadline = time.monotonic() + self.timeout
        rejected = self.decoder.rejected
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.port.timeout != min(self.timeout, 0.02):
                self.port.timeout = min(self.timeout, 0.02)  # poll: a pyserial timeout change reconfigures the port
            data = self.port.read(1)
            if not data:
                continue
            waiting = self.port.in_waiting
            if waiting:
                data += self.port.read(waiting)
            self.stats.bytes_in += len(data)
            for payload in self.decoder.feed(data):
                try:
                    msg = p.parse_message(payload)
                except p.ProtocolError:
                    continue
                if msg.seq == seq and msg.command == (command | p.RESPONSE):
                    return msg
                if msg.command == p.RESPONSE and msg.status == p.E_BAD_FRAME:
                    self.stats.naks += 1
                    return None  # the board saw a damaged frame (perhaps ours): resend now
                self.stats.stale_frames += 1  # an answer to an earlier attempt, or not an answer: skip it
            if self.decoder.rejected != rejected:
                self.stats.rejected_frames += self.decoder.rejected - rejected
                return None


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
    r = p.Reader(body, "identify")
    protocol, rows, cols, dac_bits, adc_bits, read_bits, n_counters, max_payload, n_widths = r.take("BHHBBBBIB")
    widths, ranges = [], []
    for _ in range(n_widths):
        width, low, high = r.take("Ihh")
        widths.append(width)
        ranges.append((low, high))
    offset, scale = r.take("dd")
    firmware, device_id = r.text(), r.text()
    r.done()
    if protocol != p.PROTOCOL_VERSION:
        raise HilError(f"{link.url}: protocol version mismatch: host speaks {p.PROTOCOL_VERSION}, board {protocol}")
    return BoardInfo(link.url, protocol, firmware, device_id, rows, cols, dac_bits, adc_bits, read_bits, n_counters,
                     max_payload, widths, ranges, offset, scale)


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

    def __init__(self, url: str | None = None, *, link: SerialLink | None = None, timeout: float = 1.0,
                 retries: int = 10, seed: int = 0):
        if link is None:
            if url is None:
                raise EdgelearnError("SerialBoard needs a port URL or a link")
            link = SerialLink(url, timeout=timeout, retries=retries)
        self.link = link
        self.info = identify(link)
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
    def configure_pulse(self, width_ns: int, amplitude_mv: int) -> None:
        self.link.request(p.CONFIGURE_PULSE, struct.pack("<Ih", int(width_ns), int(amplitude_mv)))
        self.configured = (int(width_ns), int(amplitude_mv))

    def apply_pulses(self, row: int, col: int, polarity: int, count: int = 1, selection: int = p.SEL_DEVICE) -> int:
        body = self.link.request(p.APPLY_PULSES, struct.pack("<BHHbH", selection, row, col, polarity, count))
        return struct.unpack("<I", body)[0]

    def read_codes(self, selection: int = p.SEL_ALL, row: int = 0, col: int = 0) -> tuple[np.ndarray, float, float]:
        """(int16 codes, offset S, scale S per code): conductance = offset + code * scale."""
        r = p.Reader(self.link.request(p.READ, struct.pack("<BHH", selection, row, col)), "read")
        offset, scale, n = r.take("ddH")
        codes = r.array("<i2", n)
        r.done()
        return codes, offset, scale

    def read_conductance(self, row: int, col: int) -> float:
        codes, offset, scale = self.read_codes(p.SEL_DEVICE, row, col)
        return float(offset + int(codes[0]) * scale)

    def board_counters(self) -> dict[str, int]:
        from firmware_model.controller import COUNTER_NAMES

        r = p.Reader(self.link.request(p.READ_COUNTERS), "read-counters")
        n = r.take("B")
        values = r.array("<i8", n)
        r.done()
        if n != len(COUNTER_NAMES):
            raise HilError(f"{self.link.url}: board reports {n} counters, expected {len(COUNTER_NAMES)} "
                           f"({', '.join(COUNTER_NAMES)})")
        return {name: int(v) for name, v in zip(COUNTER_NAMES, values)}

    def reset_counters(self) -> None:
        self.link.request(p.RESET_COUNTERS)
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
        r = p.Reader(self.link.request(p.BACKWARD if transpose else p.FORWARD, body), "mvm")
        scale, n = r.take("dH")
        out = r.array("<i2", n)
        r.done()
        if n != n_out:
            raise HilError(f"{self.link.url}: board returned {n} outputs, expected {n_out}")
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
                total += struct.unpack("<I", self.link.request(p.UPDATE, region + step.astype(np.int8).tobytes()))[0]
        return total

    def update_mp(self, tile, x, d, lr, epsilon=None, epsilon_down=None):
        return self.update_mp_batch(tile, np.atleast_2d(x), np.atleast_2d(d), lr, epsilon, epsilon_down)

    def update_mp_batch(self, tile, xs, ds, lr, epsilon=None, epsilon_down=None):
        """Mixed precision with the accumulator on the host (the same arithmetic as the controller's
        mp_update_dense: chi += round(-lr 2^F sum d x^T), saturating int32; n = trunc(chi / eps); chi -= n eps)."""
        t = self.tile(tile)
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
        """Per sample, round(lr |d_i x_j| / dw_min) pulses (at most bl_max) toward -lr d x^T."""
        t = self.tile(tile)
        dw_min = t.pulse_config.dw_min or t.card.model.dw_min_aihwkit
        total = 0
        for x, d in zip(np.atleast_2d(xs), np.atleast_2d(ds)):
            dw = -float(lr) * np.outer(d, x) / dw_min
            n = np.clip(_round_half_away(dw), -t.pulse_config.bl_max, t.pulse_config.bl_max).astype(np.int64)
            total += self.send_counts(tile, n)
        return total

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
