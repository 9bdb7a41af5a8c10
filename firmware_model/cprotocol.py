"""ctypes bindings of the C port of the link protocol (firmware_model/c/el_protocol.c), with the same behaviour as
`firmware_model.protocol`: crc16, cobs_encode, cobs_decode, encode_frame, FrameDecoder, nak, plus the header helpers
pack_header and parse_header. Errors are `protocol.ProtocolError` with the Python codec's messages.

The library is built on first use (`cbuild.load`); tests/test_firmware_c_protocol.py checks it byte for byte against
protocol.py.
"""

from __future__ import annotations

import ctypes

from . import protocol as _py
from .cbuild import load

ProtocolError = _py.ProtocolError

_lib = load(("el_protocol",))

# error codes (el_protocol.h)
ERR_CAPACITY = -1
ERR_COBS_ZERO = -2
ERR_COBS_OVERRUN = -3
ERR_TOO_LONG = -4
ERR_SHORT = -5
ERR_CRC = -6
ERR_OVERFLOW = -7
ERR_VERSION = -8
ERR_SHORT_HEADER = -9
ERR_ARGUMENT = -10
ERROR_NAMES = {ERR_CAPACITY: "output buffer too small", ERR_COBS_ZERO: "zero byte inside a COBS frame",
               ERR_COBS_OVERRUN: "COBS code runs past the end of the frame", ERR_TOO_LONG: "payload too long",
               ERR_SHORT: "frame shorter than 3 bytes", ERR_CRC: "CRC mismatch",
               ERR_OVERFLOW: "frame longer than max_frame", ERR_VERSION: "protocol version mismatch",
               ERR_SHORT_HEADER: "payload shorter than the header", ERR_ARGUMENT: "bad argument"}

_u8p = ctypes.POINTER(ctypes.c_uint8)
_size = ctypes.c_size_t
_ssize = ctypes.c_ssize_t  # ptrdiff_t


class _NamedConstant(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_int32)]


class Header(ctypes.Structure):
    """el_header."""
    _fields_ = [("version", ctypes.c_uint8), ("session", ctypes.c_uint16), ("seq", ctypes.c_uint16),
                ("command", ctypes.c_uint8), ("status", ctypes.c_uint8)]


def _constants() -> dict[str, int]:
    table = ctypes.POINTER(_NamedConstant)()
    n = _lib.el_protocol_constants(ctypes.byref(table))
    return {table[i].name.decode(): table[i].value for i in range(n)}


_lib.el_crc16.argtypes = [ctypes.c_char_p, _size]
_lib.el_crc16.restype = ctypes.c_uint16
_lib.el_cobs_encode.argtypes = [ctypes.c_char_p, _size, _u8p, _size]
_lib.el_cobs_encode.restype = _ssize
_lib.el_cobs_decode.argtypes = [ctypes.c_char_p, _size, _u8p, _size]
_lib.el_cobs_decode.restype = _ssize
_lib.el_encode_frame.argtypes = [ctypes.c_char_p, _size, _u8p, _size]
_lib.el_encode_frame.restype = _ssize
_lib.el_decoder_init_limit.argtypes = [ctypes.c_void_p, _size]
_lib.el_decoder_init_limit.restype = ctypes.c_int
_lib.el_decoder_feed_byte.argtypes = [ctypes.c_void_p, ctypes.c_uint8, _u8p, _size]
_lib.el_decoder_feed_byte.restype = _ssize
_lib.el_decoder_feed.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _size, _u8p, _size, ctypes.POINTER(_size)]
_lib.el_decoder_feed.restype = _ssize
_lib.el_header_pack.argtypes = [ctypes.POINTER(Header), _u8p]
_lib.el_header_pack.restype = _size
_lib.el_header_parse.argtypes = [ctypes.c_char_p, _size, ctypes.POINTER(Header)]
_lib.el_header_parse.restype = _ssize
_lib.el_nak.argtypes = [ctypes.c_uint16, ctypes.c_uint16, _u8p]
_lib.el_nak.restype = _size
_lib.el_protocol_constants.argtypes = [ctypes.POINTER(ctypes.POINTER(_NamedConstant))]
_lib.el_protocol_constants.restype = _size
_lib.el_decoder_size.argtypes = []
_lib.el_decoder_size.restype = _size

CONSTANTS = _constants()  # the C constants by their protocol.py names
PROTOCOL_VERSION = CONSTANTS["PROTOCOL_VERSION"]
HEADER_SIZE = CONSTANTS["HEADER_SIZE"]
MAX_PAYLOAD = CONSTANTS["MAX_PAYLOAD"]
MAX_FRAME = CONSTANTS["MAX_FRAME"]
NAK_SIZE = CONSTANTS["NAK_SIZE"]
DECODER_MAX_PAYLOAD = MAX_FRAME - 3  # EL_DECODER_MAX_PAYLOAD


def _cobs_bound(n: int) -> int:
    return n + n // 254 + 1  # EL_COBS_MAX_ENCODED


def _buffer(n: int):
    return (ctypes.c_uint8 * max(n, 1))()


def _check(result: int, what: str) -> int:
    if result < 0:
        if result in (ERR_COBS_ZERO, ERR_COBS_OVERRUN):
            raise ProtocolError(ERROR_NAMES[result])
        raise RuntimeError(f"{what}: {ERROR_NAMES.get(result, 'error')} ({result})")  # a bug in the binding
    return result


def crc16(data: bytes) -> int:
    data = bytes(data)
    return _lib.el_crc16(data, len(data))


def cobs_encode(data: bytes) -> bytes:
    data = bytes(data)
    out = _buffer(_cobs_bound(len(data)))
    n = _check(_lib.el_cobs_encode(data, len(data), out, len(out)), "cobs_encode")
    return bytes(out[:n])


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; ProtocolError on a zero byte or a code running past the end (as protocol.py)."""
    data = bytes(data)
    out = _buffer(len(data))
    n = _check(_lib.el_cobs_decode(data, len(data), out, len(out)), "cobs_decode")
    return bytes(out[:n])


def encode_frame(payload: bytes) -> bytes:
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:  # the C side returns ERR_TOO_LONG; raise the Python codec's message
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    out = _buffer(1 + _cobs_bound(len(payload) + 2) + 2)
    n = _check(_lib.el_encode_frame(payload, len(payload), out, len(out)), "encode_frame")
    return bytes(out[:n])


def nak(session: int, seq: int) -> bytes:
    out = _buffer(NAK_SIZE)
    n = _lib.el_nak(session & 0xFFFF, seq & 0xFFFF, out)
    return bytes(out[:n])


def pack_header(version: int, session: int, seq: int, command: int, status: int) -> bytes:
    """HEADER.pack (fields must fit their types, as struct requires)."""
    for value, limit in ((version, 0xFF), (session, 0xFFFF), (seq, 0xFFFF), (command, 0xFF), (status, 0xFF)):
        if not 0 <= value <= limit:
            raise ProtocolError(f"header field {value} out of range")
    out = _buffer(HEADER_SIZE)
    n = _lib.el_header_pack(ctypes.byref(Header(version, session, seq, command, status)), out)
    return bytes(out[:n])


def parse_header(payload: bytes) -> tuple[int, int, int, int, int]:
    """(version, session, seq, command, status) as parse_message reads them; ProtocolError on another version or a
    payload shorter than the header (checked in that order)."""
    payload = bytes(payload)
    h = Header()
    r = _lib.el_header_parse(payload, len(payload), ctypes.byref(h))
    if r == ERR_VERSION:
        raise ProtocolError(f"protocol version mismatch: this end speaks {PROTOCOL_VERSION}, the frame is version "
                            f"{payload[0]}")
    if r == ERR_SHORT_HEADER:
        raise ProtocolError(f"payload of {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte header")
    _check(r, "parse_header")
    return h.version, h.session, h.seq, h.command, h.status


class _Decoder(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_uint8 * MAX_FRAME), ("len", _size), ("max_frame", _size), ("overflow", ctypes.c_bool),
                ("accepted", ctypes.c_uint32), ("rejected", ctypes.c_uint32)]


if ctypes.sizeof(_Decoder) != _lib.el_decoder_size():
    raise ImportError(f"el_frame_decoder is {_lib.el_decoder_size()} bytes in C, {ctypes.sizeof(_Decoder)} here")


class FrameDecoder:
    """protocol.FrameDecoder over the C el_frame_decoder: `feed(data)` returns the payloads of the complete valid
    frames; `rejected` and `accepted` count as the Python's do. max_frame may be at most MAX_FRAME (the C decoder's
    buffer is static). `results` keeps every non-zero return code of the C decoder (payload lengths and negative
    EL_ERR_* codes) in order, for tests."""

    def __init__(self, max_frame: int = MAX_FRAME):
        if not 0 <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must lie within 0..{MAX_FRAME}, not {max_frame}")
        self._dec = _Decoder()
        if _lib.el_decoder_init_limit(ctypes.byref(self._dec), max_frame) != 0:
            raise RuntimeError("el_decoder_init_limit refused max_frame")
        self._out = _buffer(DECODER_MAX_PAYLOAD)
        self.results: list[int] = []

    max_frame = property(lambda self: self._dec.max_frame)
    accepted = property(lambda self: self._dec.accepted)
    rejected = property(lambda self: self._dec.rejected)
    overflow = property(lambda self: bool(self._dec.overflow))
    buffer = property(lambda self: bytes(self._dec.buf[:self._dec.len]))  # the current run's bytes

    def feed(self, data: bytes) -> list[bytes]:
        data = bytes(data)
        if not data:
            return []
        buf = ctypes.create_string_buffer(data, len(data))
        base, pos, n = ctypes.addressof(buf), 0, len(data)
        out = []
        used = _size()
        while pos < n:
            r = _lib.el_decoder_feed(ctypes.byref(self._dec), base + pos, n - pos, self._out, len(self._out),
                                     ctypes.byref(used))
            if r != 0:
                self.results.append(r)
            if r > 0:
                out.append(bytes(self._out[:r]))
            pos += used.value
        return out

    def feed_byte(self, byte: int) -> tuple[int, bytes | None]:
        """One byte through el_decoder_feed_byte: (its return code, the payload when one ends here)."""
        r = _lib.el_decoder_feed_byte(ctypes.byref(self._dec), byte, self._out, len(self._out))
        if r != 0:
            self.results.append(r)
        return r, (bytes(self._out[:r]) if r > 0 else None)
