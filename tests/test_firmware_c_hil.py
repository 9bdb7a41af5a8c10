"""The C firmware behind the board emulator gives the host the same measurements as the Python interpreter: the same
card and seed characterised over a clean cable and over a 1 % drop + 1 % corrupt one give identical traces, through
the in-process emulator and through `edgelearn board-emulator --firmware c` + `edgelearn hil characterize`."""

import os
import subprocess
import sys

import numpy as np
import pytest

from edgelearn.devices import load_card
from edgelearn.hil import SerialBoard, characterize
from edgelearn.hil.emulator import BoardEmulator, BoardFirmware, Faults
from edgelearn.traces import load_trace

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="the board emulator needs a pseudo-terminal")
CARD = "ID170ZR5000-20ns"


def test_c_and_python_firmware_characterise_identically_on_clean_and_bad_cables():
    card = load_card(CARD)
    traces = {}
    for firmware in ("python", "c"):
        for faults in (Faults(), Faults(drop=0.01, corrupt=0.01, seed=11)):
            fw = BoardFirmware([card], 3, 3, seed=5, firmware=firmware)
            assert fw.implementation == firmware
            with BoardEmulator(fw, faults) as emu:
                with SerialBoard(emu.url) as board:
                    assert ("(C firmware)" in board.info.firmware) == (firmware == "c")
                    traces[firmware, faults.active] = characterize(board, 20, pulses=80, cycles=2, row=1, col=2)
                    counters = board.board_counters()
            assert counters["pulses_up"] + counters["pulses_down"] == 320
            if faults.active:
                assert faults.dropped > 10 and faults.corrupted > 10
    reference = traces["python", False].conductance_s
    assert len(np.unique(reference)) > 100  # a real trajectory, c2c noise included
    for key, trace in traces.items():
        np.testing.assert_array_equal(trace.conductance_s, reference, err_msg=str(key))
        np.testing.assert_array_equal(trace.polarity, traces["python", False].polarity)


def test_cli_board_emulator_firmware_c_serves_hil_characterize(tmp_path):
    """The CLI path of the issue: `edgelearn board-emulator --firmware c` (with a bad cable) and `edgelearn hil
    characterize` write the same trace as the Python firmware with the same card and seed."""
    rows = {}
    for firmware in ("python", "c"):
        emu = subprocess.Popen([sys.executable, "-m", "edgelearn.cli", "board-emulator", "--card", CARD, "--rows", "2",
                                "--cols", "2", "--seed", "4", "--firmware", firmware, "--fault-drop", "0.01",
                                "--fault-corrupt", "0.01"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = emu.stdout.readline().strip()
            assert url.startswith("/dev/"), emu.stderr.read() if emu.poll() is not None else url
            out = tmp_path / f"{firmware}.csv"
            run = subprocess.run([sys.executable, "-m", "edgelearn.cli", "hil", "characterize", "--port", url,
                                  "--pulse-width", "20ns", "--pulses", "40", "--cycles", "1", "-o", str(out),
                                  "--quiet"], capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
        finally:
            emu.terminate()
            emu.wait(timeout=30)
        rows[firmware] = load_trace(out)
    np.testing.assert_array_equal(rows["c"].conductance_s, rows["python"].conductance_s)
    assert "C firmware" in rows["c"].meta.source and "C firmware" not in rows["python"].meta.source


def test_hil_train_on_the_c_firmware_is_the_python_firmwares_run():
    """A whole `hil train` run (write-verify programming, forward and backward passes through the board's converters,
    pulse-count updates) on the C firmware: the same accuracies, counters and write-verify misses as on the Python
    one, exactly."""
    pytest.importorskip("sktime", reason="BasicMotions ships inside sktime (a core dependency)")
    from edgelearn.hil import train_on_board

    card = load_card(CARD)
    results = {}
    for firmware in ("python", "c"):
        with BoardEmulator(BoardFirmware([card], 8, 32, seed=1, firmware=firmware)) as emu:
            with SerialBoard(emu.url) as board:
                results[firmware] = train_on_board(board, card, epochs=1, lr=0.5, batch=8, seed=0)
    py, c = results["python"], results["c"]
    assert c.train_accuracy == py.train_accuracy and c.test_accuracy_board == py.test_accuracy_board
    assert c.board_counters == py.board_counters and c.program_misses == py.program_misses
    assert py.board_counters["pulses_up"] + py.board_counters["pulses_down"] > 100  # 472 measured
