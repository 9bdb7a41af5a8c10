"""The C board firmware (firmware_model/c/el_board.c, the command interpreter, over the host HAL
firmware_model/c/el_hal_emulated.c, through firmware_model/cboard.py) against the Python BoardFirmware
(firmware_model/board.py): two boards built on identical arrays get the same long seeded sequences of requests
(every command, valid and invalid, bad lengths and arguments, unknown commands, other versions, responses,
retransmissions, reused and stale seqs, contending sessions under a controlled clock, CLOSE and releases), and every
answer must be byte-identical and every piece of state (device states, counters, per-device pulses, the generator,
the session, the cache) identical after every request.

Times are multiples of 1/64 s, exact both as Python floats and on the C board's microsecond clock."""

from __future__ import annotations

import copy
import math
import random
import struct

import numpy as np
import pytest

from firmware_model import board as fw
from firmware_model import cbuild, fixed
from firmware_model import protocol as p

try:
    from firmware_model import cboard
except cbuild.BuildError as exc:  # only a machine without any C compiler skips; a refused build fails
    if "no C compiler" not in str(exc):
        raise
    pytest.skip(str(exc), allow_module_level=True)

TICK = 1 / 64  # s: exact in binary floating point and in microseconds (15625 us)


# ---------------------------------------------------------------------------------------------------- set-ups

def plain_array(rows: int, cols: int, seed: int, widths: list[tuple], periphery: tuple) -> fw.EmulatedCrossbar:
    """An EmulatedCrossbar on plain arrays (no edgelearn): widths are (width_ns, c2c_std, (low, high), response)."""
    rnd = np.random.default_rng(seed)
    setups = []
    for k, (width_ns, c2c, amp_range, response) in enumerate(widths):
        nodes = 4 + 3 * k
        params = np.zeros((rows, cols, fw.crossbar.N_PARAMS))
        params[..., 0] = rnd.uniform(0.01, 0.05, (rows, cols))
        params[..., 1] = rnd.uniform(0.01, 0.05, (rows, cols))
        params[..., 2] = rnd.uniform(-1.2, -0.8, (rows, cols))
        params[..., 3] = rnd.uniform(0.8, 1.2, (rows, cols))
        params[..., 4] = (nodes - 1) / (params[..., 3] - params[..., 2])
        setups.append(fw.PulseWidth(width_ns, rnd.uniform(0.2, 1.5, nodes), rnd.uniform(0.2, 1.5, nodes), params,
                                    c2c, amp_range, response))
    state = rnd.uniform(-0.5, 0.5, (rows, cols))
    return fw.EmulatedCrossbar(state, setups, periphery, fixed.seed_state(seed), fixed.normal_table())


# up overflows math.exp below about 0.58 V; the 2000 ns width's down response divides by zero (vs = 0)
STEEP = (2.0, 0.002, 3.0, 1.5, 0.3, 3.0)
ZERO_VS = (1.0, 0.2, 2.0, 1.0, 0.0, 2.0)
SMOOTH = (1.1, 0.09, 3.5, 2.0, 0.23, 4.9)


def plain_pair(rows=3, cols=5, seed=1, widths=None, periphery=(7, 1.0, 9, 12.0, 0.05, 0, True, 5), dac_bits=7,
               adc_bits=9, lease_s=10.0, max_pulses=fw.MAX_PULSES_PER_COMMAND, firmware="bare firmware",
               device_id="DEV1"):
    widths = widths or [(20, 0.02, (500, 3000), None), (200, 0.05, (300, 4000), STEEP),
                        (2000, 0.0, (100, 10000), ZERO_VS), (7, 0.1, (-5, 32767), SMOOTH)]
    args = (firmware, device_id, 3.9e-9, 1.8e-13, dac_bits, adc_bits, 1.0, lease_s, max_pulses)
    py = fw.BoardFirmware(plain_array(rows, cols, seed, widths, periphery), *args)
    c = cboard.CBoardFirmware(plain_array(rows, cols, seed, widths, periphery), *args)
    return py, c


def card_pair(names, rows, cols, seed, **kw):
    """The host emulator's board from bundled device cards, and the C board on a copy of its array."""
    from edgelearn.devices import load_card
    from edgelearn.hil.emulator import BoardFirmware

    py = BoardFirmware([load_card(n) for n in names], rows, cols, seed=seed, **kw)
    c = cboard.CBoardFirmware(copy.deepcopy(py.main), py.firmware, py.device_id, py.read_offset_s, py.read_scale_s,
                              py.dac_bits, py.adc_bits, py.inp_bound, py.lease_s, py.max_pulses)
    return py, c


# ---------------------------------------------------------------------------------------------------- comparison

def assert_same(py, c, what=""):
    a, b = py.main, c.main
    assert b.state.tobytes() == a.state.tobytes(), f"state differs after {what}"
    assert b.counters.tobytes() == a.counters.tobytes(), f"counters differ after {what}"
    assert b.device_pulses.tobytes() == a.device_pulses.tobytes(), f"device_pulses differ after {what}"
    assert b.rng.tobytes() == a.rng.tobytes(), f"rng differs after {what}"
    assert (c.executed, c.duplicates, c.stale, c.busy) == (py.executed, py.duplicates, py.stale, py.busy), what
    assert c.last_received == py.last_received, what
    assert c.configured == py.configured, what
    assert (c.owner, c.high_seq, c.owner_seen) == (py.owner, py.high_seq, py.owner_seen), what
    assert c.cache_seqs == list(py.cache), what


def call(py, c, payload: bytes, now: float, what="") -> bytes | None:
    expected = py.handle(payload, now=now)
    got = c.handle(payload, now=now)
    assert got == expected, f"{what}: request {payload[:40].hex()} at {now}: C {got!r} != Python {expected!r}"
    assert_same(py, c, what)
    return got


# ---------------------------------------------------------------------------------------------------- the fuzzer

class Fuzzer:
    """Seeded request sequences over one board pair."""

    def __init__(self, py, c, seed: int, sessions: int = 3):
        self.py, self.c = py, c
        self.rnd = random.Random(seed)
        self.rows, self.cols = py.rows, py.cols
        self.widths = {w: py.amplitude_range_mv(w) for w in py.main.widths}
        self.dac_max = min((1 << (py.dac_bits - 1)) - 1, 32767)  # what an int16 code can reach
        self.sessions = self.rnd.sample(range(65536), sessions)
        self.session = self.sessions[0]
        self.seq = {s: self.rnd.randrange(65536) for s in self.sessions}
        self.sent: dict[int, list[tuple[int, bytes]]] = {s: [] for s in self.sessions}
        self.now = self.rnd.randrange(0, 64 * 100) * TICK
        self.counts: dict[str, int] = {}

    # -- bodies ------------------------------------------------------------------------------------------------------
    def _index(self, n: int) -> int:
        r = self.rnd.random()
        if r < 0.85:
            return self.rnd.randrange(n)
        return self.rnd.choice([n, n + 1, 65535, self.rnd.randrange(65536)])

    def _region(self) -> tuple[bytes, int, int]:
        rnd = self.rnd
        row0 = rnd.randrange(self.rows)
        col0 = rnd.randrange(self.cols)
        rows = rnd.randint(1, self.rows - row0)
        cols = rnd.randint(1, self.cols - col0)
        if rnd.random() < 0.1:
            choice = rnd.randrange(5)
            if choice == 0:
                rows = 0
            elif choice == 1:
                cols = 0
            elif choice == 2:
                rows = self.rows - row0 + rnd.randint(1, 3)
            elif choice == 3:
                col0 = rnd.choice([self.cols, 65535])
            else:
                row0, rows = 65535, 65535
        return p.REGION.pack(row0, rows, col0, cols), rows, cols

    def _amplitude(self, width: int) -> int:
        rnd = self.rnd
        low, high = self.widths.get(width, (100, 10000))
        r = rnd.random()
        if r < 0.6:
            a = rnd.randint(max(low, 0), max(high, 0))
        elif r < 0.75:
            a = -rnd.randint(max(low, 0), max(high, 0))
        elif r < 0.9:
            a = rnd.choice([low - 1, high + 1, low, high, 0, -low, -high - 1])
        else:
            a = rnd.choice([-32768, 32767, rnd.randrange(-32768, 32768)])
        return max(-32768, min(32767, a))

    def body(self, command: int) -> bytes:
        rnd = self.rnd
        if command == p.CONFIGURE_PULSE:
            width = rnd.choice(list(self.widths)) if rnd.random() < 0.85 else rnd.choice([0, 1, 21, 2**32 - 1])
            body = struct.pack("<Ih", width, self._amplitude(width))
        elif command == p.APPLY_PULSES:
            kind = rnd.choice([0, 0, 1, 2, 3]) if rnd.random() < 0.93 else rnd.choice([4, 7, 255])
            polarity = rnd.choice([1, -1]) if rnd.random() < 0.93 else rnd.choice([0, 2, -2, 127, -128])
            r = rnd.random()
            count = rnd.randint(0, 6) if r < 0.8 else rnd.randint(0, 300) if r < 0.97 else rnd.choice(
                [65535, 40000, 1000])
            body = struct.pack("<BHHbH", kind, self._index(self.rows), self._index(self.cols), polarity, count)
        elif command == p.READ:
            kind = rnd.choice([0, 1, 2, 3]) if rnd.random() < 0.93 else rnd.choice([4, 200])
            body = struct.pack("<BHH", kind, self._index(self.rows), self._index(self.cols))
        elif command in (p.FORWARD, p.BACKWARD):
            region, rows, cols = self._region()
            n_in = rows if command == p.BACKWARD else cols
            if rnd.random() < 0.05:
                n_in = max(0, n_in + rnd.choice([-1, 1, 2]))
            n_in = min(n_in, 600)
            codes = [rnd.randint(-self.dac_max, self.dac_max) for _ in range(n_in)]
            if codes and rnd.random() < 0.08:
                codes[rnd.randrange(n_in)] = rnd.choice([min(self.dac_max + 1, 32767), -self.dac_max - 1, 32767,
                                                         -32768])
            if codes and rnd.random() < 0.05:
                codes = [0] * n_in
            body = region + struct.pack(f"<{n_in}h", *codes)
        elif command == p.UPDATE:
            region, rows, cols = self._region()
            n = min(rows * cols, 2000)
            if rnd.random() < 0.05:
                n = max(0, n + rnd.choice([-1, 1, 3]))
            span = rnd.choice([1, 3, 3, 10, 128])
            body = region + bytes((rnd.randint(-span, min(span, 127)) & 0xFF) for _ in range(n))
        else:
            body = b""
        if rnd.random() < 0.06:  # a bad length: cut or extend the body
            if body and rnd.random() < 0.5:
                body = body[:rnd.randrange(len(body))]
            else:
                body += rnd.randbytes(rnd.randint(1, 5))
        return body

    def command(self) -> int:
        rnd = self.rnd
        r = rnd.random()
        if r < 0.04:
            return rnd.choice([0, 0x0B, 0x0C, 0x20, 0x7F, rnd.randrange(0x0B, 0x80)])
        return rnd.choices([p.IDENTIFY, p.CONFIGURE_PULSE, p.APPLY_PULSES, p.READ, p.FORWARD, p.BACKWARD, p.UPDATE,
                            p.READ_COUNTERS, p.RESET_COUNTERS, p.CLOSE],
                           weights=[4, 10, 16, 10, 10, 10, 16, 5, 1.5, 1.5])[0]

    # -- requests ------------------------------------------------------------------------------------------------------
    def _new(self, session: int, seq: int, command: int | None = None) -> bytes:
        command = self.command() if command is None else command
        status = 0 if self.rnd.random() < 0.97 else self.rnd.randrange(256)
        payload = p.Message(p.PROTOCOL_VERSION, seq, command, status, self.body(command), session).pack()
        self.sent[session].append((seq, payload))
        del self.sent[session][:-64]
        return payload

    def _advance_time(self) -> None:
        rnd = self.rnd
        r = rnd.random()
        lease_ticks = int(round(self.py.lease_s / TICK))
        if r < 0.35:
            return
        if r < 0.8:
            self.now += rnd.randint(1, 20) * TICK
        elif r < 0.9:
            self.now += rnd.randint(1, max(2, lease_ticks * 3 // 2)) * TICK
        elif r < 0.96 and self.py.owner is not None and self.py.lease_s / TICK == lease_ticks:
            # exactly at (or a tick either side of) the owner's lease end
            self.now = self.py.owner_seen + (lease_ticks + rnd.choice([-1, 0, 0, 1])) * TICK
        else:
            self.now -= rnd.randint(1, 40) * TICK  # a clock that steps back: the Python takes it as it comes

    def step(self):
        """One action: a request (payload) or a release; returns (kind, payload or None)."""
        rnd = self.rnd
        self._advance_time()
        if rnd.random() < 0.03:
            self.session = rnd.choice(self.sessions)
        s = self.session
        if rnd.random() < 0.08:  # another host's request
            s = rnd.choice(self.sessions)
        r = rnd.random()
        if r < 0.68:
            self.seq[s] = (self.seq[s] + 1) & 0xFFFF
            return "new", self._new(s, self.seq[s])
        if r < 0.76 and self.sent[s]:  # a retransmission: the last request, or an older one (cached or stale)
            seq, payload = self.sent[s][-1] if rnd.random() < 0.5 else rnd.choice(self.sent[s])
            return "retransmit", payload
        if r < 0.80 and self.sent[s]:  # an old seq with a different request
            seq, _ = rnd.choice(self.sent[s])
            return "reuse", self._new(s, seq)
        if r < 0.83:  # a seq out of the blue: newer (the session goes on from there) or older (stale: it does not)
            old, seq = self.seq[s], rnd.randrange(65536)
            if (seq - old) & 0xFFFF < 0x8000:
                self.seq[s] = seq
            return "jump", self._new(s, seq)
        if r < 0.86:
            self.seq[s] = (self.seq[s] + 1) & 0xFFFF
            return "close", self._new(s, self.seq[s], p.CLOSE)
        if r < 0.89:
            version = rnd.choice([0, 1, 3, 0x7F, 0xFF])
            payload = bytes([version]) + rnd.randbytes(rnd.randint(0, 12))
            if len(payload) >= 4 and rnd.random() < 0.5:
                payload = payload[:3] + bytes([rnd.randrange(0x0B)]) + payload[4:]
            return "foreign", payload
        if r < 0.91:
            command = rnd.randrange(256) | p.RESPONSE
            return "response", p.Message(p.PROTOCOL_VERSION, rnd.randrange(65536), command, 0, rnd.randbytes(3),
                                         s).pack()
        if r < 0.94:
            return "short", bytes([p.PROTOCOL_VERSION]) + rnd.randbytes(rnd.randint(0, 5))
        if r < 0.95:
            return "empty", b""
        if r < 0.97:
            return "release", rnd.choice(self.sessions + [rnd.randrange(65536)])
        self.seq[s] = (self.seq[s] + 1) & 0xFFFF
        return "new", self._new(s, self.seq[s])

    def run(self, steps: int) -> dict[str, int]:
        for k in range(steps):
            kind, item = self.step()
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind == "release":
                self.py.release(item)
                self.c.release(item)
                assert_same(self.py, self.c, f"step {k}: release {item}")
                continue
            answer = call(self.py, self.c, item, self.now, f"step {k} ({kind})")
            if answer is not None and len(answer) >= 7 and answer[0] == p.PROTOCOL_VERSION:
                status = answer[6]
                self.counts[f"status {status}"] = self.counts.get(f"status {status}", 0) + 1
        return self.counts


def _statuses(counts, *statuses):
    return all(counts.get(f"status {s}", 0) > 0 for s in statuses)


ALL_STATUSES = (p.OK, p.E_UNKNOWN_COMMAND, p.E_BAD_LENGTH, p.E_BAD_ARGUMENT, p.E_UNSUPPORTED, p.E_NOT_CONFIGURED,
                p.E_BUSY, p.E_STALE)


# ---------------------------------------------------------------------------------------------------- tests

def test_plain_arrays_amplitude_aware_widths_and_internal_errors():
    """Four widths: amplitude-blind, a steep response that overflows math.exp at low amplitudes, one whose down
    response divides by zero, and one with a negative lowest amplitude; c2c noise and MVM output noise on."""
    py, c = plain_pair()
    counts = Fuzzer(py, c, seed=11).run(2500)
    assert _statuses(counts, *ALL_STATUSES, p.E_INTERNAL), counts
    assert counts.get("retransmit", 0) > 50 and counts.get("foreign", 0) > 20, counts
    assert py.duplicates > 20 and py.stale > 20 and py.busy > 20, (py.duplicates, py.stale, py.busy)


def test_plain_arrays_small_limits_abs_max_periphery_and_a_wide_adc():
    """max_pulses 500 (refusals of both APPLY_PULSES and UPDATE), a 2.5 s lease, abs-max noise management on the
    board's MVM, a 17-bit ADC (codes beyond int16 wrap on the wire) and a 20-bit DAC (no code is refused)."""
    py, c = plain_pair(rows=4, cols=3, seed=5, periphery=(8, 0.7, 17, 3.0, 0.02, 1, True, 3), dac_bits=20,
                       adc_bits=17, lease_s=2.5, max_pulses=500)
    # READ's saturation and np.round's ties to even: states beyond the read span, and states exactly half a code off
    ties = [w for w in ((k + 0.5) * py.w_per_code for k in range(-300, 300)) if (w / py.w_per_code) % 1 == 0.5]
    assert len(ties) > 100
    for array in (py.main, c.main):
        array.state[0, :] = [2.5, -7.0, 2.0000305]
        array.state[1:, :] = np.array(ties[:9]).reshape(3, 3)
    answer = call(py, c, p.Message(p.PROTOCOL_VERSION, 1, p.READ, 0, struct.pack("<BHH", p.SEL_ALL, 0, 0), 9).pack(),
                  0.0)
    codes = struct.unpack_from("<12h", answer, 7 + 18)
    assert codes[:3] == (32767, -32768, 32767) and all(k % 2 == 0 for k in codes[3:]), codes
    counts = Fuzzer(py, c, seed=12, sessions=2).run(1500)
    assert _statuses(counts, p.OK, p.E_BAD_ARGUMENT, p.E_BUSY, p.E_STALE, p.E_NOT_CONFIGURED), counts


def test_plain_arrays_odd_lease_and_long_texts():
    """A lease of 1234.565 s ({:g} rounds a 7-digit value), long firmware / device-id texts cut at 255 bytes,
    one device, no bound management."""
    py, c = plain_pair(rows=1, cols=1, seed=9, periphery=(5, 2.0, 6, 1.5, 0.3, 0, False, 0), dac_bits=5,
                       adc_bits=6, lease_s=1234.565, firmware="f\u00e9" * 200, device_id="D" * 300,
                       widths=[(w, 0.01 * k, (10 * k, 5000), SMOOTH if k % 2 else None)
                               for k, w in enumerate([20, 200, 2000, 20000, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])])
    counts = Fuzzer(py, c, seed=13).run(800)
    assert _statuses(counts, p.OK, p.E_BUSY, p.E_UNSUPPORTED), counts


def test_card_board_amplitude_blind():
    py, c = card_pair(["ID170ZR5000-20ns"], 4, 6, seed=3)
    counts = Fuzzer(py, c, seed=21).run(2000)
    assert _statuses(counts, *ALL_STATUSES), counts


def test_card_board_amplitude_aware_two_widths():
    py, c = card_pair(["ID170ZR5000-20ns", "ID170ZR5000-200ns"], 3, 5, seed=4, amplitude_aware=True, lease_s=2.5,
                      max_pulses=4000)
    assert all(w.amplitude_response is not None and w.c2c_std > 0 for w in c.main.widths.values())
    counts = Fuzzer(py, c, seed=22).run(2000)
    assert _statuses(counts, *ALL_STATUSES), counts


def test_large_array_reads_updates_and_mvms_near_the_payload_limit():
    """91 x 91 = 8281 devices: READ of the whole array is refused (does not fit a frame), rows and columns are
    read; UPDATEs near the payload limit, a full-width MVM, APPLY_PULSES to everything."""
    rows = cols = 91
    py, c = plain_pair(rows=rows, cols=cols, seed=3, widths=[(20, 0.03, (500, 3000), SMOOTH)])
    rnd = random.Random(5)
    now, seq = 1.0, 0

    def req(command, body, expect=None):
        nonlocal seq, now
        seq += 1
        now += TICK
        answer = call(py, c, p.Message(p.PROTOCOL_VERSION, seq, command, 0, body, 0x1234).pack(), now,
                      f"command {command}")
        if expect is not None:
            assert answer[6] == expect, answer
        return answer

    req(p.IDENTIFY, b"", p.OK)
    req(p.READ, struct.pack("<BHH", p.SEL_ALL, 0, 0), p.E_BAD_ARGUMENT)
    req(p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 2), p.E_NOT_CONFIGURED)
    req(p.CONFIGURE_PULSE, struct.pack("<Ih", 20, -2500), p.OK)
    req(p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 2), p.OK)
    for k in range(6):
        req(p.READ, struct.pack("<BHH", rnd.choice([1, 2]), rnd.randrange(rows), rnd.randrange(cols)), p.OK)
        band = rnd.randint(150, 179)  # 179 x 91 = 16289 devices: 16304-byte body, 16311-byte payload
        row0 = rnd.randrange(0, 2)
        band_rows = min(band // cols, rows - row0)
        counts = bytes(rnd.randint(-3, 3) & 0xFF for _ in range(band_rows * cols))
        req(p.UPDATE, p.REGION.pack(row0, band_rows, 0, cols) + counts, p.OK)
        codes = [rnd.randint(-63, 63) for _ in range(cols)]
        req(p.FORWARD, p.REGION.pack(0, rows, 0, cols) + struct.pack(f"<{cols}h", *codes), p.OK)
        req(p.BACKWARD, p.REGION.pack(0, rows, 0, cols) + struct.pack(f"<{rows}h", *codes), p.OK)
    req(p.UPDATE, p.REGION.pack(0, 90, 0, 91) + bytes(90 * 91), p.OK)  # 8190 counts
    too_big = p.REGION.pack(0, rows, 0, cols) + bytes(rows * cols)  # 8289-byte body: fits, applies nothing
    req(p.UPDATE, too_big, p.OK)
    req(p.READ_COUNTERS, b"", p.OK)


def test_sessions_contend_under_a_controlled_clock():
    """Two hosts: busy texts at many elapsed times (ties of {:.1f} included), the exact lease boundary, a session
    taking over after the lease, CLOSE releasing at once, release() of a non-owner doing nothing, duplicates and
    stale seqs across a takeover."""
    py, c = plain_pair(lease_s=2.5)
    a, b = 0x1A2B, 0x00FF

    def req(session, seq, now, command=p.IDENTIFY, body=b""):
        return call(py, c, p.Message(p.PROTOCOL_VERSION, seq, command, 0, body, session).pack(), now,
                    f"session {session:#x} seq {seq} at {now}")

    assert req(a, 1, 100.0)[6] == p.OK
    for ticks in range(0, 161):  # 0 .. 2.5 s after a's request, every 1/64 s: all busy but the last
        answer = req(b, 7, 100.0 + ticks * TICK)
        assert answer[6] == (p.E_BUSY if ticks < 160 else p.OK), (ticks, answer)
        if ticks < 160:
            assert f"last request {ticks * TICK:.1f} s ago".encode() in answer
    assert py.owner == b
    assert req(a, 2, 102.5 + TICK)[6] == p.E_BUSY
    req(b, 8, 102.5 + 2 * TICK, p.CLOSE)
    assert py.owner is None
    assert req(a, 2, 102.5 + 3 * TICK)[6] == p.OK
    assert req(a, 2, 102.5 + 3 * TICK)[6] == p.OK and py.duplicates == 1  # answered from the cache
    assert req(a, 1, 103.0)[6] == p.E_STALE  # seq 1's entry went with the takeover: older than 2
    assert req(a, 2, 103.0, p.READ_COUNTERS)[6] == p.E_STALE  # seq 2 used for another request
    py.release(b)
    c.release(b)
    assert_same(py, c, "release of a non-owner")
    assert req(b, 9, 103.0 + TICK)[6] == p.E_BUSY
    py.release(a)
    c.release(a)
    assert req(b, 9, 103.0 + TICK)[6] == p.OK
    for k in range(40):  # fill the cache past its depth
        req(b, 10 + k, 104.0 + k * TICK, p.READ_COUNTERS)
    assert req(b, 12, 106.0, p.READ_COUNTERS)[6] == p.E_STALE
    assert req(b, 49, 106.0, p.READ_COUNTERS)[6] == p.OK and py.duplicates == 2
    assert req(b, 49 + 0x8001, 106.0)[6] == p.E_STALE  # 0x7FFF behind the last one executed
    assert req(b, 49 + 0x8000, 106.0)[6] == p.OK  # half the seq space away: taken as newer, executed
    assert len(py.cache) == 32 and c.cache_seqs == list(py.cache)
    assert req(a, 3, 106.0 - 10 * TICK)[6] == p.E_BUSY  # a clock that stepped back: a negative elapsed time
    assert b"last request -0.2 s ago" in req(a, 3, 106.0 - 10 * TICK)
    assert c.handle(p.Message(p.PROTOCOL_VERSION, 1, p.IDENTIFY, 0, b"", b).pack()) is not None  # now=None runs


def test_now_none_uses_the_monotonic_clock():
    py, c = plain_pair()
    answer = c.handle(p.Message(p.PROTOCOL_VERSION, 1, p.IDENTIFY, 0, b"", 5).pack())
    assert answer[6] == p.OK and c.owner == 5 and c.owner_seen > 0


def test_factors_equal_math_exp_bit_for_bit():
    """The C HAL's amplitude factors (__builtin_exp) against PulseWidth.factors (math.exp): the same doubles, or
    the same exception text."""
    rnd = random.Random(7)
    nprnd = np.random.default_rng(7)
    widths = []
    for k in range(16):
        response = (rnd.uniform(0.1, 4.0), rnd.choice([rnd.uniform(0.01, 0.5), rnd.uniform(0.001, 0.01), 0.0])
                    if k % 5 == 4 else rnd.uniform(0.005, 0.6), rnd.uniform(0.5, 5.0), rnd.uniform(0.1, 4.0),
                    rnd.uniform(0.005, 0.6), rnd.uniform(0.5, 5.0))
        widths.append(fw.PulseWidth(10 + k, np.ones(3), np.ones(3), nprnd.uniform(size=(1, 1, 5)), 0.0,
                                    (-32768, 32767), response))
    array = fw.EmulatedCrossbar(np.zeros((1, 1)), widths, (7, 1.0, 9, 12.0, 0.0, 0, True, 5), fixed.seed_state(1),
                                fixed.normal_table())
    c = cboard.CBoardFirmware(array, "f", "d", 0.0, 1.0, 7, 9, 1.0)
    errors = 0
    for w in widths:
        for amplitude in [0, 1, -1, 32767, -32768, *(rnd.randrange(-32768, 32768) for _ in range(400))]:
            try:
                expected = w.factors(amplitude)
            except (OverflowError, ZeroDivisionError) as exc:
                with pytest.raises(ArithmeticError) as got:
                    c.factors(w.width_ns, amplitude)
                assert str(got.value) == f"{type(exc).__name__}: {exc}"
                errors += 1
                continue
            got = c.factors(w.width_ns, amplitude)
            assert struct.pack("<2d", *got) == struct.pack("<2d", *expected), (w.amplitude_response, amplitude)
    assert errors > 0


def test_formatters_equal_python_format():
    rnd = random.Random(3)
    diffs = [0, 1, -1, 49999, 50000, 50001, 150000, 250000, -250000, -40000, -50000, 10**12, -(10**12), 2**53 - 1]
    diffs += [k * 50000 for k in range(-50, 400)] + [k * 15625 for k in range(-100, 1000)]
    diffs += [rnd.randrange(-(10**13), 10**13) for _ in range(3000)] + [rnd.randrange(-10**7, 10**7)
                                                                        for _ in range(3000)]
    for d in diffs:
        assert cboard.format_seconds_1f(d) == f"{d / 1e6:.1f}", d
    leases = list(range(0, 20001)) + [2**32 - 1, 999999, 9999995, 999999500, 1000000, 1234565, 1234625, 1234575,
                                      99999950, 99999949, 100000, 10**9, 4294967295]
    leases += [rnd.randrange(2**32) for _ in range(5000)]
    # decimal ties at the 7th significant digit, which only the double's binary value breaks
    leases += [k * 10**e + 5 * 10**(e - 1) for e in range(1, 4) for k in (rnd.randrange(10**5, 10**6)
                                                                           for _ in range(800))]
    leases = [lease for lease in leases if lease < 2**32]
    for lease in leases:
        assert cboard.format_lease_g(lease) == f"{lease / 1000:g}", lease


def test_constructor_refusals():
    array = plain_array(2, 2, 1, [(20, 0.0, (500, 3000), None)], (7, 1.0, 9, 12.0, 0.0, 0, True, 5))
    with pytest.raises(ValueError, match="whole number of milliseconds"):
        cboard.CBoardFirmware(array, "f", "d", 0.0, 1.0, 7, 9, 1.0, lease_s=0.0005)
    with pytest.raises(ValueError, match="dac_bits"):
        cboard.CBoardFirmware(array, "f", "d", 0.0, 1.0, 1, 9, 1.0)
    with pytest.raises(ValueError, match="max_pulses"):
        cboard.CBoardFirmware(array, "f", "d", 0.0, 1.0, 7, 9, 1.0, max_pulses=-1)
    bad = copy.deepcopy(array)
    bad.state = np.asfortranarray(np.zeros((2, 2)))[:, ::-1]
    with pytest.raises(ValueError, match="state must be"):
        cboard.CBoardFirmware(bad, "f", "d", 0.0, 1.0, 7, 9, 1.0)
    assert math.isclose(cboard.CBoardFirmware(array, "f", "d", 0.0, 1.0, 7, 9, 1.0).w_per_code, 4 / 65535)


def test_documented_deviation_requests_longer_than_any_frame_are_dropped():
    """The C board caches full requests up to EL_BOARD_MAX_REQUEST (the longest payload the frame decoder delivers);
    a longer one, which no link can carry, is dropped where the Python would answer it. Foreign versions of any
    length are still answered."""
    py, c = plain_pair()
    longest = p.MAX_FRAME - 3  # EL_DECODER_MAX_PAYLOAD
    fits = p.Message(p.PROTOCOL_VERSION, 1, p.IDENTIFY, 0, bytes(longest - p.HEADER.size), 3).pack()
    assert call(py, c, fits, 1.0)[6] == p.E_BAD_LENGTH
    assert call(py, c, fits, 1.0 + TICK)[6] == p.E_BAD_LENGTH and py.duplicates == 1
    too_long = p.Message(p.PROTOCOL_VERSION, 2, p.IDENTIFY, 0, bytes(longest + 1 - p.HEADER.size), 3).pack()
    assert py.handle(too_long, now=2.0)[6] == p.E_BAD_LENGTH and c.handle(too_long, now=2.0) is None
    foreign = bytes([1]) + bytes(longest + 100)
    assert c.handle(foreign, now=2.0) == py.handle(foreign, now=2.0) is not None
