"""The `edgelearn` command over the Python API: outputs, exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest

from edgelearn.cli import main
from edgelearn.devices import load_card


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_device_show_bundled_card_json(capsys):
    code, out, err = run(capsys, "device", "show", "ID170ZR5000-20ns", "--json")
    assert code == 0 and err == ""
    shown = json.loads(out)
    card = load_card("ID170ZR5000-20ns")
    assert shown["device_id"] == "ID170ZR5000"
    assert shown["granularity"] == card.figures.granularity
    assert shown["symmetry_point"] == card.figures.symmetry_point
    assert shown["n_states"] == card.figures.n_states


def test_device_list_names_every_bundled_card(capsys):
    code, out, _ = run(capsys, "device", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 13
    assert {r["device_id"] for r in rows} == {"ID161ZR15000", "ID170ZR5000"}


def test_missing_card_is_one_line_error(capsys, tmp_path):
    code, out, err = run(capsys, "device", "show", str(tmp_path / "nope.json"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edgelearn: error: ") and "nope.json" in err


@pytest.mark.shared
def test_fit_validate_plot_round_trip(capsys, tmp_path, lbe247):
    trace = lbe247 / "ID170ZR5000_20241024T132232.dat"
    card_path = tmp_path / "card.json"
    code, out, _ = run(capsys, "device", "fit", str(trace), "--nodes", "24", "-o", str(card_path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["card_id"] == "ID170ZR5000-20ns-20241024T132232"
    assert len(load_card(card_path).model.piecewise_up) == 24
    png = tmp_path / "replay.png"
    code, out, _ = run(capsys, "device", "validate", str(card_path), str(trace), "--json", "--plot", str(png))
    assert code == 0
    report = json.loads(out)
    assert report["nrmse"] == pytest.approx(summary["nrmse"], abs=1e-12)
    assert report["nrmse"] <= 0.08 and report["n_pulses"] == 173
    assert {"nrmse_up", "nrmse_down"} <= set(report)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.shared
def test_trace_import_then_fit_our_format(capsys, tmp_path, lbe247):
    csv_path = tmp_path / "t.csv"
    code, out, _ = run(capsys, "trace", "import", str(lbe247 / "ID161ZR15000_20241024T113236.dat"), "-o", str(csv_path))
    assert code == 0 and "134 pulses" in out
    code, out, _ = run(capsys, "device", "fit", str(csv_path), "-o", str(tmp_path / "c.json"), "--json")
    assert code == 0
    direct = load_card("ID161ZR15000-200us")
    assert json.loads(out)["granularity"] == pytest.approx(direct.figures.granularity, rel=1e-9)


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "edgelearn.cli", "device", "show", "ID161ZR15000-20ns"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "ambiguous" in result.stderr and result.stderr.count("\n") == 1


def test_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch, lbe247):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    png = tmp_path / "r.png"
    code, out, err = run(capsys, "device", "validate", "ID161ZR15000-2ms", str(lbe247 / "ID161ZR15000_20241024T113844.dat"),
                         "--plot", str(png))
    assert code == 2 and not png.exists()
    assert err == "edgelearn: error: plotting needs matplotlib: pip install 'edgelearn[plot]'\n"
