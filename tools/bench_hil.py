"""Throughput of the board link: round trips per second of small commands against the board emulator over a
pseudo-terminal and over TCP, next to the same commands handed straight to the firmware's interpreter in this process
(the reference: what the link itself costs), and a characterisation run on a clean and on a noisy cable. The
emulator runs in its own process (`edgelearn board-emulator`), as a board would.

    python tools/bench_hil.py [--n 2000] [--card ID170ZR5000-20ns]
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import subprocess
import sys
import time

from edgelearn.devices import load_card
from edgelearn.hil import SerialBoard, characterize
from edgelearn.hil import protocol as p
from firmware_model.board import BoardEmulator, BoardFirmware, Faults

COMMANDS = {
    "read-counters": (p.READ_COUNTERS, b""),
    "read one device": (p.READ, struct.pack("<BHH", p.SEL_DEVICE, 1, 1)),
    "apply one pulse": (p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_DEVICE, 1, 1, p.UP, 1)),
    "forward 8x8": (p.FORWARD, p.REGION.pack(0, 8, 0, 8) + struct.pack("<8h", *range(-30, 34, 8))),
}


@contextlib.contextmanager
def emulator_process(card: str, transport: str):
    """`edgelearn board-emulator` in its own process, as a board is: yields its URL."""
    cmd = [sys.executable, "-m", "edgelearn.cli", "board-emulator", "--card", card, "--rows", "8", "--cols", "8"]
    if transport == "tcp":
        cmd += ["--tcp", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per command and transport")
    parser.add_argument("--card", default="ID170ZR5000-20ns")
    args = parser.parse_args()
    card = load_card(args.card)
    print(f"{'command':<16} {'in-process /s':>14} {'pty /s':>9} {'tcp /s':>9} {'pty / in-process':>17}")
    for name, (command, body) in COMMANDS.items():
        fw = BoardFirmware([card], 8, 8, seed=0)
        fw.handle(p.Message(1, 1, p.CONFIGURE_PULSE, 0, struct.pack("<Ih", 20, 3000)).pack())
        for k in range(args.n + 50):
            if k == 50:  # after a warm-up, as over the link
                t0 = time.perf_counter()
            decoder = p.FrameDecoder()  # encode, decode, interpret, encode the answer: everything but the transport
            (payload,) = decoder.feed(p.encode_frame(p.Message(1, k + 2, command, 0, body).pack()))
            p.encode_frame(fw.handle(payload))
        direct = args.n / (time.perf_counter() - t0)
        rates = []
        for transport in ("pty", "tcp"):
            with emulator_process(args.card, transport) as url, SerialBoard(url, timeout=1.0) as board:
                board.configure_pulse(20, 3000)
                for _ in range(50):  # warm up (numba kernels load from the cache on first use)
                    board.link.request(command, body)
                t0 = time.perf_counter()
                for _ in range(args.n):
                    board.link.request(command, body)
                rates.append(args.n / (time.perf_counter() - t0))
        print(f"{name:<16} {direct:>14.0f} {rates[0]:>9.0f} {rates[1]:>9.0f} {rates[0] / direct:>17.3f}", flush=True)
    for label, faults in (("clean cable", Faults()), ("1 % drop + 1 % corrupt", Faults(0.01, 0.01, seed=1))):
        fw = BoardFirmware([card], 8, 8, seed=0)
        with BoardEmulator(fw, faults) as emu, SerialBoard(emu.url, timeout=0.05, retries=30) as board:
            t0 = time.perf_counter()
            trace = characterize(board, 20, pulses=200, cycles=1)
            wall = time.perf_counter() - t0
            s = board.link.stats
        print(f"characterise 400 pulses over a pty, {label}: {wall:.2f} s, {s.requests} commands, {s.retries} "
              f"retries, {s.naks} NAKs, {len(trace)} trace rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
