"""Measured pulse-response traces: our own CSV format, and the importer for the instrument's WGFMU `.dat` files.

Every reader validates the whole file before returning anything; a problem is an InputError naming file, line and
what was expected. The format is documented in docs/traces.md.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InputError

TRACE_FORMAT = "edgelearn-trace/1"
TRACE_COLUMNS = ("pulse", "amplitude_v", "polarity", "conductance_s")
DEFAULT_READ_VOLTAGE_V = 0.1  # the WGFMU files do not state it; their README gives a DC sweep of about +-0.1 V
VOLTAGE_TOLERANCE_V = 1e-6  # range limits are inclusive; the analysis block rounds them to 0.1 V
# Limits (docs/architecture.md, "Limits"): the LBE247 runs have a few hundred pulses; a trace is read whole into memory
MAX_TRACE_BYTES = 256 * 2**20
MAX_TRACE_PULSES = 2_000_000
MIN_RESISTANCE_OHM = 1.0  # 1/R must be a plausible conductance (<= 1 S, as in our CSV format), not a unit mistake


class VoltageRange(BaseModel):
    """Usable amplitude range of a staircase run: positive pulses in [pos_start_v, pos_end_v], negative pulses in
    [neg_end_v, neg_start_v] (neg_* are negative numbers)."""

    model_config = ConfigDict(extra="forbid")
    pos_start_v: float
    pos_end_v: float
    neg_start_v: float
    neg_end_v: float

    def keeps(self, amplitude_v: float) -> bool:
        tol = VOLTAGE_TOLERANCE_V
        if amplitude_v > 0:
            return self.pos_start_v - tol <= amplitude_v <= self.pos_end_v + tol
        return self.neg_end_v - tol <= amplitude_v <= self.neg_start_v + tol


class TraceMeta(BaseModel):
    """Metadata header of a trace (the `# key = value` lines of the CSV format)."""

    model_config = ConfigDict(extra="forbid")
    format: str = Field(TRACE_FORMAT, description="format tag, always edgelearn-trace/1")
    device_id: str = Field(min_length=1, description="device name, e.g. ID161ZR15000")
    pulse_width_s: float = Field(gt=0.0, le=1.0, description="programming pulse width in seconds")
    read_voltage_v: float = Field(DEFAULT_READ_VOLTAGE_V, gt=0.0, le=1.0, description="read voltage in volts")
    amplitude_step_v: float | None = Field(None, ge=0.0, description="staircase step between pulses, volts")
    measured_at: str = Field("", description="measurement date and time, ISO 8601")
    source: str = Field("", description="file the trace was imported from")
    source_sha256: str = Field("", description="SHA-256 of that file")
    selection: str = Field("all", description="which pulses were kept: all, analysis-block, or cutoffs:FILE")
    voltage_range: VoltageRange | None = Field(None, description="amplitude range the selection kept")
    hil_plan: str = Field("", description="plan of the `hil characterize` run that wrote this trace (JSON): what "
                          "`--resume` needs to continue an interrupted one")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != TRACE_FORMAT:
            raise ValueError(f"expected '{TRACE_FORMAT}'")
        return value


@dataclass(frozen=True)
class Trace:
    """One measurement run: the state after each programming pulse, in the order the pulses were applied.

    `pulse` is the pulse's position in the original measurement; a jump of more than one means pulses happened that
    are not in the trace (not recorded or cut away), so a replay must re-anchor on the measured state there.
    `polarity` is +1 for a positive pulse (lowers conductance: a "down" pulse) and -1 for a negative pulse ("up").
    """

    meta: TraceMeta
    pulse: np.ndarray
    amplitude_v: np.ndarray
    polarity: np.ndarray
    conductance_s: np.ndarray
    path: str = ""
    dropped: int = field(default=0)

    def __len__(self) -> int:
        return int(self.pulse.shape[0])

    @property
    def anchors(self) -> np.ndarray:
        """True where the replay restarts from the measured state (first pulse, and after every gap)."""
        anchor = np.ones(len(self), dtype=np.bool_)
        anchor[1:] = np.diff(self.pulse) != 1
        return anchor

    def to_csv(self, path: str | Path) -> None:
        """Write the trace in our CSV format (written to a temporary file first, so never half-written)."""
        lines = trace_header(self.meta)
        for k in range(len(self)):
            lines.append(trace_row(self.pulse[k], self.amplitude_v[k], self.polarity[k], self.conductance_s[k]))
        write_atomically(Path(path), "\n".join(lines) + "\n")


def trace_header(meta: TraceMeta) -> list[str]:
    """The header lines of our CSV format: format tag, `# key = value` metadata, column names."""
    lines = [f"# {TRACE_FORMAT}"]
    for key, value in meta.model_dump(exclude={"format"}).items():
        if value is None or value == "":
            continue
        if key == "voltage_range":
            value = ",".join(repr(float(value[k])) for k in ("pos_start_v", "pos_end_v", "neg_start_v", "neg_end_v"))
        lines.append(f"# {key} = {value}")
    lines.append(",".join(TRACE_COLUMNS))
    return lines


def trace_row(pulse: int, amplitude_v: float, polarity: int, conductance_s: float) -> str:
    """One data line of our CSV format (floats in repr form: they read back bit-identically)."""
    return f"{int(pulse)},{float(amplitude_v)!r},{'+1' if polarity > 0 else '-1'},{float(conductance_s)!r}"


def write_atomically(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a failed write never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise InputError(path, f"cannot write ({exc.strerror})") from None


def load_trace(path: str | Path, cutoffs: str | Path | None = None, use_cutoffs: bool = True) -> Trace:
    """Load a trace from our CSV format or from a WGFMU `.dat` file (chosen by the file's first line).

    For `.dat` files the pulses are selected by the analysis block's voltage range, by the row of a `cutoffs` CSV
    that matches the run, or not at all (`use_cutoffs=False`). Our CSV traces are taken as they are.
    """
    path = Path(path)
    text = _read_text(path)
    first = text.split("\n", 1)[0].strip()
    if first.startswith("#"):
        if cutoffs is not None:
            raise InputError(path, "--cutoffs applies to WGFMU .dat files only; this is an edgelearn trace")
        return _parse_csv_trace(path, text)
    if first.startswith("test_date"):
        return _parse_wgfmu(path, text, cutoffs, use_cutoffs)
    raise InputError(path, f"unknown trace format: expected '# {TRACE_FORMAT}' or a WGFMU 'test_date,...' header", 1)


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise InputError(path, f"{size:,} bytes: larger than the limit of a trace file ({MAX_TRACE_BYTES:,} bytes, "
                             "MAX_TRACE_BYTES); split the measurement")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a trace file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a text file (byte {exc.start} is not UTF-8)") from None


def parse_number(path, line_no, field_name, text) -> float:
    """A finite float from a cell of a text file, or an InputError naming file, line and field."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"expected a number, got '{text.strip()}'", line_no, field_name) from None
    if not math.isfinite(value):
        raise InputError(path, f"expected a finite number, got '{text.strip()}'", line_no, field_name)
    return value


def _integer(path, line_no, field_name, text) -> int:
    value = parse_number(path, line_no, field_name, text)
    if value != int(value):
        raise InputError(path, f"expected a whole number, got '{text.strip()}'", line_no, field_name)
    return int(value)


def _unit(name: str) -> tuple[str, str]:
    """'R_low (ohm)' -> ('R_low', 'ohm'); 'conductance_s' -> ('conductance', 's')."""
    if name.endswith(")") and " (" in name:
        base, _, unit = name[:-1].partition(" (")
        return base, unit
    base, _, unit = name.rpartition("_")
    return (base, unit) if base else (name, "")


def _table_rows(path, lines, header_line, columns):
    """Check the column header at 1-based `header_line`, then yield (line number, cells) of each non-empty row."""
    names = [n.strip() for n in lines[header_line - 1].split(",")]
    if tuple(names) != tuple(columns):
        for expected, got in zip(columns, names):
            if expected != got and _unit(expected)[0] == _unit(got)[0]:
                raise InputError(path, f"wrong unit: expected column '{expected}', got '{got}'", header_line)
        raise InputError(path, f"expected columns '{','.join(columns)}', got '{','.join(names)}'", header_line)
    if len(lines) - header_line > MAX_TRACE_PULSES:
        raise InputError(path, f"{len(lines) - header_line:,} data rows: more than the limit of a trace "
                         f"({MAX_TRACE_PULSES:,} pulses, MAX_TRACE_PULSES); split the measurement", header_line)
    for line_no, raw in enumerate(lines[header_line:], start=header_line + 1):
        if not raw.strip():
            continue
        cells = raw.split(",")
        if len(cells) != len(columns):
            raise InputError(path, f"expected {len(columns)} comma-separated values, got {len(cells)} "
                             "(truncated or malformed row)", line_no)
        yield line_no, cells


# ---------------------------------------------------------------------------------------------- our CSV format


def _parse_csv_trace(path: Path, text: str) -> Trace:
    lines = text.splitlines()
    header: dict[str, object] = {}
    key_lines: dict[str, int] = {}
    line_no = 0
    if lines[0].strip() != f"# {TRACE_FORMAT}":
        raise InputError(path, f"expected first line '# {TRACE_FORMAT}'", 1)
    for line_no, raw in enumerate(lines[1:], start=2):
        if not raw.startswith("#"):
            break
        body = raw[1:].strip()
        if not body:
            continue
        key, sep, value = body.partition("=")
        if not sep:
            raise InputError(path, f"expected '# key = value', got '{raw.strip()}'", line_no)
        key, value = key.strip(), value.strip()
        if key in key_lines:
            raise InputError(path, f"duplicate header key (first given at line {key_lines[key]})", line_no, key)
        key_lines[key] = line_no
        if key == "voltage_range":
            parts = value.split(",")
            if len(parts) != 4:
                raise InputError(path, "expected four volts: pos_start,pos_end,neg_start,neg_end", line_no, key)
            nums = [parse_number(path, line_no, key, p) for p in parts]
            header[key] = dict(zip(("pos_start_v", "pos_end_v", "neg_start_v", "neg_end_v"), nums))
        else:
            header[key] = value
    else:
        raise InputError(path, f"no column header: expected '{','.join(TRACE_COLUMNS)}'", len(lines) + 1)
    try:
        meta = TraceMeta(**header)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "header"
        key = str(err["loc"][0]) if err["loc"] else ""
        if err.get("type") == "missing":  # point at the column header, where the header block ended without it
            raise InputError(path, f"missing: expected a '# {key} = ...' line before the column header", line_no,
                             name) from None
        raise InputError(path, _pydantic_message(err), key_lines.get(key), name) from None
    pulses, amps, pols, gs = [], [], [], []
    for row_no, cells in _table_rows(path, lines, line_no, TRACE_COLUMNS):
        pulse = _integer(path, row_no, "pulse", cells[0])
        amp = parse_number(path, row_no, "amplitude_v", cells[1])
        pol_text = cells[2].strip()
        if pol_text not in ("+1", "1", "-1"):
            raise InputError(path, f"expected +1 or -1, got '{pol_text}'", row_no, "polarity")
        pol = -1 if pol_text == "-1" else 1
        if amp != 0.0 and (amp > 0) != (pol > 0):
            raise InputError(path, f"polarity {pol_text} disagrees with amplitude {amp} V", row_no, "polarity")
        g = parse_number(path, row_no, "conductance_s", cells[3])
        if g <= 0.0:
            raise InputError(path, f"expected a positive conductance in siemens, got {g}", row_no, "conductance_s")
        if g > 1.0:
            raise InputError(path, f"{g} S is not a plausible device conductance (wrong unit? expected siemens)", row_no, "conductance_s")
        if pulses and pulse <= pulses[-1]:
            raise InputError(path, f"pulse numbers must increase, got {pulse} after {pulses[-1]}", row_no, "pulse")
        pulses.append(pulse)
        amps.append(amp)
        pols.append(pol)
        gs.append(g)
    trace = Trace(meta, np.array(pulses, dtype=np.int64), np.array(amps), np.array(pols, dtype=np.int8),
                  np.array(gs), str(path))
    _check_branches(trace, path)
    return trace


def _pydantic_message(err) -> str:
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = err.get("input")
    return f"{msg} (got {value!r})" if value is not None and not isinstance(value, dict) else msg


def _check_branches(trace: Trace, path: Path) -> None:
    kept = "" if trace.meta.selection == "all" else f" by selection {trace.meta.selection}"
    if len(trace) < 2:
        raise InputError(path, f"needs at least 2 pulses, has {len(trace)}{kept}")
    for pol, name in ((1, "positive (down)"), (-1, "negative (up)")):
        if not np.any(trace.polarity == pol):
            raise InputError(path, f"the {name} branch is empty: no pulses of that polarity were kept{kept}")


# --------------------------------------------------------------------------------------------- WGFMU .dat files

_DAT_SETTINGS = ("startVolage1", "endVoltage1", "startVolage2", "endVoltage2", "stepSize", "pulseWidth")
_DAT_ANALYSIS = ("VStartPos (V)", "VEndPos (V)", "VStartNeg (V)", "VEndNeg (V)", "twidth (s)", "num_LTP", "num_LTD")
_DAT_DATA = ("Pulse Number", "index", "Pulse Amplitude (V)", "R_low (ohm)", "R_high (ohm)")


def _dat_block(path, lines, header_line, required):
    """Header + one value row starting at 1-based line `header_line`; returns {name: (text, line_no)}."""
    if len(lines) < header_line + 1:
        raise InputError(path, f"truncated: expected a header and a value row at lines {header_line}-{header_line + 1}",
                         len(lines) + 1)
    names = [n.strip() for n in lines[header_line - 1].split(",")]
    values = lines[header_line].split(",")
    for name in required:
        if name not in names:
            base = name.split(" (")[0]
            other = next((n for n in names if n.split(" (")[0] == base), None)
            if other is not None:
                raise InputError(path, f"wrong unit: expected column '{name}', got '{other}'", header_line)
            raise InputError(path, f"missing column '{name}'", header_line)
    if len(values) < len(names):
        raise InputError(path, f"expected {len(names)} values, got {len(values)} (truncated row)", header_line + 1)
    return {n: (values[i], header_line + 1) for i, n in enumerate(names)}


def _parse_wgfmu(path: Path, text: str, cutoffs, use_cutoffs: bool) -> Trace:
    lines = [ln for ln in text.splitlines()]
    ident = _dat_block(path, lines, 1, ("test_date", "test_time", "device_id"))
    device_id = ident["device_id"][0].strip()
    if not device_id:
        raise InputError(path, "empty device id", 2, "device_id")
    date_text, time_text = ident["test_date"][0].strip(), ident["test_time"][0].strip()
    measured_at = _iso_datetime(path, date_text, time_text)
    settings = _dat_block(path, lines, 3, _DAT_SETTINGS)
    values = {k: parse_number(path, ln, k, v) for k, (v, ln) in settings.items() if k in _DAT_SETTINGS}
    width = values["pulseWidth"]
    if not 1e-10 <= width <= 1.0:
        raise InputError(path, f"{width} is not a pulse width in seconds (expected 1e-10 to 1; wrong unit?)", 4, "pulseWidth")
    analysis = _dat_block(path, lines, 5, _DAT_ANALYSIS)
    av = {k: parse_number(path, ln, k, v) for k, (v, ln) in analysis.items() if k in _DAT_ANALYSIS}
    if not math.isclose(av["twidth (s)"], width, rel_tol=1e-6):
        raise InputError(path, f"analysis width {av['twidth (s)']} s disagrees with pulseWidth {width} s", 6, "twidth (s)")
    n_pos_expected = _integer(path, 6, "num_LTP", analysis["num_LTP"][0])
    n_neg_expected = _integer(path, 6, "num_LTD", analysis["num_LTD"][0])

    if len(lines) < 7:
        raise InputError(path, "truncated: no data block (expected header at line 7)", len(lines) + 1)
    rows = []
    for line_no, cells in _table_rows(path, lines, 7, _DAT_DATA):
        number = _integer(path, line_no, "Pulse Number", cells[0])
        index = _integer(path, line_no, "index", cells[1])
        amp = parse_number(path, line_no, "Pulse Amplitude (V)", cells[2])
        r_low = parse_number(path, line_no, "R_low (ohm)", cells[3])
        r_high = parse_number(path, line_no, "R_high (ohm)", cells[4])
        for name, r in (("R_low (ohm)", r_low), ("R_high (ohm)", r_high)):
            if r <= 0.0:
                raise InputError(path, f"expected a positive resistance in ohm, got {r}", line_no, name)
            if r < MIN_RESISTANCE_OHM:
                raise InputError(path, f"{r} ohm is not a plausible device resistance (expected at least "
                                 f"{MIN_RESISTANCE_OHM:g} ohm; wrong unit?)", line_no, name)
        if rows and index <= rows[-1][1]:
            raise InputError(path, f"index must increase, got {index} after {rows[-1][1]}", line_no, "index")
        rows.append((number, index, amp, r_low, r_high, line_no))
    n_pos = sum(1 for r in rows if r[2] > 0)
    n_neg = len(rows) - n_pos
    if (n_pos, n_neg) != (n_pos_expected, n_neg_expected):
        raise InputError(path, f"truncated or altered data: the analysis block announces {n_pos_expected} positive and "
                         f"{n_neg_expected} negative pulses, the data block has {n_pos} and {n_neg}", len(lines))

    if not use_cutoffs:
        selection, vrange = "all", None
    elif cutoffs is not None:
        vrange = _cutoff_range(Path(cutoffs), device_id, date_text, time_text)
        selection = f"cutoffs:{Path(cutoffs).name}"
    else:
        vrange = VoltageRange(pos_start_v=av["VStartPos (V)"], pos_end_v=av["VEndPos (V)"],
                              neg_start_v=av["VStartNeg (V)"], neg_end_v=av["VEndNeg (V)"])
        selection = "analysis-block"
    kept = [r for r in rows if vrange is None or vrange.keeps(r[2])]
    meta = TraceMeta(device_id=device_id, pulse_width_s=width, amplitude_step_v=abs(values["stepSize"]),
                     measured_at=measured_at, source=path.name,
                     source_sha256=hashlib.sha256(path.read_bytes()).hexdigest(), selection=selection,
                     voltage_range=vrange)
    r_low = np.array([r[3] for r in kept])
    r_high = np.array([r[4] for r in kept])
    amps = np.array([r[2] for r in kept])
    trace = Trace(
        meta=meta,
        pulse=np.array([r[1] for r in kept], dtype=np.int64),
        amplitude_v=amps,
        polarity=np.where(amps > 0, 1, -1).astype(np.int8),
        conductance_s=0.5 * (1.0 / r_low + 1.0 / r_high),  # mean of the two read branches, as the README suggests
        path=str(path),
        dropped=len(rows) - len(kept),
    )
    _check_branches(trace, path)
    return trace


def _iso_datetime(path, date_text, time_text) -> str:
    try:
        day, month, year = (int(p) for p in date_text.split("."))
        hour, minute, second = (int(p) for p in time_text.split(":"))
    except ValueError:
        raise InputError(path, f"expected date DD.MM.YYYY and time HH:MM:SS, got '{date_text}' '{time_text}'", 2) from None
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


_CUTOFF_COLUMNS = ("device_id", "test_date", "test_time", "VStartPos", "VEndPos", "VStartNeg", "VEndNeg")


def _cutoff_range(path: Path, device_id: str, date_text: str, time_text: str) -> VoltageRange:
    """The voltage range a cut-off CSV gives for one run (matched on device id, date and time)."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InputError(path, "empty cut-off file", 1) from None
    missing = [c for c in _CUTOFF_COLUMNS if c not in header]
    if missing:
        raise InputError(path, f"missing column '{missing[0]}' (expected {','.join(_CUTOFF_COLUMNS)})", 1)
    col = {c: header.index(c) for c in _CUTOFF_COLUMNS}
    found = None
    for line_no, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise InputError(path, f"expected {len(header)} values, got {len(cells)}", line_no)
        if (cells[col["device_id"]].strip(), cells[col["test_date"]].strip(), cells[col["test_time"]].strip()) != (
                device_id, date_text, time_text):
            continue
        nums = {c: parse_number(path, line_no, c, cells[col[c]]) for c in _CUTOFF_COLUMNS[3:]}
        candidate = VoltageRange(pos_start_v=nums["VStartPos"], pos_end_v=nums["VEndPos"],
                                 neg_start_v=nums["VStartNeg"], neg_end_v=nums["VEndNeg"])
        if found is not None and found != candidate:
            raise InputError(path, f"two different rows for {device_id} {date_text} {time_text}", line_no)
        found = candidate
    if found is None:
        raise InputError(path, f"no row for device {device_id} measured {date_text} {time_text}")
    return found
