"""Device models that predict: read vs write noise, blocked cross-validation against a constant-step baseline,
low-dimensional families, plausibility warnings."""

import numpy as np
import pytest

from edgelearn.cli import main
from edgelearn.devices import card_warnings, fit_device, load_card
from edgelearn.errors import EdgelearnError
from edgelearn.families import FAMILIES, fit_family, replay_family, replay_family_reference
from edgelearn.traces import Trace, TraceMeta
from edgelearn.validation import constant_step_model, cross_validate, cross_validate_family, fold_bounds
from test_devices import G_REF, G_SPAN, synthetic_trace, true_model


def noisy(trace, read_sigma_w, seed=1):
    """The same trace read with white read noise of read_sigma_w (w units) on every measured state."""
    rng = np.random.default_rng(seed)
    g = trace.conductance_s + rng.normal(0.0, read_sigma_w * G_SPAN / 2.0, len(trace))
    return Trace(trace.meta, trace.pulse, trace.amplitude_v, trace.polarity, g)


@pytest.mark.parametrize("c2c, read, seed", [(0.05, 0.004, 0), (0.05, 0.004, 1), (0.10, 0.0, 0), (0.0, 0.03, 2)])
def test_noise_split_recovers_read_noise(c2c, read, seed):
    """Measured over seeds 0-2 (tests/test_validation.py): 0.0030-0.0042 for a true 0.004, 0.0005-0.0010 for none,
    0.021-0.028 for 0.03 (150-pulse branches)."""
    trace = noisy(synthetic_trace(true_model(), n_down=150, n_up=150, c2c=c2c, seed=seed), read, seed=seed + 10)
    card = fit_device(trace)
    scale = G_SPAN / (card.g_max_s - card.g_min_s)  # the card's w scale is its trace's
    assert card.figures.read_noise_w / scale == pytest.approx(read, abs=0.3 * read + 0.0015)


def test_read_noise_on_small_steps_is_named_when_it_makes_sigma_absurd():
    """Read noise larger than the steps (issue 15: ID180ZR1000, ID188ZR500 at sigma about 5): the per-step spread is
    mostly read noise, and the warning says so with the read-noise figure."""
    trace = noisy(synthetic_trace(true_model(), n_down=90, n_up=100, c2c=0.0), 0.05)
    card = fit_device(trace)
    assert card.model.dw_min_std > 1.0
    lines = card_warnings(card)
    assert any("so the sigma is mostly read noise, not write noise" in line for line in lines)
    assert any("read noise" in line and "exceeds the step at w = 0" in line for line in lines)


def test_blocked_cross_validation_of_a_noise_free_device():
    trace = synthetic_trace(true_model())
    cv = cross_validate(trace)  # 10 folds
    assert cv.parameters == 64 and len(cv.per_fold) == 10
    assert [f["start"] for f in cv.per_fold][:4] == [0, 23, 46, 69] and cv.per_fold[-1]["stop"] == 230
    assert cv.in_sample_nrmse < 0.002
    # a state-dependent law fitted on the rest predicts the held-out stretches (measured 0.018), far better than
    # constant steps (0.045; the law's steps vary by a factor of about 3 over the range)
    assert cv.out_of_sample_nrmse < 0.03 and cv.beats_baseline
    assert cv.baseline_out_of_sample_nrmse > 2 * cv.out_of_sample_nrmse
    # with 5 folds the first stretch holds every down pulse from the top: the rest never visited those states, and
    # even the true model class extrapolates there (0.115 on that fold, 0.054 pooled)
    five = cross_validate(trace, folds=5)
    assert five.per_fold[0]["nrmse"] > 0.05 > five.per_fold[1]["nrmse"]
    with pytest.raises(EdgelearnError, match="too short for 5-fold validation"):
        fold_bounds(18, 5)
    with pytest.raises(EdgelearnError, match="folds: expected at least 2"):
        fold_bounds(100, 1)


def test_constant_step_baseline_recovers_constant_steps():
    from edgelearn.devices import PiecewiseStepModel

    law = PiecewiseStepModel.from_absolute(-1.0, 1.0, np.full(3, 0.02), np.full(3, 0.03))
    trace = synthetic_trace(law, n_down=50, n_up=60)
    model = constant_step_model(trace)
    scale = G_SPAN / (trace.conductance_s.max() - trace.conductance_s.min())
    assert model.step_up(0.0) == pytest.approx(0.02 * scale, rel=1e-3)
    assert model.step_down(0.0) == pytest.approx(0.03 * scale, rel=1e-3)


def amplitude_trace(p_up, p_down, n=120):
    """An amplitude staircase (0.5 V to 4 V per branch, as the LBE247 runs) replayed exactly under a family law."""
    volts = np.r_[np.linspace(0.5, 4.0, n), np.linspace(0.5, 4.0, n)]
    polarity = np.r_[np.ones(n), -np.ones(n)].astype(np.int8)
    w = replay_family(0.95, polarity.astype(np.int64), volts, np.zeros(2 * n, np.bool_), np.zeros(2 * n),
                      np.array(p_up), np.array(p_down), 2, True, -1.0, 1.0)
    meta = TraceMeta(device_id="SYNTH2", pulse_width_s=2e-8, measured_at="2026-01-01T00:00:00", source="amp")
    return Trace(meta, np.arange(1, 2 * n + 1, dtype=np.int64), np.where(polarity > 0, volts, -volts), polarity,
                 G_REF + 0.5 * G_SPAN * w)


def test_family_kernel_matches_its_reference_and_fits_recover_an_amplitude_law():
    rng = np.random.default_rng(3)
    for kind, use_amp in FAMILIES.values():
        pol = rng.choice([-1, 1], 200).astype(np.int64)
        volts, restart = rng.uniform(0.3, 4.0, 200), rng.random(200) < 0.05
        restart_w = rng.uniform(-1, 1, 200)
        p_up, p_down = (rng.uniform(0.01, 0.05), rng.uniform(0.3, 2.0), rng.uniform(1, 3), rng.uniform(0.1, 1)), \
            (rng.uniform(0.01, 0.05), rng.uniform(0.3, 2.0), rng.uniform(1, 3), rng.uniform(0.1, 1))
        fast = replay_family(0.1, pol, volts, restart, restart_w, np.array(p_up), np.array(p_down), kind, use_amp,
                             -0.9, 1.1)
        slow = replay_family_reference(0.1, pol, volts, restart, restart_w, p_up, p_down, kind, use_amp, -0.9, 1.1)
        np.testing.assert_array_equal(fast, slow)
    trace = amplitude_trace((0.04, 1.5, 2.0, 0.4), (0.05, 0.8, 2.5, 0.3))
    fitted = fit_family(trace, "power-amplitude")
    assert fitted.parameters == 8
    # the fit's soft bounds sit at the measured extremes (w spans 1.52 of the law's 2), so the recovery is close but
    # not exact (measured: in-sample 0.0018, v0 1.91 and 2.35 for 2.0 and 2.5)
    g_range = trace.conductance_s.max() - trace.conductance_s.min()
    assert np.sqrt(np.mean(fitted.replay_g_errors(trace) ** 2)) / g_range < 0.005
    assert fitted.p_up[2] == pytest.approx(2.0, abs=0.2) and fitted.p_down[2] == pytest.approx(2.5, abs=0.25)
    # an amplitude-blind family cannot follow the staircase (measured in / out of sample: 0.169 / 0.123 against
    # 0.0018 / 0.012)
    blind = cross_validate_family(trace, "power")
    aware = cross_validate_family(trace, "power-amplitude")
    assert aware.in_sample_nrmse < 0.005 and blind.in_sample_nrmse > 0.1
    assert aware.out_of_sample_nrmse < blind.out_of_sample_nrmse / 5
    with pytest.raises(EdgelearnError, match="family: expected one of constant"):
        fit_family(trace, "spline")


def test_card_warnings_fire_on_implausible_cards():
    card = load_card("ID170ZR5000-20ns")
    assert card_warnings(card, implausible_only=True) == []
    # out of sample it is 29x its in-sample error and no better than constant steps, as most measured cards; its
    # amplitude response comes from one-way staircases
    assert [line.split(" ")[0] for line in card_warnings(card)] == ["out-of-sample", "out", "amplitude"]
    f = card.figures
    bad = card.model_copy(deep=True)
    bad.model.dw_min_std = 3.8
    bad.figures.parameters, bad.figures.n_pulses = 64, 40
    bad.figures.out_of_sample = dict(folds=5, nrmse=0.2, baseline_nrmse=0.1)
    bad.figures.stable_points = [dict(w=-0.87, basin_fraction=0.05, at_bound=True),
                                 dict(w=0.16, basin_fraction=0.25, at_bound=False),
                                 dict(w=1.13, basin_fraction=0.70, at_bound=True)]
    bad.figures.symmetry_point = bad.model.w_max
    lines = card_warnings(bad)
    assert lines[0].startswith("cycle-to-cycle sigma 3.80 > 1: about 40% of pulses would move the weight the wrong")
    assert any(line.startswith("symmetry point") and "at a bound" in line for line in lines)
    assert "40 pulses for 64 fitted parameters: fewer pulses than parameters" in " ".join(lines)
    assert any(f"out-of-sample error 0.200 is {0.2 / f.nrmse:.0f}x the in-sample" in line for line in lines)
    assert any("does not beat a constant-step model (0.100)" in line for line in lines)
    assert any(line.startswith("under alternating pulses most states settle at a bound (+1.13); stable points "
                               "(basin share): -0.87 (5%), +0.16 (25%), +1.13 (70%)") for line in lines)


def test_device_fit_cli_reports_out_of_sample_and_warns(tmp_path, capsys):
    trace = synthetic_trace(true_model(), n_down=40, n_up=40)
    path = tmp_path / "t.csv"
    trace.to_csv(path)
    out = tmp_path / "card.json"
    assert main(["device", "fit", str(path), "--folds", "4", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "nrmse out of sample" in captured.out and "4-fold blocked cross-validation" in captured.out
    assert "stable points (basin share)" in captured.out
    assert "edgelearn: warning:" not in captured.err  # 79 pulses, 64 parameters, a good fit
    card = load_card(out)
    assert card.figures.out_of_sample["folds"] == 4 and set(card.figures.out_of_sample["families"]) == set(FAMILIES)
    assert main(["device", "fit", str(path), "--nodes", "48", "--folds", "0", "-o", str(out)]) == 0
    assert "79 pulses for 96 fitted parameters" in capsys.readouterr().err  # 80 pulses, the first an anchor
    assert main(["device", "show", str(out)]) == 0
    assert "fewer pulses than parameters" in capsys.readouterr().err
    for argv, message in ((["--nodes", "many"], "--nodes: expected a whole number or 'auto', got 'many'"),
                          (["--folds", "1"], "--folds: expected 0 (no cross-validation) or at least 2, got 1"),
                          (["--nodes", "auto"], "--nodes auto and --smoothing auto go together")):
        assert main(["device", "fit", str(path), *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_bootstrap_ensemble_cli_and_a_sweep_over_its_files(tmp_path, capsys, monkeypatch):
    from edgelearn.sweep import load_spec, plan

    trace = synthetic_trace(true_model(), n_down=60, n_up=60)
    path = tmp_path / "t.csv"
    trace.to_csv(path)
    assert main(["device", "ensemble", str(path), "-n", "3", "--nodes", "8", "-o", str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    files = sorted((tmp_path / "ens").glob("*.json"))
    assert len(files) == 3 and "wrote 3 cards" in out
    cards = [load_card(f) for f in files]
    assert [c.card_id.rsplit("-", 1)[1] for c in cards] == ["b0", "b1", "b2"]
    assert all(c.provenance.fit["bootstrap"]["kept"] and len(c.provenance.fit["bootstrap"]["kept"]) == 7
               for c in cards)
    spec = tmp_path / "s.toml"
    spec.write_text('name = "ens"\nkind = "train"\n[axes]\ncard = ["ens/*.json"]\n[fixed]\nepochs = 1\n'
                    'algorithm = "sgd"\nnetwork = "784-8-10"\ndata_dir = "mnist"\n')
    monkeypatch.chdir(tmp_path)
    runs = plan(load_spec(spec))
    assert [r.config["card"] for r in runs] == [f"ens/{f.name}" for f in files]
    spec.write_text(spec.read_text().replace("ens/*.json", "none/*.json"))
    with pytest.raises(EdgelearnError, match="card pattern 'none/\\*.json' matches no card file"):
        plan(load_spec(spec))


def test_training_summaries_carry_the_cards_checks():
    from edgelearn.train import card_checks

    checks = card_checks(load_card("ID170ZR5000-200ns"))
    assert set(checks) == {"symmetry_point", "symmetry_point_simulated", "symmetry_interval", "stable_points",
                           "out_of_sample_nrmse", "warnings", "amplitude"}
    assert checks["symmetry_point"] == load_card("ID170ZR5000-200ns").figures.symmetry_point
    assert checks["amplitude"] is None  # the run left the amplitude unset: the amplitude-blind card
    from edgelearn.board import PulseConfig

    card = load_card("ID170ZR5000-200ns")
    at = card_checks(card, PulseConfig(amplitude_up_v=1.0, amplitude_down_v=1.0))["amplitude"]
    assert at["granularity"] == card.model_at(1.0, 1.0).granularity < card.figures.granularity
    assert at["response_out_of_sample_nrmse"] == card.amplitude.out_of_sample["out_of_sample_nrmse"]
    assert card_checks(None) == {}
