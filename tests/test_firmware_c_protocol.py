"""The C port of the link protocol (firmware_model/c/el_protocol.c, through firmware_model/cprotocol.py) against the
Python codec (firmware_model/protocol.py), byte for byte: CRC, COBS, frames, the streaming decoder (same payloads,
same accept/reject counts, same state after every chunk), headers, NAKs, constants."""

from __future__ import annotations

import itertools
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from firmware_model import cbuild
from firmware_model import protocol as p

try:
    from firmware_model import cprotocol as c
except cbuild.BuildError as exc:  # only a machine without any C compiler skips; a refused build fails
    if "no C compiler" not in str(exc):
        raise
    pytest.skip(str(exc), allow_module_level=True)

C_DIR = Path(cbuild.__file__).resolve().parent / "c"

# payload lengths around every COBS block boundary (the frame adds 2 CRC bytes: 252 + 2 = 254) and the limits
BOUNDARY_LENGTHS = sorted({0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 251, 252, 253, 254, 255, 256, 257, 505, 506, 507, 508,
                           509, 510, 761, 762, 763, 1016, 4096, 8191, p.MAX_PAYLOAD - 256, p.MAX_PAYLOAD - 254,
                           p.MAX_PAYLOAD - 3, p.MAX_PAYLOAD - 2, p.MAX_PAYLOAD - 1, p.MAX_PAYLOAD})


def _nonzero(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).replace(b"\x00", bytes([rng.randrange(1, 256)]))


def _kind(rng: random.Random, n: int, kind: str) -> bytes:
    """One payload of length n: random (zeros likely), random without zeros, sparse zeros, all zero, all 0xFF, zeros
    exactly at block boundaries, one zero at the end, one at the start."""
    if kind == "random":
        return rng.randbytes(n)
    if kind == "nonzero":
        return _nonzero(rng, n)
    if kind == "sparse":
        data = bytearray(_nonzero(rng, n))
        for _ in range(n // 100 + 1):
            if n:
                data[rng.randrange(n)] = 0
        return bytes(data)
    if kind == "zeros":
        return bytes(n)
    if kind == "ff":
        return b"\xff" * n
    if kind == "every254":
        return bytes(0 if i % 255 == 254 else 0x5A for i in range(n))
    if kind == "every253":
        return bytes(0 if i % 254 == 253 else 0xA5 for i in range(n))
    if kind == "zero-last":
        return (b"\x11" * (n - 1) + b"\x00")[:n]
    if kind == "zero-first":
        return (b"\x00" + b"\x22" * (n - 1))[:n]
    raise ValueError(kind)


KINDS = ("random", "nonzero", "sparse", "zeros", "ff", "every254", "every253", "zero-last", "zero-first")


def _kinds(rng: random.Random, n: int) -> dict[str, bytes]:
    return {kind: _kind(rng, n, kind) for kind in KINDS}


def _payloads(seed: int, count: int, max_len: int = p.MAX_PAYLOAD) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.choice([rng.randrange(0, 16), rng.randrange(0, 600), rng.randrange(0, max_len + 1)])
        out.append(_kind(rng, n, rng.choice(KINDS)))
    return out


# ---------------------------------------------------------------------------------------------------- constants

def test_constants_match_protocol_py():
    derived = {"HEADER_SIZE": p.HEADER.size, "V1_HEADER_SIZE": p.V1_HEADER.size,
               "NAK_SIZE": p.HEADER.size + p.NAK_BODY.size}
    assert set(c.CONSTANTS) >= {"PROTOCOL_VERSION", "MAX_PAYLOAD", "MAX_FRAME", "HEADER_SIZE", "RESPONSE",
                                *(name.upper().replace("-", "_") for name in p.COMMAND_NAMES.values()),
                                "OK", "E_UNKNOWN_COMMAND", "E_BAD_LENGTH", "E_BAD_ARGUMENT", "E_UNSUPPORTED",
                                "E_VERSION", "E_NOT_CONFIGURED", "E_INTERNAL", "E_BAD_FRAME", "E_BUSY", "E_STALE"}
    for name, value in c.CONSTANTS.items():
        expected = derived[name] if name in derived else getattr(p, name)
        assert value == expected, name
    # every command and status code protocol.py defines is in the C table
    assert sorted(c.CONSTANTS[n.upper().replace("-", "_")] for n in p.COMMAND_NAMES.values()) == sorted(p.COMMAND_NAMES)
    status = {v for k, v in c.CONSTANTS.items() if k == "OK" or k.startswith("E_")}
    assert status == set(p.STATUS_NAMES)


def test_header_macros():
    text = (C_DIR / "el_protocol.h").read_text()
    for name in ("PROTOCOL_VERSION", "MAX_PAYLOAD", "HEADER_SIZE", "RESPONSE"):
        assert re.search(rf"#define EL_{name}\b", text), name
    for code, name in p.COMMAND_NAMES.items():
        assert re.search(rf"#define EL_CMD_{name.upper().replace('-', '_')} 0x{code:02X}\b", text), name


# ---------------------------------------------------------------------------------------------------- CRC

@pytest.mark.parametrize("data, crc", [
    (b"", 0xFFFF),
    (b"123456789", 0x29B1),  # the CRC-16/CCITT-FALSE check value
    (b"A", 0xB915),
    (bytes.fromhex("020b0a02010100"), 0xFD48),  # docs/protocol.md worked example
    (b"\x00", 0xE1F0),
    (b"\xff\xff", 0x0000),  # the data cancels the initial value
    (bytes(256), 0x41E8),
])
def test_crc16_known_vectors(data, crc):
    assert p.crc16(data) == crc
    assert c.crc16(data) == crc


def test_crc16_random():
    for seed, data in enumerate(_payloads(1, 200)):
        assert c.crc16(data) == p.crc16(data), seed
    for n in BOUNDARY_LENGTHS:
        for kind, data in _kinds(random.Random(n), n).items():
            assert c.crc16(data) == p.crc16(data), (n, kind)


# ---------------------------------------------------------------------------------------------------- COBS

def test_cobs_boundaries_byte_exact_and_round_trip():
    for n in sorted({*BOUNDARY_LENGTHS, *(x + 2 for x in BOUNDARY_LENGTHS), 1270, 1271}):
        for kind, data in _kinds(random.Random(1000 + n), n).items():
            enc = c.cobs_encode(data)
            assert enc == p.cobs_encode(data), (n, kind)
            assert 0 not in enc and len(enc) <= n + n // 254 + 1
            assert c.cobs_decode(enc) == data == p.cobs_decode(enc), (n, kind)


def test_cobs_random_round_trip():
    for i, data in enumerate(_payloads(2, 300, max_len=3 * p.MAX_PAYLOAD)):
        enc = c.cobs_encode(data)
        assert enc == p.cobs_encode(data), i
        assert c.cobs_decode(enc) == data, i


def _same_decode(data: bytes):
    try:
        expected = p.cobs_decode(data)
    except p.ProtocolError as exc:
        with pytest.raises(p.ProtocolError) as got:
            c.cobs_decode(data)
        assert str(got.value) == str(exc), data.hex()
        return False
    assert c.cobs_decode(data) == expected, data.hex()
    return True


def test_cobs_decode_exhaustive_short_inputs():
    decisions = []
    for n in range(3):
        for t in itertools.product(range(256), repeat=n):
            decisions.append(_same_decode(bytes(t)))
    for t in itertools.product((0, 1, 2, 3, 4, 5, 254, 255), repeat=4):
        decisions.append(_same_decode(bytes(t)))
    assert 500 < sum(decisions) < len(decisions) - 500  # both outcomes well covered


def test_cobs_decode_crafted():
    cases = [b"", b"\x01", b"\x01\x01", b"\x02", b"\x05\x00\x01", b"\x03\x00", b"\x02\x00\x01", b"\xff",
             b"\xff" + b"\x01" * 254, b"\xff" + b"\x01" * 253, b"\xff" + b"\x01" * 254 + b"\x01",
             b"\xff" + b"\x01" * 254 + b"\x02\x07", b"\xfe" + b"\x01" * 253 + b"\x01", b"\x01" * 300,
             b"\xff" + b"\x01" * 200 + b"\x00" + b"\x01" * 53]
    for data in cases:
        _same_decode(data)


def test_cobs_decode_random_garbage():
    rng = random.Random(3)
    for _ in range(3000):
        n = rng.choice([rng.randrange(1, 8), rng.randrange(1, 300), rng.randrange(1, 2000)])
        if rng.random() < 0.5:
            data = bytes(rng.randrange(1, 256) for _ in range(n))  # no zero: most fail by overrun, some decode
        else:
            data = rng.randbytes(n)
        _same_decode(data)
    # valid encodings damaged by one change
    for data in _payloads(4, 300, max_len=2000):
        enc = bytearray(p.cobs_encode(data))
        i = rng.randrange(len(enc))
        enc[i] = rng.choice([0, rng.randrange(256), enc[i] ^ (1 << rng.randrange(8))])
        _same_decode(bytes(enc))
        _same_decode(bytes(enc[:rng.randrange(len(enc) + 1)]))


# ---------------------------------------------------------------------------------------------------- frames

def test_encode_frame_worked_example():
    payload = p.Message(2, 0x0102, p.IDENTIFY, 0, b"", session=0x0A0B).pack()
    assert c.encode_frame(payload) == bytes.fromhex("00 07 02 0b 0a 02 01 01 03 48 fd 00 00")


def test_encode_frame_boundaries_byte_exact():
    for n in BOUNDARY_LENGTHS:
        for kind, data in _kinds(random.Random(2000 + n), n).items():
            frame = c.encode_frame(data)
            assert frame == p.encode_frame(data), (n, kind)
            assert frame[0] == 0 and frame[-2:] == b"\x00\x00" and 0 not in frame[1:-2]
            assert len(frame) <= 1 + (n + 2) + (n + 2) // 254 + 1 + 2
            assert len(frame) - 3 <= p.MAX_FRAME


def test_encode_frame_random_byte_exact():
    for i, data in enumerate(_payloads(5, 400)):
        assert c.encode_frame(data) == p.encode_frame(data), i


def test_encode_frame_refuses_oversize_like_python():
    for n in (p.MAX_PAYLOAD + 1, p.MAX_PAYLOAD + 2, 3 * p.MAX_PAYLOAD):
        with pytest.raises(p.ProtocolError) as expected:
            p.encode_frame(bytes(n))
        with pytest.raises(p.ProtocolError) as got:
            c.encode_frame(bytes(n))
        assert str(got.value) == str(expected.value)


# ---------------------------------------------------------------------------------------------------- decoder

def _state(dec) -> tuple:
    return dec.accepted, dec.rejected, bool(dec.overflow), bytes(dec.buffer)


def _compare_stream(stream: bytes, rng: random.Random, max_frame: int = p.MAX_FRAME, what: str = "") -> list[bytes]:
    """Feed the same stream to both decoders in the same random chunks, then byte by byte through the C per-byte
    call: the payloads of every chunk and the state after it must agree."""
    py, cd = p.FrameDecoder(max_frame), c.FrameDecoder(max_frame)
    pos, got = 0, []
    while pos < len(stream):
        size = rng.choice([1, 2, rng.randrange(1, 64), rng.randrange(1, 4096), len(stream)])
        chunk = stream[pos:pos + size]
        pos += size
        expected = py.feed(chunk)
        assert cd.feed(chunk) == expected, what
        assert _state(cd) == _state(py), what
        got += expected
    assert all(r > 0 or r < 0 for r in cd.results)
    assert sum(r > 0 for r in cd.results) == cd.accepted and sum(r < 0 for r in cd.results) == cd.rejected

    byte_dec, payloads = c.FrameDecoder(max_frame), []
    for b in stream:
        r, payload = byte_dec.feed_byte(b)
        assert (r > 0) == (payload is not None)
        if payload is not None:
            assert len(payload) == r
            payloads.append(payload)
    assert payloads == got, what
    assert _state(byte_dec) == _state(py) and byte_dec.results == cd.results, what
    return got


def _corrupt(frame: bytes, rng: random.Random) -> bytes:
    f = bytearray(frame)
    op = rng.randrange(7)
    if op == 0 and f:  # bit flips
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(f))
            f[i] ^= 1 << rng.randrange(8)
    elif op == 1 and f:  # byte drops
        for _ in range(rng.randrange(1, 4)):
            if f:
                del f[rng.randrange(len(f))]
    elif op == 2:  # inserted noise
        for _ in range(rng.randrange(1, 4)):
            f.insert(rng.randrange(len(f) + 1), rng.randrange(256))
    elif op == 3:  # truncated
        f = f[:rng.randrange(len(f) + 1)]
    elif op == 4:  # a closing delimiter lost
        f = f[:-1]
    elif op == 5 and len(f) > 3:  # the leading delimiter lost: glued to the noise before it
        f = f[1:]
    return bytes(f)


def test_decoder_clean_stream_of_many_frames():
    payloads = _payloads(6, 60)
    stream = b"".join(p.encode_frame(x) for x in payloads)
    rng = random.Random(6)
    got = _compare_stream(stream, rng)
    assert got == [x for x in payloads if len(x) >= 1]  # an empty payload decodes to 2 bytes: rejected as short


def test_decoder_empty_payload_and_idle_line():
    rng = random.Random(7)
    stream = b"\x00" * 10 + p.encode_frame(b"") + b"\x00" * 3 + p.encode_frame(b"\x02") + p.encode_frame(b"")
    assert _compare_stream(stream, rng) == [b"\x02"]
    dec = c.FrameDecoder()
    dec.feed(stream)
    assert (dec.accepted, dec.rejected) == (1, 2) and dec.results == [c.ERR_SHORT, 1, c.ERR_SHORT]


def test_decoder_error_codes():
    good = p.encode_frame(b"\x02hello")
    flipped = bytearray(good)
    flipped[3] ^= 0x01
    cases = [
        (good, [6]),
        (bytes(flipped), [c.ERR_CRC]),
        (b"\x00\x05\x01\x00", [c.ERR_COBS_OVERRUN]),
        (b"\x00\x01\x01\x00", [c.ERR_SHORT]),
        (b"\x00\x03\x01\x01\x00", [c.ERR_SHORT]),
        (b"\x00" + b"\x07" * (p.MAX_FRAME + 1) + b"\x00", [c.ERR_OVERFLOW]),
    ]
    for stream, results in cases:
        dec = c.FrameDecoder()
        dec.feed(stream)
        assert dec.results == results, stream[:16].hex()
        py = p.FrameDecoder()
        py.feed(stream)
        assert (py.accepted, py.rejected) == (dec.accepted, dec.rejected)


def test_decoder_corrupted_streams_with_garbage():
    rng = random.Random(8)
    for trial in range(120):
        parts = []
        for payload in _payloads(100 + trial, rng.randrange(1, 8), max_len=rng.choice([40, 600, p.MAX_PAYLOAD])):
            frame = p.encode_frame(payload)
            if rng.random() < 0.4:
                frame = _corrupt(frame, rng)
            if rng.random() < 0.3:
                parts.append(rng.randbytes(rng.randrange(0, 40)))  # line noise between frames
            parts.append(frame)
        if rng.random() < 0.3:
            parts.append(p.encode_frame(b"\x02tail")[:-2])  # ends mid-way: the last frame is not yet closed
        _compare_stream(b"".join(parts), rng, what=f"trial {trial}")


def test_decoder_random_bit_flips_and_drops_over_whole_stream():
    rng = random.Random(9)
    for trial in range(40):
        stream = bytearray(b"".join(p.encode_frame(x) for x in _payloads(200 + trial, 12, max_len=1500)))
        for i in range(len(stream)):
            if rng.random() < 0.002:
                stream[i] ^= 1 << rng.randrange(8)
        stream = bytes(b for b in stream if rng.random() >= 0.001)
        _compare_stream(stream, rng, what=f"trial {trial}")


def test_decoder_pure_garbage():
    rng = random.Random(10)
    for trial in range(60):
        n = rng.randrange(1, 5000)
        stream = rng.randbytes(n) if trial % 2 else bytes(rng.choice((0, 1, 2, 3, 255)) for _ in range(n))
        _compare_stream(stream, rng, what=f"trial {trial}")


def _full_run(length: int, seed: int) -> tuple[bytes, bytes]:
    """A valid frame (payload, run between delimiters) whose COBS run is exactly `length` bytes: a payload without
    zeros whose CRC has no zero byte, no delimiters."""
    rng = random.Random(seed)
    while True:
        k = length - 1 - (length - 1) // 255  # data bytes for a run of `length` COBS bytes without zeros
        payload = bytes(rng.randrange(1, 256) for _ in range(k - 2))
        raw = payload + struct.pack("<H", p.crc16(payload))
        enc = p.cobs_encode(raw)
        if 0 not in raw and len(enc) == length:
            return payload, enc


def test_decoder_oversize_boundary():
    rng = random.Random(11)
    # a run of exactly MAX_FRAME bytes is kept (its payload is longer than MAX_PAYLOAD: FrameDecoder does not check)
    payload, run = _full_run(p.MAX_FRAME, 11)
    assert len(run) == p.MAX_FRAME and len(payload) > p.MAX_PAYLOAD
    stream = b"\x00" + run + b"\x00\x00"
    assert _compare_stream(stream, rng) == [payload]
    # one byte more: discarded, and the next frame still comes through
    after = p.encode_frame(b"\x02after")
    stream = b"\x00" + b"\x01" + run + b"\x00" + after
    assert _compare_stream(stream, rng) == [b"\x02after"]
    # a long run without any delimiter, with frames before and after; fed in pieces
    stream = p.encode_frame(b"\x02a") + b"\x33" * (3 * p.MAX_FRAME + 17) + p.encode_frame(b"\x02b")
    assert _compare_stream(stream, rng) == [b"\x02a", b"\x02b"]
    # the largest real frame
    big = bytes(rng.randrange(1, 256) for _ in range(p.MAX_PAYLOAD))
    assert _compare_stream(p.encode_frame(big), rng) == [big]


@pytest.mark.parametrize("max_frame", [0, 1, 2, 3, 4, 10, 254, 255, 256, 300, 1000])
def test_decoder_small_max_frame(max_frame):
    rng = random.Random(12 + max_frame)
    for trial in range(10):
        parts = []
        for payload in _payloads(300 + trial, 8, max_len=max_frame + 20):
            frame = p.encode_frame(payload)
            parts.append(_corrupt(frame, rng) if rng.random() < 0.3 else frame)
            if rng.random() < 0.3:
                parts.append(rng.randbytes(rng.randrange(0, 30)))
        _compare_stream(b"".join(parts), rng, max_frame, what=f"max_frame {max_frame} trial {trial}")


def test_decoder_refuses_max_frame_beyond_buffer():
    with pytest.raises(ValueError):
        c.FrameDecoder(p.MAX_FRAME + 1)


# ---------------------------------------------------------------------------------------------------- messages

def test_nak_bytes():
    assert c.nak(0x0A0B, 0x0102) == bytes.fromhex("02 00 00 00 00 80 08 0b 0a 02 01")  # docs/protocol.md
    rng = random.Random(13)
    values = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x12345, -1, -0x8000]
    for session, seq in [*itertools.product(values, repeat=2), *((rng.randrange(1 << 20), rng.randrange(1 << 20))
                                                                  for _ in range(500))]:
        assert c.nak(session, seq) == p.nak(session, seq), (session, seq)


def test_header_pack_and_parse():
    rng = random.Random(14)
    for _ in range(2000):
        fields = (rng.choice([2, rng.randrange(256)]), rng.randrange(1 << 16), rng.randrange(1 << 16),
                  rng.randrange(256), rng.randrange(256))
        packed = c.pack_header(*fields)
        assert packed == p.HEADER.pack(*fields)
        body = rng.randbytes(rng.randrange(0, 20))
        _same_parse(packed + body)
        _same_parse((packed + body)[:rng.randrange(0, 8)])
    for payload in (b"", b"\x02", b"\x01", b"\x02" * 6, b"\x02" * 7, b"\x03" * 7, b"\x00"):
        _same_parse(payload)


def _same_parse(payload: bytes):
    try:
        m = p.parse_message(payload)
    except p.ProtocolError as exc:
        with pytest.raises(p.ProtocolError) as got:
            c.parse_header(payload)
        assert str(got.value) == str(exc)
        return
    assert c.parse_header(payload) == (m.version, m.session, m.seq, m.command, m.status)


# ---------------------------------------------------------------------------------------------------- portability

def test_sources_are_freestanding():
    allowed = {"<stdint.h>", "<stddef.h>", "<stdbool.h>", '"el_protocol.h"'}
    for name in ("el_protocol.h", "el_protocol.c"):
        text = (C_DIR / name).read_text()
        includes = set(re.findall(r"#\s*include\s+([<\"][^>\"]+[>\"])", text))
        assert includes <= allowed, (name, includes - allowed)
        assert not re.search(r"\b(malloc|calloc|realloc|free|memcpy|memset|memmove|printf)\s*\(", text), name


def test_object_has_no_undefined_symbols(tmp_path):
    cc = cbuild.compiler()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm to list the object's symbols")
    obj = tmp_path / "el_protocol.o"
    cmd = [*cc, "-std=c11", "-O2", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
           str(C_DIR / "el_protocol.c"), "-o", str(obj)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, timeout=60)
    assert undefined.returncode == 0, undefined.stderr
    assert undefined.stdout.strip() == "", f"calls outside the unit: {undefined.stdout}"
