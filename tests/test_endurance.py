"""Device endurance: the card field, the worst device's wear from hand-counted pulses, and its place in run, train
and budget summaries."""

import json
import re

import numpy as np
import pytest

from edgelearn.board import InProcessBoard
from edgelearn.devices import DEFAULT_ENDURANCE_CYCLES, bundled_card_path, load_card
from edgelearn.endurance import counter_endurance, endurance_of, endurance_report
from edgelearn.errors import EdgelearnError, InputError


def test_worst_device_from_hand_counted_pulses():
    up = np.array([[0, 3], [5, 1]])
    down = np.array([[2, 4], [0, 0]])  # totals 2, 7, 5, 1: device 1 is the worst with 7 pulses
    r = endurance_report(up, down, per_day_scale=10.0, endurance_cycles=700.0)
    assert (r.devices, r.worst_device, r.worst_device_pulses) == (4, 1, 7)
    assert r.mean_device_pulses == 3.75 and r.mean_pulses_per_day == 37.5
    assert r.pulses_per_day_worst == 70.0 and r.lifetime_days == 10.0  # 700 cycles / 70 a day
    assert r.endurance_source == "card"
    json.dumps(r.to_dict())  # JSON-ready
    default = endurance_report(up, down, per_day_scale=1.0)
    assert default.endurance_cycles == DEFAULT_ENDURANCE_CYCLES and default.endurance_source == "default"
    assert default.lifetime_days == DEFAULT_ENDURANCE_CYCLES / 7
    idle = endurance_report(np.zeros(3), np.zeros(3), 5.0, 1e9)
    assert idle.worst_device_pulses == 0 and idle.lifetime_days is None  # no pulse, no wear
    with pytest.raises(EdgelearnError, match="differ in length"):
        endurance_report([1, 2], [1], 1.0)
    with pytest.raises(EdgelearnError, match="finite positive"):
        endurance_report([1], [1], 1.0, float("inf"))


def test_board_counters_feed_the_worst_device():
    card = load_card("ID170ZR5000-20ns")
    board = InProcessBoard(seed=3)
    tile = board.add_tile(card, 4, 3)
    x = np.array([1.0, 0.5, 0.0])
    d = np.array([0.5, -0.5, 0.25, 0.0])
    for _ in range(5):
        board.update_sgd(tile, x, d, 0.5)
    c = board.counters(tile)
    totals = (c.pulses_per_device_up + c.pulses_per_device_down).ravel()
    assert totals.sum() == c.counts["pulses_up"] + c.counts["pulses_down"] > 0
    r = counter_endurance(c, 2.0, card)
    assert r.worst_device_pulses == totals.max() and r.worst_device == int(totals.argmax())
    assert r.pulses_per_day_worst == 2.0 * totals.max()
    assert r.lifetime_days == pytest.approx(DEFAULT_ENDURANCE_CYCLES / (2.0 * totals.max()))


@pytest.mark.parametrize("value, message", [(-1.0, "greater than 0"), (float("inf"), "finite number"),
                                            ("many", "number")])
def test_card_endurance_field_is_validated(tmp_path, value, message):
    data = json.loads(bundled_card_path("ID170ZR5000-20ns").read_text())
    data["endurance_cycles"] = value
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        load_card(path)
    assert "endurance_cycles" in str(info.value) and "\n" not in str(info.value)


def test_card_endurance_overrides_the_default(tmp_path):
    card = load_card("ID170ZR5000-20ns")
    assert card.endurance_cycles is None and endurance_of(card) == (DEFAULT_ENDURANCE_CYCLES, "default")
    data = json.loads(bundled_card_path("ID170ZR5000-20ns").read_text())
    data["endurance_cycles"] = 1e6
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    assert endurance_of(load_card(path)) == (1e6, "card")


def test_run_stream_reports_endurance(tmp_path):
    from edgelearn.continual import load_run_config, run_stream
    from test_continual import write_stream

    stream = write_stream(tmp_path / "s.csv", 60)
    toml = tmp_path / "r.toml"
    toml.write_text(f'source = "csv"\npath = "{stream}"\nrate_hz = 20.0\npretrain = "none"\nhidden = 4\n'
                    'label_rate = 1.0\n[frontend]\nwindow_s = 2.0\nfull_scale = { acc = 4.0 }\n')
    result = run_stream(load_run_config(toml), progress=False)
    e = result.endurance
    assert result.learning_steps > 0 and e["worst_device_pulses"] > 0
    assert e["endurance_source"] == "default" and e["lifetime_days"] > 0
    assert e["lifetime_days"] == pytest.approx(e["endurance_cycles"] / e["pulses_per_day_worst"])
    assert e["worst_device_pulses"] <= result.pulses
    assert json.loads(result.to_json())["endurance"]["worst_device"] == e["worst_device"]


def test_budget_reports_endurance_or_says_it_is_not_available(tmp_path, monkeypatch, capsys):
    from edgelearn import budget
    from edgelearn.cli import main
    from edgelearn.energy import load_energy_model

    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path / "cache"))
    card = load_card("ID170ZR5000-200us")
    result = budget.estimate(card, "mp", 0.5, load_energy_model("schottky-bound"), windows_per_day=1000,
                             network="20-8-3", compare_widths=False)
    e = result.endurance
    assert e["pulses_per_day_worst"] == pytest.approx(e["worst_pulses_per_learning_step"]
                                                      * result.learning_steps_per_day)
    assert e["lifetime_days"] > 0 and e["endurance_source"] == "default"
    # an old cache entry without per-device counts: the budget says so
    measured = budget.step_costs(card, "mp", "20-8-3")
    monkeypatch.setattr(budget, "step_costs", lambda *a, **k: {k2: v for k2, v in measured.items()
                                                                 if k2 != "device_pulses"})
    assert budget.estimate(card, "mp", 0.5, load_energy_model("schottky-bound"), windows_per_day=1000,
                           network="20-8-3", compare_widths=False).endurance is None
    assert main(["budget", "--card", "ID170ZR5000-200us", "--daily-budget", "0.5J", "--network", "20-8-3",
                 "--windows-per-day", "1000"]) == 0
    assert re.search(r"worst device: pulses per day / lifetime +not available", capsys.readouterr().out)


def test_train_summary_reports_worst_device_per_run():
    from edgelearn.datasets import MNIST, Split
    from edgelearn.train import TrainConfig, train

    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.uniform(0, 1, (n, 784)), rng.integers(0, 10, n))  # noqa: E731
    data = MNIST(split(48), split(16), split(16), "synthetic")
    config = TrainConfig(card="ID170ZR5000-20ns", algorithm="sgd", epochs=1, lr=0.1, batch_size=8,
                         network="784-8-10", data_dir="unused", max_train_samples=48)
    result = train(config, progress=False, data=data)
    e = result.endurance
    assert e["worst_device_pulses"] > 0 and e["endurance_source"] == "default"
    assert e["training_runs_to_endurance"] == pytest.approx(DEFAULT_ENDURANCE_CYCLES / e["worst_device_pulses"])
    assert json.loads(result.to_json())["endurance"] == e
