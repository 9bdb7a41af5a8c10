"""The front end's fixed-point normalisation (issue 13) and digital pre-training that fits the devices."""

import numpy as np
import pytest

from conftest import REPO
from edgelearn.continual import MAX_CLIPPED_FRACTION, RunConfig, _normalisation, _window_set, prepare
from edgelearn.errors import EdgelearnError
from edgelearn.network import Network
from edgelearn.stream import (FrontEndConfig, Normalisation, load_basic_motions, to_inputs, window_codes,
                              windows)
from firmware_model import frontend

HAPT = REPO.parent / "shared" / "datasets" / "hapt" / "hapt_raw.npz"


def check_bit_exact(features, offset, multiplier, shift):
    features, offset = np.asarray(features, np.int32), np.asarray(offset, np.int32)
    multiplier, shift = np.asarray(multiplier, np.int32), np.asarray(shift, np.int32)
    out = np.zeros(features.shape, np.int16)
    saturated = frontend.normalise(features, offset, multiplier, shift, out)
    ref, ref_saturated = frontend.normalise_reference(features, offset, multiplier, shift)
    np.testing.assert_array_equal(out, ref)
    assert saturated == ref_saturated
    return out, saturated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalise_bit_exact_random(seed):
    rng = np.random.default_rng(seed)
    n = 24
    features = rng.integers(-32768, 32769, (40, n))  # feature codes (mean |x| reaches +32768)
    offset = rng.integers(-32768, 32768, n)
    shift = rng.integers(0, frontend.NORM_MAX_SHIFT + 1, n)
    # multipliers of 15 significant bits, as the factory stores them, and some anywhere in int32
    multiplier = np.where(rng.random(n) < 0.7, rng.integers(2**14, 2**15 + 1, n), rng.integers(0, 2**31, n))
    out, saturated = check_bit_exact(features, offset, multiplier, shift)
    assert 0 < saturated < out.size  # both regimes exercised


def test_normalise_extremes_saturate_and_round():
    features = np.array([[-32768, 32768, 0, 32767, -32768, 32768, 5, -5, 3, -3]], np.int32)
    offset = np.array([32767, -32768, 0, -32768, 0, 0, 0, 0, 0, 0])
    multiplier = np.array([2**31 - 1, 2**31 - 1, 2**31 - 1, 1, 0, 2**15, 1, 1, 1, 1])
    shift = np.array([0, 0, 0, 0, 0, 47, 1, 1, 2, 2])
    out, saturated = check_bit_exact(features, offset, multiplier, shift)
    # -65535 * max -> -32768; 65536 * max -> 32767; 0 stays; 65535 * 1 saturates; multiplier 0 -> 0;
    # tiny scale -> 0; 5/2 = 2.5 -> 3 and -5/2 = -2.5 -> -2 (half up); 3/4 -> 1, -3/4 -> -1
    assert out.tolist() == [[-32768, 32767, 0, 32767, 0, 0, 3, -2, 1, -1]]
    assert saturated == 3
    # the identity (fixed scaling) saturates only mean |x| = 32768
    fixed = Normalisation.fixed(2)
    assert fixed.apply(np.array([[-32768, 32768]])).tolist() == [[-32768, 32767]]


def test_fit_matches_float_standardisation():
    rng = np.random.default_rng(3)
    codes = np.column_stack([rng.normal(1000, 300, 500), rng.normal(-20000, 4000, 500), rng.normal(5, 0.1, 500),
                             np.full(500, 7.0)]).round().astype(np.int32)
    norm = Normalisation.fit(codes, sigmas=3.0)
    assert norm.mode == "factory" and norm.windows == 500
    assert norm.multiplier[3] == 0 and norm.multiplier[2] == 0  # constant (std < MIN_NORM_STD codes): set to 0
    assert (norm.shift >= 0).all() and (norm.shift <= frontend.NORM_MAX_SHIFT).all()
    assert (norm.multiplier[:2] >= 2**14).all() and (norm.multiplier[:2] <= 2**15).all()
    z = to_inputs(codes, norm)
    want = (codes[:, :2] - codes[:, :2].mean(axis=0)) / (3.0 * codes[:, :2].std(axis=0))
    inside = np.abs(want) < 0.99
    assert np.abs(z[:, :2] - want)[inside].max() < 1e-3
    assert (z[:, 2:] == 0).all()
    # raw mode: a channel's samples share one offset and scale
    pooled = Normalisation.fit(codes[:, :2], 3.0, groups=np.array([0, 0]))
    assert pooled.offset[0] == pooled.offset[1] and pooled.multiplier[0] == pooled.multiplier[1]


def test_fixed_scaling_is_the_old_path():
    rec = load_basic_motions("train")[0][0]
    config = FrontEndConfig(full_scale={"acc": 40.0, "gyro": 40.0})
    codes, labels, ends = window_codes(rec, config)
    x, y, e = windows(rec, config)
    np.testing.assert_array_equal(x, codes / 32768.0)
    np.testing.assert_array_equal(y, labels)
    raw = FrontEndConfig(mode="raw", decimation=5, full_scale={"acc": 40.0, "gyro": 40.0})
    xr, _, _ = windows(rec, raw)
    assert xr.shape[1] == 6 * (26 // 5) and np.abs(xr).max() < 1.0


def test_normalisation_comes_from_pretraining_windows_only():
    base = dict(pretrain_epochs=1, replay_anchors=0)
    moved = prepare(RunConfig(**base, moved_sensor=True))
    still = prepare(RunConfig(**base, moved_sensor=False))
    summary = moved["pretrain"]["normalisation"]
    assert summary == still["pretrain"]["normalisation"]  # the stream does not enter it
    config = RunConfig()
    train_codes, _, _ = _window_set(load_basic_motions("train")[0], config.frontend)
    want = Normalisation.fit(train_codes, config.norm_sigmas)
    assert summary["mode"] == "factory" and summary["windows"] == len(train_codes) == 240
    assert summary["offset"] == want.offset.tolist() and summary["multiplier"] == want.multiplier.tolist()
    assert summary["shift"] == want.shift.tolist() and summary["sigmas"] == config.norm_sigmas
    # applied to the stream with the same integers
    stream_codes, _, _ = _window_set(moved["stream_recs"], config.frontend)
    np.testing.assert_array_equal(moved["x_stream"], to_inputs(stream_codes, want))
    # no pre-training windows, or normalise = "fixed": the fixed scaling, recorded as such
    empty = _normalisation(config, np.zeros((0, 0), np.int32), 30, 6)
    assert empty.summary()["mode"] == "fixed" and empty.summary()["windows"] == 0
    fixed = prepare(RunConfig(**base, normalise="fixed"))
    assert fixed["pretrain"]["normalisation"]["mode"] == "fixed"
    np.testing.assert_array_equal(fixed["x_stream"], stream_codes / 32768.0)


def test_output_scale_is_plain_sgd_on_the_effective_weights():
    rng = np.random.default_rng(0)
    a = Network((5, 4, 3), "relu", digital=True, seed=1)
    b = Network((5, 4, 3), "relu", digital=True, seed=1)
    scales = [2.5, 0.5]
    for la, lb, w, s in zip(a.layers, b.layers, a.initial_weights, scales):
        la.set_weights(w)
        lb.set_weights(w / s)
        lb.output_scale = s
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    np.testing.assert_allclose(a.forward(x)[0], b.forward(x)[0])
    _, _, ga = a.gradients(x, y)
    _, _, gb = b.gradients(x, y)
    for la, lb, (xa, da), (xb, db), s in zip(a.layers, b.layers, ga, gb, scales):
        np.testing.assert_allclose(xa, xb)
        # an update of lr on b's devices moves its effective weights s * w as plain SGD moves a's
        np.testing.assert_allclose(s * (-0.1 * db.T @ xb), -0.1 * da.T @ xa)
    state = b.state_dict()
    assert float(state["layer0.output_scale"]) == 2.5
    c = Network((5, 4, 3), "relu", digital=True, seed=1)
    c.load_state_dict(state)
    assert [layer.output_scale for layer in c.layers] == scales
    assert "layer0.output_scale" not in a.state_dict()  # unscaled networks keep their old state layout


def test_digital_pretraining_fits_the_card_or_refuses():
    config = RunConfig(pretrain="digital", pretrain_epochs=30, pretrain_lr=0.5)
    p = prepare(config)
    info = p["pretrain"]
    assert len(info["output_scales"]) == 2 and all(s > 0 for s in info["output_scales"])
    assert all(c <= MAX_CLIPPED_FRACTION for c in info["clipped_fraction"])
    assert info["train_accuracy"] >= info["digital_train_accuracy"] - 0.05  # programming keeps what was learned
    assert info["train_accuracy"] > 0.9
    # every weight fits: the largest lands at DIGITAL_FILL of the tighter side of the card's range
    card = p["card"]
    for layer, s, peak in zip(p["net"].layers, info["output_scales"], info["max_abs_weight"]):
        assert layer.output_scale == s
        assert np.abs(layer.weights).max() <= 0.9 * min(-card.model.w_min, card.model.w_max) + 1e-9
        assert peak / s == pytest.approx(0.9 * min(-card.model.w_min, card.model.w_max))
    # a scale that leaves the weights outside the devices' range is refused in one line
    with pytest.raises(EdgelearnError) as err:
        prepare(RunConfig(pretrain="digital", pretrain_epochs=30, pretrain_lr=0.5, digital_scale=0.05))
    message = str(err.value)
    assert "\n" not in message and "clip" in message and "limit is 1%" in message


def test_hapt_normalised_inputs_small():
    if not HAPT.exists():
        pytest.skip(f"HAPT not found at {HAPT}: ../shared is absent on this machine")
    config = RunConfig(source="hapt", path=str(HAPT), pretrain_users=[1, 2, 3], stream_users=[21], moved_sensor=False,
                       frontend={"full_scale": {"acc": 8.0, "gyro": 34.9}}, activation="relu", pretrain_epochs=4,
                       pretrain_lr=0.2, pretrain_lr_halving=2)
    p = prepare(config)
    norm = p["pretrain"]["normalisation"]
    assert norm["mode"] == "factory" and norm["windows"] > 1000
    x = p["x_stream"]
    # the new wearer's inputs use the DAC range (the fixed scaling left half of them below 0.019)
    assert np.median(np.abs(x)) > 0.1 and np.abs(x).max() <= 1.0
    labelled = p["y_stream"] >= 0
    assert p["net"].accuracy(x[labelled], p["y_stream"][labelled]) > 0.6
