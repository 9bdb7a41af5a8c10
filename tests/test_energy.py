"""Energy models against hand-computed values, counters x unit energies, re-costing a saved run, quantity parsing."""

import json
import math

import pytest

from edgelearn.cli import main
from edgelearn.devices import load_card
from edgelearn.energy import (Capacitive, EnergyModel, SchottkyBound, TableModel, cost, load_energy_model,
                              parse_quantity, unit_energies)
from edgelearn.errors import EdgelearnError


def test_schottky_bound_by_hand():
    # E = 5 V / 5 nm = 1e9 V/m = 1e7 V/cm; barrier lowering sqrt(q E / (4 pi eps0 18.2)) = 0.28128 V;
    # J = 3e-4 * 300^1.5 * 1e7 * 8.9e-3 * exp(-(0.19 - 0.28128) / 0.025852) A/cm^2
    lowering = math.sqrt(1.602176634e-19 * 1e9 / (4 * math.pi * 8.8541878128e-12 * 18.2))
    assert lowering == pytest.approx(0.28128, abs=1e-5)
    kt = 1.380649e-23 * 300 / 1.602176634e-19
    j_cm2 = 3e-4 * 300**1.5 * 1e7 * 8.9e-3 * math.exp(-(0.19 - lowering) / kt)
    model = SchottkyBound()
    assert model.current_density_a_per_m2(5.0) == pytest.approx(j_cm2 * 1e4, rel=1e-12)
    assert j_cm2 == pytest.approx(4.74e6, rel=0.01)  # A/cm^2: the bound is huge, as the brief warns
    energy = model.pulse_energy_j(5.0, 20e-9, 94.4e-12)
    assert energy == pytest.approx(5.0 * j_cm2 * 1e4 * 94.4e-12 * 20e-9, rel=1e-12)
    assert energy > 1e-7  # five orders above the <= 3 pJ measured for 20 ns pulses
    assert model.pulse_energy_j(-5.0, 20e-9, 94.4e-12) == energy  # polarity does not matter


def test_capacitive_by_hand():
    model = Capacitive(eps_r=18.2, thickness_m=5e-9, remanent_polarization_c_per_m2=0.1, leakage_a=1e-9)
    c = 8.8541878128e-12 * 18.2 * 1e-10 / 5e-9
    expected = c * 4.0 + 2 * 0.1 * 1e-10 * 2.0 + 2.0 * 1e-9 * 2e-8
    assert model.pulse_energy_j(2.0, 2e-8, 1e-10) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(5.2892e-11, rel=1e-4)
    # width only enters through leakage
    assert model.pulse_energy_j(2.0, 2e-4, 1e-10) - expected == pytest.approx(2.0 * 1e-9 * (2e-4 - 2e-8), rel=1e-9)


def test_table_interpolates_in_log_space():
    table = TableModel(widths_s=[1e-8, 1e-6], energies_j=[1e-12, 1e-10], exponent=0.5)
    assert table.pulse_energy_j(1.0, 1e-7, 0.0) == pytest.approx(1e-11, rel=1e-12)  # geometric midpoint
    assert table.pulse_energy_j(1.0, 1e-4, 0.0) == pytest.approx(1e-10 * 10.0, rel=1e-12)  # slope 0.5 beyond
    assert TableModel().pulse_energy_j(5.0, 20e-9, 1.0) == pytest.approx(3e-12)  # published point: <= 3 pJ at 20 ns


def test_counters_times_units_add_up_exactly():
    card = load_card("ID170ZR5000-20ns")
    units = unit_energies(load_energy_model("schottky-bound"), card)
    assert (units.amplitude_down_v, units.amplitude_up_v) == (5.0, 3.7)  # the fit's largest amplitudes
    assert units.area_m2 == card.area_m2
    assert units.cell_read_j == pytest.approx(0.1**2 * card.g_ref_s * 10e-9, rel=1e-12)
    counters = {"pulses_up": 7, "pulses_down": 11, "calibration_pulses_up": 3, "calibration_pulses_down": 2,
                "cell_reads": 1000, "device_reads": 5, "dac_conversions": 40, "adc_conversions": 30,
                "digital_macs": 500, "accumulator_updates": 90, "rng_draws": 13}
    c = cost(counters, units)
    assert c["programming"] == 7 * units.pulse_up_j + 11 * units.pulse_down_j
    assert c["calibration"] == 3 * units.pulse_up_j + 2 * units.pulse_down_j + 5 * units.device_read_j
    assert c["digital"] == 500 * units.mac_j + 13 * units.rng_draw_j
    assert c["total"] == sum(v for k, v in c.items() if k != "total")


def test_per_pulse_energy_ranking_across_widths():
    cards = [load_card(f"ID170ZR5000-{w}") for w in ("20ns", "2us", "200us")]
    schottky = [unit_energies(load_energy_model("schottky-bound"), c).pulse_down_j for c in cards]
    assert schottky[0] < schottky[1] < schottky[2]  # shorter pulses cost less under the leakage bound
    table = [unit_energies(load_energy_model("table"), c).pulse_down_j for c in cards]
    assert table[0] < table[1] < table[2]
    capacitive = [unit_energies(load_energy_model("capacitive"), c).pulse_down_j for c in cards]
    # no leakage-time term to speak of: the 20 ns staircase needs 5.0 V, the 200 us one 3.2 V, so it costs more
    assert capacitive[0] > capacitive[2]


@pytest.mark.parametrize("text, unit, value", [("1mJ", "J", 1e-3), ("250uJ", "J", 250e-6), ("0.5J", "J", 0.5),
                                               ("3", "J", 3.0), ("2e-3 J", "J", 2e-3), ("1200mAh", "Ah", 1.2),
                                               ("3.7V", "V", 3.7)])
def test_parse_quantity(text, unit, value):
    assert parse_quantity(text, unit, "--x") == pytest.approx(value)


@pytest.mark.parametrize("text", ["1mW", "abc", "1kg", "-1mJ", "1 m J", ""])
def test_parse_quantity_errors(text):
    with pytest.raises(EdgelearnError, match=r"--daily-budget: '.*' is not a quantity in J \(examples: 1mJ"):
        parse_quantity(text, "J", "--daily-budget")


@pytest.mark.shared
def test_recost_a_saved_run_under_two_models(tmp_path, capsys):
    from test_train import MNIST_DIR

    if not MNIST_DIR.is_dir():
        pytest.skip("MNIST absent")
    code = main(["train", "--card", "ID170ZR5000-2us", "--algorithm", "mp", "--epochs", "2", "--batch-size", "16",
                 "--network", "784-16-10", "--max-train-samples", "300", "--data-dir", str(MNIST_DIR), "--out",
                 str(tmp_path), "--quiet", "--json"])
    assert code == 0
    capsys.readouterr()
    summary_path = tmp_path / "summary.json"
    before = summary_path.read_bytes()
    assert main(["energy", str(summary_path), "--model", "schottky-bound", "--model", "capacitive", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    reports, band = out["reports"], out["band"]
    assert [r["model"] for r in reports] == ["schottky-bound", "capacitive"]
    totals = [r["components_j"]["total"] for r in reports]
    assert band["min_j"] == min(totals) and band["max_j"] == max(totals) and band["driver"] == "programming"
    assert band["driver_range_j"] == sorted(r["components_j"]["programming"] for r in reports)
    a, b = (r["components_j"] for r in reports)
    assert a["programming"] > 1e3 * b["programming"] > 0
    assert a["digital"] == b["digital"] and a["adc"] == b["adc"]  # the rest of the chip is the same
    summary = json.loads(before)
    pulses = [m["pulses_up"] + m["pulses_down"] for m in summary["epochs"]]
    assert sum(pulses) == summary["counters"]["pulses_up"] + summary["counters"]["pulses_down"]
    for r in reports:
        assert r["cumulative_programming_j"][-1] == pytest.approx(r["components_j"]["programming"], rel=1e-12)
    assert summary_path.read_bytes() == before  # re-costing never touches the run


def test_energy_cli_errors(tmp_path, capsys):
    bad = tmp_path / "s.json"
    bad.write_text("{}")
    assert main(["energy", str(bad)]) == 2
    assert "not a summary.json of edgelearn train" in capsys.readouterr().err
    assert main(["energy", str(tmp_path / "missing.json")]) == 2
    assert "file not found" in capsys.readouterr().err
    custom = tmp_path / "m.json"
    custom.write_text(json.dumps({"name": "mine", "programming": {"kind": "table", "energies_j": [-1]}}))
    with pytest.raises(EdgelearnError):
        load_energy_model(str(custom))
    assert EnergyModel(name="x").programming.kind == "schottky-bound"


def test_energy_model_file_overrides(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "programming": {"kind": "table", "widths_s": [2e-8, 2e-4],
                                                                 "energies_j": [1e-12, 1e-10]},
                                "operations": {"adc_j": 1e-12}, "area_m2": 1e-10}))
    model = load_energy_model(str(path))
    units = unit_energies(model, load_card("ID170ZR5000-2us"))
    assert units.pulse_down_j == pytest.approx(1e-11, rel=1e-12)  # 2 us: geometric midpoint of the table
    assert units.adc_j == 1e-12 and units.area_m2 == 1e-10 and units.dac_j == 0.5e-12
