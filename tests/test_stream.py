"""Sensor front end (bit-exact against a slow reference) and stream sources with their bad-input errors."""

import math

import numpy as np
import pytest

from conftest import REPO
from edgelearn.errors import EdgelearnWarning, InputError
from edgelearn.stream import FrontEndConfig, Recording, load_csv, load_hapt, to_codes, windows
from firmware_model import frontend

HAPT = REPO.parent / "shared" / "datasets" / "hapt" / "hapt_raw.npz"


def c_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def ref_features(codes, length, hop):
    n, channels = codes.shape
    count = 0 if n < length else (n - length) // hop + 1
    out = []
    for w in range(count):
        row = []
        for c in range(channels):
            xs = [int(v) for v in codes[w * hop:w * hop + length, c]]
            total, squares = sum(xs), sum(v * v for v in xs)
            variance = c_div(length * squares - total * total, length * length)
            row += [c_div(total, length), math.isqrt(variance), min(xs), max(xs), c_div(sum(abs(v) for v in xs), length)]
        out.append(row)
    return np.array(out, dtype=np.int64).reshape(count, channels * 5)


@pytest.mark.parametrize("seed, n, length, hop", [(0, 300, 128, 64), (1, 129, 128, 64), (2, 50, 64, 32),
                                                   (3, 1000, 100, 7), (4, 257, 16, 16)])
def test_window_features_bit_exact(seed, n, length, hop):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-32768, 32768, (n, 4)).astype(np.int16)
    codes[: min(n, 20), 0] = -32768  # extremes: the most negative code, saturated stretches
    codes[: min(n, 20), 1] = 32767
    count = frontend.window_count(n, length, hop)
    out = np.zeros((count, 20), np.int32)
    assert frontend.window_features(codes, length, hop, out) == count
    np.testing.assert_array_equal(out, ref_features(codes, length, hop))


def test_window_features_by_hand():
    codes = np.array([[1, -1], [2, -2], [3, -3], [4, -4]], np.int16)
    out = np.zeros((1, 10), np.int32)
    frontend.window_features(codes, 4, 4, out)
    # mean trunc(10/4) = 2 and trunc(-10/4) = -2 (C truncation, not floor); variance trunc(20/16) = 1 -> std 1
    assert out[0].tolist() == [2, 1, 1, 4, 2, -2, 1, -4, -1, 2]


def test_decimate_and_isqrt():
    codes = np.arange(40, dtype=np.int16).reshape(20, 2)
    out = np.zeros((frontend.window_count(20, 8, 4), 2 * 2), np.int16)
    frontend.decimate(codes, 8, 4, 4, out)
    assert out[1].tolist() == [8, 16, 9, 17]  # window 1 starts at sample 4: samples 4 and 8 of each channel
    for v in [0, 1, 3, 4, 99, 100, 2**40 + 12345, 2**62 + 7]:
        assert frontend.isqrt64(v) == math.isqrt(v)


def test_windows_geometry_labels_and_scaling():
    rate = 50.0
    n = 500
    t = np.arange(n) / rate
    samples = np.stack([np.sin(t), np.cos(t), 0.5 * np.ones(n)], axis=1)
    labels = np.where(np.arange(n) < 200, 3, -1)
    rec = Recording(samples, labels, rate, ("acc_x", "acc_y", "gyro_z"))
    config = FrontEndConfig()
    assert config.geometry(rate) == (128, 64)
    x, y, ends = windows(rec, config)
    assert x.shape == (6, 15) and ends.tolist() == [(128 + 64 * k) / 50 for k in range(6)]
    assert y.tolist() == [3, 3, 3, -1, -1, -1]  # majority: window 2 (samples 128-255) has 72 labelled
    codes = to_codes(rec, config)
    assert codes[0, 2] == round(0.5 / 34.9 * 32767)  # gyro channel on the gyro scale
    assert np.abs(x).max() <= 1.0
    raw = FrontEndConfig(mode="raw", decimation=8)
    xr, _, _ = windows(rec, raw)
    assert xr.shape == (6, 3 * 16)


@pytest.mark.shared
def test_hapt_sessions_and_users():
    if not HAPT.exists():
        pytest.skip(f"HAPT not found at {HAPT}: ../shared is absent on this machine")
    recs = load_hapt(HAPT)
    assert len(recs) == 61 and sum(r.samples.shape[0] for r in recs) == 1_122_772
    assert sorted({r.user for r in recs}) == list(range(1, 31))
    assert recs[0].channels == ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z") and recs[0].rate_hz == 50
    some = load_hapt(HAPT, users=[10])
    assert [r.session for r in some] == [19, 20, 21]


def write_npz(path, **overrides):
    n = 100
    arrays = dict(signals=np.zeros((n, 2), np.float32), label=np.full(n, 1, np.int8), user=np.ones(n, np.int8),
                  session=np.ones(n, np.int16), channels=np.array(["acc_x", "gyro_x"]))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("overrides, message", [
    (dict(label=None), "missing array 'label'"),
    (dict(label=np.full(99, 1, np.int8)), "array 'label' has 99 rows, signals have 100"),
    (dict(label=np.full(100, 13, np.int8)), "field 'label': label 13 at row 0: expected 1-12 or -1"),
    (dict(signals=np.full((100, 2), np.nan, np.float32)), "field 'signals': non-finite sample at row 0"),
    (dict(signals=np.zeros((100, 3), np.float32)), "signals have 3 columns for 2 channel names"),
    (dict(user=np.r_[np.ones(50), 2 * np.ones(50)].astype(np.int8)), "session 1 spans several users"),
    (dict(signals=np.zeros(100, np.float32)), "array 'signals' has 1 dimensions, expected 2"),
])
def test_hapt_bad_input(tmp_path, overrides, message):
    path = write_npz(tmp_path / "h.npz", **overrides)
    with pytest.raises(InputError, match=message) as err:
        load_hapt(path)
    assert str(err.value).startswith(str(path))


def test_hapt_unreadable(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable npz archive"):
        load_hapt(bad)
    with pytest.raises(InputError, match="file not found"):
        load_hapt(tmp_path / "missing.npz")


def csv_text(rows, header="time_s,acc_x,acc_y,label"):
    return header + "\n" + "\n".join(rows) + "\n"


def test_csv_stream_with_a_gap(tmp_path):
    rows = [f"{k / 50:.4f},{k * 0.01:.3f},0.5,{1 if k < 30 else ''}" for k in range(60)]
    rows += [f"{(k + 100) / 50:.4f},0.1,0.2,2" for k in range(40)]  # restarts 0.8 s later: a gap
    path = tmp_path / "s.csv"
    path.write_text(csv_text(rows))
    with pytest.warns(EdgelearnWarning, match=r"s\.csv: 1 gap\(s\) longer than 5 missing samples .* split the stream "
                                              r"into 2 recordings"):
        recs = load_csv(path, rate_hz=50)  # 39 samples missing: more than MAX_INTERPOLATED_GAP, so a split
    assert [r.samples.shape[0] for r in recs] == [60, 40]
    assert recs[0].labels[29] == 1 and recs[0].labels[30] == -1 and recs[1].labels[0] == 2
    assert recs[0].channels == ("acc_x", "acc_y")


@pytest.mark.parametrize("text, rate, message", [
    ("", 50, r"s\.csv:1: empty file"),
    (csv_text(["0,1,2,1"], header="t,acc_x,acc_y,label"), 50, r"s\.csv:1: first column must be 'time_s'"),
    (csv_text(["0,1,2,1", "0.02,x,2,1"]), 50, r"s\.csv:3: field 'acc_x': expected a number, got 'x'"),
    (csv_text(["0,1,2,1", "0.02,1,2"]), 50, r"s\.csv:3: expected 4 values, got 3"),
    (csv_text(["0,1,2,1", "0.02,1,2,1.5"]), 50, r"s\.csv:3: field 'label': expected an integer label, a class name "
                                                r"or nothing, got '1\.5'"),
    (csv_text(["0,1,2,1", "0.02,1,2,-3"]), 50, r"s\.csv:3: field 'label': label -3: integer labels are 0\.\."),
    (csv_text(["0,1,2", "0.02,1,2"], header="time_s,acc_x,acc_x"), 50, r"s\.csv:1: channel 'acc_x' appears twice"),
    (csv_text(["0.02,1,2,1"], header="0,1,2,1"), 50,
     r"s\.csv:1: no header: line 1 is a sample \('0,1,2,1'\); first column must be 'time_s': give the header"),
    (csv_text(["0,1,2,1", "0.0,1,2,1"]), 50, r"s\.csv:3: field 'time_s': time must increase"),
    (csv_text([f"{k / 100},1,2,1" for k in range(10)]), 50, r"s\.csv: field 'time_s': sampling rate 100 Hz, "
                                                              r"expected 50 Hz"),
    (csv_text(["0,1,2,1"]), 50, r"s\.csv: needs at least 2 samples, has 1"),
    (csv_text(["0,1,inf,1", "0.02,1,2,1"]), 50, r"s\.csv:2: field 'acc_y': expected a finite number"),
])
def test_csv_bad_input(tmp_path, text, rate, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_csv(path, rate_hz=rate)
