"""Attractors of alternating up/down pulses with their basins, and the bootstrap spread of the symmetry point."""

import numpy as np
import pytest

from edgelearn.devices import PiecewiseStepModel, fit_device, symmetry_points
from edgelearn.errors import EdgelearnError
from edgelearn.stability import resample_blocks, stable_points, step_difference_roots, symmetry_interval
from edgelearn.traces import load_trace

GRID = 201  # starts over [-1, 1]: spacing 0.01
SPACING = 2.0 / (GRID - 1)


def test_soft_bounds_single_attractor_at_zero():
    # up = a(1 - w)/2, down = a(1 + w)/2. One pair maps w to w(1 - a/2)^2 + (a/2)(1 - a/2) - a/2, whose fixed point
    # w* = a / (a - 4) has pair mean w* + a(1 - w*)/4 = 0 exactly. The map contracts by (1 - a/2)^2 = 0.980 per pair,
    # so the run stops (pair mean moves < 1e-7) within 1e-7 * 0.98 / 0.02 = 5e-6 of it: assert to 1e-5.
    a = 0.02
    nodes = np.linspace(-1.0, 1.0, 5)
    model = PiecewiseStepModel.from_absolute(-1.0, 1.0, a * (1 - nodes) / 2, a * (1 + nodes) / 2)
    result = stable_points(model, grid=GRID)
    assert len(result) == 1
    (point,) = result
    assert point.w == pytest.approx(0.0, abs=1e-5)
    assert point.basin == [[-1.0, 1.0]]
    assert point.basin_fraction == 1.0
    assert not point.at_bound and point.bound == ""
    assert result.unconverged == 0
    assert [(r.w, r.stable) for r in result.roots] == [(pytest.approx(0.0, abs=1e-12), True)]
    assert result.bound_attractors == []
    assert point.analytic_root == pytest.approx(0.0, abs=1e-12)
    d = result.to_dict()
    assert d["points"][0]["basin"] == [[-1.0, 1.0]] and d["roots"][0]["stable"] is True


def three_attractor_model(c=0.01, s=0.002):
    # down constant c, up = c + s * g with g piecewise linear on 9 nodes (spacing 0.25): g falls through zero at
    # -0.625 and 0.375 (stable), rises at -0.125 and 0.875 (unstable) and is positive at w_max (drift into the bound).
    # With a constant down step one pair moves w by exactly up(w) - down = s * g(w), so the discrete fixed points are
    # the analytic roots themselves and an attractor's pair mean is root + up(root) / 2 = root + c / 2.
    g = np.array([3.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    return PiecewiseStepModel.from_absolute(-1.0, 1.0, c + s * g, np.full(9, c))


def test_three_attractors_basins_split_at_unstable_roots():
    c = 0.01
    model = three_attractor_model(c=c)
    roots, bounds = step_difference_roots(model)
    assert [(round(r.w, 12), r.stable) for r in roots] == [(-0.625, True), (-0.125, False), (0.375, True),
                                                          (0.875, False)]
    assert bounds == ["w_max"]
    result = stable_points(model, grid=GRID)
    assert result.unconverged == 0
    assert len(result) == 3
    low, mid, top = result
    # |slope of s*g| = 0.002 * 2 / 0.25 = 0.016 per pair: stops within 1e-7 / 0.016 = 6e-6 of the fixed point
    assert low.w == pytest.approx(-0.625 + c / 2, abs=2e-5)
    assert mid.w == pytest.approx(0.375 + c / 2, abs=2e-5)
    # at the bound the up pulse clips to w_max = 1 and the down pulse takes it to 1 - c: pair mean 1 - c/2
    assert top.w == pytest.approx(1.0 - c / 2, abs=1e-12)
    # one contiguous basin each, split within one grid spacing of the unstable roots
    assert len(low.basin) == len(mid.basin) == len(top.basin) == 1
    assert low.basin[0][0] == -1.0 and top.basin[0][1] == 1.0
    assert low.basin[0][1] < -0.125 < mid.basin[0][0] and mid.basin[0][0] - low.basin[0][1] == pytest.approx(SPACING)
    assert mid.basin[0][1] < 0.875 < top.basin[0][0] and top.basin[0][0] - mid.basin[0][1] == pytest.approx(SPACING)
    assert low.basin_fraction + mid.basin_fraction + top.basin_fraction == pytest.approx(1.0)
    assert mid.basin_fraction == pytest.approx(100 / GRID)  # starts -0.12 ... 0.87
    assert [p.at_bound for p in result] == [False, False, True]
    assert top.bound == "w_max"
    assert low.analytic_root == pytest.approx(-0.625) and mid.analytic_root == pytest.approx(0.375)
    assert top.analytic_root == 1.0


def test_down_step_vanishing_at_w_max_gives_bound_attractors():
    # up = a, down = a (1 - w): down vanishes at w_max, so up > down above w = 0 (drift into w_max) and down > up
    # below (drift into w_min). The pair drift is a - a (1 - (w + a)) = a (w + a): the discrete dynamics split at
    # w = -a (-0.015, between the grid starts -0.02 and -0.01), a step below the analytic (unstable) root at 0.
    a = 0.015
    nodes = np.linspace(-1.0, 1.0, 3)
    model = PiecewiseStepModel.from_absolute(-1.0, 1.0, np.full(3, a), a * (1 - nodes))
    roots, bounds = step_difference_roots(model)
    assert [(r.w, r.stable) for r in roots] == [(0.0, False)] and bounds == ["w_min", "w_max"]
    bottom, top = stable_points(model, grid=GRID)
    assert bottom.at_bound and bottom.bound == "w_min"
    assert top.at_bound and top.bound == "w_max"
    # at w_min: up to -1 + a, the down pulse clips back to -1 (pair mean -1 + a/2); at w_max the down step is 0
    assert bottom.w == pytest.approx(-1.0 + a / 2, abs=1e-12)
    assert top.w == pytest.approx(1.0, abs=1e-12)
    assert bottom.basin == [[-1.0, pytest.approx(-0.02)]]
    assert top.basin == [[pytest.approx(-0.01), 1.0]]


def test_attractor_holding_zero_is_where_devices_simulated_search_ends():
    # the attractor whose basin holds w = 0 is where devices.symmetry_points' simulated search ends
    model = three_attractor_model()
    _, simulated, _ = symmetry_points(model)
    holding_zero = [p for p in stable_points(model, grid=GRID) if any(lo <= 0.0 <= hi for lo, hi in p.basin)]
    assert len(holding_zero) == 1 and holding_zero[0].w == pytest.approx(simulated, abs=2e-5)


def test_bad_arguments():
    model = three_attractor_model()
    with pytest.raises(EdgelearnError):
        stable_points(model, grid=1)


# ------------------------------------------------------------------------------------- measured traces

TRACE = "ID170ZR5000_20241024T134645.dat"  # 127 pulses
NODES = 16  # half the default: each refit costs about half (0.1 s here); the bootstrap's mechanics are the same


def test_symmetry_interval_on_measured_trace(lbe247):
    trace = load_trace(lbe247 / TRACE)
    w = 2.0 * (trace.conductance_s - trace.conductance_s.mean()) / np.ptp(trace.conductance_s)
    first = symmetry_interval(trace, nodes=NODES, resamples=5, seed=3)
    assert first.failed + len(first.values) == 5
    assert len(first.values) >= 3
    for spread in (first.analytic, first.simulated):
        assert spread.lo <= spread.median <= spread.hi
        assert all(w.min() - 1e-9 <= v <= w.max() + 1e-9 for v in spread.values)
    assert first.w_min == pytest.approx(w.min()) and first.w_max == pytest.approx(w.max())
    assert all(len(s) == 7 for s in first.subsets)  # round(0.7 * 10) blocks each
    second = symmetry_interval(trace, nodes=NODES, resamples=5, seed=3)
    assert second.to_dict() == first.to_dict()
    assert first.subsets == [resample_blocks(10, 7, 3, k).tolist() for k in range(5)]


def test_resample_blocks_depend_on_seed_and_index_only():
    draws = {(seed, k): resample_blocks(10, 7, seed, k).tolist() for seed in (0, 1) for k in range(5)}
    assert all(len(set(d)) == 7 and d == sorted(d) for d in draws.values())
    assert [draws[0, k] for k in range(5)] != [draws[1, k] for k in range(5)]
    np.random.seed(123)  # global random state plays no part
    assert resample_blocks(10, 7, 0, 2).tolist() == draws[0, 2]


def test_symmetry_interval_all_blocks_reproduces_the_full_fit(lbe247):
    # fraction 1 keeps every block: each refit is the full fit, so the scale conversion must give its SP back
    trace = load_trace(lbe247 / TRACE)
    result = symmetry_interval(trace, nodes=NODES, resamples=1, fraction=1.0)
    card = fit_device(trace, nodes=NODES)
    assert result.failed == 0
    assert result.values == [pytest.approx(card.figures.symmetry_point, abs=1e-12)]
    assert result.full_analytic == pytest.approx(card.figures.symmetry_point, abs=1e-12)
    assert result.simulated.values == [pytest.approx(card.figures.symmetry_point_simulated, abs=1e-12)]
