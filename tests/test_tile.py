"""The crossbar tile through its host wrapper: statistical parity with the pulse-train formulas, symmetry points,
exact counters on known schedules, device-to-device draws, symmetry-point calibration."""

import numpy as np
import pytest
from pydantic import ValidationError

from edgelearn.board import InProcessBoard, PeripheryConfig, PulseConfig, Tile
from edgelearn.devices import DeviceVariation, PiecewiseStepModel, load_card
from edgelearn.errors import EdgelearnError
from firmware_model import controller as ctl

NO_VARIATION = DeviceVariation(dw_min_dtod=0.0, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.0)


def constant_step(dw_min, bound=10.0):
    """A device whose step is dw_min everywhere (bounds far away): Delta w is exactly dw_min per pulse."""
    return PiecewiseStepModel.from_absolute(-bound, bound, np.full(3, dw_min), np.full(3, dw_min))


def soft_bounds(a, b, w_min=-1.0, w_max=1.0):
    grid = np.array([w_min, w_max])
    return PiecewiseStepModel.from_absolute(w_min, w_max, a * (w_max - grid), b * (grid - w_min))


@pytest.mark.parametrize("c2c", [0.0, 0.3])
def test_stochastic_update_mean_and_variance_match_the_train_formulas(c2c):
    dw_min, lr = 0.002, 0.01
    x = np.array([1.0, 0.6, -0.3, 0.0, 0.15])
    d = np.array([0.4, -0.25, 0.1, 0.05])
    tile = Tile(constant_step(dw_min), 4, 5, seed=7, c2c_std=c2c)
    trials = 6000
    deltas = np.empty((trials, 4, 5))
    for t in range(trials):
        tile.set_weights(np.zeros((4, 5)))
        tile.update_sgd(x, d, lr)
        deltas[t] = tile.weights
    # BL management and update management, as in aihwkit
    x_max, d_max = np.abs(x).max(), np.abs(d).max()
    bl = int(np.ceil(lr * x_max * d_max / dw_min))
    a = np.sqrt(lr / (dw_min * bl)) * np.sqrt(x_max / d_max)
    b = np.sqrt(lr / (dw_min * bl)) * np.sqrt(d_max / x_max)
    q = np.outer(a * np.abs(d), b * np.abs(x))  # coincidence probability per slot
    assert q.max() <= 1.0 + 1e-12
    q = np.minimum(q, 1.0)
    expected_mean = -lr * np.outer(d, x)
    # n ~ Binomial(BL, q); each pulse dw_min (1 + c2c xi): Var = dw_min^2 (Var n + E n c2c^2)
    expected_var = dw_min**2 * (bl * q * (1 - q) + bl * q * c2c**2)
    mean, var = deltas.mean(axis=0), deltas.var(axis=0, ddof=1)
    z = (mean - expected_mean)[expected_var > 0] / np.sqrt(expected_var[expected_var > 0] / trials)
    # every cell within 4 standard errors (16 cells: 3 would fail by chance 4 % of the time), and jointly
    # sum z^2 ~ chi2(16) below its 99.9 % quantile, 39.25
    assert np.all(np.abs(z) < 4.0), z
    assert np.sum(z**2) < 39.25, z
    assert abs(z.mean()) < 3.0 / np.sqrt(z.size)  # the pooled mean error within 3 standard errors
    live = expected_var > 0
    np.testing.assert_allclose(var[live], expected_var[live], rtol=0.1)
    assert np.all(deltas[:, :, 3] == 0.0)  # x = 0 never fires


@pytest.mark.parametrize("a, b", [(0.01, 0.02), (0.02, 0.005)])
def test_soft_bounds_weights_settle_at_the_analytic_symmetry_point(a, b):
    tile = Tile(soft_bounds(a, b), 6, 8, seed=3, c2c_std=0.0)
    rng = np.random.default_rng(0)
    history = []
    for step in range(3000):
        d = rng.choice([-1.0, 1.0], 6) * 0.5
        x = rng.choice([-1.0, 1.0], 8)
        tile.update_sgd(x, d, 0.02)
        if step >= 2000:
            history.append(tile.weights.mean())
    closed_form = (a * 1.0 + b * -1.0) / (a + b)
    assert np.mean(history) == pytest.approx(closed_form, abs=0.03)


def test_mixed_precision_known_schedule_counts_exactly():
    dw = 2.0**-6
    tile = Tile(constant_step(dw), 3, 4, seed=1, c2c_std=0.0,
                periphery=PeripheryConfig(out_noise=0.0), pulses=PulseConfig(chi_frac_bits=24))
    x = np.array([1.0, 0.5, -0.25, 0.0])
    d = np.array([0.5, -0.25, 0.125])
    # chi = -lr d x in Q24, x quantised to Q15 of x / xmax (1 -> 32767, 0.5 -> 16384, -0.25 -> -8192); with lr = 0.5
    # and epsilon = 1/16 = 2^20 in Q24 the pulse counts trunc(chi / epsilon) are
    # row 0 (d = 0.5):   -3.9999 -> 3 down, -2 -> 2 down, +1 -> 1 up, 0
    # row 1 (d = -0.25): +1.9999 -> 1 up,    +1 -> 1 up,  -0.5 -> 0, 0
    # row 2 (d = 0.125): -0.99997, -0.5, +0.25 -> none
    pulses = tile.update_mp(x, d, lr=0.5, epsilon=1 / 16)
    report = tile.counter_report()
    expected_down = np.array([[3, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    expected_up = np.array([[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(report.pulses_per_device_down, expected_down)
    np.testing.assert_array_equal(report.pulses_per_device_up, expected_up)
    np.testing.assert_allclose(tile.weights, (expected_up - expected_down) * dw)
    assert pulses == 8
    c = report.counts
    assert (c["pulses_up"], c["pulses_down"], c["updates"], c["digital_macs"], c["accumulator_updates"]) == (3, 5, 1, 12, 12)
    assert c["coincidences"] == 0 and c["calibration_pulses_up"] == 0
    # the remainders stay in chi: row 0 col 0 was -0.25 * 32767/32768 in weight units, 3 epsilons went out
    assert tile.chi[0, 0] == -4194176 + 3 * 2**20
    assert tile.chi[2, 0] == -1048544
    # a second identical step accumulates on the remainders: row 2 col 0 reaches -1.99994 epsilon -> 1 down pulse
    tile.update_mp(x, d, lr=0.5, epsilon=1 / 16)
    assert tile.counter_report().pulses_per_device_down[2, 0] == 1
    assert tile.chi[2, 0] == -2 * 1048544 + 2**20
    # one forward and one backward pass: reads, conversions, no noise draws
    tile.forward(x)
    tile.backward(d)
    c = tile.counter_report().counts
    assert (c["mvm_forward"], c["mvm_backward"], c["cell_reads"], c["dac_conversions"], c["adc_conversions"]) == (
        1, 1, 24, 7, 7)
    assert c["rng_draws"] == 0 and c["bound_management_repeats"] == 0


def test_counters_agree_with_per_device_counts_and_coincidences():
    board = InProcessBoard(seed=5)
    tile = board.add_tile("ID170ZR5000-20ns", 12, 9, references=True)
    rng = np.random.default_rng(1)
    board.calibrate_symmetry(tile, max_pairs=400)
    after_calibration = board.counters().counts
    for _ in range(200):
        board.update_sgd(tile, rng.uniform(-1, 1, 9), rng.normal(0, 0.3, 12), 0.2)
    report = board.counters()
    c = report.counts
    per_device = (report.pulses_per_device_up.sum() + report.pulses_per_device_down.sum()
                  + report.reference_pulses_up.sum() + report.reference_pulses_down.sum())
    assert per_device == report.total_pulses
    assert c["coincidences"] == c["pulses_up"] + c["pulses_down"] > 0
    assert c["calibration_pulses_up"] == after_calibration["calibration_pulses_up"] > 0
    assert report.reference_pulses_up.sum() + report.reference_pulses_down.sum() > 0


def test_device_to_device_draws_follow_the_variation():
    card = load_card("ID161ZR15000-2us")
    variation = DeviceVariation(dw_min_dtod=0.2, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.1)
    tile = Tile(card, 100, 100, seed=2, variation=variation)
    scale_up = tile.params[..., 0] / card.model.scale_up
    assert scale_up.mean() == pytest.approx(1.0, abs=0.01)
    assert scale_up.std() == pytest.approx(0.2, rel=0.05)
    w_max = tile.params[..., 3] / card.model.w_max
    assert w_max.std() == pytest.approx(0.1, rel=0.05)
    assert np.all(tile.params[..., 2] == card.model.w_min)
    same = Tile(card, 100, 100, seed=2, variation=variation)
    np.testing.assert_array_equal(same.params, tile.params)  # one seed, one tile


def test_symmetry_point_calibration_zeroes_the_drift_point():
    card = load_card("ID170ZR5000-20ns")
    tile = Tile(card, 10, 10, seed=4, references=True)
    result = tile.calibrate_symmetry()
    assert result.reference_missed == 0
    assert result.symmetry_points.mean() == pytest.approx(card.figures.symmetry_point_simulated, abs=0.1)
    eps = card.figures.granularity
    # write-verify put every reference within its tolerance of the point its device settled at ...
    assert np.abs(tile.ref_state - result.symmetry_points).max() <= 0.5 * eps + 1e-12
    # ... so the weights start around 0: the device fluctuates by about a step around its symmetry point
    assert abs(tile.weights.mean()) < 0.5 * eps
    assert np.abs(tile.weights).max() < 3 * eps
    c = tile.counter_report().counts
    assert result.pulses == c["calibration_pulses_up"] + c["calibration_pulses_down"] > 0
    assert c["pulses_up"] == c["pulses_down"] == 0
    with pytest.raises(EdgelearnError, match="references=True"):
        Tile(card, 2, 2).calibrate_symmetry()


def test_forward_backward_match_the_weights_without_noise():
    periphery = PeripheryConfig(out_noise=0.0, dac_bits=12, adc_bits=14)
    tile = Tile("ID161ZR15000-200us", 7, 11, seed=0, periphery=periphery)
    rng = np.random.default_rng(2)
    tile.set_weights(rng.uniform(-0.5, 0.5, (7, 11)))
    x, d = rng.uniform(-1, 1, 11), rng.uniform(-1, 1, 7)
    np.testing.assert_allclose(tile.forward(x), tile.weights @ x, atol=5e-3)
    np.testing.assert_allclose(tile.backward(d), tile.weights.T @ d, atol=5e-3)
    with pytest.raises(EdgelearnError, match=r"forward input must have shape \(11,\)"):
        tile.forward(np.ones(7))


def test_bound_management_recovers_large_outputs():
    tile = Tile(constant_step(0.01), 4, 64, seed=0, periphery=PeripheryConfig(out_noise=0.0))
    tile.set_weights(np.full((4, 64), 0.9))
    y = tile.forward(np.ones(64))
    assert tile.counter_report().counts["bound_management_repeats"] == 3  # 57.6 -> 28.8 -> 14.4 -> 7.2 < 12
    np.testing.assert_allclose(y, 57.6, rtol=0.02)  # the 1/8 input becomes DAC code 8/63, not 7.875/63


def test_non_finite_inputs_are_refused():
    tile = Tile(constant_step(0.01), 2, 3)
    with pytest.raises(EdgelearnError, match=r"d has non-finite values \(NaN or inf\) at positions \[1\]"):
        tile.update_sgd(np.ones(3), np.array([0.1, np.nan]), 0.1)
    with pytest.raises(EdgelearnError, match=r"x must have shape \(3,\)"):
        tile.update_mp(np.ones(2), np.ones(2), 0.1)
    assert tile.counter_report().counts["updates"] == 0


def test_mvm_refuses_non_finite_inputs_before_drawing_or_counting():
    tile = Tile(constant_step(0.01), 2, 3, seed=0)
    rng = tile.rng.copy()
    with pytest.raises(EdgelearnError, match=r"forward input has non-finite values \(NaN or inf\) at positions \[2\]"):
        tile.forward(np.array([0.1, 0.2, np.inf]))
    with pytest.raises(EdgelearnError, match=r"backward input has non-finite values \(NaN or inf\) at positions \[0\]"):
        tile.backward(np.array([np.nan, 0.0]))
    with pytest.raises(EdgelearnError, match=r"forward input must have shape \(3,\), got \(2,\)"):
        tile.forward(np.ones(2))
    with pytest.raises(EdgelearnError, match=r"x has non-finite values \(NaN or inf\) at positions \[0\]"):
        tile.update_sgd(np.array([-np.inf, 0.0, 0.0]), np.ones(2), 0.1)
    with pytest.raises(EdgelearnError, match=r"d has non-finite values \(NaN or inf\) at positions \[1\]"):
        tile.update_mp(np.ones(3), np.array([0.0, np.nan]), 0.1)
    narrow = Tile(constant_step(0.01), 2, 3, seed=0, pulses=PulseConfig(chi_bits=8))
    with pytest.raises(EdgelearnError, match=r"x has non-finite values \(NaN or inf\) at positions \[2\]"):
        narrow.update_mp(np.array([0.0, 1.0, np.nan]), np.ones(2), 0.1)
    assert not any(narrow.counter_report().counts.values())
    np.testing.assert_array_equal(tile.rng, rng)
    assert not any(tile.counter_report().counts.values())


def test_digital_outputs_are_the_codes_times_their_scale():
    card = load_card("ID170ZR5000-20ns")
    x = np.random.default_rng(3).uniform(-1.0, 1.0, 40)
    d = np.random.default_rng(4).normal(0.0, 1.0, 16)
    a, b = Tile(card, 16, 40, seed=5), Tile(card, 16, 40, seed=5)
    init = np.random.default_rng(6).uniform(-0.5, 0.5, (16, 40))
    a.set_weights(init), b.set_weights(init)
    for _ in range(3):
        codes, scale = b.forward_codes(x)
        np.testing.assert_array_equal(a.forward(x), codes * scale)  # bit for bit, the same stream
        scale_b = ctl.mvm(b.state, b.ref_state, b.references, d, True, *b.periphery.kernel_args(), b.rng,
                          b.normal_table, b._bwd_codes, b.counters)
        np.testing.assert_array_equal(a.backward(d), b._bwd_codes * scale_b)
    np.testing.assert_array_equal(a.rng, b.rng)
    np.testing.assert_array_equal(a.counters, b.counters)


def test_batch1_mixed_precision_is_the_controllers_two_calls():
    card = load_card("ID170ZR5000-20ns")
    a, b = Tile(card, 16, 40, seed=5), Tile(card, 16, 40, seed=5)
    rng = np.random.default_rng(7)
    for _ in range(20):
        x, d = rng.uniform(0.0, 1.0, 40), rng.normal(0.0, 0.5, 16)
        n = a.update_mp(x, d, 0.5)
        eps_up_q, eps_down_q = b._epsilon_codes(None, None)
        ctl.chi_increments(x, d, 0.5, b.pulse_config.chi_frac_bits, b._x_q, b._row_mult)
        assert n == ctl.mp_update(b.state, b.params, b.table_up, b.table_down, b.c2c_std, b.chi, b._x_q, b._row_mult,
                                  eps_up_q, eps_down_q, 0, b.rng, b.normal_table, b.device_pulses, b.counters)
    assert a.counter_report().counts["pulses_up"] + a.counter_report().counts["pulses_down"] > 0
    for name in ("state", "chi", "rng", "counters", "device_pulses"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_periphery_is_frozen_and_a_new_one_takes_effect():
    tile = Tile(constant_step(0.01), 4, 64, seed=0, periphery=PeripheryConfig(out_noise=0.0))
    with pytest.raises(ValidationError, match="frozen"):
        tile.periphery.out_bound = 100.0
    tile.set_weights(np.full((4, 64), 0.9))
    tile.forward(np.ones(64))
    assert tile.counter_report().counts["bound_management_repeats"] == 3
    tile.periphery = PeripheryConfig(out_noise=0.0, out_bound=100.0)
    tile.forward(np.ones(64))
    assert tile.counter_report().counts["bound_management_repeats"] == 3  # 57.6 < 100: no repeat


def test_per_device_counts_fold_into_int64_totals():
    tile = Tile(constant_step(0.001), 2, 2, seed=0)
    tile._pulses_since_fold = 2**30 - 1  # as if a billion pulses had been applied since the last fold
    tile.device_pulses[0, 0, 0, 1] = 2**31 - 100  # down pulses of device (0, 0), near the int32 limit
    pulses = tile.update_sgd(np.ones(2), np.array([0.5, 0.5]), 0.01)
    assert pulses > 0 and tile.device_pulses.sum() == 0  # folded
    report = tile.counter_report()
    assert report.pulses_per_device_down[0, 0] >= 2**31 - 100
    assert report.pulses_per_device_down.dtype == np.int64


def test_deterministic_pulse_counts_are_exact():
    dw = 0.01
    tile = Tile(constant_step(dw), 2, 3, seed=0, c2c_std=0.0)
    xs = np.array([[1.0, -0.5, 0.0], [0.2, 0.2, 0.2], [1.0, 1.0, 0.0]])
    ds = np.array([[0.3, -0.04], [0.0, 1.0], [0.0, 0.04]])
    # one update per batch: g = sum_b d_b x_b^T, then round(lr |g| / dw) with lr 0.1 (down where g > 0):
    # row 0: g = (0.3, -0.15, 0) -> 3 down, 1.5 -> 2 up, 0; row 1: g = (0.2, 0.26, 0.2) -> 2, 3, 2 down
    # (per sample, row 1 would round 0.4, 0.2 and 0.4 pulses to 0 and get 2, 2, 2)
    pulses = tile.update_deterministic_batch(xs, ds, lr=0.1)
    report = tile.counter_report()
    np.testing.assert_array_equal(report.pulses_per_device_down, [[3, 0, 0], [2, 3, 2]])
    np.testing.assert_array_equal(report.pulses_per_device_up, [[0, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(tile.weights, [[-0.03, 0.02, 0.0], [-0.02, -0.03, -0.02]])
    assert pulses == 12 and report.counts["pulses_up"] == 2 and report.counts["pulses_down"] == 10
    assert report.counts["updates"] == 1 and report.counts["coincidences"] == 0
    assert report.counts["digital_macs"] == 3 * 2 * 3  # batch * rows * cols products summed by the controller


def test_deterministic_update_sums_the_batch_before_rounding():
    # issue 15: the deltas carry the 1/batch factor, so each sample alone asks for a quarter pulse (rounds to 0);
    # the batch's sum asks for 8 * 0.25 = 2 pulses per device
    batch, dw, lr = 8, 0.01, 0.1
    tile = Tile(constant_step(dw), 2, 2, seed=0, c2c_std=0.0)
    xs = np.tile([1.0, -1.0], (batch, 1))
    ds = np.tile([0.025, 0.0], (batch, 1))
    assert lr * 0.025 / dw == pytest.approx(0.25)
    pulses = tile.update_deterministic_batch(xs, ds, lr=lr)
    report = tile.counter_report()
    np.testing.assert_array_equal(report.pulses_per_device_down, [[2, 0], [0, 0]])
    np.testing.assert_array_equal(report.pulses_per_device_up, [[0, 2], [0, 0]])
    assert pulses == 4 and report.counts["updates"] == 1
    # the cap (bl_max) applies to the batch's count
    tile = Tile(constant_step(dw), 2, 2, seed=0, c2c_std=0.0, pulses=PulseConfig(bl_max=3))
    assert tile.update_deterministic_batch(xs, ds * 4.0, lr=lr) == 2 * 3
