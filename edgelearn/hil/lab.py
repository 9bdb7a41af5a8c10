"""Lab procedures over the board link: characterise a device into a trace, compare board and emulator on the same pulse
schedule, train a small classifier on the board. Each returns a plain result object with `to_json()`; the `edgelearn
hil` commands are thin layers over these functions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from firmware_model import controller as ctl
from firmware_model import protocol as p

from ..board import Tile
from ..devices import DeviceCard, DeviceVariation, load_card
from ..errors import EdgelearnError
from ..traces import Trace, TraceMeta, trace_header, trace_row, write_atomically
from .serial_board import SerialBoard


def _pulse_setup(board: SerialBoard, width_ns: int, amplitude_v: float | None) -> int:
    """Configure the pulse; returns the amplitude in mV (default: the top of the board's range at that width)."""
    low, high = board.amplitude_range_mv(width_ns)
    if amplitude_v is not None and not (np.isfinite(amplitude_v) and low <= abs(amplitude_v) * 1000 <= high):
        raise EdgelearnError(f"--amplitude {amplitude_v:g} V: the board offers {low / 1000:g}..{high / 1000:g} V at "
                             f"{width_ns} ns")
    amplitude_mv = high if amplitude_v is None else int(round(abs(amplitude_v) * 1000))
    board.configure_pulse(width_ns, amplitude_mv)
    return amplitude_mv


MAX_CHARACTERIZE_PULSES = 1_000_000  # pulses of one characterisation (2 round trips each)
JOURNAL_SUFFIX = ".partial"
_SYNC_EVERY_S = 1.0  # the journal reaches the disk (fsync) at least this often; every row reaches the OS at once


def journal_path(output: str | Path) -> Path:
    """Where `hil characterize -o OUTPUT` keeps its measured prefix while it runs: OUTPUT.partial."""
    output = Path(output)
    return output.with_name(output.name + JOURNAL_SUFFIX)


class _Journal:
    """The measured prefix of a characterisation, on disk as it grows: a trace CSV whose `hil_plan` header says how
    to continue it. Each row is written (to the OS) as soon as it is measured, so nothing measured is lost when the
    host process dies; fsync at least every `_SYNC_EVERY_S`."""

    def __init__(self, path: Path, header: list[str] | None):
        self.path = path
        try:
            if header is not None:  # a new journal: the header goes in whole, or not at all
                write_atomically(path, "\n".join(header) + "\n")
            self.file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise EdgelearnError(f"{path}: cannot write the characterisation journal ({exc.strerror})") from None
        self.synced = time.monotonic()

    def append(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
            self.file.flush()
            if time.monotonic() - self.synced > _SYNC_EVERY_S:
                os.fsync(self.file.fileno())
                self.synced = time.monotonic()
        except OSError as exc:
            raise EdgelearnError(f"{self.path}: cannot write the characterisation journal ({exc.strerror}); the "
                                 "rows written so far are kept") from None

    def close(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except (OSError, ValueError):
            pass
        self.file.close()


def journal_rows(path: Path) -> int:
    """Pulses recorded in a journal so far (0 if it is missing or unreadable): what an error message reports."""
    try:
        return len(read_journal(Path(path))[2])
    except (EdgelearnError, OSError):
        return 0


def _board_pulses(board: SerialBoard) -> int:
    c = board.board_counters()
    return c["pulses_up"] + c["pulses_down"]


def _schedule(pulses: int, cycles: int) -> np.ndarray:
    """Trace polarity of each pulse: per cycle `pulses` down (+1, a positive pulse), then `pulses` up (-1)."""
    one = np.concatenate([np.ones(pulses, np.int64), -np.ones(pulses, np.int64)])
    return np.tile(one, cycles)


def _amplitudes_mv(plan: dict) -> np.ndarray:
    """Each pulse's amplitude magnitude in mV: the plan's amplitude, or with `staircase_mv` [low, high] a ramp over
    every train, from low to high in odd cycles (as the LBE247 measurements: each branch starts low and ends high) and
    from high to low in even ones. One-way ramps move |V| and the state together along a branch, and a fit cannot
    tell the amplitude from the state dependence apart (docs/devices.md, "Amplitude-aware steps"); alternating ramps
    meet each state at different amplitudes."""
    n = 2 * plan["pulses"] * plan["cycles"]
    stair = plan.get("staircase_mv")
    if not stair:
        return np.full(n, int(plan["amplitude_mv"]), np.int64)
    ramp = np.round(np.linspace(stair[0], stair[1], plan["pulses"])).astype(np.int64)
    return np.concatenate([np.tile(ramp if c % 2 == 0 else ramp[::-1], 2) for c in range(plan["cycles"])])


def _check_amplitude(board: SerialBoard, width_ns: int, volts: float, what: str) -> int:
    low, high = board.amplitude_range_mv(width_ns)
    if not (np.isfinite(volts) and low <= abs(volts) * 1000 <= high):
        raise EdgelearnError(f"{what} {volts:g} V: the board offers {low / 1000:g}..{high / 1000:g} V at {width_ns} ns")
    return int(round(abs(volts) * 1000))


def characterize(board: SerialBoard, width_ns: int, pulses: int = 200, cycles: int = 2, amplitude_v: float | None
                 = None, row: int = 0, col: int = 0, read_voltage_v: float = 0.1, progress=None,
                 journal: str | Path | None = None, staircase_v: tuple[float, float] | None = None) -> Trace:
    """The measurement protocol: `cycles` times a train of `pulses` down pulses then `pulses` up pulses on device
    (row, col), reading the conductance after every pulse. Returns a trace in our format (fit it with
    `edgelearn device fit`). `staircase_v` (low, high): every train ramps the amplitude between low and high, rising in
    odd cycles and falling in even ones (rounded to mV, re-configured whenever it changes; `_amplitudes_mv`), instead
    of one `amplitude_v`, so the fit can find, and identify, the amplitude response.

    With `journal` (a path), every measured pulse is appended to that file as it is measured (a trace CSV of the
    prefix), so an interrupted run loses nothing and `resume_characterization(board, journal)` continues it."""
    if not (1 <= pulses and 1 <= cycles and 2 * pulses * cycles <= MAX_CHARACTERIZE_PULSES):
        raise EdgelearnError(f"--pulses and --cycles must be positive with 2 x pulses x cycles <= "
                             f"{MAX_CHARACTERIZE_PULSES}, got {pulses} and {cycles}")
    if not (np.isfinite(read_voltage_v) and 0 < read_voltage_v <= 1):
        raise EdgelearnError(f"read voltage must be in (0, 1] V, got {read_voltage_v}")
    board.check_device(row, col)
    if journal is not None and Path(journal).exists():
        raise EdgelearnError(f"{journal}: an interrupted characterisation is kept there: continue it with --resume, "
                             "or delete the file to start again")
    stair = None
    if staircase_v is not None:
        if amplitude_v is not None:
            raise EdgelearnError("--staircase ramps the amplitude: give it or --amplitude, not both")
        stair = [_check_amplitude(board, width_ns, v, f"--staircase {which}")
                 for v, which in zip(staircase_v, ("low", "high"))]
        if not stair[0] < stair[1]:
            raise EdgelearnError(f"--staircase: expected LOW:HIGH with LOW < HIGH, got {staircase_v[0]:g}:"
                                 f"{staircase_v[1]:g} V")
        amplitude_v = stair[1] / 1000.0
    amplitude_mv = _pulse_setup(board, width_ns, amplitude_v)
    plan = dict(width_ns=int(width_ns), amplitude_mv=amplitude_mv, pulses=int(pulses), cycles=int(cycles),
                row=int(row), col=int(col), device_id=board.info.device_id, board_pulses_before=_board_pulses(board))
    if stair is not None:
        plan["staircase_mv"] = stair
    meta = TraceMeta(device_id=board.info.device_id, pulse_width_s=width_ns * 1e-9, read_voltage_v=read_voltage_v,
                     measured_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                     source=f"hil {board.info.url} device ({row}, {col}) {board.info.firmware}", selection="all",
                     hil_plan=json.dumps(plan, separators=(",", ":")) if journal is not None else "")
    writer = _Journal(Path(journal), trace_header(meta)) if journal is not None else None
    return _measure(board, plan, meta, np.empty(0, np.int64), np.empty(0), writer, progress)


def _measure(board, plan, meta, done_polarity, done_conductance, writer, progress) -> Trace:
    schedule = _schedule(plan["pulses"], plan["cycles"])
    n = len(schedule)
    polarity = np.concatenate([done_polarity, np.empty(n - len(done_polarity), np.int64)])
    conductance = np.concatenate([done_conductance, np.empty(n - len(done_conductance))])
    amplitude_v = _amplitudes_mv(plan) / 1000.0
    row, col = plan["row"], plan["col"]
    configured = plan["amplitude_mv"]  # what _pulse_setup left on the board
    try:
        for k in range(len(done_polarity), n):
            mv = int(round(amplitude_v[k] * 1000))
            if mv != configured:
                board.configure_pulse(plan["width_ns"], mv)
                configured = mv
            board.apply_pulses(row, col, p.DOWN if schedule[k] > 0 else p.UP, 1)  # trace +1 = positive = down
            polarity[k] = schedule[k]
            conductance[k] = board.read_conductance(row, col)
            if writer is not None:
                writer.append(trace_row(k + 1, schedule[k] * amplitude_v[k], schedule[k], conductance[k]))
            if progress is not None:
                progress(1)
    finally:
        if writer is not None:
            writer.close()
    return Trace(meta, np.arange(1, n + 1), polarity * amplitude_v, polarity, conductance)


def resume_characterization(board: SerialBoard, journal: str | Path, progress=None) -> Trace:
    """Continue the characterisation whose measured prefix is in `journal` (written by `characterize(...,
    journal=...)`), on the same device of the same board, from the first pulse not yet recorded.

    The board's pulse counter decides what happened to the pulse in flight when the run stopped: if the board
    applied it but its read was lost, the device is read now and the pulse recorded; if the board applied anything
    else since (another program, a reset), the prefix cannot be continued and this refuses."""
    path = Path(journal)
    if not path.exists():
        raise EdgelearnError(f"{path}: no interrupted characterisation to resume (the journal is missing)")
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # a row torn by a crash mid-write: drop it, it is measured again
        with open(path, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)
    plan, meta, pols, gs = read_journal(path)
    if plan["device_id"] != board.info.device_id:
        raise EdgelearnError(f"{path}: started on device type {plan['device_id']}, this board has "
                             f"{board.info.device_id}")
    board.check_device(plan["row"], plan["col"])
    if plan["amplitude_mv"] != _pulse_setup(board, plan["width_ns"], plan["amplitude_mv"] / 1000.0):
        raise EdgelearnError(f"{path}: the board cannot reproduce the journal's pulse")
    schedule = _schedule(plan["pulses"], plan["cycles"])
    if len(pols) > len(schedule) or not np.array_equal(pols, schedule[:len(pols)]):
        raise EdgelearnError(f"{path}: the recorded pulses do not follow the plan of {plan['pulses']} pulses x "
                             f"{plan['cycles']} cycles")
    applied = _board_pulses(board) - plan["board_pulses_before"]
    writer = _Journal(path, None)
    if applied == len(pols) + 1 and len(pols) < len(schedule):  # the pulse in flight was applied, its read lost
        g = board.read_conductance(plan["row"], plan["col"])
        k = len(pols)
        writer.append(trace_row(k + 1, schedule[k] * _amplitudes_mv(plan)[k] / 1000.0, schedule[k], g))
        pols, gs = np.append(pols, schedule[k]), np.append(gs, g)
        if progress is not None:
            progress(1)
    elif applied != len(pols):
        writer.close()
        raise EdgelearnError(f"{path}: the board applied {applied} pulses since this characterisation started, the "
                             f"journal records {len(pols)}: the board was reset or used by another program, so the "
                             "prefix cannot be continued (fit it as it is, or start again)")
    if progress is not None:
        progress(0)
    return _measure(board, plan, meta, pols, gs, writer, progress)


def read_journal(path: Path):
    """(plan, trace metadata, polarities, conductances) of a journal; one-line errors for anything else."""
    from ..traces import TRACE_COLUMNS, TRACE_FORMAT

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgelearnError(f"{path}: not a characterisation journal ({exc})") from None
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines = lines[:-1]  # a row torn by a crash mid-write: not measured as far as the journal is concerned
    if not lines or lines[0].strip() != f"# {TRACE_FORMAT}":
        raise EdgelearnError(f"{path}:1: not a characterisation journal (expected '# {TRACE_FORMAT}')")
    header, k = {}, 1
    while k < len(lines) and lines[k].startswith("#"):
        key, _, value = lines[k][1:].partition("=")
        header[key.strip()] = value.strip()
        k += 1
    if k >= len(lines) or lines[k].strip() != ",".join(TRACE_COLUMNS):
        raise EdgelearnError(f"{path}:{k + 1}: not a characterisation journal (expected the column header)")
    try:
        meta = TraceMeta(**header)
        plan = json.loads(meta.hil_plan)
        keys = ("width_ns", "amplitude_mv", "pulses", "cycles", "row", "col", "device_id", "board_pulses_before")
        missing = [key for key in keys if key not in plan]
        if missing:
            raise ValueError(f"hil_plan misses {', '.join(missing)}")
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise EdgelearnError(f"{path}: not a characterisation journal ({str(exc).splitlines()[0]})") from None
    pols, gs = [], []
    for line_no, line in enumerate(lines[k + 1:], start=k + 2):
        cells = line.split(",")
        try:
            pulse, pol, g = int(cells[0]), int(cells[2]), float(cells[3])
            if pulse != len(pols) + 1 or pol not in (1, -1) or not (np.isfinite(g) and g > 0) or len(cells) != 4:
                raise ValueError
        except (ValueError, IndexError):
            raise EdgelearnError(f"{path}:{line_no}: expected row {len(pols) + 1} as pulse,amplitude_v,polarity,"
                                 f"conductance_s, got '{line[:60]}'") from None
        pols.append(pol)
        gs.append(g)
    return plan, meta, np.array(pols, np.int64), np.array(gs, float)


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
    if not 0 <= saturate <= 10_000_000:
        raise EdgelearnError(f"--saturate: expected 0..10000000 pulses, got {saturate}")
    if not (1 <= pulses and 1 <= cycles and 2 * pulses * cycles <= MAX_CHARACTERIZE_PULSES):
        raise EdgelearnError(f"--pulses and --cycles must be positive with 2 x pulses x cycles <= "
                             f"{MAX_CHARACTERIZE_PULSES}, got {pulses} and {cycles}")
    board.check_device(row, col)
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
