"""Hardware in the loop: the protocol codec, the board firmware's interpreter, the host link (retries, resync,
errors) and the lab procedures against the board emulator over a real pseudo-terminal."""

import dataclasses
import os
import random
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgelearn.board import Tile
from edgelearn.devices import DeviceVariation, fit_device, load_card
from edgelearn.errors import EdgelearnError
from edgelearn.hil import BoardReportedError, HilError, SerialBoard, SerialLink, characterize, compare
from edgelearn.hil.emulator import BoardEmulator, BoardFirmware, Faults
from firmware_model import protocol as p
from hil_fakes import ScriptedPort

CARD = "ID161ZR15000-20ns-20241024T110402"
pytestmark = [pytest.mark.skipif(not hasattr(os, "openpty"), reason="the board emulator needs a pseudo-terminal"),
              pytest.mark.usefixtures("board_firmware")]  # every test against the Python and the C firmware


def ref_cobs(data: bytes) -> bytes:
    """Textbook COBS encoder, byte by byte."""
    out, code_at, code = bytearray([0]), 0, 1
    for byte in data:
        if byte == 0:
            out[code_at], code_at, code = code, len(out), 1
            out.append(0)
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_at], code_at, code = code, len(out), 1
                out.append(0)
    out[code_at] = code
    return bytes(out)


def request(command, body=b"", seq=1, version=p.PROTOCOL_VERSION):
    return p.Message(version, seq, command, 0, body).pack()


@pytest.fixture(scope="module")
def card():
    return load_card(CARD)


# ---------------------------------------------------------------------------------------------------- codec

def test_crc_and_cobs_match_references():
    assert p.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    rng = random.Random(0)
    for n in list(range(0, 520)) + [rng.randrange(0, 3000) for _ in range(200)]:
        for zeros in (0.0, 0.01, 0.4):
            data = bytes(0 if rng.random() < zeros else rng.randrange(1, 256) for _ in range(n))
            encoded = p.cobs_encode(data)
            assert encoded == ref_cobs(data) and 0 not in encoded
            assert p.cobs_decode(encoded) == data


def test_decoder_resynchronises_after_garbage():
    frames = [p.encode_frame(request(p.IDENTIFY, seq=k)) for k in range(3)]
    stream = b"\x13\x37garbage" + frames[0] + b"\x05\x01\x02\x00" + frames[1][:4] + b"\x00" + frames[2]
    decoder = p.FrameDecoder()
    got = []
    for k in range(0, len(stream), 3):  # byte dribbles, as a UART delivers them
        got += decoder.feed(stream[k:k + 3])
    assert [p.parse_message(g).seq for g in got] == [0, 2]
    assert decoder.rejected == 3  # the garbage, the junk frame, the truncated frame
    big = p.FrameDecoder(max_frame=64)
    assert big.feed(b"\x01" * 500 + b"\x00" + frames[0]) == [request(p.IDENTIFY, seq=0)]
    assert big.rejected == 1


# ---------------------------------------------------------------------------------------------------- firmware

def test_board_answers_every_kind_of_bad_request(card):
    fw = BoardFirmware([card], 4, 4, seed=0)

    def status(payload):
        response = p.parse_message(fw.handle(payload))
        return response.status, p.Reader(response.body, "").text() if response.status else ""

    assert status(request(0x42, seq=1)) == (p.E_UNKNOWN_COMMAND, "unknown command 0x42")
    assert status(request(p.IDENTIFY, b"\x00", seq=2))[0] == p.E_BAD_LENGTH
    assert status(request(p.APPLY_PULSES, struct.pack("<BHHbH", 0, 0, 0, 1, 1), seq=3)) == (
        p.E_NOT_CONFIGURED, "configure the pulse (width, amplitude) before pulsing")
    assert status(request(p.CONFIGURE_PULSE, struct.pack("<Ih", 2000, 3000), seq=4)) == (
        p.E_UNSUPPORTED, "pulse width 2000 ns not supported (board has 20 ns)")
    assert status(request(p.CONFIGURE_PULSE, struct.pack("<Ih", 20, 9000), seq=5)) == (
        p.E_UNSUPPORTED, "amplitude 9000 mV outside 500..5000 mV at 20 ns")
    assert status(request(p.CONFIGURE_PULSE, struct.pack("<Ih", 20, 3000), seq=6)) == (p.OK, "")
    assert status(request(p.READ, struct.pack("<BHH", 0, 4, 0), seq=7)) == (
        p.E_BAD_ARGUMENT, "device (4, 0) outside the 4 x 4 array")
    assert status(request(p.UPDATE, p.REGION.pack(2, 3, 0, 4) + bytes(12), seq=8))[0] == p.E_BAD_ARGUMENT
    assert status(request(p.FORWARD, p.REGION.pack(0, 4, 0, 4) + struct.pack("<4h", 64, 0, 0, 0), seq=9)) == (
        p.E_BAD_ARGUMENT, "input codes exceed the 7-bit DAC (|code| <= 63)")
    # another version: not executed, answered in the version-1 layout (all versions share it) with E_VERSION
    old = fw.handle(p.V1_HEADER.pack(1, 10, p.APPLY_PULSES, 0) + struct.pack("<BHHbH", 3, 0, 0, 1, 1))
    assert p.V1_HEADER.unpack_from(old) == (p.PROTOCOL_VERSION, 10, p.APPLY_PULSES | p.RESPONSE, p.E_VERSION)
    assert p.Reader(old[p.V1_HEADER.size:], "").text() == "board speaks protocol 2, got 1"
    assert fw.main.counters[0] == 0
    assert fw.handle(p.Message(2, 11, p.IDENTIFY | p.RESPONSE, 0, b"").pack()) is None  # responses are ignored
    if fw.implementation == "python":  # a firmware bug answers E_INTERNAL instead of killing the board
        fw.impl._read_counters = lambda r: 1 / 0
        assert status(request(p.READ_COUNTERS, seq=12)) == (p.E_INTERNAL, "ZeroDivisionError: division by zero")


def test_repeated_request_is_answered_but_not_executed_again(card):
    fw = BoardFirmware([card], 2, 2, seed=0)
    fw.handle(request(p.CONFIGURE_PULSE, struct.pack("<Ih", 20, 3000), seq=1))
    pulse = request(p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 5), seq=2)
    first = fw.handle(pulse)
    state = fw.main.state.copy()
    assert fw.handle(pulse) == first and fw.duplicates == 1
    np.testing.assert_array_equal(fw.main.state, state)
    assert fw.main.counters[0] == 20  # 4 devices x 5 up pulses, once
    fw.handle(request(p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_ALL, 0, 0, p.UP, 5), seq=3))
    assert fw.main.counters[0] == 40  # a new sequence number is a new command


def test_ten_thousand_random_and_corrupted_frames_at_board_and_host(card):
    """Neither end crashes, hangs or executes garbage; both answer / decode the next good frame."""
    rng = random.Random(7)
    fw = BoardFirmware([card], 4, 4, seed=0)
    good = [request(c, b, seq=k) for k, (c, b) in enumerate([
        (p.IDENTIFY, b""), (p.CONFIGURE_PULSE, struct.pack("<Ih", 20, 3000)),
        (p.READ, struct.pack("<BHH", p.SEL_ROW, 1, 0)), (p.READ_COUNTERS, b""),
        (p.FORWARD, p.REGION.pack(0, 4, 0, 4) + struct.pack("<4h", 63, -5, 0, 7)),
        (p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_DEVICE, 1, 1, p.DOWN, 3))])]
    board_decoder, host_decoder = p.FrameDecoder(), p.FrameDecoder()
    t0 = time.perf_counter()
    for k in range(10_000):
        kind = k % 4
        if kind == 0:  # random bytes
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        elif kind == 1:  # a good frame with bytes flipped, dropped or cut
            frame = bytearray(p.encode_frame(rng.choice(good)))
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(frame) - 1)
                if rng.random() < 0.5:
                    frame[at] ^= 1 << rng.randrange(8)
                else:
                    del frame[at]
            blob = bytes(frame)
        elif kind == 2:  # a well-framed payload (valid CRC) with a random header and body
            blob = p.encode_frame(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
        else:  # a valid header with a random body for a real command
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
            command = rng.choice([p.IDENTIFY, p.READ, p.UPDATE, p.FORWARD, p.BACKWARD, p.READ_COUNTERS])
            blob = p.encode_frame(request(command, body, seq=rng.randrange(65536)))
        for payload in board_decoder.feed(blob):
            response = fw.handle(payload)
            if response is not None and payload[0] == p.PROTOCOL_VERSION:
                assert p.parse_message(response).is_response
            elif response is not None:  # another version: E_VERSION in the version-1 layout, nothing executed
                assert p.V1_HEADER.unpack_from(response)[2:] == (payload[3] | p.RESPONSE, p.E_VERSION)
        for payload in host_decoder.feed(blob):
            try:
                p.parse_message(payload)
            except p.ProtocolError:  # another version or too short: the host skips (or reports) it, never crashes
                pass
    assert time.perf_counter() - t0 < 60
    assert board_decoder.rejected > 2000 and host_decoder.rejected > 2000
    # both resynchronise on the next good frame (of a new host: the fuzz frames' session still holds the board)
    fw.release(fw.owner)
    ok = p.encode_frame(request(p.READ_COUNTERS, seq=60000))
    (payload,) = board_decoder.feed(b"\x00" + ok)
    answer = p.parse_message(fw.handle(payload))
    assert answer.status == p.OK and answer.seq == 60000
    (payload,) = host_decoder.feed(b"\x00" + p.encode_frame(answer.pack()))
    assert p.parse_message(payload) == answer


def test_host_link_retries_with_the_same_sequence_number_and_skips_junk(card):
    fw = BoardFirmware([card], 2, 2, seed=0)
    junk = b"\x07\x99\x00" + p.encode_frame(p.Message(2, 4242, p.READ | p.RESPONSE, 0, b"stale").pack())
    link = SerialLink("fake://", timeout=5, port=ScriptedPort(fw, junk=junk, lose=2), initial_rto=0.05)
    board = SerialBoard(link=link)
    assert board.info.rows == 2 and link.stats.retries == 2 and link.stats.stale_frames >= 1
    assert fw.executed == 1 and fw.duplicates == 2  # identify ran once, answered three times
    with pytest.raises(BoardReportedError, match=r"fake://: board rejected configure-pulse: unsupported: pulse width "
                                                 r"7 ns not supported"):
        link.request(p.CONFIGURE_PULSE, struct.pack("<Ih", 7, 1000))
    with pytest.raises(EdgelearnError, match=r"^fake://: the board does not support 7 ns pulses \(it has 20 ns\)$"):
        board.configure_pulse(7, 1000)  # the host knows the board's widths from IDENTIFY: nothing is sent
    link.close()  # CLOSE frees the board for the next session at once
    dead = SerialLink("fake://", timeout=0.3, port=ScriptedPort(fw, lose=100), initial_rto=0.05)
    with pytest.raises(HilError, match=r"fake://: board not answering \(read-counters: no valid response in 0.3 s, "
                                       r"3 attempts; the board may or may not have executed it\)"):
        dead.request(p.READ_COUNTERS)  # sent at 0, 0.05 and 0.15 s (the timeout doubles); the next would be at 0.35
    capped = SerialLink("fake://", timeout=5, retries=1, port=ScriptedPort(fw, lose=100), initial_rto=0.02,
                       min_rto=0.01)
    with pytest.raises(HilError, match=r"2 attempts"):
        capped.request(p.READ_COUNTERS)


def test_big_updates_are_split_into_frames(card):
    """A 130 x 130 tile's update does not fit one frame (16 900 count bytes): it goes as row bands, and counts above
    127 as several int8 updates; the board applies exactly the matrix sent."""
    fw = BoardFirmware([card], 130, 130, seed=0)
    board = SerialBoard(link=SerialLink("fake://", port=ScriptedPort(fw)))
    tile = board.add_tile(card, 130, 130)
    counts = np.random.default_rng(0).integers(-3, 4, (130, 130))
    counts[5, 7] = 300
    assert board.send_counts(tile, counts) == np.abs(counts).sum() == fw.main.counters[0] + fw.main.counters[1]
    np.testing.assert_array_equal(fw.main.device_pulses[0, ..., 0] - fw.main.device_pulses[0, ..., 1],
                                  counts)
    assert fw.executed == 1 + 1 + 2 + 2  # identify, configure, two row bands, two more int8 rounds for (5, 7)


def test_port_errors_are_one_line():
    with pytest.raises(HilError, match=r"^/dev/edgelearn-none: port not found"):
        SerialLink("/dev/edgelearn-none")
    with pytest.raises(HilError, match=r"^socket://127.0.0.1:1: cannot open port"):
        SerialLink("socket://127.0.0.1:1", timeout=0.2)
    # loop:// echoes our own requests back: frames that are no answer, so the board "never answers"
    with pytest.raises(HilError, match=r"loop://: board not answering \(identify"):
        SerialBoard("loop://", timeout=0.05, retries=1)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores file permissions")
def test_permission_denied(tmp_path):
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        os.chmod(path, 0)
        with pytest.raises(HilError, match="permission denied"):
            SerialLink(path)
    finally:
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------------------------------------------- over a pty

def test_characterise_and_fit_recovers_the_card(card):
    """20 ns characterisation of a nominal device on the emulated board, fitted like a measured trace: granularity
    and symmetry point match the emulator's card within 10 % (in conductance: a trace's w scale is its own mean and
    range, so the comparison is made in siemens, the symmetry point against the card's conductance span)."""
    with BoardEmulator(BoardFirmware([card], 4, 4, seed=2, ideal=True)) as emu:
        with SerialBoard(emu.url) as board:
            trace = characterize(board, 20, pulses=150, cycles=2, row=1, col=2)
    assert len(trace) == 600 and set(np.unique(trace.polarity)) == {-1, 1}
    fitted = fit_device(trace)

    def physical(c):
        half = (c.g_max_s - c.g_min_s) / 2.0
        return c.figures.granularity * half, c.g_ref_s + c.figures.symmetry_point * half

    eps0, sp0 = physical(card)
    eps1, sp1 = physical(fitted)
    assert abs(eps1 / eps0 - 1) < 0.10
    assert abs(sp1 - sp0) / (card.g_max_s - card.g_min_s) < 0.10
    assert fitted.figures.nrmse < 0.01


def test_compare_on_a_noise_free_board_is_exact(card):
    with BoardEmulator(BoardFirmware([card], 4, 4, seed=3, ideal=True)) as emu:
        with SerialBoard(emu.url) as board:
            board.configure_pulse(20, 5000)
            board.apply_pulses(3, 3, p.UP, 17)  # start somewhere else than the emulator's twin
            result = compare(board, card, pulses=60, cycles=2, row=3, col=3)
    assert result.pulses_compared == 240 and result.rmse_s == 0.0 and result.max_abs_error_s == 0.0
    assert result.board_span_s > 0.5 * (card.g_max_s - card.g_min_s)


def test_noisy_cable_gives_the_same_trace_as_a_clean_one(card):
    """1 % of bytes corrupted and 1 % dropped, both ways: every command is executed exactly once, so the trace
    (c2c noise draws included) is identical to a clean run with the same seed."""
    traces, runs = [], []
    for faults in (Faults(), Faults(drop=0.01, corrupt=0.01, seed=11)):
        fw = BoardFirmware([card], 2, 2, seed=5)
        with BoardEmulator(fw, faults) as emu:
            with SerialBoard(emu.url) as board:  # the link's defaults
                traces.append(characterize(board, 20, pulses=60, cycles=1))
                runs.append((dataclasses.replace(board.link.stats), fw.executed, faults))
    (clean, clean_exec, _), (noisy, noisy_exec, faults) = runs
    np.testing.assert_array_equal(traces[0].conductance_s, traces[1].conductance_s)
    assert faults.dropped > 10 and faults.corrupted > 10 and noisy.retries > 10
    assert clean_exec == noisy_exec == clean.requests == noisy.requests  # nothing lost, nothing applied twice


def test_unplugging_mid_command_is_a_clear_error(card):
    emu = BoardEmulator(BoardFirmware([card], 2, 2), Faults(delay_ms=400)).start()
    board = SerialBoard(emu.url, timeout=5.0, retries=0)
    threading.Timer(0.1, emu.stop).start()  # the cable goes while the board holds the answer back
    t0 = time.perf_counter()
    with pytest.raises(HilError, match=r"^/dev/\S+: connection lost during read-counters \("):
        board.board_counters()
    assert time.perf_counter() - t0 < 2  # at once, not after the 5 s timeout
    board.close()


def test_serial_board_matches_the_in_process_tile(card):
    """Over the link, forward / backward and mixed-precision updates give exactly what the in-process Tile gives on
    the same (noise-free) devices: the host plays the controller's digital part with the same arithmetic."""
    fw = BoardFirmware([card], 6, 9, seed=0, ideal=True)
    tile = Tile(card, 3, 7, variation=DeviceVariation.none(), c2c_std=0.0, periphery=fw.periphery.model_copy(
        update={"noise_management": "abs_max"}))
    rng = np.random.default_rng(0)
    with BoardEmulator(fw) as emu:
        with SerialBoard(emu.url) as board:
            board.add_tile(card, 2, 9)  # occupies rows 0-1
            t = board.add_tile(card, 3, 7)  # rows 2-4, columns 0-6
            start = rng.uniform(-0.5, 0.5, (3, 7))
            fw.main.state[2:5, :7] = start
            tile.state[:] = start
            pulsed = 0
            for _ in range(4):
                xs, ds = rng.uniform(-1, 1, (5, 7)), rng.normal(0, 0.3, (5, 3))
                np.testing.assert_array_equal(board.forward_batch(t, xs), tile.forward_batch(xs))
                np.testing.assert_array_equal(board.backward_batch(t, ds), tile.backward_batch(ds))
                assert board.update_mp_batch(t, xs, ds, 0.3) == tile.update_mp_batch(xs, ds, 0.3)
                np.testing.assert_array_equal(fw.main.state[2:5, :7], tile.state)
                n = board.update_deterministic_batch(t, xs, ds, 2.0)  # one count matrix per batch, as the kernel
                assert n == tile.update_deterministic_batch(xs, ds, 2.0)
                pulsed += n
                np.testing.assert_array_equal(fw.main.state[2:5, :7], tile.state)
                np.testing.assert_array_equal(board.tiles[t].chi, tile.chi)
            assert pulsed > 0
            assert (fw.main.state[:2] == 0).all() and (fw.main.state[:, 7:] == 0).all()  # other devices untouched
            counts = board.counters(t)
            np.testing.assert_array_equal(counts.pulses_per_device_up, tile.counter_report().pulses_per_device_up)
            with pytest.raises(EdgelearnError, match="no room for a 2 x 9 tile"):
                board.add_tile(card, 2, 9)
            with pytest.raises(EdgelearnError, match="reference devices"):
                board.add_tile(card, 1, 1, references=True)


def test_cli_board_emulator_and_hil_commands(tmp_path, card):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(__import__("pathlib").Path(__file__)
                                                                            .resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "edgelearn.cli", "board-emulator", "--card", CARD, "--rows", "4",
                             "--cols", "4", "--ideal"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("/dev/")
        from edgelearn.cli import main

        assert main(["hil", "identify", "--port", url, "--json"]) == 0
        out = tmp_path / "t.csv"
        assert main(["hil", "characterize", "--port", url, "--pulse-width", "20ns", "--pulses", "40", "--cycles", "1",
                     "-o", str(out), "--quiet"]) == 0
        assert main(["device", "fit", str(out), "-o", str(tmp_path / "c.json")]) == 0
        assert main(["hil", "characterize", "--port", url, "--pulse-width", "2us", "-o", str(out), "--quiet"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_train_a_layer_on_the_board(card):
    pytest.importorskip("sktime", reason="BasicMotions ships inside sktime (a core dependency)")
    from edgelearn.hil import train_on_board

    c170 = load_card("ID170ZR5000-20ns")
    with BoardEmulator(BoardFirmware([c170], 8, 32, seed=1)) as emu:
        with SerialBoard(emu.url) as board:
            result = train_on_board(board, c170, epochs=2, lr=0.5, batch=8, seed=0)
            host = board.counters()
    assert result.sizes == [30, 4] and len(result.train_accuracy) == 2
    assert result.test_accuracy_board > 0.5 and result.test_accuracy_emulator > 0.5  # four activities: chance 0.25
    c = result.board_counters
    # the board counted exactly the pulses the host sent (write-verify programming included)
    assert c["pulses_up"] == host.pulses_per_device_up.sum() and c["pulses_down"] == host.pulses_per_device_down.sum()
    assert c["mvm_forward"] > 0 and result.round_trips > 1000
    assert result.program_misses <= 2  # write-verify stops a device that overshot (a large c2c step) where it is
