"""Throughput and robustness of the board link, with the link's default options.

1. Round trips per second of small commands against the board emulator over a pseudo-terminal and over TCP, next to
   the same commands handed straight to the firmware's interpreter in this process (the reference: what the link
   itself costs).
2. `hil characterize` (800 pulses: 200 per train, 2 cycles) over bad cables: 1 % and 2 % of bytes dropped plus 1 % and
   2 % corrupted, each way, with 600 ms latency spikes and a board whose first answer takes 3 s; each trace is compared
   with a clean run of the same board seed (identical = every command executed exactly once).

The emulator runs in its own process (`edgelearn board-emulator`), as a board would.

    python tools/bench_hil.py [--n 2000] [--card ID170ZR5000-20ns] [--skip-throughput] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import struct
import subprocess
import sys
import time

from edgelearn.devices import load_card
from edgelearn.hil import SerialBoard, characterize
from edgelearn.hil.emulator import BoardFirmware
from firmware_model import protocol as p

COMMANDS = {
    "read-counters": (p.READ_COUNTERS, b""),
    "read one device": (p.READ, struct.pack("<BHH", p.SEL_DEVICE, 1, 1)),
    "apply one pulse": (p.APPLY_PULSES, struct.pack("<BHHbH", p.SEL_DEVICE, 1, 1, p.UP, 1)),
    "forward 8x8": (p.FORWARD, p.REGION.pack(0, 8, 0, 8) + struct.pack("<8h", *range(-30, 34, 8))),
}


@contextlib.contextmanager
def emulator_process(card: str, transport: str, extra: list[str] | None = None):
    """`edgelearn board-emulator` in its own process, as a board is: yields its URL."""
    cmd = [sys.executable, "-m", "edgelearn.cli", "board-emulator", "--card", card, "--rows", "8", "--cols", "8"]
    cmd += extra or []
    if transport == "tcp":
        cmd += ["--tcp", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


CABLES = {  # name: board-emulator fault options
    "clean": [],
    "1 % drop + 1 % corrupt, 600 ms spikes": ["--fault-drop", "0.01", "--fault-corrupt", "0.01"],
    "2 % drop + 2 % corrupt, 600 ms spikes": ["--fault-drop", "0.02", "--fault-corrupt", "0.02"],
}
SPIKES = ["--fault-spike-ms", "600", "--fault-spike-rate", "0.01", "--fault-first-delay-ms", "3000"]


def throughput(args) -> None:
    card = load_card(args.card)
    print(f"{'command':<16} {'in-process /s':>14} {'pty /s':>9} {'tcp /s':>9} {'pty / in-process':>17}")
    for name, (command, body) in COMMANDS.items():
        fw = BoardFirmware([card], 8, 8, seed=0)
        fw.handle(p.Message(p.PROTOCOL_VERSION, 1, p.CONFIGURE_PULSE, 0, struct.pack("<Ih", 20, 3000)).pack())
        for k in range(args.n + 50):
            if k == 50:  # after a warm-up, as over the link
                t0 = time.perf_counter()
            decoder = p.FrameDecoder()  # encode, decode, interpret, encode the answer: everything but the transport
            (payload,) = decoder.feed(p.encode_frame(p.Message(p.PROTOCOL_VERSION, k + 2, command, 0, body).pack()))
            p.encode_frame(fw.handle(payload))
        direct = args.n / (time.perf_counter() - t0)
        rates = []
        for transport in ("pty", "tcp"):
            with emulator_process(args.card, transport) as url, SerialBoard(url) as board:
                board.configure_pulse(20, 3000)
                for _ in range(50):  # warm up (numba kernels load from the cache on first use)
                    board.link.request(command, body)
                t0 = time.perf_counter()
                for _ in range(args.n):
                    board.link.request(command, body)
                rates.append(args.n / (time.perf_counter() - t0))
        print(f"{name:<16} {direct:>14.0f} {rates[0]:>9.0f} {rates[1]:>9.0f} {rates[0] / direct:>17.3f}", flush=True)


def cables(args) -> list[dict]:
    rows, reference = [], None
    print(f"{'cable (pty, default link options)':<40} {'wall s':>7} {'cmds':>6} {'resends':>8} {'timeouts':>8} "
          f"{'NAKs':>5} {'identical':>9}")
    for name, faults in CABLES.items():
        extra = ["--seed", "3", "--fault-seed", "1"] + faults + (SPIKES if faults else [])
        with emulator_process(args.card, "pty", extra) as url, SerialBoard(url) as board:
            t0 = time.perf_counter()
            trace = characterize(board, 20, pulses=200, cycles=2)
            wall = time.perf_counter() - t0
            s = board.link.stats
        if reference is None:
            reference = trace.conductance_s
        same = bool((trace.conductance_s == reference).all())
        rows.append(dict(cable=name, wall_s=wall, commands=s.requests, resends=s.retries, timeouts=s.timeouts,
                         naks=s.naks, pulses=len(trace), identical_to_clean=same))
        print(f"{name:<40} {wall:>7.1f} {s.requests:>6} {s.retries:>8} {s.timeouts:>8} {s.naks:>5} "
              f"{'yes' if same else 'NO':>9}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per command and transport")
    parser.add_argument("--card", default="ID170ZR5000-20ns")
    parser.add_argument("--skip-throughput", action="store_true", help="only the bad-cable characterisations")
    parser.add_argument("--json", action="store_true", help="print the cable rows as JSON at the end")
    args = parser.parse_args()
    if not args.skip_throughput:
        throughput(args)
    rows = cables(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if all(r["identical_to_clean"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
