"""The streaming main job: config validation, a short stream through the emulated chip, counts and energy."""

import json

import numpy as np
import pytest

from edgelearn.cli import main
from edgelearn.continual import RunConfig, load_run_config, run_stream
from edgelearn.errors import InputError


def write_stream(path, seconds, rate=20.0, seed=0, shift=0.0):
    """Two synthetic activities: gentle (0.3 g, 1 Hz) and vigorous (1 g, 3 Hz) swinging of a 3-axis accelerometer,
    labelled 0 / 1 in alternating 5 s blocks."""
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    for block in range(int(seconds // 5)):
        label = block % 2
        freq, amplitude = (1.0, 0.3) if label == 0 else (3.0, 1.0)
        for _ in range(int(5 * rate)):
            x = amplitude * np.sin(2 * np.pi * freq * t) + shift
            rows.append(f"{t:.4f},{x + 0.05 * rng.standard_normal():.5f},{0.5 * x:.5f},{1.0:.5f},{label}")
            t += 1.0 / rate
    path.write_text("time_s,acc_x,acc_y,acc_z,label\n" + "\n".join(rows) + "\n")
    return path


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text('label_rate = 2.0\n')
    with pytest.raises(InputError, match=r"run\.toml: field 'label_rate': Input should be less than or equal to 1"):
        load_run_config(bad)
    bad.write_text('labelrate = 0.5\n')
    with pytest.raises(InputError, match=r"field 'labelrate': Extra inputs are not permitted"):
        load_run_config(bad)
    bad.write_text('label_rate = \n')
    with pytest.raises(InputError, match=r"run\.toml: not valid TOML"):
        load_run_config(bad)
    config = load_run_config(None, {"lr": 0.3, "card": None})
    assert config.lr == 0.3 and config.card == "ID170ZR5000-20ns"


def test_short_csv_stream_runs_and_counts(tmp_path):
    pre = write_stream(tmp_path / "pre.csv", 200, seed=1)
    stream = write_stream(tmp_path / "stream.csv", 200, seed=2)
    toml = tmp_path / "run.toml"
    toml.write_text(f'source = "csv"\npath = "{stream}"\npretrain_path = "{pre}"\nrate_hz = 20.0\n'
                    'label_rate = 0.5\nlr = 0.05\nmoved_sensor = false\nhidden = 8\npretrain_epochs = 20\n'
                    '[frontend]\nwindow_s = 2.0\noverlap = 0.5\nfull_scale = { acc = 4.0 }\n')
    result = run_stream(load_run_config(toml), progress=False)
    assert result.windows >= 90 and result.learning_steps > 20  # half the windows are held out
    assert result.pretrain["train_accuracy"] > 0.75  # two easy activities (windows across a switch are mixed)
    assert result.prequential_accuracy > 0.7  # chance is 0.5
    c = result.counters
    assert result.pulses == c["pulses_up"] + c["pulses_down"]
    # every stream window is one forward pass per layer; learning steps add one backward pass (layer 2) each
    # learning steps are mini-batches of the new window and replayed ones, each passed forward and backward
    assert result.learning_steps < result.trained_windows <= 8 * result.learning_steps
    assert c["mvm_forward"] == 2 * result.windows + 2 * result.trained_windows
    assert c["mvm_backward"] == result.trained_windows
    assert result.energy_per_window_j > 0 and result.energy_per_day_j > result.energy_per_inference_j
    assert result.real_time_factor > 100
    again = run_stream(load_run_config(toml), progress=False)
    assert again.counters == result.counters and again.prequential_accuracy == result.prequential_accuracy


def test_run_cli_writes_outputs(tmp_path, capsys):
    stream = write_stream(tmp_path / "s.csv", 60)
    toml = tmp_path / "r.toml"
    toml.write_text(f'source = "csv"\npath = "{stream}"\nrate_hz = 20.0\npretrain = "none"\nhidden = 4\n'
                    '[frontend]\nwindow_s = 2.0\nfull_scale = { acc = 4.0 }\n')
    assert main(["run", "--config", str(toml), "--out", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["source"] == "csv" and summary["windows"] > 0
    assert (tmp_path / "out" / "stream.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["run", "--config", str(tmp_path / "missing.toml"), "--quiet"]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err


def test_default_run_on_embedded_basicmotions():
    pytest.importorskip("sktime", reason="BasicMotions ships inside sktime (a core dependency)")
    result = run_stream(RunConfig(), progress=False)
    assert result.config["source"] == "basicmotions" and result.stream_seconds == 400.0
    assert result.windows + result.held_out_windows == 240  # 40 recordings x 6 windows of 2.56 s at 10 Hz
    assert result.held_out_windows > 100  # one held-out window moves accuracy by less than 0.01
    assert result.prequential_accuracy > 0.85  # four activities: chance is 0.25
    assert 0.2 < result.chance_accuracy < 0.35
    low, high = result.gain_interval
    assert low <= result.gain <= high and high - low < 0.2
    assert result.gain == pytest.approx(result.accuracy_after - result.control_accuracy_after)
    assert result.real_time_factor > 100
    assert result.classes == ["Standing", "Running", "Walking", "Badminton"]


def test_replay_buffer_is_class_balanced():
    from edgelearn.continual import _remember

    xs, ys = [], []
    for k, label in enumerate([0, 0, 1, 0, 0, 0, 2, 0]):
        _remember(xs, ys, np.full(3, k), label, size=4)
    # full at 4: each addition evicts the oldest window of the commonest class, so classes 1 and 2 survive
    assert ys == [1, 0, 2, 0] and [int(x[0]) for x in xs] == [2, 5, 6, 7]


def test_serial_stream_source(tmp_path):
    serial = pytest.importorskip("serial")
    from edgelearn.stream import read_serial

    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(b"time_s,acc_x,acc_y,label\r\n" + b"".join(f"{k / 10:.2f},{k},0.5,1\n".encode() for k in range(30))
               + b"end\n" + b"9,9,9,9\n")
    recs = read_serial("loop://", 10.0, port=port)
    assert len(recs) == 1 and recs[0].samples.shape == (30, 2) and recs[0].channels == ("acc_x", "acc_y")
    assert recs[0].samples[29, 0] == 29 and (recs[0].labels == 1).all()
    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(b"time_s,acc_x,label\n" + b"".join(f"{k / 10:.2f},{k},\n".encode() for k in range(50)))
    assert read_serial("loop://", 10.0, duration_s=2.0, port=port)[0].samples.shape[0] == 21  # 0.0 .. 2.0 s


@pytest.mark.parametrize("data, message", [
    (b"", r"loop://:1: no header line within 0.2 s"),
    (b"t,acc_x\n0,1\n", r"loop://:1: first column must be 'time_s'"),
    (b"time_s,acc_x\n0,1\n0.1,oops\n", r"loop://:3: field 'acc_x': expected a number, got 'oops'"),
    (b"time_s,acc_x\n0,1\n0.1,\xff\n", r"loop://:3: not ASCII text"),
    (b"time_s,acc_x\n0,1\n0.05,2\n0.1,3\n", r"loop://: field 'time_s': sampling rate 20 Hz, expected 10 Hz"),
])
def test_serial_stream_bad_input(data, message):
    serial = pytest.importorskip("serial")
    from edgelearn.stream import read_serial

    port = serial.serial_for_url("loop://", timeout=0.2)
    port.write(data)
    with pytest.raises(InputError, match=message):
        read_serial("loop://", 10.0, timeout_s=0.2, port=port)


def test_serial_port_missing_is_one_line_error(tmp_path, capsys):
    pre = write_stream(tmp_path / "pre.csv", 20, rate=10.0)
    assert main(["run", "--source", "serial", "--path", "/dev/edgelearn-no-such-port", "--rate-hz", "10",
                 "--pretrain-path", str(pre), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/dev/edgelearn-no-such-port: cannot open the sensor port" in err


def test_control_arm_is_paired_with_the_learning_arm(tmp_path):
    """With no label ever arriving, the learning arm is the control arm: same chip state, same read noise, same
    held-out windows, so the gain is exactly 0 with an interval of [0, 0] (any unpaired noise would show)."""
    stream = write_stream(tmp_path / "s.csv", 120)
    config = load_run_config(None, dict(source="csv", path=str(stream), rate_hz=20.0, pretrain="none", hidden=4,
                                        label_rate=0.0, moved_sensor=False,
                                        frontend={"window_s": 2.0, "full_scale": {"acc": 4.0}}))
    result = run_stream(config, progress=False)
    assert result.learning_steps == 0 and result.held_out_windows > 20
    assert result.gain == 0.0 and result.gain_interval == [0.0, 0.0]
    assert result.prequential_accuracy == result.control_prequential_accuracy
    assert result.timeline["correct"] == result.timeline["control_correct"]


def test_bootstrap_gain_against_a_slow_reference():
    from edgelearn.continual import bootstrap_gain

    rng = np.random.default_rng(3)
    learn, control = rng.random(150) < 0.8, rng.random(150) < 0.7
    low, high = bootstrap_gain(learn, control, resamples=4000, seed=5)
    ref_rng = np.random.default_rng([5, 17])
    diff = learn.astype(float) - control.astype(float)
    means = sorted(float(np.mean([diff[j] for j in ref_rng.integers(0, 150, 150)])) for _ in range(4000))
    # the same draws, one resample at a time (the kernel draws a (resamples, n) block: row by row is the same stream)
    assert low == pytest.approx(np.quantile(means, 0.025)) and high == pytest.approx(np.quantile(means, 0.975))
    assert low < diff.mean() < high
    assert bootstrap_gain(np.ones(10), np.ones(10)) == (0.0, 0.0)


def test_rolling_mean_and_held_out_blocks():
    from edgelearn.continual import held_out_mask, rolling

    values = np.random.default_rng(0).integers(0, 2, 57)
    naive = [values[max(0, k - 9):k + 1].mean() for k in range(57)]
    np.testing.assert_allclose(rolling(values, 10), naive)
    mask = held_out_mask(23, 5, 2)
    assert mask.tolist() == [False] * 5 + [True] * 5 + [False] * 5 + [True] * 5 + [False] * 3


def test_run_json_is_valid_even_with_nan(tmp_path, capsys):
    """A stream whose held-out windows are all unlabelled has no accuracy: null in JSON, never NaN."""
    from edgelearn.continual import RunResult

    result = RunResult(config={}, card_id="c", classes=[], stream_seconds=0.0, windows=0, labelled_windows=0,
                       learning_steps=0, trained_windows=0, prequential_accuracy=float("nan"), accuracy_before=0.5,
                       accuracy_after=float("nan"), held_out_windows=0, pulses=0, counters={}, energy_model="table",
                       energy_per_window_j=0.0, energy_per_learning_step_j=0.0, energy_per_inference_j=0.0,
                       energy_per_day_j=0.0, wall_s=0.0, real_time_factor=1.0, gain_interval=[float("nan")] * 2)
    data = json.loads(result.to_json())  # strict JSON: json.loads accepts NaN, so check the text as well
    assert data["prequential_accuracy"] is None and data["gain_interval"] == [None, None]
    assert "NaN" not in result.to_json()
