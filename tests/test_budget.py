"""The energy-budget estimator: arithmetic, best pulse width, battery life, caching, CLI units and errors."""

import json
import math

import pytest

from edgelearn import budget
from edgelearn.cli import main
from edgelearn.devices import load_card
from edgelearn.energy import load_energy_model
from edgelearn.errors import EdgelearnError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELEARN_CACHE_DIR", str(tmp_path / "cache"))


def test_budget_arithmetic_and_best_width(monkeypatch):
    card = load_card("ID170ZR5000-200us")
    model = load_energy_model("schottky-bound")
    result = budget.estimate(card, "mp", 0.5, model, windows_per_day=1000, network="20-8-3", battery_mah=300,
                             battery_v=3.7)
    spare = 0.5 - result.energy_per_inference_j * 1000
    assert result.inference_energy_per_day_j == pytest.approx(result.energy_per_inference_j * 1000, rel=1e-12)
    assert result.learning_steps_per_day == math.floor(spare / result.energy_per_learning_step_j)
    assert result.fits and 0 < result.programming_share <= 1
    assert result.battery_energy_j == pytest.approx(0.3 * 3600 * 3.7)
    assert result.battery_life_days == pytest.approx(0.3 * 3600 * 3.7 / 0.5)
    widths = result.widths
    assert [w["pulse_width_s"] for w in widths] == sorted(w["pulse_width_s"] for w in widths) and len(widths) == 6
    best = max(widths, key=lambda w: w["learning_steps_per_day"])
    assert result.best_pulse_width_s == best["pulse_width_s"]
    assert sum(v for k, v in result.learning_step_components_j.items() if k != "total") == pytest.approx(
        result.energy_per_learning_step_j, rel=1e-12)
    # the second answer comes from the cache: measuring again would fail here
    monkeypatch.setattr(budget, "_measure", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-measured")))
    again = budget.estimate(card, "mp", 0.5, model, windows_per_day=1000, network="20-8-3")
    assert again.energy_per_learning_step_j == result.energy_per_learning_step_j


def test_budget_that_inference_alone_exceeds(capsys):
    code = main(["budget", "--card", "ID170ZR5000-2us", "--daily-budget", "1pJ", "--network", "20-8-3",
                 "--windows-per-day", "100000", "--json"])
    out = json.loads(capsys.readouterr().out)
    result = out["chip_budget"]
    assert code == 0 and result["fits"] is False and result["learning_steps_per_day"] == 0
    for field in ("energy_per_inference_j", "energy_per_learning_step_j", "learning_steps_per_day",
                  "best_pulse_width_s", "widths"):
        assert field in result
    # the whole wearable's day learns nothing then, and still costs the sensor and the MCU
    assert out["learning_steps_per_day"] == 0 and out["windows_per_day"] == 100_000
    assert out["terms_j_per_day"]["sensor"] > 0 and out["terms_j_per_day"]["programming"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--daily-budget", "1mW"], "--daily-budget: '1mW' is not a quantity in J"),
    (["--daily-budget=-1mJ"], "--daily-budget: '-1mJ' is not a quantity in J"),
    (["--daily-budget", "1mJ", "--battery-mah", "300"], "--battery-mah and --battery-v go together"),
    (["--daily-budget", "1mJ", "--battery-mah", "300", "--battery-v", "3.7A"], "--battery-v: '3.7A'"),
    (["--daily-budget", "1mJ", "--model", "nuclear"], "nuclear: not a built-in energy model"),
])
def test_budget_cli_errors_are_one_line(capsys, argv, message):
    code = main(["budget", "--card", "ID170ZR5000-2us", "--network", "20-8-3", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_budget_needs_an_analog_algorithm():
    with pytest.raises(EdgelearnError, match="analog algorithm"):
        budget.step_costs(load_card("ID170ZR5000-2us"), "digital", "20-8-3")
