"""The board link protocol, version 2 (docs/protocol.md): COBS framing, CRC-16, sessions, sequence numbers, commands.

What both ends of the link share, so it lives on the device's floor: the host driver (`edgelearn.hil.serial_board`)
and the board emulator (`edgelearn.hil.emulator`) import it from here, and the C firmware follows the same
definitions. Everything here is pure Python over bytes; nothing touches a port.

A frame on the wire is ``0x00 || COBS(payload || crc16(payload) as 2 bytes little-endian) || 0x00 0x00``. The payload
starts with a 7-byte header ``version u8, session u16, seq u16, command u8, status u8`` (all little-endian); a response
carries the request's session and seq, ``command | 0x80`` and a status (0 = OK), then the command's body.

Version 2 (this one) added the session (which host sent a request: the board serves one session at a time and keeps
its duplicate cache per session), a window of cached answers with stale-request refusal, NAKs that name the last
request the board received, a per-command pulse limit and the CLOSE command.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTOCOL_VERSION = 2
HEADER = struct.Struct("<BHHBB")  # version, session, seq, command, status
V1_HEADER = struct.Struct("<BHBB")  # the version-1 layout: how a board answers a request of a version it does not speak
MAX_PAYLOAD = 16384  # bytes of payload (header + body) in one frame, either direction
MAX_FRAME = MAX_PAYLOAD + 2 + MAX_PAYLOAD // 254 + 2  # + CRC and COBS overhead (delimiters not counted)
RESPONSE = 0x80

# commands
IDENTIFY = 0x01
CONFIGURE_PULSE = 0x02
APPLY_PULSES = 0x03
READ = 0x04
FORWARD = 0x05
BACKWARD = 0x06
UPDATE = 0x07
READ_COUNTERS = 0x08
RESET_COUNTERS = 0x09
CLOSE = 0x0A
COMMAND_NAMES = {IDENTIFY: "identify", CONFIGURE_PULSE: "configure-pulse", APPLY_PULSES: "apply-pulses",
                 READ: "read", FORWARD: "forward", BACKWARD: "backward", UPDATE: "update",
                 READ_COUNTERS: "read-counters", RESET_COUNTERS: "reset-counters", CLOSE: "close"}

# status codes (responses)
OK = 0
E_UNKNOWN_COMMAND = 1
E_BAD_LENGTH = 2
E_BAD_ARGUMENT = 3
E_UNSUPPORTED = 4
E_VERSION = 5
E_NOT_CONFIGURED = 6
E_INTERNAL = 7
E_BAD_FRAME = 8  # NAK: the board received a frame that failed COBS or CRC (sent with seq 0, command 0x80)
E_BUSY = 9  # another host's session holds the board
E_STALE = 10  # a request older than the last one executed (a late duplicate): not executed again
STATUS_NAMES = {OK: "ok", E_UNKNOWN_COMMAND: "unknown command", E_BAD_LENGTH: "bad length",
                E_BAD_ARGUMENT: "bad argument", E_UNSUPPORTED: "unsupported", E_VERSION: "protocol version mismatch",
                E_NOT_CONFIGURED: "pulse not configured", E_INTERNAL: "internal error",
                E_BAD_FRAME: "bad frame", E_BUSY: "board busy", E_STALE: "stale request"}
NAK_BODY = struct.Struct("<HH")  # the session and seq of the last request the board received intact


def nak(session: int, seq: int) -> bytes:
    """The NAK payload: header (session 0, seq 0, command 0x80, E_BAD_FRAME) and, as its body, the session and seq of
    the last request the board received intact, so a host can tell whether its own request got through."""
    return HEADER.pack(PROTOCOL_VERSION, 0, 0, RESPONSE, E_BAD_FRAME) + NAK_BODY.pack(session & 0xFFFF, seq & 0xFFFF)

# selections for APPLY_PULSES and READ
SEL_DEVICE = 0
SEL_ROW = 1
SEL_COLUMN = 2
SEL_ALL = 3

# pulse polarity on the wire: +1 = up (potentiation, a negative voltage pulse), -1 = down
UP = 1
DOWN = -1


class ProtocolError(Exception):
    """A frame or body that does not follow the protocol."""


# ---------------------------------------------------------------------------------------------------- CRC and COBS

def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final xor
    (check value of b"123456789": 0x29B1)."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the output has no zero byte; each block is a code byte (1 + the number of
    non-zero bytes that follow, at most 254) standing for those bytes and, unless the code is 255, one zero."""
    out = bytearray()
    start, n = 0, len(data)
    while True:
        end = data.find(0, start, min(n, start + 254))
        if end < 0:  # no zero within reach: a full 254-byte block (code 255) or the tail
            end = min(n, start + 254)
            out.append(end - start + 1)
            out += data[start:end]
            if end - start < 254:
                return bytes(out)  # the tail (also the empty tail after a trailing zero)
            start = end
            if start == n:
                out.append(1)  # a 254-byte block ends the data: close with an empty block
                return bytes(out)
            continue
        out.append(end - start + 1)
        out += data[start:end]
        start = end + 1


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; ProtocolError on a zero byte or a code running past the end."""
    out = bytearray()
    k = 0
    n = len(data)
    while k < n:
        code = data[k]
        if code == 0:
            raise ProtocolError("zero byte inside a COBS frame")
        end = k + code
        if end > n:
            raise ProtocolError("COBS code runs past the end of the frame")
        block = data[k + 1:end]
        if 0 in block:
            raise ProtocolError("zero byte inside a COBS frame")
        out += block
        k = end
        if code < 255 and k < n:
            out.append(0)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    # a leading delimiter: whatever line noise preceded the frame is cut off and cannot spoil it; two closing ones: a
    # frame whose first closing delimiter is lost on the cable still ends at once, not when the next frame begins
    return b"\x00" + cobs_encode(payload + struct.pack("<H", crc16(payload))) + b"\x00\x00"


class FrameDecoder:
    """Splits a byte stream into checked payloads. Bytes are fed as they arrive; every complete frame whose COBS and
    CRC check passes comes out of `feed`. Anything else (garbage, a truncated or corrupted frame, an over-long run
    with no delimiter) is counted in `rejected` and skipped: the decoder resynchronises on the next 0x00."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.overflow = False
        self.rejected = 0
        self.accepted = 0

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        start = 0
        while True:
            end = data.find(0, start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self.overflow:
                self.buffer += chunk
                if len(self.buffer) > self.max_frame:
                    self.buffer.clear()
                    self.overflow = True
            if end < 0:
                return out
            payload = self._finish()
            if payload is not None:
                out.append(payload)
            start = end + 1

    def _finish(self) -> bytes | None:
        raw, overflow = bytes(self.buffer), self.overflow
        self.buffer.clear()
        self.overflow = False
        if overflow:
            self.rejected += 1
            return None
        if not raw:
            return None  # back-to-back delimiters: idle line, not an error
        try:
            decoded = cobs_decode(raw)
        except ProtocolError:
            self.rejected += 1
            return None
        if len(decoded) < 3 or crc16(decoded[:-2]) != struct.unpack("<H", decoded[-2:])[0]:
            self.rejected += 1
            return None
        self.accepted += 1
        return decoded[:-2]


# ---------------------------------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class Message:
    version: int
    seq: int
    command: int
    status: int
    body: bytes
    session: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.command & RESPONSE)

    def pack(self) -> bytes:
        return HEADER.pack(self.version, self.session, self.seq, self.command, self.status) + self.body


def parse_message(payload: bytes) -> Message:
    """A payload of this protocol version as a Message; ProtocolError for a short payload or another version (whose
    header layout may differ: only its first byte, the version, is common to all versions)."""
    if len(payload) >= 1 and payload[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version mismatch: this end speaks {PROTOCOL_VERSION}, the frame is version "
                            f"{payload[0]}")
    if len(payload) < HEADER.size:
        raise ProtocolError(f"payload of {len(payload)} bytes is shorter than the {HEADER.size}-byte header")
    version, session, seq, command, status = HEADER.unpack_from(payload)
    return Message(version, seq, command, status, bytes(payload[HEADER.size:]), session)


class Reader:
    """Sequential struct reads from a body with a clear error when it is too short or too long."""

    def __init__(self, body: bytes, what: str):
        self.body, self.pos, self.what = body, 0, what

    def take(self, fmt: str):
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.body):
            raise ProtocolError(f"{self.what}: body of {len(self.body)} bytes is too short")
        values = s.unpack_from(self.body, self.pos)
        self.pos += s.size
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int):
        import numpy as np

        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.body):
            raise ProtocolError(f"{self.what}: body of {len(self.body)} bytes is too short for {count} values")
        out = np.frombuffer(self.body, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += size
        return out

    def text(self) -> str:
        n = self.take("B")
        if self.pos + n > len(self.body):
            raise ProtocolError(f"{self.what}: body too short for a {n}-byte string")
        value = self.body[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return value

    def done(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolError(f"{self.what}: {len(self.body) - self.pos} unexpected trailing bytes")


def text(value: str) -> bytes:
    data = value.encode("utf-8")[:255]
    return struct.pack("<B", len(data)) + data


REGION = struct.Struct("<HHHH")  # row0, rows, col0, cols
