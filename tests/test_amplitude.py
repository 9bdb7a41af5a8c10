"""Amplitude-aware steps: the replay kernel against its reference, the joint fit recovers a known response, cards
refuse amplitudes they were not measured at, the emulator and the energy models use the run's amplitude, and a HIL
staircase on the amplitude-aware board emulator closes the loop."""

import os

import numpy as np
import pytest

from edgelearn.amplitude import (cross_validate_amplitude, fit_amplitude, multipliers, replay_scaled,
                                 replay_scaled_reference)
from edgelearn.board import PulseConfig, Tile
from edgelearn.devices import AmplitudeResponse, DeviceVariation, PiecewiseStepModel, load_card
from edgelearn.energy import load_energy_model, unit_energies
from edgelearn.errors import EdgelearnError
from edgelearn.sweep import run_key
from edgelearn.traces import Trace, TraceMeta
from firmware_model import crossbar

G_REF, G_SPAN = 50e-9, 80e-9
SIGMOID = (1.4, 0.35, 1.6, 0.3)  # v0_up, vs_up, v0_down, vs_down: a smooth response over 0.5..3 V
RANGE = (0.5, 3.0)


def true_tables():
    nodes = np.linspace(-1.0, 1.0, 9)
    return nodes, 0.05 * (1.3 - 0.5 * nodes), 0.035 * (1.2 + 0.6 * nodes)


def staircase_trace(pulses=120, cycles=2, c2c=0.0, seed=0, alternate=True):
    """Down then up trains ramping |V| over RANGE (rising in odd cycles; falling in even ones if `alternate`, else
    rising too, as the LBE247 runs) under step = table(w) * A(|V|) / A(3 V)."""
    rng = np.random.default_rng(seed)
    nodes, up, down = true_tables()
    ramp = np.linspace(*RANGE, pulses)
    volts = np.concatenate([np.tile(ramp[::-1] if alternate and c % 2 else ramp, 2) for c in range(cycles)])
    polarity = np.tile(np.r_[np.ones(pulses), -np.ones(pulses)], cycles).astype(np.int8)
    m = multipliers(volts, polarity, SIGMOID, (RANGE[1], RANGE[1]))
    w, states = 0.9, []
    for pol, mk in zip(polarity, m):
        w = crossbar.apply_pulse(w, int(pol), up, down, mk, mk, -1.0, 1.0, c2c * rng.standard_normal())
        states.append(w)
    g = G_REF + 0.5 * G_SPAN * np.array(states)
    meta = TraceMeta(device_id="SYNTH1", pulse_width_s=2e-8, measured_at="2026-01-01T00:00:00", source="synthetic")
    return Trace(meta, np.arange(1, len(g) + 1, dtype=np.int64), polarity * volts, polarity, g)


def with_response(card, sigmoid=SIGMOID, rng=RANGE):
    """The card with a synthetic amplitude response (its own tables at the top of `rng`)."""
    resp = AmplitudeResponse(model=card.model, v0_up_v=sigmoid[0], vs_up_v=sigmoid[1], v0_down_v=sigmoid[2],
                             vs_down_v=sigmoid[3], reference_up_v=rng[1], reference_down_v=rng[1], range_up_v=rng,
                             range_down_v=rng, nrmse=0.0, parameters=0)
    return card.model_copy(update={"amplitude": resp})


def test_replay_scaled_matches_its_reference_exactly():
    r = np.random.default_rng(4)
    n = 400
    up, down = r.uniform(0.001, 0.05, 17), r.uniform(0.001, 0.05, 17)
    pol = r.choice(np.array([-1, 1], np.int64), n)
    mult = r.uniform(0.0, 1.0, n)
    restart = r.random(n) < 0.05
    restart_w = r.uniform(-1.2, 1.2, n)
    fast = replay_scaled(0.1, pol, mult, restart, restart_w, up, down, -1.1, 0.9)
    slow = replay_scaled_reference(0.1, pol, mult, restart, restart_w, up, down, -1.1, 0.9)
    assert np.array_equal(fast, slow)


def _truth(model):
    return AmplitudeResponse(model=model, v0_up_v=SIGMOID[0], vs_up_v=SIGMOID[1], v0_down_v=SIGMOID[2],
                             vs_down_v=SIGMOID[3], reference_up_v=3.0, reference_down_v=3.0, range_up_v=RANGE,
                             range_down_v=RANGE, nrmse=0.0, parameters=0)


def test_joint_fit_recovers_a_known_amplitude_response_from_alternating_ramps():
    trace = staircase_trace()
    resp = fit_amplitude(trace, nodes=9, smoothing=1e-3)
    assert resp.range_up_v == RANGE and resp.range_down_v == RANGE
    assert resp.identified and resp.ramps == {"up": {"rising": 1, "falling": 1, "flat": 0},
                                              "down": {"rising": 1, "falling": 1, "flat": 0}}
    assert resp.nrmse < 1e-4
    truth = _truth(resp.model)
    for v in (0.8, 1.2, 1.6, 2.2):
        for d in ("up", "down"):
            assert resp.factor(v, d) == pytest.approx(truth.factor(v, d), rel=0.01), (v, d)


def test_one_way_ramps_do_not_identify_the_response():
    """Every train rising (as the LBE247 runs): a response 20 % off the truth at 0.8 V replays the trace as well as
    the truth does (nrmse < 1e-4), and the card says the response is not identified."""
    trace = staircase_trace(alternate=False)
    resp = fit_amplitude(trace, nodes=9, smoothing=1e-3)
    assert not resp.identified and resp.ramps["up"] == {"rising": 2, "falling": 0, "flat": 0}
    assert resp.nrmse < 1e-4
    assert abs(resp.factor(0.8, "up") / _truth(resp.model).factor(0.8, "up") - 1.0) > 0.1


def test_cross_validation_prefers_the_amplitude_model_on_a_staircase():
    cv = cross_validate_amplitude(staircase_trace(c2c=0.02, seed=1), folds=5, nodes=8, smoothing=1e-2)
    assert cv.parameters == 20
    assert cv.out_of_sample_nrmse < 0.5 * cv.blind_out_of_sample_nrmse


def test_model_at_scales_the_tables_and_refuses_what_was_not_measured():
    card = with_response(load_card("ID170ZR5000-200ns"))
    top = card.model_at()
    assert np.allclose(top.step_up(top.nodes), card.model.step_up(card.model.nodes), rtol=1e-12)
    low = card.model_at(1.0, 2.0)
    f_up, f_down = card.amplitude.factor(1.0, "up"), card.amplitude.factor(2.0, "down")
    assert 0 < f_up < f_down < 1
    assert np.allclose(low.step_up(low.nodes), f_up * card.model.step_up(card.model.nodes), rtol=1e-12)
    assert np.allclose(low.step_down(low.nodes), f_down * card.model.step_down(card.model.nodes), rtol=1e-12)
    with pytest.raises(EdgelearnError, match=r"pulses.amplitude_up_v: 3.5 V is outside the 0.5..3 V card "):
        card.model_at(3.5)
    with pytest.raises(EdgelearnError, match="has no amplitude response"):
        load_card("ID170ZR5000-200ns").model_copy(update={"amplitude": None}).model_at(1.0)


def test_tile_at_an_amplitude_pulses_with_the_scaled_steps():
    """One deterministic up pulse per device (lr = dw_min, x = 1, d = -1) moves each weight by the card's up step at
    w = 0 scaled by the response's factor at the configured amplitude; unset, by the amplitude-blind step."""
    card = with_response(load_card("ID170ZR5000-200ns"))
    for pulses, factor in ((None, 1.0), (PulseConfig(amplitude_up_v=1.2, amplitude_down_v=1.2),
                                         card.amplitude.factor(1.2, "up"))):
        t = Tile(card, 2, 3, seed=5, variation=DeviceVariation.none(), c2c_std=0.0, pulses=pulses)
        t.set_weights(np.zeros((2, 3)))
        assert t.update_deterministic_batch(np.ones((1, 3)), -np.ones((1, 2)), t.dw_min) == 6
        assert np.allclose(t.weights, factor * card.model.step_up(0.0), rtol=1e-12, atol=0)
    assert factor < 0.9
    with pytest.raises(EdgelearnError, match="pulses.amplitude_down_v: 0.2 V is outside"):
        Tile(card, 2, 2, pulses=PulseConfig(amplitude_down_v=0.2))


def test_energy_prices_pulses_at_the_runs_amplitude():
    card = load_card("ID170ZR5000-200ns")
    model = load_energy_model("schottky-bound")
    top = unit_energies(model, card)
    low = unit_energies(model, card, (1.0, 1.5))
    assert (low.amplitude_up_v, low.amplitude_down_v) == (1.0, 1.5)
    assert low.pulse_up_j == pytest.approx(model.programming.pulse_energy_j(1.0, card.pulse_width_s, card.area_m2))
    assert low.pulse_up_j < top.pulse_up_j and low.pulse_down_j < top.pulse_down_j
    clash = model.model_copy(update={"amplitude_up_v": 2.0})
    with pytest.raises(EdgelearnError, match=r"amplitude_up_v 2 V, but the run pulsed at 1 V"):
        unit_energies(clash, card, (1.0, None))


def test_sweep_run_keys_do_not_move_with_the_amplitude_fields():
    config = {"card": "x", "pulses": {"bl_max": 31}}
    with_fields = {"card": "x", "pulses": {"bl_max": 31, "amplitude_up_v": None, "amplitude_down_v": None}}
    assert run_key("train", config) == run_key("train", with_fields)
    set_ = {"card": "x", "pulses": {"bl_max": 31, "amplitude_up_v": 1.0, "amplitude_down_v": None}}
    assert run_key("train", set_) != run_key("train", config)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="the board emulator needs a pseudo-terminal")
def test_hil_staircase_on_the_amplitude_aware_board_recovers_its_response():
    """Closed loop: an amplitude-aware, noise-free board with a known response; `characterize --staircase` records each
    pulse's amplitude, and the joint fit of that trace finds the board's amplitude factors."""
    from edgelearn.hil import SerialBoard, characterize
    from edgelearn.hil.emulator import BoardEmulator, BoardFirmware

    card = with_response(load_card("ID170ZR5000-200ns"))
    with BoardEmulator(BoardFirmware([card], 2, 2, seed=1, ideal=True, amplitude_aware=True)) as emu:
        with SerialBoard(emu.url) as board:
            assert board.amplitude_range_mv(200) == (500, 3000)
            with pytest.raises(EdgelearnError, match=r"--staircase low 0.3 V: the board offers 0.5..3 V"):
                characterize(board, 200, pulses=10, cycles=1, staircase_v=(0.3, 3.0))
            trace = characterize(board, 200, pulses=150, cycles=4, staircase_v=(0.5, 3.0))
    volts = np.abs(trace.amplitude_v)
    assert (volts[0], volts[149], volts[150], volts[300], volts[449]) == (0.5, 3.0, 0.5, 3.0, 0.5)
    resp = fit_amplitude(trace, nodes=16)
    assert resp.identified
    for v in (1.0, 1.5, 2.0):
        for d in ("up", "down"):
            assert resp.factor(v, d) == pytest.approx(card.amplitude.factor(v, d), rel=0.06), (v, d)


def test_model_at_keeps_the_noise_of_the_response():
    card = with_response(load_card("ID170ZR5000-200ns"))
    assert card.model_at(1.0, 1.0).dw_min_std == card.amplitude.model.dw_min_std
    assert isinstance(card.model_at(1.0, 1.0), PiecewiseStepModel)


def test_fit_card_never_gives_the_response_more_values_than_pulses():
    from edgelearn.validation import fit_card

    trace = staircase_trace(pulses=8, cycles=2)
    card = fit_card(trace, nodes=16, folds=0, stability=False)
    assert card.figures.n_pulses == 31
    assert card.amplitude.parameters == 30 and card.amplitude.fit["nodes"] == 13
