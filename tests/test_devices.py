"""Device model: fit recovers known tables, symmetry points match closed forms, cards round-trip, real traces fit."""

import json

import numpy as np
import pytest

from edgelearn.devices import (PiecewiseStepModel, bundled_cards, device_area, fit_device, load_card,
                               symmetry_points, validate_card, width_label)
from edgelearn.errors import EdgelearnError, InputError
from edgelearn.traces import Trace, TraceMeta, load_trace
from firmware_model import crossbar

G_REF, G_SPAN = 50e-9, 80e-9  # siemens; the synthetic device's conductance for w = 0 and per unit of w / 2


def true_model():
    nodes = np.linspace(-1.0, 1.0, 9)
    up = 0.030 * (1.3 - 0.6 * nodes) * (1.0 + 0.2 * np.sin(2.0 * nodes))
    down = 0.018 * (1.2 + 0.7 * nodes)
    return PiecewiseStepModel.from_absolute(-1.0, 1.0, up, down)


def synthetic_trace(model, n_down=110, n_up=120, c2c=0.0, seed=0):
    """A staircase-like run: down pulses from near w_max, then up pulses, states read after every pulse."""
    rng = np.random.default_rng(seed)
    args = model.kernel_args()
    w, states = 0.95, []
    polarity = np.r_[np.ones(n_down), -np.ones(n_up)].astype(np.int8)
    for pol in polarity:
        w = crossbar.apply_pulse(w, int(pol), *args, c2c * rng.standard_normal())
        states.append(w)
    g = G_REF + 0.5 * G_SPAN * np.array(states)
    meta = TraceMeta(device_id="SYNTH1", pulse_width_s=2e-8, measured_at="2026-01-01T00:00:00", source="synthetic")
    return Trace(meta, np.arange(1, len(g) + 1, dtype=np.int64), np.where(polarity > 0, 2.0, -2.0), polarity, g)


def conductance_steps(model, g, g_ref, g_span):
    """Absolute up/down steps in siemens at conductances g, for a model normalised with (g_ref, g_span)."""
    w = 2.0 * (g - g_ref) / g_span
    return model.step_up(w) * g_span / 2.0, model.step_down(w) * g_span / 2.0


@pytest.mark.parametrize("c2c, tolerance", [(0.0, 0.03), (0.03, 0.10)])
def test_fit_recovers_known_tables(c2c, tolerance):
    truth = true_model()
    trace = synthetic_trace(truth, c2c=c2c)
    card = fit_device(trace)
    inner = G_REF + 0.5 * G_SPAN * np.linspace(-0.85, 0.85, 40)  # states both branches start pulses from
    true_up, true_down = conductance_steps(truth, inner, G_REF, G_SPAN)
    fit_up, fit_down = conductance_steps(card.model, inner, card.g_ref_s, card.g_max_s - card.g_min_s)
    assert np.max(np.abs(fit_up / true_up - 1.0)) < tolerance
    assert np.max(np.abs(fit_down / true_down - 1.0)) < tolerance
    assert card.figures.nrmse < (0.002 if c2c == 0 else 0.03)
    if c2c == 0:
        assert card.model.dw_min_std < 0.01
    else:  # the residual spread recovers the cycle-to-cycle sigma
        assert 0.5 * c2c < card.model.dw_min_std < 1.6 * c2c


def soft_bounds(a, b, w_min=-1.0, w_max=1.2, nodes=7):
    grid = np.linspace(w_min, w_max, nodes)
    return PiecewiseStepModel.from_absolute(w_min, w_max, a * (w_max - grid), b * (grid - w_min))


@pytest.mark.parametrize("a, b", [(0.03, 0.06), (0.05, 0.01), (0.004, 0.004)])
def test_symmetry_point_of_soft_bounds_matches_closed_form(a, b):
    model = soft_bounds(a, b)
    analytic, simulated, pairs = symmetry_points(model)
    closed = (a * model.w_max + b * model.w_min) / (a + b)
    assert analytic == pytest.approx(closed, abs=1e-12)
    # the alternating search settles within a step of it (the discrete pair map is offset by about half a step)
    assert abs(simulated - closed) < max(a, b) * (model.w_max - model.w_min)
    assert pairs > 1


def test_symmetry_point_without_crossing_is_the_bound():
    grid = np.linspace(-1, 1, 5)
    always_up = PiecewiseStepModel.from_absolute(-1.0, 1.0, np.full(5, 0.02), 0.01 + 0.0 * grid)
    assert symmetry_points(always_up)[0] == 1.0
    assert symmetry_points(always_up)[1] == pytest.approx(1.0 - 0.005, abs=1e-9)  # mean of (w_max - down, w_max)
    always_down = PiecewiseStepModel.from_absolute(-1.0, 1.0, np.full(5, 0.01), np.full(5, 0.02))
    assert symmetry_points(always_down)[0] == -1.0


def test_step_convention_matches_aihwkit():
    grid = np.linspace(-1.0, 1.0, 5)
    model = PiecewiseStepModel.from_absolute(-1.0, 1.0, 0.04 + 0.01 * grid, np.full(5, 0.01))
    # dw_min is the smaller step at w = 0; up_down > 0 means down steps are smaller (aihwkit convention)
    assert model.dw_min == pytest.approx(0.01)
    assert model.up_down == pytest.approx(0.75)
    assert model.to_aihwkit()["dw_min"] == pytest.approx(0.04)
    assert model.scale_up == pytest.approx(0.04) and model.scale_down == pytest.approx(0.01)
    np.testing.assert_allclose(model.step_up(grid), 0.04 + 0.01 * grid)
    flipped = PiecewiseStepModel.from_absolute(-1.0, 1.0, np.full(5, 0.01), np.full(5, 0.04))
    assert flipped.up_down == pytest.approx(-0.75)
    assert flipped.scale_up == pytest.approx(0.01) and flipped.scale_down == pytest.approx(0.04)


def test_card_round_trip(tmp_path):
    card = fit_device(synthetic_trace(true_model()))
    path = tmp_path / "card.json"
    card.save(path)
    again = load_card(path)
    assert again == card
    assert again.card_id == "SYNTH1-20ns-20260101T000000"
    assert json.loads(path.read_text())["format"] == "edgelearn-card/1"


def test_card_errors_name_file_and_field(tmp_path):
    card = fit_device(synthetic_trace(true_model()))
    data = json.loads(card.to_json())
    del data["model"]["dw_min"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"bad\.json: field 'model\.dw_min': missing"):
        load_card(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(InputError, match=r"broken\.json:1: not valid JSON"):
        load_card(broken)
    with pytest.raises(EdgelearnError, match="no such card file"):
        load_card(tmp_path / "missing.json")


def test_width_labels_and_areas():
    assert [width_label(x) for x in (2e-8, 2e-7, 2e-6, 2e-5, 2e-4, 2e-3, 5e-4)] == [
        "20ns", "200ns", "2us", "20us", "200us", "2ms", "500us"]
    area, _ = device_area("ID161ZR15000")
    assert area == pytest.approx(850e-12, rel=0.001)  # about 850 um^2, traces/README
    assert device_area("ID170ZR5000")[0] == pytest.approx(94.4e-12, rel=0.001)
    assert device_area("ID294YR")[0] is None and device_area("ID36ZR1000Circ")[0] is None


# ------------------------------------------------------------------------------ bundled cards (always present)


def bundled(device, width):
    cards = [load_card(p) for name, p in bundled_cards().items() if name.startswith(f"{device}-{width}-")]
    assert cards, f"no bundled card {device}-{width}"
    return cards


def test_bundled_cards_cover_every_pulse_width():
    names = set(bundled_cards())
    for device in ("ID161ZR15000", "ID170ZR5000"):
        for width in ("20ns", "200ns", "2us", "20us", "200us", "2ms"):
            assert any(n.startswith(f"{device}-{width}-") for n in names), (device, width)


def test_id161_physics_granularity_grows_and_symmetry_point_moves_toward_zero():
    widths = ("20ns", "200ns", "2us", "20us", "200us")
    # for 20 ns use the full-range run (the other starts its down branch at w = 0.6, see docs/devices.md)
    cards = [[c for c in bundled("ID161ZR15000", w) if c.figures.symmetry_point_measured][0] for w in widths]
    eps = [c.figures.granularity for c in cards]
    sym = [c.figures.symmetry_point for c in cards]
    assert all(a < b for a, b in zip(eps, eps[1:])), eps
    assert eps[0] == pytest.approx(0.03, abs=0.01) and eps[-1] == pytest.approx(0.12, abs=0.02)  # the brief's fit
    assert np.mean(sym[3:]) < np.mean(sym[:3]) - 0.1, sym
    assert all(s > 0 for s in sym)


def test_show_figures_of_bundled_card():
    card = load_card("ID170ZR5000-20ns")
    summary = card.summary()
    for key in ("device_id", "pulse_width_s", "granularity", "symmetry_point", "dw_min", "up_down", "w_min",
                "w_max", "n_states", "on_off_ratio"):
        assert key in summary
    assert summary["pulse_width_s"] == 2e-8
    assert card.figures.nrmse <= 0.08
    with pytest.raises(EdgelearnError, match="ambiguous"):
        load_card("ID161ZR15000-20ns")


# ------------------------------------------------------------------------------ measured traces in ../shared


def _dat(lbe247, prefix):
    return sorted(lbe247.glob(f"{prefix}*.dat"))


@pytest.mark.shared
@pytest.mark.parametrize("device", ["ID161ZR15000", "ID170ZR5000"])
def test_every_width_replays_within_target(lbe247, device):
    files = _dat(lbe247, device)
    assert len(files) >= 6
    for path in files:
        card = fit_device(load_trace(path))
        report = validate_card(card, load_trace(path))
        assert report.nrmse <= 0.08, (path.name, report)
        assert report.nrmse == pytest.approx(card.figures.nrmse, abs=1e-12)
        assert report.n_pulses == len(load_trace(path)) - int(load_trace(path).anchors.sum())


@pytest.mark.shared
def test_bundled_cards_replay_their_traces(lbe247):
    for name, path in bundled_cards().items():
        card = load_card(path)
        source = lbe247 / card.provenance.source_file
        trace = load_trace(source)
        assert trace.meta.source_sha256 == card.provenance.source_sha256, name
        report = validate_card(card, trace)
        assert report.nrmse == pytest.approx(card.figures.nrmse, abs=1e-9), name
        assert report.nrmse <= 0.08


@pytest.mark.shared
def test_every_other_trace_fits(lbe247):
    others = [p for p in _dat(lbe247, "ID") if not p.name.startswith(("ID161ZR15000", "ID170ZR5000"))]
    assert len(others) >= 10
    for path in others:
        card = fit_device(load_trace(path))
        f = card.figures
        assert np.isfinite([f.granularity, f.symmetry_point, f.n_states, f.nrmse]).all(), path.name
        assert card.model.w_min <= f.symmetry_point <= card.model.w_max
        assert f.nrmse < 0.1, (path.name, f.nrmse)


@pytest.mark.shared
def test_on_off_ratio_grows_with_pulse_width(lbe247):
    # traces/README: ID161ZR15000 on/off about 1.9 at 20 ns to about 10 at 200 us
    cards = {c.pulse_width_s: c for c in (fit_device(load_trace(p)) for p in _dat(lbe247, "ID161ZR15000_20241024T11"))}
    assert cards[2e-8].figures.on_off_ratio == pytest.approx(1.9, abs=0.1)
    assert cards[2e-4].figures.on_off_ratio == pytest.approx(10.2, abs=0.5)
