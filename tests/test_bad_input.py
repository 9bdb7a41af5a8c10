"""Bad input never passes silently and never ends in a traceback (issue 12, items 9-11).

One row per case: the bad file is made in tmp_path, `edgelearn.cli.main` runs on it, and the answer must be exit code 2
with exactly one stderr line `edgelearn: error: ...` that contains the row's key phrase. Rows whose fix is a limit
(pretrain epochs, network size, trace rows) are here too; the device-fit subset and the serial capture cap, which
warn and go on, have their own tests below. Cases that need data use small crafted files (MNIST only where a row
wants it, from ../shared/datasets, else an empty directory: the check comes before the data are read).
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgelearn.cli import main
from edgelearn.devices import bundled_card_path
from test_traces import SYN_DAT as DAT  # a small WGFMU file; the wgfmu rows rewrite the row of pulse 5

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"
CARD = "ID170ZR5000-20ns"


# our CSV trace format: 3 down then 3 up pulses
TRACE_CSV = """\
# edgelearn-trace/1
# device_id = IDTEST
# pulse_width_s = 2e-08
pulse,amplitude_v,polarity,conductance_s
1,1.0,+1,7.5e-07
2,1.0,+1,7e-07
3,1.0,+1,6.5e-07
4,-1.0,-1,6.8e-07
5,-1.0,-1,7.1e-07
6,-1.0,-1,7.4e-07
"""


# ------------------------------------------------------------------------------------------------ file makers


def card_with(tmp_path, *edits) -> str:
    """A bundled card with (path, value) edits applied, written as JSON (NaN/Infinity literals allowed)."""
    data = json.loads(bundled_card_path(CARD).read_text())
    for keys, value in edits:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    return str(path)


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def run_toml(tmp_path, text) -> list[str]:
    return ["run", "--config", write(tmp_path, "run.toml", text), "--quiet"]


def train_args(tmp_path, *extra, data_dir=None) -> list[str]:
    return ["train", "--algorithm", "digital", "--data-dir", str(data_dir or tmp_path), "--network", "784-8-10",
            "--epochs", "1", "--quiet", *extra]


def damaged_mnist(tmp_path) -> list[str]:
    """The training images gzipped, then one bit pattern changed in the deflate stream (an invalid block type):
    what a bit flip in a download does to a compressible file."""
    images = np.zeros((20, 28, 28), np.uint8)
    raw = struct.pack(">IIII", 2051, 20, 28, 28) + images.tobytes()
    packed = bytearray(gzip.compress(raw))
    packed[10] |= 0x06  # first deflate header byte (gzip.compress writes a 10-byte header): BTYPE = 11, reserved
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    return train_args(tmp_path, data_dir=tmp_path / "mnist")


def hapt_npz(tmp_path, damage: str) -> list[str]:
    """A valid little HAPT npz, then truncated or with bytes of an array's data flipped (its CRC no longer matches)."""
    path = tmp_path / "hapt.npz"
    n = 2000
    np.savez(path, signals=np.zeros((n, 6)), label=np.ones(n, np.int64), user=np.ones(n, np.int64),
             session=np.ones(n, np.int64), channels=np.array(["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("signals.npy")
        start = info.header_offset + 30 + len(info.filename) + 200  # inside the stored signals.npy bytes
        data[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return ["run", "--source", "hapt", "--path", str(path), "--quiet"]


def mnist_dir_or_empty(tmp_path) -> Path:
    return SHARED_MNIST if SHARED_MNIST.is_dir() else tmp_path


def a_file(tmp_path) -> str:
    return write(tmp_path, "not-a-dir", "x")


# ------------------------------------------------------------------------------------------------ the table

# (id, argv maker (tmp_path -> argv), key phrase of the one-line error, {module attribute: value} to patch)
CASES = [
    # item 9: bad numbers that used to pass silently
    ("card-nan-in-step-table", lambda t: ["device", "show", card_with(t, (("model", "piecewise_up", 3), math.nan))],
     "field 'model.piecewise_up[3]': expected a finite number, got NaN", {}),
    ("card-inf-w_max_dtod", lambda t: ["device", "show", card_with(t, (("variation", "w_max_dtod"), math.inf))],
     "field 'variation.w_max_dtod': expected a finite number, got inf", {}),
    ("card-g_max-infinity", lambda t: ["device", "show", card_with(t, (("g_max_s",), math.inf))],
     "field 'g_max_s': expected a finite number, got inf", {}),
    ("card-g_ref-outside-range", lambda t: ["device", "show", card_with(t, (("g_ref_s",), 1e-6))],
     "need g_min_s <= g_ref_s <= g_max_s", {}),
    ("card-huge-variation", lambda t: ["device", "show", card_with(t, (("variation", "dw_min_dtod"), 1e6))],
     "field 'variation.dw_min_dtod': Input should be less than or equal to 1", {}),
    ("run-lr-inf", lambda t: run_toml(t, "lr = inf\n"), "field 'lr': expected a finite number, got inf", {}),
    ("run-full-scale-zero", lambda t: run_toml(t, "[frontend]\nfull_scale = {acc = 0, gyro = 0}\n"),
     "field 'frontend.full_scale': 'acc': expected a sensor range > 0", {}),
    ("train-network-10-10", lambda t: train_args(t, "--network", "10-10", "--algorithm", "mp", "--card", CARD,
                                                 "--max-train-samples", "200", data_dir=mnist_dir_or_empty(t)),
     "--network: network '10-10' has 10 inputs and 10 outputs; MNIST needs 784 inputs", {}),
    ("train-lr-inf", lambda t: train_args(t, "--lr", "inf"), "--lr: expected a finite number, got inf", {}),
    ("wgfmu-r-low-1e-320-import", lambda t: ["trace", "import", write(t, "r.dat", DAT.replace(
        "5,6,-1.0,2000000.0", "5,6,-1.0,1e-320")), "-o", str(t / "out.csv")],
     "field 'R_low (ohm)': 1e-320 ohm is not a plausible device resistance", {}),
    ("wgfmu-r-low-1e-320-fit", lambda t: ["device", "fit", write(t, "r.dat", DAT.replace(
        "5,6,-1.0,2000000.0", "5,6,-1.0,1e-320")), "-o", str(t / "card.json")],
     "not a plausible device resistance", {}),
    ("fit-smoothing-nan", lambda t: ["device", "fit", write(t, "t.csv", TRACE_CSV), "--smoothing", "nan", "-o",
                                     str(t / "card.json")], "smoothing: expected a finite number", {}),
    # item 10: tracebacks that are now one line
    ("card-not-utf8", lambda t: ["device", "show", write(t, "card.json", b'{"card_id": "\xff\xfe"}')],
     "not a text file (byte 13 is not UTF-8)", {}),
    ("card-deeply-nested", lambda t: ["device", "show", write(t, "card.json", "[" * 100_000 + "]" * 100_000)],
     "JSON nested too deeply", {}),
    ("card-5000-digit-number", lambda t: ["device", "show", write(t, "card.json", '{"g_min_s": ' + "7" * 5000 + "}")],
     "a number in it is too long", {}),
    ("card-too-large", lambda t: ["device", "show", write(t, "card.json", " " * (2 * 2**20) + "{}")],
     "too large for a card JSON file", {}),
    ("toml-binary", lambda t: ["run", "--config", write(t, "run.toml", b"\xff\xfe\x00\x01binary\x00")],
     "not a text file (byte 0 is not UTF-8)", {}),
    ("run-window-1e-9", lambda t: run_toml(t, "[frontend]\nwindow_s = 1e-9\n"),
     "field 'frontend.window_s': window_s 1e-09 s is 0 sample(s) at 10 Hz", {}),
    ("mnist-gzip-bit-flip", damaged_mnist, "corrupt gzip data", {}),
    ("hapt-npz-truncated", lambda t: hapt_npz(t, "truncated"), "damaged: not a readable npz archive", {}),
    ("hapt-npz-bit-flip", lambda t: hapt_npz(t, "flipped"), "damaged: an array cannot be read", {}),
    ("train-epochs-0", lambda t: train_args(t, "--epochs", "0"), "--epochs: Input should be greater than or equal "
                                                                 "to 1 (got 0)", {}),
    ("train-batch-size-0", lambda t: train_args(t, "--batch-size", "0"), "--batch-size: Input should be greater", {}),
    ("train-lr-negative", lambda t: train_args(t, "--lr", "-1"), "--lr: Input should be greater than 0 (got -1.0)",
     {}),
    ("train-max-tile-0", lambda t: train_args(t, "--max-tile", "0"), "--max-tile: Input should be greater", {}),
    ("sweep-scheduler-not-a-url", lambda t: ["sweep", "run", "paper", "--out", str(t / "sw"), "--scheduler",
                                             "not a url", "--quiet"], "--scheduler: expected a Dask scheduler", {}),
    ("train-out-is-a-file", lambda t: train_args(t, "--out", a_file(t), data_dir=mnist_dir_or_empty(t)),
     "is not a directory", {}),
    ("run-out-is-a-file", lambda t: ["run", "--out", a_file(t), "--quiet"], "is not a directory", {}),
    ("sweep-out-is-a-file", lambda t: ["sweep", "run", "paper", "--out", a_file(t), "--quiet"],
     "is not a directory", {}),
    # item 11: limits, refused up front
    ("run-pretrain-epochs-1e9", lambda t: run_toml(t, "pretrain_epochs = 1e9\n"),
     "field 'pretrain_epochs': Input should be less than or equal to 1000", {}),
    ("run-hidden-1e8", lambda t: run_toml(t, "hidden = 1e8\n"),
     "3,500,000,004 weights would need about 420 GB", {}),
    ("train-network-too-large", lambda t: train_args(t, "--network", "784-100000000-10"),
     "weights would need about 1", {}),
    ("run-serial-duration-too-long", lambda t: ["run", "--source", "serial", "--path", "loop://", "--rate-hz", "50",
                                                "--duration-s", "1e9"], "the limit of a capture is 1,000,000", {}),
    ("trace-too-many-rows", lambda t: ["device", "fit", write(t, "t.csv", TRACE_CSV), "-o", str(t / "c.json")],
     "6 data rows: more than the limit of a trace (5 pulses", {"edgelearn.traces.MAX_TRACE_PULSES": 5}),
]


@pytest.mark.parametrize("make_argv, phrase, patches", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, make_argv, phrase, patches):
    for target, value in patches.items():
        module, name = target.rsplit(".", 1)
        monkeypatch.setattr(f"{module}.{name}", value)
    argv = make_argv(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert err.count("\n") == 1 and err.startswith("edgelearn: error: "), err
    assert "Traceback" not in err
    assert phrase in err, f"{phrase!r} not in {err!r}"


# ------------------------------------------------------------------------------------- limits that warn and go on


def test_long_trace_is_fitted_on_evenly_spaced_blocks(tmp_path, capsys, monkeypatch):
    """Item 11: a trace longer than MAX_FIT_PULSES is fitted on FIT_BLOCKS blocks of it, with one warning line; the
    card still describes every pulse (figures and provenance). 3000 pulses and a limit of 600 keep it fast."""
    from edgelearn import devices
    from edgelearn.devices import PiecewiseStepModel, load_card
    from edgelearn.traces import Trace, TraceMeta
    from firmware_model import crossbar

    monkeypatch.setattr(devices, "MAX_FIT_PULSES", 600)
    monkeypatch.setattr(devices, "FIT_BLOCKS", 6)
    nodes = np.linspace(-1.0, 1.0, 9)
    model = PiecewiseStepModel.from_absolute(-1.0, 1.0, 0.03 * (1.3 - 0.6 * nodes), 0.018 * (1.2 + 0.7 * nodes))
    n = 3000
    polarity = np.where((np.arange(n) // 100) % 2 == 0, 1, -1).astype(np.int8)
    w, states = 0.95, np.empty(n)
    for k in range(n):
        w = crossbar.apply_pulse(w, int(polarity[k]), *model.kernel_args(), 0.0)
        states[k] = w
    meta = TraceMeta(device_id="SYNTH1", pulse_width_s=2e-8, measured_at="2026-01-01T00:00:00", source="synthetic")
    trace_path = tmp_path / "long.csv"
    Trace(meta, np.arange(1, n + 1, dtype=np.int64), np.where(polarity > 0, 2.0, -2.0), polarity,
          50e-9 + 40e-9 * states).to_csv(trace_path)
    assert devices.fit_subset(n, 600, 6).size == 600 and devices.fit_subset(600, 600, 6) is None

    code = main(["device", "fit", str(trace_path), "-o", str(tmp_path / "card.json"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0  # --quiet: no status lines; the subsampling warning is said once (not by every refit)
    assert err.count("\n") == 1 and err.startswith("edgelearn: warning: ") and "uses 600 of them" in err
    card = load_card(tmp_path / "card.json")
    assert card.provenance.n_trace_pulses == n and card.provenance.fit["pulses_fitted"] == 600
    assert card.figures.n_pulses == n - 1  # the replay figures use every pulse
    assert card.figures.nrmse < 0.01
    assert card.figures.granularity == pytest.approx(model.granularity, rel=0.05)


class EndlessSensor:
    """A serial port that never ends its stream (a fast live sensor with no 'end' line); fails loudly after
    `give_up` lines so that an unbounded reader fails this test instead of hanging it."""

    def __init__(self, give_up: int = 5000):
        self.n, self.give_up, self.closed = 0, give_up, False

    def readline(self) -> bytes:
        self.n += 1
        if self.n > self.give_up:
            raise RuntimeError("the reader kept reading: no cap on the capture")
        if self.n == 1:
            return b"time_s,acc_x,acc_y,acc_z,label\n"
        t = (self.n - 2) / 50.0
        return f"{t:.2f},0.1,0.2,0.9,1\n".encode()

    def close(self) -> None:
        self.closed = True


def test_serial_capture_without_duration_stops_at_the_cap(monkeypatch):
    """Item 11: without duration_s a live stream is read until MAX_STREAM_SAMPLES samples, then stops with a warning
    (memory stays bounded); samples are kept in compact float64 buffers."""
    from edgelearn import stream
    from edgelearn.errors import EdgelearnWarning

    monkeypatch.setattr(stream, "MAX_STREAM_SAMPLES", 1000)
    port = EndlessSensor()
    with pytest.warns(EdgelearnWarning, match=r"stopped reading after 1,000 samples .*MAX_STREAM_SAMPLES"):
        recordings = stream.read_serial("sensor://", 50.0, port=port)
    assert port.closed and sum(r.samples.shape[0] for r in recordings) == 1000
    assert recordings[0].samples.dtype == np.float64 and recordings[0].samples.shape[1] == 3


def test_network_refuses_data_of_another_width():
    """Item 9: a layer never silently reads only the first columns of wider data (it used to: `--network 10-10` on
    MNIST trained on 11 of the 785 input columns, at chance)."""
    from edgelearn.devices import load_card
    from edgelearn.errors import EdgelearnError
    from edgelearn.network import Network

    net = Network((10, 10), card=load_card(CARD))
    with pytest.raises(EdgelearnError, match="network 10-10 takes 10 inputs, the data have 784 features"):
        net.forward(np.zeros((2, 784)))
