"""Tests of the trace readers in edgelearn.traces: WGFMU `.dat` import, pulse selection, our CSV format, and the
errors (always an InputError naming file, line and what was expected) that malformed input must produce.

Tests on measured traces read ../shared/traces/lbe247 and skip when it is absent; every malformed-input case uses
hand-written synthetic text, so it runs everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgelearn.cli import main as cli_main
from edgelearn.errors import EdgelearnError, InputError
from edgelearn.traces import Trace, TraceMeta, VoltageRange, load_trace

RUN_104937 = "ID161ZR15000_20241024T104937.dat"
RUN_110402 = "ID161ZR15000_20241024T110402.dat"
CUTOFF_HEADER = "device_name,device_id,test_date,test_time,VStartPos,VEndPos,VStartNeg,VEndNeg"


# A small WGFMU file written by hand: 4 positive pulses, then 3 negative ones after an `index` gap (4 -> 6).
# Line numbers (1-based): 1-2 identity, 3-4 settings, 5-6 analysis block, 7 data header, 8-14 data rows.
SYN_DAT = """\
test_date,test_time,device_name,device_id
24.10.2024,10:49:37,,IDTEST
groundWGFMU,pulseWGFMU,startVolage1,endVoltage1,startVolage2,endVoltage2,stepSize,riseTime,fallTime,pulseWidth,pulseDelay,repetitions,measName
SMU2,WGFMU1,1.0,1.3,-1.0,-1.2,0.1,2e-08,2e-08,2e-08,0.001,2.0,2em8s
VStartPos (V),VEndPos (V),VStartNeg (V),VEndNeg (V),twidth (s),num_LTP,num_LTD
1.0,1.3,-1.0,-1.2,2e-08,4,3
Pulse Number,index,Pulse Amplitude (V),R_low (ohm),R_high (ohm)
1,1,1.0,1000000.0,2000000.0
2,2,1.1,1250000.0,2500000.0
3,3,1.2,2000000.0,4000000.0
4,4,1.3,2500000.0,5000000.0
5,6,-1.0,2000000.0,4000000.0
6,7,-1.1,1250000.0,2500000.0
7,8,-1.2,1000000.0,2000000.0
"""
SYN_R = [(1e6, 2e6), (1.25e6, 2.5e6), (2e6, 4e6), (2.5e6, 5e6), (2e6, 4e6), (1.25e6, 2.5e6), (1e6, 2e6)]
SYN_G = [0.5 * (1.0 / lo + 1.0 / hi) for lo, hi in SYN_R]
SYN_AMPS = [1.0, 1.1, 1.2, 1.3, -1.0, -1.1, -1.2]

# Our CSV format, written by hand. Lines: 1 format tag, 2-4 header keys, 5 column header, 6-9 rows.
SYN_CSV = """\
# edgelearn-trace/1
# device_id = IDTEST
# pulse_width_s = 2e-08
# read_voltage_v = 0.1
pulse,amplitude_v,polarity,conductance_s
1,1.0,+1,7.5e-07
2,1.1,+1,6e-07
3,-1.0,-1,6.5e-07
4,-1.1,-1,7e-07
"""


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"test setup: {old!r} must occur exactly once"
    return text.replace(old, new)


def _cutoffs(tmp_path: Path, *rows: str, name: str = "cuts.csv") -> Path:
    return _write(tmp_path, name, "\n".join((CUTOFF_HEADER,) + rows) + "\n")


def _expect_error(path: Path, line: int | None, *fragments: str, **kwargs) -> InputError:
    """load_trace must raise exactly an InputError located at path[:line] whose message has every fragment."""
    with pytest.raises(InputError) as info:
        load_trace(path, **kwargs)
    return _check_error(info.value, path, line, *fragments)


def _check_error(exc: InputError, path: Path, line: int | None, *fragments: str) -> InputError:
    message = str(exc)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where), f"{message!r} should start with {where!r}"
    assert exc.path == str(path)
    assert exc.line == line
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return exc


# ------------------------------------------------------------------------------------------- real measured traces


def test_real_run_104937_numbers(lbe247):
    path = lbe247 / RUN_104937
    trace = load_trace(path)
    assert len(trace) == 157
    assert trace.dropped == 0
    # 92 positive pulses, then 65 negative ones, in that order
    assert (trace.polarity[:92] == 1).all() and (trace.polarity[92:] == -1).all()
    assert (trace.amplitude_v[:92] > 0).all() and (trace.amplitude_v[92:] < 0).all()
    assert trace.polarity.dtype == np.int8 and trace.pulse.dtype == np.int64
    assert trace.amplitude_v[0] == 1.136 and trace.amplitude_v[91] == 4.958
    assert trace.amplitude_v[92] == -0.9 and trace.amplitude_v[-1] == -3.588
    # `pulse` is the file's `index` column (which starts at 8 here), not `Pulse Number`
    assert trace.pulse[0] == 8 and trace.pulse[91] == 99 and trace.pulse[92] == 101 and trace.pulse[-1] == 165
    assert trace.conductance_s[0] == 0.5 * (1 / 16305765.719 + 1 / 19417815.069)
    assert trace.conductance_s[92] == 0.5 * (1 / 27494659.162 + 1 / 32679738.562)
    assert trace.conductance_s[-1] == 0.5 * (1 / 14845297.158 + 1 / 18019933.651)
    # replay restarts at the first pulse and after the index gap 99 -> 101
    assert np.flatnonzero(trace.anchors).tolist() == [0, 92]
    meta = trace.meta
    assert meta.device_id == "ID161ZR15000"
    assert meta.pulse_width_s == 2e-8
    assert meta.amplitude_step_v == 0.042
    assert meta.read_voltage_v == 0.1
    assert meta.measured_at == "2024-10-24T10:49:37"
    assert meta.source == RUN_104937
    assert meta.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.selection == "analysis-block"
    assert meta.voltage_range == VoltageRange(pos_start_v=1.1, pos_end_v=5.0, neg_start_v=-0.8, neg_end_v=-3.6)
    assert trace.path == str(path)


def test_real_run_110402_has_a_single_anchor(lbe247):
    trace = load_trace(lbe247 / RUN_110402)
    assert len(trace) == 174
    assert int((trace.polarity == 1).sum()) == 102 and int((trace.polarity == -1).sum()) == 72
    assert np.flatnonzero(trace.anchors).tolist() == [0]
    assert np.all(np.diff(trace.pulse) == 1)


def test_real_selection_all_keeps_the_same_rows(lbe247):
    default = load_trace(lbe247 / RUN_104937)
    everything = load_trace(lbe247 / RUN_104937, use_cutoffs=False)
    assert everything.meta.selection == "all"
    assert everything.meta.voltage_range is None
    assert everything.dropped == 0
    for name in ("pulse", "amplitude_v", "polarity", "conductance_s"):
        assert np.array_equal(getattr(everything, name), getattr(default, name))


def test_real_cutoff_file_works(lbe247):
    trace = load_trace(lbe247 / RUN_104937, cutoffs=lbe247 / "cutoffs_20241024.csv")
    assert trace.meta.selection == "cutoffs:cutoffs_20241024.csv"
    assert trace.meta.voltage_range == VoltageRange(pos_start_v=1.1, pos_end_v=5.0, neg_start_v=-0.8, neg_end_v=-3.6)
    assert len(trace) == 157 and trace.dropped == 0
    assert np.flatnonzero(trace.anchors).tolist() == [0, 92]


def test_real_narrower_cutoff_drops_the_expected_pulses(lbe247, tmp_path):
    cuts = _cutoffs(tmp_path, "LBE247,ID161ZR15000,24.10.2024,10:49:37,2.0,4.0,-1.0,-3.0")
    trace = load_trace(lbe247 / RUN_104937, cutoffs=cuts)
    # positive 2.018 .. 3.992 V (data rows 22-69), negative -1.026 .. -3.0 V (rows 96-143; -3.0 is on the limit)
    assert len(trace) == 96 and trace.dropped == 61
    assert int((trace.polarity == 1).sum()) == 48 and int((trace.polarity == -1).sum()) == 48
    assert trace.amplitude_v[0] == 2.018 and trace.amplitude_v[47] == 3.992
    assert trace.amplitude_v[48] == -1.026 and trace.amplitude_v[-1] == -3.0
    assert trace.pulse.tolist() == list(range(29, 77)) + list(range(104, 152))
    assert np.flatnonzero(trace.anchors).tolist() == [0, 48]
    assert trace.meta.selection == "cutoffs:cuts.csv"


def test_real_cutoff_file_without_the_run(lbe247, tmp_path):
    real = (lbe247 / "cutoffs_20241024.csv").read_text().splitlines()
    kept = [row for row in real if ",10:49:37," not in row]
    assert len(kept) == len(real) - 1
    cuts = _write(tmp_path, "other_runs.csv", "\n".join(kept) + "\n")
    with pytest.raises(InputError) as info:
        load_trace(lbe247 / RUN_104937, cutoffs=cuts)
    _check_error(info.value, cuts, None, "no row for device ID161ZR15000 measured 24.10.2024 10:49:37")


def test_real_truncated_file(lbe247, tmp_path):
    lines = (lbe247 / RUN_104937).read_text().splitlines()
    bad = _write(tmp_path, "truncated.dat", "\n".join(lines[:-10]) + "\n")
    _expect_error(bad, len(lines) - 10, "analysis block announces 92 positive and 65 negative pulses",
                  "the data block has 92 and 55")


def test_real_round_trip(lbe247, tmp_path):
    trace = load_trace(lbe247 / RUN_104937)
    out = tmp_path / "t.csv"
    trace.to_csv(out)
    back = load_trace(out)
    assert back.meta == trace.meta
    for name in ("pulse", "amplitude_v", "polarity", "conductance_s"):
        assert np.array_equal(getattr(back, name), getattr(trace, name))
        assert getattr(back, name).dtype == getattr(trace, name).dtype
    assert np.array_equal(back.anchors, trace.anchors)


# ------------------------------------------------------------------------------------- synthetic .dat: good input


def test_synthetic_dat_import(tmp_path):
    path = _write(tmp_path, "syn.dat", SYN_DAT)
    trace = load_trace(path)
    assert len(trace) == 7 and trace.dropped == 0
    assert trace.pulse.tolist() == [1, 2, 3, 4, 6, 7, 8]
    assert trace.amplitude_v.tolist() == SYN_AMPS
    assert trace.polarity.tolist() == [1, 1, 1, 1, -1, -1, -1]
    assert trace.conductance_s.tolist() == SYN_G
    assert trace.conductance_s.tolist() == [7.5e-07, 6e-07, 3.75e-07, 3e-07, 3.75e-07, 6e-07, 7.5e-07]
    assert trace.anchors.tolist() == [True, False, False, False, True, False, False]
    assert trace.meta == TraceMeta(
        device_id="IDTEST", pulse_width_s=2e-8, amplitude_step_v=0.1, measured_at="2024-10-24T10:49:37",
        source="syn.dat", source_sha256=hashlib.sha256(SYN_DAT.encode()).hexdigest(), selection="analysis-block",
        voltage_range=VoltageRange(pos_start_v=1.0, pos_end_v=1.3, neg_start_v=-1.0, neg_end_v=-1.2))


@pytest.mark.parametrize("transform", [lambda t: t.replace("\n", "\r\n"), lambda t: "\ufeff" + t],
                         ids=["crlf", "utf8-bom"])
def test_synthetic_dat_tolerates_crlf_and_bom(tmp_path, transform):
    trace = load_trace(_write(tmp_path, "syn.dat", transform(SYN_DAT)))
    assert trace.pulse.tolist() == [1, 2, 3, 4, 6, 7, 8]
    assert trace.conductance_s.tolist() == SYN_G


def test_synthetic_no_cutoffs_selects_all(tmp_path):
    trace = load_trace(_write(tmp_path, "syn.dat", SYN_DAT), use_cutoffs=False)
    assert trace.meta.selection == "all"
    assert trace.meta.voltage_range is None
    assert len(trace) == 7 and trace.dropped == 0


def test_synthetic_cutoff_file_narrows_selection(tmp_path):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    # limits are inclusive: 1.1, 1.2, -1.1 and -1.2 lie exactly on them
    cuts = _cutoffs(tmp_path, "S,OTHER,24.10.2024,10:49:37,1.0,1.3,-1.0,-1.2",
                    "S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2",
                    "S,IDTEST,24.10.2024,11:00:00,1.0,1.3,-1.0,-1.2")
    trace = load_trace(dat, cutoffs=cuts)
    assert trace.dropped == 3
    assert trace.pulse.tolist() == [2, 3, 7, 8]
    assert trace.amplitude_v.tolist() == [1.1, 1.2, -1.1, -1.2]
    assert trace.conductance_s.tolist() == [SYN_G[1], SYN_G[2], SYN_G[5], SYN_G[6]]
    assert trace.anchors.tolist() == [True, False, True, False]
    assert trace.meta.selection == "cutoffs:cuts.csv"
    assert trace.meta.voltage_range == VoltageRange(pos_start_v=1.1, pos_end_v=1.2, neg_start_v=-1.1, neg_end_v=-1.2)


def test_cutoff_file_with_no_row_for_the_run(tmp_path):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    cuts = _cutoffs(tmp_path, "S,IDTEST,24.10.2024,10:49:38,1.1,1.2,-1.1,-1.2",
                    "S,IDOTHER,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2")
    with pytest.raises(InputError) as info:
        load_trace(dat, cutoffs=cuts)
    _check_error(info.value, cuts, None, "no row for device IDTEST measured 24.10.2024 10:49:37")


@pytest.mark.parametrize("rows, line, fragments", [
    (["S,IDTEST,24.10.2024,10:49:37,1.1,abc,-1.1,-1.2"], 2, ["field 'VEndPos': expected a number, got 'abc'"]),
    (["S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1"], 2, ["expected 8 values, got 7"]),
    (["S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2", "S,IDTEST,24.10.2024,10:49:37,1.0,1.2,-1.1,-1.2"], 3,
     ["two different rows for IDTEST 24.10.2024 10:49:37"]),
], ids=["non-numeric", "short-row", "conflicting-rows"])
def test_malformed_cutoff_file(tmp_path, rows, line, fragments):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    cuts = _cutoffs(tmp_path, *rows)
    with pytest.raises(InputError) as info:
        load_trace(dat, cutoffs=cuts)
    _check_error(info.value, cuts, line, *fragments)


def test_cutoff_file_missing_column_or_absent(tmp_path):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    cuts = _write(tmp_path, "cuts.csv", CUTOFF_HEADER.replace("VEndNeg", "VEnd") + "\nS,IDTEST,24.10.2024,10:49:37,1,2,-1,-2\n")
    with pytest.raises(InputError) as info:
        load_trace(dat, cutoffs=cuts)
    _check_error(info.value, cuts, 1, "missing column 'VEndNeg'")
    absent = tmp_path / "absent.csv"
    with pytest.raises(InputError) as info:
        load_trace(dat, cutoffs=absent)
    _check_error(info.value, absent, None, "file not found")


def test_cutoffs_rejected_for_csv_traces(tmp_path):
    csv_path = _write(tmp_path, "t.csv", SYN_CSV)
    cuts = _cutoffs(tmp_path, "S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2")
    _expect_error(csv_path, None, "--cutoffs applies to WGFMU .dat files only", cutoffs=cuts)


@pytest.mark.parametrize("row, branch", [
    ("S,IDTEST,24.10.2024,10:49:37,1.0,1.3,-2.0,-3.0", "negative (up)"),
    ("S,IDTEST,24.10.2024,10:49:37,2.0,3.0,-1.0,-1.2", "positive (down)"),
], ids=["no-negative", "no-positive"])
def test_cutoff_that_empties_a_branch(tmp_path, row, branch):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    _expect_error(dat, None, f"the {branch} branch is empty", cutoffs=_cutoffs(tmp_path, row))


# --------------------------------------------------------------------------------------- synthetic .dat: bad input

ROW3 = "3,3,1.2,2000000.0,4000000.0"  # line 10
LAST = "7,8,-1.2,1000000.0,2000000.0"  # line 14
SYN_LINES = SYN_DAT.splitlines(keepends=True)

DAT_CASES = [
    # (id, text, line, fragments)
    ("truncated-rows", "".join(SYN_LINES[:12]), 12,
     ["truncated or altered data", "announces 4 positive and 3 negative pulses, the data block has 4 and 1"]),
    ("no-data-rows", "".join(SYN_LINES[:7]), 7, ["the data block has 0 and 0"]),
    ("truncated-in-settings", "".join(SYN_LINES[:3]), 4,
     ["truncated: expected a header and a value row at lines 3-4"]),
    ("truncated-before-data", "".join(SYN_LINES[:6]), 7, ["truncated: no data block (expected header at line 7)"]),
    ("truncated-last-row", _replace(SYN_DAT, LAST, "7,8,-1.2,1000000.0"), 14,
     ["expected 5 comma-separated values, got 4 (truncated or malformed row)"]),
    ("truncated-last-value", _replace(SYN_DAT, LAST, "7,8,-1.2,1000000.0,"), 14,
     ["field 'R_high (ohm)': expected a number, got ''"]),
    ("non-numeric", _replace(SYN_DAT, ROW3, "3,3,1.2,2000000.0,4e6x"), 10,
     ["field 'R_high (ohm)': expected a number, got '4e6x'"]),
    ("decimal-comma", _replace(SYN_DAT, ROW3, "3,3,1,2,2000000.0,4000000.0"), 10, ["expected 5 comma-separated values, got 6"]),
    ("nan", _replace(SYN_DAT, ROW3, "3,3,nan,2000000.0,4000000.0"), 10,
     ["field 'Pulse Amplitude (V)': expected a finite number, got 'nan'"]),
    ("negative-resistance", _replace(SYN_DAT, ROW3, "3,3,1.2,-2000000.0,4000000.0"), 10,
     ["field 'R_low (ohm)': expected a positive resistance in ohm, got -2000000.0"]),
    ("index-not-increasing", _replace(SYN_DAT, ROW3, "3,2,1.2,2000000.0,4000000.0"), 10,
     ["field 'index': index must increase, got 2 after 2"]),
    ("fractional-index", _replace(SYN_DAT, ROW3, "3,3.5,1.2,2000000.0,4000000.0"), 10,
     ["field 'index': expected a whole number, got '3.5'"]),
    ("wrong-unit-data", _replace(SYN_DAT, "R_low (ohm)", "R_low (kohm)"), 7,
     ["wrong unit: expected column 'R_low (ohm)', got 'R_low (kohm)'"]),
    ("wrong-unit-analysis", _replace(SYN_DAT, "twidth (s)", "twidth (ms)"), 5,
     ["wrong unit: expected column 'twidth (s)', got 'twidth (ms)'"]),
    ("renamed-data-column", _replace(SYN_DAT, "R_high (ohm)", "R_hi"), 7,
     ["expected columns 'Pulse Number,index,Pulse Amplitude (V),R_low (ohm),R_high (ohm)'"]),
    ("pulse-width-not-seconds", _replace(SYN_DAT, "2e-08,0.001", "20,0.001"), 4,
     ["field 'pulseWidth': 20.0 is not a pulse width in seconds", "wrong unit?"]),
    ("analysis-width-disagrees", _replace(SYN_DAT, "-1.2,2e-08,4,3", "-1.2,2e-07,4,3"), 6,
     ["field 'twidth (s)': analysis width 2e-07 s disagrees with pulseWidth 2e-08 s"]),
    ("missing-setting", _replace(SYN_DAT, ",pulseWidth,", ",pw,"), 3, ["missing column 'pulseWidth'"]),
    ("fractional-count", _replace(SYN_DAT, ",4,3\n", ",4.5,3\n"), 6,
     ["field 'num_LTP': expected a whole number, got '4.5'"]),
    ("identity-row-short", _replace(SYN_DAT, "24.10.2024,10:49:37,,IDTEST", "24.10.2024,10:49:37"), 2,
     ["expected 4 values, got 2 (truncated row)"]),
    ("empty-device-id", _replace(SYN_DAT, ",,IDTEST", ",,"), 2, ["field 'device_id': empty device id"]),
    ("bad-date", _replace(SYN_DAT, "24.10.2024,", "2024-10-24,"), 2,
     ["expected date DD.MM.YYYY and time HH:MM:SS, got '2024-10-24' '10:49:37'"]),
    ("unknown-first-line", "hello,world\n" + SYN_DAT, 1,
     ["unknown trace format: expected '# edgelearn-trace/1' or a WGFMU 'test_date,...' header"]),
    ("empty-file", "", 1, ["unknown trace format"]),
]


@pytest.mark.parametrize("text, line, fragments", [c[1:] for c in DAT_CASES], ids=[c[0] for c in DAT_CASES])
def test_malformed_dat(tmp_path, text, line, fragments):
    _expect_error(_write(tmp_path, "bad.dat", text), line, *fragments)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.dat"
    exc = _expect_error(path, None)
    assert str(exc) == f"{path}: file not found"


def test_directory(tmp_path):
    exc = _expect_error(tmp_path, None)
    assert str(exc) == f"{tmp_path}: is a directory, expected a trace file"


def test_binary_garbage(tmp_path):
    path = _write(tmp_path, "garbage.dat", bytes(range(256)) * 4)
    exc = _expect_error(path, None)
    assert str(exc) == f"{path}: not a text file (byte 128 is not UTF-8)"


def test_ascii_garbage(tmp_path):
    _expect_error(_write(tmp_path, "garbage.dat", bytes(range(1, 128)) * 4), 1, "unknown trace format")


def test_input_error_is_an_edgelearn_error():
    exc = InputError("f.dat", "expected x", 3, "col")
    assert isinstance(exc, EdgelearnError)
    assert str(exc) == "f.dat:3: field 'col': expected x"
    assert str(InputError("f.dat", "bad")) == "f.dat: bad"


@pytest.mark.parametrize("text, suffix", [(SYN_DAT, ".dat"), (SYN_CSV, ".csv")], ids=["dat", "csv"])
def test_every_truncation_is_a_trace_or_an_input_error(tmp_path, text, suffix):
    """Cut the file after every byte: the reader must return a valid trace or raise InputError, nothing else."""
    data = text.encode()
    path = tmp_path / f"cut{suffix}"
    loaded = 0
    for n in range(len(data) + 1):
        path.write_bytes(data[:n])
        try:
            trace = load_trace(path)
        except InputError as exc:
            assert str(exc).startswith(str(path))
            continue
        loaded += 1
        assert len(trace) >= 2
        assert (trace.polarity == 1).any() and (trace.polarity == -1).any()
    assert loaded >= 1  # at least the complete file loads


# ----------------------------------------------------------------------------------------------- our CSV format


def test_csv_reader(tmp_path):
    trace = load_trace(_write(tmp_path, "t.csv", SYN_CSV))
    assert trace.pulse.tolist() == [1, 2, 3, 4]
    assert trace.amplitude_v.tolist() == [1.0, 1.1, -1.0, -1.1]
    assert trace.polarity.tolist() == [1, 1, -1, -1]
    assert trace.conductance_s.tolist() == [7.5e-07, 6e-07, 6.5e-07, 7e-07]
    assert trace.meta == TraceMeta(device_id="IDTEST", pulse_width_s=2e-8, read_voltage_v=0.1)
    assert trace.meta.selection == "all" and trace.meta.voltage_range is None
    assert trace.anchors.tolist() == [True, False, False, False]


def _assert_same_trace(a: Trace, b: Trace) -> None:
    assert a.meta == b.meta
    for name in ("pulse", "amplitude_v", "polarity", "conductance_s"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).dtype == getattr(b, name).dtype, name


def test_round_trip_from_dat_is_exact(tmp_path):
    original = load_trace(_write(tmp_path, "syn.dat", SYN_DAT))
    out = tmp_path / "syn.csv"
    original.to_csv(out)
    text = out.read_text()
    assert "np.float64" not in text  # numpy-2 reprs once leaked into the file
    assert text.splitlines()[-7:] == [
        "1,1.0,+1,7.5e-07", "2,1.1,+1,6e-07", "3,1.2,+1,3.75e-07", "4,1.3,+1,3e-07",
        "6,-1.0,-1,3.75e-07", "7,-1.1,-1,6e-07", "8,-1.2,-1,7.5e-07"]
    assert "# voltage_range = 1.0,1.3,-1.0,-1.2" in text.splitlines()
    assert not (tmp_path / "syn.csv.tmp").exists()
    back = load_trace(out)
    _assert_same_trace(back, original)
    assert back.anchors.tolist() == original.anchors.tolist()
    # writing the loaded trace again gives the same file
    again = tmp_path / "again.csv"
    back.to_csv(again)
    assert again.read_text() == text


def test_round_trip_with_cutoff_selection_is_exact(tmp_path):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    original = load_trace(dat, cutoffs=_cutoffs(tmp_path, "S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2"))
    original.to_csv(tmp_path / "t.csv")
    back = load_trace(tmp_path / "t.csv")
    _assert_same_trace(back, original)
    assert back.meta.selection == "cutoffs:cuts.csv"
    assert back.anchors.tolist() == [True, False, True, False]


def test_round_trip_of_awkward_floats_is_exact(tmp_path):
    meta = TraceMeta(device_id="IDX", pulse_width_s=1 / 3 * 1e-6, read_voltage_v=0.1 + 0.2, amplitude_step_v=0.042,
                     measured_at="2024-10-24T10:49:37", source="x.dat", selection="all")
    amps = np.array([0.1 + 0.2, 1 / 7, -2 / 3, -1e-3 / 3])
    trace = Trace(meta=meta, pulse=np.array([3, 4, 9, 10], dtype=np.int64), amplitude_v=amps,
                  polarity=np.array([1, 1, -1, -1], dtype=np.int8),
                  conductance_s=np.array([1 / 3e6, np.pi * 1e-7, 5e-324, 1.0]))
    trace.to_csv(tmp_path / "t.csv")
    back = load_trace(tmp_path / "t.csv")
    _assert_same_trace(back, trace)
    assert back.anchors.tolist() == [True, False, True, False]


CSV_ROW2 = "2,1.1,+1,6e-07"  # line 7
CSV_ROW3 = "3,-1.0,-1,6.5e-07"  # line 8
CSV_CASES = [
    ("wrong-column-unit", _replace(SYN_CSV, "conductance_s", "conductance_ns"), 5,
     ["wrong unit: expected column 'conductance_s', got 'conductance_ns'"]),
    ("missing-column", _replace(SYN_CSV, ",conductance_s", ""), 5,
     ["expected columns 'pulse,amplitude_v,polarity,conductance_s', got 'pulse,amplitude_v,polarity'"]),
    ("polarity-disagrees", _replace(SYN_CSV, CSV_ROW2, "2,1.1,-1,6e-07"), 7,
     ["field 'polarity': polarity -1 disagrees with amplitude 1.1 V"]),
    ("polarity-not-a-sign", _replace(SYN_CSV, CSV_ROW2, "2,1.1,up,6e-07"), 7,
     ["field 'polarity': expected +1 or -1, got 'up'"]),
    ("pulse-not-increasing", _replace(SYN_CSV, CSV_ROW3, "2,-1.0,-1,6.5e-07"), 8,
     ["field 'pulse': pulse numbers must increase, got 2 after 2"]),
    ("pulse-decreasing", _replace(SYN_CSV, CSV_ROW3, "1,-1.0,-1,6.5e-07"), 8,
     ["pulse numbers must increase, got 1 after 2"]),
    ("fractional-pulse", _replace(SYN_CSV, CSV_ROW3, "2.5,-1.0,-1,6.5e-07"), 8,
     ["field 'pulse': expected a whole number, got '2.5'"]),
    ("negative-conductance", _replace(SYN_CSV, CSV_ROW3, "3,-1.0,-1,-6.5e-07"), 8,
     ["field 'conductance_s': expected a positive conductance in siemens, got -6.5e-07"]),
    ("zero-conductance", _replace(SYN_CSV, CSV_ROW3, "3,-1.0,-1,0"), 8,
     ["field 'conductance_s': expected a positive conductance in siemens, got 0.0"]),
    ("conductance-in-nanosiemens", _replace(SYN_CSV, CSV_ROW3, "3,-1.0,-1,650.0"), 8,
     ["field 'conductance_s': 650.0 S is not a plausible device conductance (wrong unit? expected siemens)"]),
    ("non-numeric-amplitude", _replace(SYN_CSV, CSV_ROW3, "3,-1.0V,-1,6.5e-07"), 8,
     ["field 'amplitude_v': expected a number, got '-1.0V'"]),
    ("truncated-row", SYN_CSV.rstrip("\n").rsplit(",", 1)[0] + "\n", 9,
     ["expected 4 comma-separated values, got 3 (truncated or malformed row)"]),
    ("bad-format-tag", _replace(SYN_CSV, "edgelearn-trace/1", "edgelearn-trace/2"), 1,
     ["expected first line '# edgelearn-trace/1'"]),
    ("header-line-without-equals", _replace(SYN_CSV, "# device_id = IDTEST", "# device_id IDTEST"), 2,
     ["expected '# key = value', got '# device_id IDTEST'"]),
    ("missing-device-id", _replace(SYN_CSV, "# device_id = IDTEST\n", ""), 4,
     ["field 'device_id': missing", "'# device_id = ...'"]),
    ("missing-pulse-width", _replace(SYN_CSV, "# pulse_width_s = 2e-08\n", ""), 4,
     ["field 'pulse_width_s': missing"]),
    ("empty-device-id", _replace(SYN_CSV, "# device_id = IDTEST", "# device_id ="), 2,
     ["field 'device_id':", "at least 1 character"]),
    ("pulse-width-not-seconds", _replace(SYN_CSV, "# pulse_width_s = 2e-08", "# pulse_width_s = 20"), 3,
     ["field 'pulse_width_s':", "less than or equal to 1", "(got '20')"]),
    ("unknown-key-after-similar-key", _replace(SYN_CSV, "# read_voltage_v = 0.1", "# read_voltage_v = 0.1\n# device = X"),
     5, ["field 'device':", "Extra inputs are not permitted"]),
    ("duplicate-key", _replace(SYN_CSV, "# read_voltage_v = 0.1", "# read_voltage_v = 0.1\n# device_id = OTHER"), 5,
     ["field 'device_id': duplicate header key (first given at line 2)"]),
    ("voltage-range-three-numbers", _replace(SYN_CSV, "# read_voltage_v = 0.1",
                                             "# read_voltage_v = 0.1\n# voltage_range = 1,2,-1"), 5,
     ["field 'voltage_range': expected four volts"]),
    ("no-column-header", "# edgelearn-trace/1\n# device_id = X\n", 3, ["no column header"]),
]


@pytest.mark.parametrize("text, line, fragments", [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_malformed_csv(tmp_path, text, line, fragments):
    _expect_error(_write(tmp_path, "bad.csv", text), line, *fragments)


@pytest.mark.parametrize("text, fragments", [
    (SYN_CSV.split("2,1.1")[0], ["needs at least 2 pulses, has 1"]),
    (SYN_CSV.split("3,-1.0")[0], ["the negative (up) branch is empty"]),
], ids=["one-pulse", "one-branch"])
def test_csv_needs_both_branches(tmp_path, text, fragments):
    _expect_error(_write(tmp_path, "bad.csv", text), None, *fragments)


# --------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name, content, fragment", [
    ("width.dat", _replace(SYN_DAT, "2e-08,0.001", "20,0.001"), ":4: field 'pulseWidth': 20.0 is not a pulse width"),
    ("kohm.dat", _replace(SYN_DAT, "R_low (ohm)", "R_low (kohm)"), ":7: wrong unit"),
    ("garbage.dat", bytes(range(256)) * 4, ": not a text file"),
    ("absent.dat", None, ": file not found"),
], ids=["pulse-width", "wrong-unit", "binary", "missing"])
def test_cli_import_of_bad_file(tmp_path, capsys, name, content, fragment):
    bad = tmp_path / name if content is None else _write(tmp_path, name, content)
    out = tmp_path / "out.csv"
    assert cli_main(["trace", "import", str(bad), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"edgelearn: error: {bad}{fragment}"), lines[0]
    assert not out.exists()
    assert not (tmp_path / "out.csv.tmp").exists()


def test_cli_import_with_cutoff_file_without_the_run(tmp_path, capsys):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    cuts = _cutoffs(tmp_path, "S,IDTEST,01.01.2000,10:49:37,1.1,1.2,-1.1,-1.2")
    out = tmp_path / "out.csv"
    assert cli_main(["trace", "import", str(dat), "--cutoffs", str(cuts), "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"edgelearn: error: {cuts}: no row for device IDTEST measured 24.10.2024 10:49:37"]
    assert not out.exists()


@pytest.mark.parametrize("extra, selection, count, dropped", [
    ([], "analysis-block", 7, 0),
    (["--no-cutoffs"], "all", 7, 0),
    (["--cutoffs", "CUTS"], "cutoffs:cuts.csv", 4, 3),
], ids=["default", "no-cutoffs", "cutoffs"])
def test_cli_import_success(tmp_path, capsys, extra, selection, count, dropped):
    dat = _write(tmp_path, "syn.dat", SYN_DAT)
    cuts = _cutoffs(tmp_path, "S,IDTEST,24.10.2024,10:49:37,1.1,1.2,-1.1,-1.2")
    out = tmp_path / "out.csv"
    argv = ["trace", "import", str(dat)] + [str(cuts) if a == "CUTS" else a for a in extra] + ["-o", str(out)]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == (f"wrote {out}: {count} pulses of IDTEST at 2e-08 s "
                            f"(selection {selection}, {dropped} dropped)\n")
    back = load_trace(out)
    assert len(back) == count and back.meta.selection == selection
