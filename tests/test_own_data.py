"""Issue 13, item 4: a user's own data work on the first try. One test per trap that was measured: a message, or the
fixed behaviour (shipped configs, pre-training source, demo-only rotation, units and saturation, short gaps, string
labels and a label map, labelless streams, a serial header, status on stderr and JSON on stdout)."""

import json
import logging
import re

import numpy as np
import pytest

from conftest import REPO
from edgelearn.cli import main
from edgelearn.continual import (RunConfig, _recordings, bundled_configs, config_path, load_run_config, prepare)
from edgelearn.errors import EdgelearnError, EdgelearnWarning, InputError
from edgelearn.stream import FrontEndConfig, load_csv, read_serial, windows

HAPT = REPO.parent / "shared" / "datasets" / "hapt" / "hapt_raw.npz"


def write_csv(path, seconds=60.0, rate=20.0, labels=("0", "1"), scale=1.0, drop=0.0, seed=0, label_column=True,
              channels=("acc_x", "acc_y", "acc_z")):
    """Two activities in alternating 5 s blocks (gentle 1 Hz / vigorous 3 Hz swinging, gravity on z, in g times
    `scale`); `drop`: the fraction of samples left out at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(int(seconds * rate)):
        t = k / rate
        block = int(t // 5) % 2
        freq, amplitude = (1.0, 0.3) if block == 0 else (3.0, 1.0)
        x = amplitude * np.sin(2 * np.pi * freq * t)
        values = [x + 0.05 * rng.standard_normal(), 0.5 * x, 1.0][:len(channels)]
        if k and rng.random() < drop:
            continue
        row = f"{t:.4f}," + ",".join(f"{scale * v:.5f}" for v in values)
        rows.append(row + (f",{labels[block]}" if label_column else ""))
    header = "time_s," + ",".join(channels) + (",label" if label_column else "")
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def own(path, **fields):
    """A config of a user's own CSV at 20 Hz with small, fast settings."""
    base = dict(source="csv", path=str(path), rate_hz=20.0, hidden=4, pretrain_epochs=2,
                frontend={"window_s": 2.0, "full_scale": {"acc": 4.0}})
    return load_run_config(None, {**base, **fields})


# ------------------------------------------------------------------------------------------- shipped configs

def test_readme_configs_are_shipped_and_load(capsys):
    """Every `--config NAME` in README exists (a shipped config by name) and validates; `--list-configs` shows them."""
    shipped = bundled_configs()
    assert {"basicmotions", "hapt", "csv-template"} <= set(shipped)
    readme = (REPO / "README.md").read_text()
    named = {n.strip("`") for n in re.findall(r"--config (\S+)", readme)} - {"NAME", "FILE"}
    assert named and named <= set(shipped), named
    for name in named:
        path = config_path(name)
        assert path.is_file() and path.parent.name == "configs"
    overrides = {"hapt": {"path": "hapt_raw.npz"}, "csv-template": {"path": "my.csv"}}
    for name in shipped:
        config = load_run_config(name, overrides.get(name))
        assert config.moved_sensor == (config.source == "basicmotions")
    # the demo's config is the defaults of `edgelearn run`
    assert load_run_config("basicmotions").model_dump() == RunConfig().model_dump()
    assert main(["run", "--list-configs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped) and str(shipped["csv-template"]) in out
    with pytest.raises(InputError, match=r"hapt\.toml: file not found; a shipped config of that name exists: "
                                         r"--config hapt"):
        load_run_config("hapt.toml")
    with pytest.raises(InputError, match=r"nope: file not found, and no shipped config of that name \(shipped: "):
        load_run_config("nope")


def test_the_template_needs_only_a_path(tmp_path, capsys):
    assert main(["run", "--config", "csv-template", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "csv-template.toml: field 'path': source csv needs path: give --path" in err


# ------------------------------------------------------------------------------------ pre-training source

def test_no_pretraining_source_is_refused_never_a_silent_untrained_chip(tmp_path, capsys, caplog):
    stream = write_csv(tmp_path / "s.csv")
    with pytest.raises(InputError, match=r"field 'pretrain_path': source csv has no pre-training data, and an "
                                         r"untrained chip guesses: give pretrain_path"):
        own(stream)
    assert main(["run", "--source", "csv", "--path", str(stream), "--rate-hz", "20", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no pre-training data" in err
    # pre-training data without labels: refused, naming them
    unlabelled = write_csv(tmp_path / "u.csv", label_column=False)
    with pytest.raises(EdgelearnError, match=r"the first 50 % of u\.csv: 29 windows, labelled with 0 class\(es\); "
                                             r"pre-training needs at least 2"):
        _recordings(own(unlabelled, pretrain_fraction=0.5))
    short = write_csv(tmp_path / "short.csv", seconds=1.5)  # labelled, but shorter than one 2 s window
    with pytest.raises(EdgelearnError, match=r"short\.csv: 0 windows, labelled with 0 class\(es\)"):
        _recordings(own(stream, pretrain_path=str(short)))
    with pytest.raises(InputError, match="field 'pretrain_fraction': give pretrain_path .* or pretrain_fraction, not"):
        own(stream, pretrain_fraction=0.5, pretrain_path=str(stream))
    with pytest.raises(InputError, match="field 'pretrain_path': only for source csv or serial"):
        load_run_config(None, {"pretrain_path": "x.csv"})
    # an untrained chip only on purpose, and then it says so
    with caplog.at_level(logging.INFO, logger="edgelearn"):
        train, recs, names, values = _recordings(own(stream, pretrain="none"))
    assert train == [] and names == ["0", "1"]
    assert "pre-training: none" in caplog.text and "starts untrained" in caplog.text


def test_pretrain_fraction_splits_the_users_own_recording(tmp_path):
    stream = write_csv(tmp_path / "s.csv", seconds=60.0)
    train, recs, names, values = _recordings(own(stream, pretrain_fraction=0.25))
    assert sum(r.samples.shape[0] for r in train) == 300 and sum(r.samples.shape[0] for r in recs) == 900
    # the command line's --pretrain-path replaces the file's pretrain_fraction (they are alternatives)
    toml = tmp_path / "r.toml"
    toml.write_text('source = "csv"\nrate_hz = 20.0\npretrain_fraction = 0.5\n')
    config = load_run_config(toml, {"path": str(stream), "pretrain_path": str(stream)})
    assert config.pretrain_fraction is None and config.pretrain_path == str(stream)


# ----------------------------------------------------------------------------------------- moved_sensor

def test_moved_sensor_is_only_the_demos(tmp_path, caplog):
    assert RunConfig().moved_sensor is True
    assert own(write_csv(tmp_path / "s.csv"), pretrain="none").moved_sensor is False
    assert RunConfig(source="hapt", path="x").moved_sensor is False
    stream = write_csv(tmp_path / "s.csv", channels=("acc_x", "acc_y"))
    p = prepare(own(stream, pretrain="none"))
    expected = load_csv(stream, 20.0)[0].samples
    np.testing.assert_array_equal(p["stream_recs"][0].samples, expected)  # streamed as recorded
    # an explicit choice is honoured and said; with nothing to rotate, a warning
    with caplog.at_level(logging.INFO, logger="edgelearn"):
        p = prepare(own(stream, pretrain="none", moved_sensor=True))
    np.testing.assert_array_equal(p["stream_recs"][0].samples[:, 0], expected[:, 1])
    assert "the streamed sensor is turned 90 degrees about z" in caplog.text
    other = write_csv(tmp_path / "o.csv", channels=("acc_a", "acc_b"))
    with pytest.warns(EdgelearnWarning, match="moved_sensor: no acc_x/acc_y or gyro_x/gyro_y channels to rotate"):
        _recordings(own(other, pretrain="none", moved_sensor=True))


def test_the_demo_says_its_sensor_is_rotated(caplog):
    pytest.importorskip("sktime", reason="BasicMotions ships inside sktime (a core dependency)")
    with caplog.at_level(logging.INFO, logger="edgelearn"):
        _recordings(RunConfig())
    assert "moved_sensor: the streamed sensor is turned 90 degrees about z" in caplog.text
    assert "the demo's built-in shift" in caplog.text


# ------------------------------------------------------------------------------------ units, full_scale

def test_full_scale_defaults_units_and_saturation_warning(tmp_path):
    assert RunConfig().frontend.full_scale == {"acc": 40.0, "gyro": 40.0}  # the demo's own units
    config = RunConfig(source="csv", path="x", rate_hz=50.0)
    assert config.frontend.full_scale == {"acc": 8.0, "gyro": 34.9}  # documented: g and rad/s
    assert RunConfig(source="csv", frontend={"window_s": 2.0}).frontend.full_scale == {"acc": 8.0, "gyro": 34.9}
    base = {"pretrain": "none", "frontend": {"window_s": 2.0}}
    g_data = write_csv(tmp_path / "g.csv")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgelearnWarning)
        _recordings(own(g_data, **base))  # data in g within 8 g: silent
    ms2 = write_csv(tmp_path / "ms2.csv", scale=9.80665)  # the same motion in m/s^2: gravity alone is beyond 8
    with pytest.warns(EdgelearnWarning, match=r"ms2\.csv: samples at or beyond full_scale \(acc = 8\) are clipped: "
                                              r"acc_x [0-9.]+ %, acc_z 100\.0 % \(more than 0\.5 %\); give the "
                                              r"sensor's range in the data's unit, e\.g\. \[frontend\] full_scale = "
                                              r"\{ acc = 14, gyro = 34\.9 \}"):
        _recordings(own(ms2, **base))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgelearnWarning)
        _recordings(own(ms2, pretrain="none", frontend={"window_s": 2.0, "full_scale": {"acc": 78.5}}))
    odd = write_csv(tmp_path / "odd.csv", channels=("acc_x", "mag_x", "acc_z"))
    with pytest.raises(InputError, match=r"odd\.csv: field 'frontend\.full_scale': channel 'mag_x' has no "
                                         r"full_scale \(prefixes with one: acc, gyro\): add mag = RANGE"):
        _recordings(own(odd, **base))


# ------------------------------------------------------------------------------------------------- gaps

def test_short_gaps_are_interpolated_not_split(tmp_path, caplog):
    full = write_csv(tmp_path / "full.csv", seconds=120.0)
    dropped = write_csv(tmp_path / "drop.csv", seconds=120.0, drop=0.01, seed=0)
    fe = FrontEndConfig(window_s=2.0, full_scale={"acc": 4.0})
    with caplog.at_level(logging.INFO, logger="edgelearn"):
        recs = load_csv(dropped, 20.0)
    reference = load_csv(full, 20.0)
    assert len(recs) == 1 and recs[0].samples.shape == reference[0].samples.shape
    assert sum(len(windows(r, fe)[1]) for r in recs) == len(windows(reference[0], fe)[1])  # was 1 recording in 20
    error = np.abs(recs[0].samples - reference[0].samples)  # a 3 Hz swing at 20 Hz, linear across a missing sample
    assert error.max() < 0.6 and error.mean() < 0.005 and (error.max(axis=1) == 0).mean() > 0.98
    np.testing.assert_array_equal(recs[0].labels, reference[0].labels)
    assert "missing samples in" in caplog.text and "filled by linear interpolation" in caplog.text
    # the limit: 5 missing samples are filled, 6 split the stream with a warning
    rows = [f"{k / 10:.2f},{k},{k // 10}" for k in range(20)]
    text = "time_s,acc_x,label\n" + "\n".join(rows[:5] + rows[10:]) + "\n"  # samples 5-9 missing
    (tmp_path / "five.csv").write_text(text)
    (five,) = load_csv(tmp_path / "five.csv", 10.0)
    np.testing.assert_allclose(five.samples[:, 0], np.arange(20))
    assert five.labels.tolist() == [0] * 8 + [1] * 12  # the nearer neighbour's label (the earlier one at a tie)
    (tmp_path / "six.csv").write_text("time_s,acc_x,label\n" + "\n".join(rows[:4] + rows[10:]) + "\n")
    with pytest.warns(EdgelearnWarning, match=r"six\.csv: 1 gap\(s\) longer than 5 missing samples \(the first after "
                                              r"time_s 0\.3, the longest 0\.7 s\) split the stream into 2 recordings"):
        assert [r.samples.shape[0] for r in load_csv(tmp_path / "six.csv", 10.0)] == [4, 10]


# ----------------------------------------------------------------------------------------------- labels

def test_string_labels_and_a_label_map(tmp_path):
    pre = write_csv(tmp_path / "pre.csv", labels=("walk", "run"))
    stream = write_csv(tmp_path / "s.csv", labels=("walk", "run"), seed=1)
    train, recs, names, values = _recordings(own(stream, pretrain_path=str(pre)))
    assert names == ["run", "walk"]  # names alphabetically; the same code in both files
    assert set(np.unique(train[0].labels)) == set(np.unique(recs[0].labels)) == set(values)
    config = own(stream, pretrain_path=str(pre), label_map={"walk": "Walking", "run": "Running"})
    train, recs, names, values = _recordings(config)
    assert names == ["Walking", "Running"]  # the map's order
    # integer labels keep their order, and a map names them (pandas' '1.0' is the label 1)
    ints = write_csv(tmp_path / "i.csv", labels=("2", "10.0"))
    assert _recordings(own(ints, pretrain_fraction=0.5))[2] == ["2", "10"]
    assert _recordings(own(ints, pretrain_fraction=0.5, label_map={2: "sit", "10": "stand"}))[2] == ["sit", "stand"]
    # with a map, a label outside it is refused where it appears (a typo shows)
    with pytest.raises(InputError, match=r"s\.csv:2: field 'label': label 'walk' is not in label_map \(its labels: "
                                         r"walking, run\)"):
        _recordings(own(stream, pretrain_fraction=0.5, label_map={"walking": "Walking", "run": "Running"}))
    with pytest.raises(InputError, match=r"field 'label_map': Value error, 'x': two labels named 'A'|two labels named"):
        own(stream, pretrain_fraction=0.5, label_map={"x": "A", "y": "A"})


def test_hapt_activities_have_names(tmp_path):
    if not HAPT.is_file():
        pytest.skip(f"HAPT not found at {HAPT}: ../shared is absent on this machine")
    config = RunConfig(source="hapt", path=str(HAPT), pretrain_users=[1], stream_users=[2], label_map={"6": "lying"})
    names = _recordings(config)[2]
    assert names[:5] == ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING"]
    assert names[5] == "lying" and names[11] == "LIE_TO_STAND"


# ------------------------------------------------------------------- labelless stream, stderr, valid JSON

def test_labelless_stream_runs_inference_only_json_on_stdout_status_on_stderr(tmp_path, capsys):
    pre = write_csv(tmp_path / "pre.csv")
    stream = write_csv(tmp_path / "s.csv", label_column=False, seed=2)
    toml = tmp_path / "r.toml"
    toml.write_text(f'source = "csv"\npath = "{stream}"\npretrain_path = "{pre}"\nrate_hz = 20.0\nhidden = 4\n'
                    'pretrain_epochs = 2\n[frontend]\nwindow_s = 2.0\nfull_scale = { acc = 4.0 }\n')
    assert main(["run", "--config", str(toml), "--json"]) == 0  # no --quiet: progress must not reach stdout
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout is one JSON document
    assert "NaN" not in out and data["learning_steps"] == 0 and data["windows"] > 0
    assert data["prequential_accuracy"] is None and data["accuracy_after"] is None
    assert "edgelearn: the stream has no labels: inference only" in err
    assert "edgelearn: stream: s.csv, 60.0 s at 20 Hz, channels acc_x, acc_y, acc_z; classes: 0, 1" in err
    assert "\r" not in err  # line-based status and progress: readable in a log
    assert main(["run", "--config", str(toml)]) == 0
    out, err = capsys.readouterr()
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if "  " in line)
    assert rows["prequential accuracy"] == "-" and rows["held-out accuracy after"] == "-"
    assert main(["run", "--config", str(toml), "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["labelled_windows"] == 0 and "edgelearn: stream" not in err


# --------------------------------------------------------------------------------------------- serial

def test_serial_sensor_already_streaming_needs_and_takes_a_header(capsys):
    serial = pytest.importorskip("serial")
    header = "time_s,acc_x,acc_y,label"
    # the reader joined mid-line: the header and part of a line are gone
    data = b"5,0.25,1\n" + b"".join(f"{k / 10:.2f},{k},0.5,1\n".encode() for k in range(1, 31))
    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(data)
    with pytest.raises(InputError, match=r"loop://:1: no header: line 1 is a sample \('5,0\.25,1'\); first column "
                                         r"must be 'time_s': give the header, e\.g\. --header 'time_s,acc_x"):
        read_serial("loop://", 10.0, timeout_s=0.2, port=port)
    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(data)
    (rec,) = read_serial("loop://", 10.0, timeout_s=0.2, port=port, header=header)
    assert rec.channels == ("acc_x", "acc_y") and rec.samples.shape == (30, 2) and rec.samples[0, 0] == 1
    # a sensor that does send its header: the line equal to the header is skipped too
    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(f"{header}\n".encode() + data[9:])
    assert read_serial("loop://", 10.0, timeout_s=0.2, port=port, header=header)[0].samples.shape == (30, 2)
    # --header reaches the config; a header option on a dataset source is refused
    config = load_run_config(None, dict(source="serial", path="loop://", rate_hz=10.0, header=header,
                                        pretrain="none"))
    assert config.header == header
    assert main(["run", "--header", header, "--quiet"]) == 2
    assert "field 'header': only for source csv or serial" in capsys.readouterr().err


def test_csv_without_header_line_takes_the_header_option(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("".join(f"{k / 10:.2f},{k},walk\n" for k in range(20)))
    with pytest.raises(InputError, match=r"h\.csv:1: no header: line 1 is a sample"):
        load_csv(path, 10.0)
    (rec,) = load_csv(path, 10.0, header="time_s,acc_x,label")
    assert rec.samples.shape == (20, 1)
    path.write_text("time_s,acc_y,label\n" + "".join(f"{k / 10:.2f},{k},walk\n" for k in range(20)))
    with pytest.raises(InputError, match=r"h\.csv:1: field 'header': the file's header 'time_s,acc_y,label' differs"):
        load_csv(path, 10.0, header="time_s,acc_x,label")


# ----------------------------------------------------------------------------- the done-when: a HAPT user

def write_hapt_user(path, user: int) -> None:
    """One HAPT user's samples as a user would export them: 50 Hz, acc in g, gyro in rad/s, activity names as labels
    (empty where unlabelled), a minute between the two sessions."""
    from edgelearn.stream import HAPT_ACTIVITIES

    z = np.load(HAPT)
    keep = z["user"] == user
    signals, labels, sessions = z["signals"][keep], z["label"][keep], z["session"][keep]
    index = np.arange(len(labels)) - np.searchsorted(sessions, sessions)  # sample number within its session
    t, start = np.zeros(len(labels)), 0.0
    for s in np.unique(sessions):
        m = sessions == s
        t[m] = start + index[m] / 50.0
        start = t[m][-1] + 60.0
    names = np.array([""] + list(HAPT_ACTIVITIES))[np.where(labels > 0, labels, 0)]
    lines = [f"{t[k]:.2f},{signals[k, 0]:.5f},{signals[k, 1]:.5f},{signals[k, 2]:.5f},{signals[k, 3]:.5f},"
             f"{signals[k, 4]:.5f},{signals[k, 5]:.5f},{names[k]}" for k in range(len(labels))]
    path.write_text("time_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label\n" + "\n".join(lines) + "\n")


def test_a_hapt_users_csv_runs_with_the_shipped_template_in_one_command(tmp_path, capsys):
    if not HAPT.is_file():
        pytest.skip(f"HAPT not found at {HAPT}: ../shared is absent on this machine")
    csv = tmp_path / "user21.csv"
    write_hapt_user(csv, 21)
    assert main(["run", "--config", "csv-template", "--path", str(csv), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "error" not in err and "clipped" not in err  # g and rad/s: the template's ranges hold HAPT
    assert len(result["classes"]) == 12 and "WALKING" in result["classes"]
    assert result["pretrain"]["train_accuracy"] > 0.8
    assert result["held_out_windows"] > 100 and result["chance_accuracy"] < 0.3
    assert result["accuracy_after"] > 0.7  # 12 activities: 0.879 measured (chance 0.19)
