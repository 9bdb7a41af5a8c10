"""Lab procedures over the board link: characterise a device into a trace, compare board and emulator on the same pulse
schedule, train a small classifier on the board. Each returns a plain result object with `to_json()`; the `edgelearn
hil` commands are thin layers over these functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from firmware_model import controller as ctl

from ..board import Tile
from ..devices import DeviceCard, DeviceVariation, load_card
from ..errors import EdgelearnError
from ..traces import Trace, TraceMeta
from . import protocol as p
from .serial_board import SerialBoard


def _pulse_setup(board: SerialBoard, width_ns: int, amplitude_v: float | None) -> int:
    """Configure the pulse; returns the amplitude in mV (default: the top of the board's range at that width)."""
    info = board.info
    if width_ns not in info.pulse_widths_ns:
        raise EdgelearnError(f"{info.url}: the board does not support {width_ns} ns pulses (it has "
                             f"{', '.join(f'{w} ns' for w in info.pulse_widths_ns)})")
    low, high = info.amplitude_ranges_mv[info.pulse_widths_ns.index(width_ns)]
    amplitude_mv = high if amplitude_v is None else int(round(abs(amplitude_v) * 1000))
    board.configure_pulse(width_ns, amplitude_mv)
    return amplitude_mv


def characterize(board: SerialBoard, width_ns: int, pulses: int = 200, cycles: int = 2, amplitude_v: float | None
                 = None, row: int = 0, col: int = 0, read_voltage_v: float = 0.1, progress=None) -> Trace:
    """The measurement protocol: `cycles` times a train of `pulses` down pulses then `pulses` up pulses on device
    (row, col), reading the conductance after every pulse. Returns a trace in our format (fit it with
    `edgelearn device fit`)."""
    if pulses < 1 or cycles < 1:
        raise EdgelearnError(f"pulses and cycles must be positive, got {pulses} and {cycles}")
    amplitude_mv = _pulse_setup(board, width_ns, amplitude_v)
    n = 2 * pulses * cycles
    polarity = np.empty(n, np.int64)
    conductance = np.empty(n)
    k = 0
    for _ in range(cycles):
        for trace_polarity, wire in ((+1, p.DOWN), (-1, p.UP)):  # trace: +1 = positive pulse = down
            for _ in range(pulses):
                board.apply_pulses(row, col, wire, 1)
                polarity[k] = trace_polarity
                conductance[k] = board.read_conductance(row, col)
                k += 1
                if progress is not None:
                    progress(1)
    meta = TraceMeta(device_id=board.info.device_id, pulse_width_s=width_ns * 1e-9, read_voltage_v=read_voltage_v,
                     measured_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                     source=f"hil {board.info.url} device ({row}, {col}) {board.info.firmware}", selection="all")
    amplitude = polarity * (amplitude_mv / 1000.0)
    return Trace(meta, np.arange(1, n + 1), amplitude.astype(float), polarity, conductance)


@dataclass
class CompareResult:
    card_id: str
    url: str
    row: int
    col: int
    width_ns: int
    pulses_compared: int
    saturating_pulses: int
    rmse_s: float
    max_abs_error_s: float
    nrmse: float
    board_span_s: float
    board_conductance_s: list = field(default_factory=list)
    emulator_conductance_s: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def compare(board: SerialBoard, card: DeviceCard | str, pulses: int = 100, cycles: int = 2, saturate: int | None
            = None, row: int = 0, col: int = 0, amplitude_v: float | None = None) -> CompareResult:
    """Replay one pulse schedule on the board's device (row, col) and on the emulator's nominal device of `card`
    (noise-free), reading both the same way, and report the trajectory error. The schedule first drives the device
    into its lower bound with `saturate` down pulses (default 2 x the card's states), so that both start from the same
    state; then `cycles` of `pulses` up and `pulses` down pulses, each followed by a read."""
    card = load_card(card) if isinstance(card, str) else card
    width_ns = int(round(card.pulse_width_s * 1e9))
    _pulse_setup(board, width_ns, amplitude_v)
    saturate = int(2 * card.figures.n_states) + 10 if saturate is None else saturate
    twin = Tile(card, 1, 1, seed=0, variation=DeviceVariation.none(), c2c_std=0.0)
    g_range = card.g_max_s - card.g_min_s
    codes, offset, scale = board.read_codes(p.SEL_DEVICE, row, col)
    twin.state[0, 0] = card.weight_from_conductance(offset + int(codes[0]) * scale)

    def twin_pulse(count: int) -> None:
        ctl.apply_counts(twin.state, twin.params, twin.table_up, twin.table_down, 0.0,
                         np.array([[count]], np.int32), twin.rng, twin.normal_table, twin.device_pulses,
                         twin.counters)

    def twin_read() -> float:  # the board's read path: quantise the conductance to the board's codes
        g = card.g_ref_s + float(twin.state[0, 0]) * g_range / 2.0
        code = min(max(int(np.floor((g - offset) / scale + 0.5)), -32768), 32767)
        return offset + code * scale

    if saturate:
        board.apply_pulses(row, col, p.DOWN, saturate)
        twin_pulse(-saturate)
    got, want = [], []
    for _ in range(cycles):
        for wire in (p.UP, p.DOWN):
            for _ in range(pulses):
                board.apply_pulses(row, col, wire, 1)
                twin_pulse(wire)
                got.append(board.read_conductance(row, col))
                want.append(twin_read())
    got_a, want_a = np.array(got), np.array(want)
    err = got_a - want_a
    span = float(got_a.max() - got_a.min()) if len(got_a) else 0.0
    rmse = float(np.sqrt(np.mean(err**2))) if len(err) else 0.0
    return CompareResult(card.card_id, board.info.url, row, col, width_ns, len(got), saturate, rmse,
                         float(np.abs(err).max(initial=0.0)), rmse / span if span > 0 else 0.0, span,
                         got_a.tolist(), want_a.tolist())


@dataclass
class HilTrainResult:
    card_id: str
    url: str
    sizes: list
    epochs: int
    train_accuracy: list
    test_accuracy_board: float
    test_accuracy_emulator: float
    program_misses: int
    board_counters: dict
    round_trips: int
    retries: int
    wall_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def train_on_board(board: SerialBoard, card: DeviceCard | str, epochs: int = 5, lr: float = 0.5, batch: int = 8,
                   seed: int = 0, progress=None) -> HilTrainResult:
    """Train a single-layer classifier (BasicMotions features: 6 channels x 5 features + bias -> 4 activities) with
    mixed precision on the board through the link, and the same on the in-process emulator for comparison."""
    from ..algorithms import make_algorithm
    from ..network import Network
    from ..stream import FrontEndConfig, load_basic_motions, windows

    card = load_card(card) if isinstance(card, str) else card
    frontend = FrontEndConfig(full_scale={"acc": 40.0, "gyro": 40.0})

    def window_set(split):
        recs, classes = load_basic_motions(split)
        parts = [windows(r, frontend) for r in recs]
        return np.concatenate([x for x, _, _ in parts]), np.concatenate([y for _, y, _ in parts]), classes

    x_train, y_train, classes = window_set("train")
    x_test, y_test, _ = window_set("test")
    sizes = (x_train.shape[1], len(classes))
    if board.info.rows - board.next_row < sizes[1] or board.info.cols < sizes[0] + 1:
        raise EdgelearnError(f"{board.info.url}: a {sizes[1]} x {sizes[0] + 1} layer does not fit the board's free "
                             f"{board.info.rows - board.next_row} x {board.info.cols} array")
    t0 = time.perf_counter()
    link_before = board.link.stats.requests, board.link.stats.retries
    board.reset_counters()
    results = {}
    for name, target in (("board", board), ("emulator", None)):
        net = Network(sizes, card=card, seed=seed, board=target)
        algorithm = make_algorithm("mp")
        misses = 0
        if name == "board":
            for layer, w in zip(net.layers, net.initial_weights):
                for rs, cs, tile in layer.grid():
                    misses += board.set_weights(tile, w[rs, cs])
        else:
            algorithm.prepare(net)
        rng = np.random.default_rng([seed, 11])
        accuracies = []
        for _ in range(epochs):
            order = rng.permutation(len(y_train))
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                _, _, grads = net.gradients(x_train[idx], y_train[idx])
                for layer, (inputs, deltas) in zip(net.layers, grads):
                    algorithm.update(layer, inputs, deltas, lr)
                if progress is not None and name == "board":
                    progress(len(idx))
            accuracies.append(net.accuracy(x_train, y_train))
        results[name] = (accuracies, net.accuracy(x_test, y_test), misses)
    stats = board.link.stats
    return HilTrainResult(card.card_id, board.info.url, list(sizes), epochs, results["board"][0], results["board"][1],
                          results["emulator"][1], results["board"][2], board.board_counters(),
                          stats.requests - link_before[0], stats.retries - link_before[1],
                          time.perf_counter() - t0)
