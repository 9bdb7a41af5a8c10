"""The whole-system day (edgelearn.system, `edgelearn budget`): every term is counts x a documented unit cost, the
budget of a run agrees with the run, the band over energy models, bad input in one line."""

import json

import pytest

from edgelearn.cli import main
from edgelearn.continual import load_run_config
from edgelearn.devices import load_card
from edgelearn.energy import cost, load_energy_model, unit_energies
from edgelearn.errors import EdgelearnError, InputError
from edgelearn.profiles import load_profile
from edgelearn.system import (DAY_S, Workload, quick_estimate, read_run_summary, system_budget,
                              workload_from_config, workload_from_run)
from test_continual import write_stream

PROFILE = """name = "hand"
[mcu]
core = "Cortex-M4F"
clock_hz = 10e6
active_current_per_mhz_a = 100e-6
sleep_current_a = 2e-6
supply_v = 2.0
sram_bytes = 65536
flash_bytes = 262144
[imu]
current_a = 0.5e-3
odr_hz = 50.0
supply_v = 1.8
[battery]
capacity_mah = 100.0
voltage_v = 3.7
[cycles]
source = "hand"
mvm_pass = 100
dac_code = 2
adc_code = 3
mac = 5
chi_update = 7
rng_draw = 11
pulse = 13
device_read = 17
update_call = 19
wake = 23
sample_read = 29
feature_sample = 31
feature_channel = 37
normalise_feature = 41
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path / "cache"))


def _hand_profile(tmp_path):
    path = tmp_path / "hand.toml"
    path.write_text(PROFILE)
    return load_profile(path)


def test_every_term_is_counts_times_unit_costs(tmp_path):
    profile = _hand_profile(tmp_path)
    card = load_card("ID170ZR5000-20ns")
    counts = dict(pulses_up=1000, pulses_down=500, calibration_pulses_up=10, calibration_pulses_down=20,
                  mvm_forward=2000, mvm_backward=300, cell_reads=50_000, device_reads=40, dac_conversions=9000,
                  adc_conversions=7000, digital_macs=100_000, accumulator_updates=60_000, rng_draws=800, updates=90,
                  coincidences=5, bound_management_repeats=1)
    w = Workload(source="hand", card=card.card_id, card_id=card.card_id, algorithm="mp", sizes=[30, 8, 4],
                 energy_model="table", windows_per_day=1000.0, learning_steps_per_day=100.0, counts_per_day=counts,
                 rate_hz=50.0, channels=6, window_samples=128, frontend_mode="features", inputs=30, measured={},
                 pretrain_counts=dict(pulses_up=7, pulses_down=3, mvm_forward=4),
                 worst_device_pulses_per_day=250.0, mean_device_pulses_per_day=2.0, devices=300)
    b = system_budget(w, profile, ["table", "schottky-bound"])
    per_cycle = 100e-6 * 2.0 / 1e6
    assert b.energy_per_cycle_j == pytest.approx(per_cycle)
    # front end: a wake, 128 x 6 samples summed, 6 channels finished and 30 inputs normalised per window, and every
    # sample of the day read from the FIFO
    front = 1000 * (23 + 128 * 6 * 31 + 6 * 37 + 30 * 41) + 50 * DAY_S * 6 * 29
    active = (100 * 2300 + 2 * 9000 + 3 * 7000 + 5 * 100_000 + 7 * 60_000 + 11 * 800 + 13 * 1530 + 17 * 40
              + 19 * 90)
    assert b.cycles_per_day["front_end"] == pytest.approx(front) and b.cycles_per_day["mcu_active"] == active
    active_s = (front + active) / 10e6
    units = unit_energies(load_energy_model("table"), card)
    chip = cost(counts, units)
    expected = {"sensor": 0.5e-3 * 1.8 * DAY_S, "front_end": front * per_cycle, "mcu_active": active * per_cycle,
                "mcu_sleep": 2e-6 * 2.0 * (DAY_S - active_s), "array_reads": chip["array_reads"],
                "converters": chip["dac"] + chip["adc"], "programming": chip["programming"],
                "calibration": chip["calibration"]}
    for term, value in expected.items():
        assert b.terms_j_per_day[term] == pytest.approx(value, rel=1e-12), term
    assert b.total_j_per_day == pytest.approx(sum(expected.values()), rel=1e-12)
    assert b.chip_j_per_day == pytest.approx(chip["total"], rel=1e-12)  # the run's own chip figure
    assert b.dominant_term == "sensor" and b.dominant_share == pytest.approx(expected["sensor"] / b.total_j_per_day)
    assert b.duty_cycle == pytest.approx(active_s / DAY_S)
    assert b.battery_life_days == pytest.approx(0.1 * 3600 * 3.7 / b.total_j_per_day)
    assert b.endurance["pulses_per_day_worst"] == 250.0 and b.endurance["lifetime_days"] == pytest.approx(1e10 / 250)
    pre = cost(dict(pulses_up=7, pulses_down=3), units)
    assert b.pretraining_once_j == pytest.approx(pre["programming"] + (13 * 10 + 100 * 4) * per_cycle, rel=1e-12)
    # the band: the other model changes only the crossbar's terms; programming drives the spread
    other = cost(counts, unit_energies(load_energy_model("schottky-bound"), card))
    band = b.band
    assert band["models"]["schottky-bound"] == pytest.approx(
        b.total_j_per_day - chip["programming"] - chip["calibration"] + other["programming"] + other["calibration"])
    assert band["driver"] == "programming" and band["min_j_per_day"] == min(band["models"].values())
    # another battery, and one that is not whole
    assert system_budget(w, profile, ["table"], battery_mah=300, battery_v=3.0).battery_energy_j == pytest.approx(
        0.3 * 3600 * 3.0)
    with pytest.raises(EdgelearnError, match="--battery-mah and --battery-v go together"):
        system_budget(w, profile, ["table"], battery_mah=300)
    # a controller too slow for the day says so, and sleeps 0 s
    slow = profile.model_copy(update={"mcu": profile.mcu.model_copy(update={"clock_hz": 1e3})})
    s = system_budget(w, slow, ["table"])
    assert s.duty_cycle > 1 and s.terms_j_per_day["mcu_sleep"] == 0.0
    assert any("cannot keep up" in note for note in s.notes)


def _small_run_config(tmp_path):
    pre = write_stream(tmp_path / "pre.csv", 100, seed=1)
    stream = write_stream(tmp_path / "stream.csv", 100, seed=2)
    toml = tmp_path / "run.toml"
    toml.write_text(f'source = "csv"\npath = "{stream}"\npretrain_path = "{pre}"\nrate_hz = 20.0\n'
                    'label_rate = 0.5\nlr = 0.05\nhidden = 8\npretrain_epochs = 5\nenergy_model = "schottky-bound"\n'
                    '[frontend]\nwindow_s = 2.0\noverlap = 0.5\nfull_scale = { acc = 4.0 }\n')
    return toml


def test_budget_from_run_and_from_config_agree_with_the_run(tmp_path, capsys):
    toml = _small_run_config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--config", str(toml), "--out", str(out), "--quiet", "--profile", "m33"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    geometry = summary["geometry"]
    assert geometry["windows_per_day"] == pytest.approx(DAY_S * 20.0 / 20)  # 40-sample windows, hop 20 at 20 Hz
    scale = geometry["windows_per_day"] / summary["windows"]
    assert summary["energy_per_day_j"] == pytest.approx(summary["energy_per_window_j"] * geometry["windows_per_day"])

    assert main(["budget", "--from-run", str(out / "summary.json"), "--profile", "m33", "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    # one definition of a day: the budget of a run is the run's own figures (the test asks for 10 %; it is exact)
    assert from_run["chip_j_per_day"] == pytest.approx(summary["energy_per_day_j"], rel=0.10)
    assert from_run["chip_j_per_day"] == pytest.approx(summary["energy_per_day_j"], rel=1e-9)
    assert from_run["total_j_per_day"] == pytest.approx(summary["system"]["total_j_per_day"], rel=1e-9)
    assert from_run["learning_steps_per_day"] == pytest.approx(summary["learning_steps"] * scale)
    assert from_run["counts_per_day"]["pulses_up"] == pytest.approx(summary["counters"]["pulses_up"] * scale)
    assert from_run["energy_model"] == "schottky-bound" and from_run["profile"] == "m33"
    assert from_run["endurance"]["pulses_per_day_worst"] == pytest.approx(
        summary["endurance"]["worst_device_pulses"] * scale)
    assert from_run["pretraining_once_j"] > 0  # on-chip pre-training, once
    # on another profile only the profile's terms move
    assert main(["budget", "--from-run", str(out / "summary.json"), "--json"]) == 0
    m4f = json.loads(capsys.readouterr().out)
    assert m4f["profile"] == "m4f-lowpower" and m4f["chip_j_per_day"] == from_run["chip_j_per_day"]
    assert m4f["terms_j_per_day"]["sensor"] != from_run["terms_j_per_day"]["sensor"]

    # --config measures the stream exactly as run does: the same day
    measured = system_budget(workload_from_config(load_run_config(toml)), load_profile("m33"), ["schottky-bound"])
    assert measured.chip_j_per_day == pytest.approx(summary["energy_per_day_j"], rel=1e-9)
    assert measured.total_j_per_day == pytest.approx(from_run["total_j_per_day"], rel=1e-9)

    # the text names the dominant term and the battery life
    assert main(["budget", "--from-run", str(out / "summary.json")]) == 0
    text = capsys.readouterr().out
    assert "dominant: sensor (IMU)" in text and "battery life (days)" in text and "band over energy models" in text


def test_run_summary_errors_are_one_line(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"config": {}, "card_id": "x", "counters": {}, "windows": 3, "learning_steps": 1}))
    with pytest.raises(InputError, match=r"old\.json: field 'geometry': missing .*run it again"):
        read_run_summary(old)
    trained = tmp_path / "train.json"
    trained.write_text(json.dumps({"config": {}, "card_id": "x", "counters": {}, "epochs": []}))
    with pytest.raises(InputError, match=r"a summary of `edgelearn train`.*edgelearn energy"):
        read_run_summary(trained)
    broken = tmp_path / "broken.json"
    broken.write_text('{"config": \n')
    assert main(["budget", "--from-run", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.json:2: not valid JSON" in err and err.count("\n") == 1
    no_windows = dict(config={}, card_id="x", counters={}, windows=0, learning_steps=0, geometry={})
    with pytest.raises(InputError, match="field 'windows': the run streamed no window"):
        workload_from_run(no_windows)


@pytest.mark.parametrize("argv, message", [
    ([], "budget: give one of --from-run SUMMARY"),
    (["--card", "ID170ZR5000-2us", "--from-run", "x.json"], "got --from-run and --card"),
    (["--from-run", "x.json", "--batch-size", "4"], "--batch-size: only for the quick estimate (--card)"),
    (["--config", "basicmotions", "--daily-budget", "1mJ"], "--daily-budget: only for the quick estimate"),
    (["--card", "ID170ZR5000-2us", "--network", "20-8-3", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--card", "ID170ZR5000-2us", "--network", "20-8-3", "--label-rate", "2"], "--label-rate must be between 0"),
    (["--from-run", "missing.json"], "missing.json: file not found"),
])
def test_budget_modes_and_errors(capsys, argv, message):
    assert main(["budget", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_quick_estimate_is_labelled_and_scales_with_batch_and_label_rate():
    card = load_card("ID170ZR5000-2us")
    a = quick_estimate(card, "mp", "20-8-3", batch_size=4, label_rate=0.1, rate_hz=50.0, channels=3)
    b = quick_estimate(card, "mp", "20-8-3", batch_size=4, label_rate=0.2, rate_hz=50.0, channels=3)
    assert a.source.startswith("quick estimate") and a.window_samples == 128 and a.windows_per_day == DAY_S * 50 / 64
    assert b.learning_steps_per_day == pytest.approx(2 * a.learning_steps_per_day)
    # inference is the same; the learning part doubles
    inference = a.counts_per_day["mvm_forward"] - (b.counts_per_day["mvm_forward"] - a.counts_per_day["mvm_forward"])
    assert inference == pytest.approx(a.windows_per_day * 2, rel=1e-9)  # two layers, one pass each per window
    assert any("quick estimate" in n for n in a.notes)
