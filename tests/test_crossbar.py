"""The device pulse kernels against a slow pure-Python reference of aihwkit's PiecewiseStep semantics."""

import numpy as np
import pytest

from firmware_model import crossbar


def ref_interp(w, table, w_min, w_max):
    n = len(table) - 1
    x = (w - w_min) / (w_max - w_min) * n
    if x <= 0:
        return table[0]
    if x >= n:
        return table[n]
    i = int(np.floor(x))
    return table[i] + (x - i) * (table[i + 1] - table[i])


def ref_pulse(w, polarity, up, down, s_up, s_down, w_min, w_max, noise=0.0):
    if polarity > 0:
        w = w - s_down * ref_interp(w, down, w_min, w_max) * (1 + noise)
    else:
        w = w + s_up * ref_interp(w, up, w_min, w_max) * (1 + noise)
    return min(max(w, w_min), w_max)


def random_device(rng, nodes=None):
    nodes = nodes or int(rng.integers(2, 40))
    w_min, w_max = -rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5)
    return (rng.uniform(0.0, 2.0, nodes), rng.uniform(0.0, 2.0, nodes), rng.uniform(0.001, 0.2),
            rng.uniform(0.001, 0.2), w_min, w_max)


@pytest.mark.parametrize("seed", range(5))
def test_pulse_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    up, down, s_up, s_down, w_min, w_max = random_device(rng)
    for _ in range(300):
        w = rng.uniform(w_min - 0.2, w_max + 0.2)
        pol = int(rng.choice([-1, 1]))
        noise = float(rng.normal(0, 0.3))
        got = crossbar.apply_pulse(w, pol, up, down, s_up, s_down, w_min, w_max, noise)
        assert got == pytest.approx(ref_pulse(w, pol, up, down, s_up, s_down, w_min, w_max, noise), abs=1e-14)


def test_interpolation_hits_nodes_and_midpoints():
    table = np.array([1.0, 3.0, 2.0])
    assert crossbar.relative_step(-1.0, table, -1.0, 1.0) == 1.0
    assert crossbar.relative_step(0.0, table, -1.0, 1.0) == 3.0
    assert crossbar.relative_step(0.5, table, -1.0, 1.0) == 2.5
    assert crossbar.relative_step(7.0, table, -1.0, 1.0) == 2.0  # flat outside the bounds


def test_clipping_and_direction():
    up, down = np.ones(4), np.ones(4)
    # positive pulse = down: lowers w, clipped at w_min
    assert crossbar.apply_pulse(-0.95, 1, up, down, 0.1, 0.1, -1.0, 1.0, 0.0) == -1.0
    assert crossbar.apply_pulse(0.95, -1, up, down, 0.1, 0.1, -1.0, 1.0, 0.0) == 1.0
    assert crossbar.apply_pulse(0.0, 1, up, down, 0.1, 0.2, -1.0, 1.0, 0.0) == pytest.approx(-0.2)


@pytest.mark.parametrize("seed", range(3))
def test_replay_matches_reference_with_anchors(seed):
    rng = np.random.default_rng(100 + seed)
    up, down, s_up, s_down, w_min, w_max = random_device(rng)
    n = 200
    pol = rng.choice([-1, 1], n).astype(np.int64)
    restart = rng.random(n) < 0.05
    restart_w = rng.uniform(w_min, w_max, n)
    got = crossbar.replay(0.1, pol, restart, restart_w, up, down, s_up, s_down, w_min, w_max)
    w, expected = 0.1, []
    for k in range(n):
        if k == 0:
            w = 0.1
        elif restart[k]:
            w = restart_w[k]
        else:
            w = ref_pulse(w, pol[k], up, down, s_up, s_down, w_min, w_max)
        expected.append(w)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_alternating_search_settles_on_discrete_fixed_point():
    # soft-bounds device: up = a (w_max - w), down = b (w - w_min); the up/down pair map is affine, its fixed point
    # w* = ((1-b) a w_max + b w_min) / (a + b - a b), and the reported point is the pair mean (w* + w*_after_up) / 2
    w_min, w_max, a, b = -1.0, 1.0, 0.02, 0.05
    nodes = np.linspace(w_min, w_max, 5)
    up, down = (w_max - nodes), (nodes - w_min)
    settled, pairs = crossbar.alternate_until_settled(0.0, up, down, a, b, w_min, w_max, 100000, 1e-12)
    w_star = ((1 - b) * a * w_max + b * w_min) / (a + b - a * b)
    after_up = w_star + a * (w_max - w_star)
    assert settled == pytest.approx(0.5 * (w_star + after_up), abs=1e-9)
    assert 1 < pairs < 100000


def test_pulses_to_cross_counts_exactly():
    up, down = np.ones(3), np.ones(3)
    # constant step 0.25 from 1.0 down past -0.9: 1.0 -> 0.75 ... -> -1.0 is 8 pulses
    assert crossbar.pulses_to_cross(1.0, -0.9, 1, up, down, 0.25, 0.25, -1.0, 1.0, 1000) == 8
    assert crossbar.pulses_to_cross(-1.0, 0.0, -1, up, down, 0.3, 0.25, -1.0, 1.0, 1000) == 4
    assert crossbar.pulses_to_cross(-1.0, 0.0, -1, np.zeros(3), down, 0.3, 0.25, -1.0, 1.0, 50) == 50
