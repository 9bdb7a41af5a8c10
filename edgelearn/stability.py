"""Where alternating up/down pulses leave a device, and how well a trace pins its symmetry point down.

Two questions a single symmetry-point number hides (issue 15):

- `stable_points(model)`: the noise-free alternating-pulse dynamics (one up pulse, one down pulse, repeated) can have
  several attractors, often one or both weight bounds among them. This maps all of them with their basins (which
  starting states end where), next to the analytic roots of up(w) - down(w) on the step tables.
- `symmetry_interval(trace)`: the symmetry point moves when the same trace is refitted on part of its pulses. This
  refits on random subsets of contiguous blocks of the trace and reports the spread, on the full trace's w scale.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from numba import njit
from pydantic import ValidationError

from firmware_model import crossbar

from .devices import (DEFAULT_NODES, DEFAULT_SMOOTHING, MAX_SETTLE_PAIRS, SETTLE_TOLERANCE, DeviceCard,
                      PiecewiseStepModel, conductance_scale, fit_device, symmetry_points, to_weight)
from .errors import EdgelearnError, EdgelearnWarning
from .traces import Trace

CLUSTER_TOLERANCE = 1e-3  # settled states closer than this fraction of the range are one attractor
BOUND_TOLERANCE = 0.01  # an attractor within this fraction of the range from a bound is "at the bound"
STALL_PROBE = 1e-4  # fraction of the range: how far from a stalled state the drift is probed (and the escape nudge)
MAX_ESCAPES = 50  # restarts after a run stalled at a repelling or flat point
# an attractor this close to a stable analytic root is "that root": a fraction of the range, plus the up and down
# step there (by about which the discrete cycle's pair mean sits off the root)
ROOT_MATCH = 0.05


# --------------------------------------------------------------------------------------------- the dynamics


@njit(cache=True)
def _settle(w_start, table_up, table_down, scale_up, scale_down, w_min, w_max, max_pairs, tolerance):
    """As crossbar.alternate_until_settled, also returning the states after the last up and down pulse."""
    inv_span = (table_up.shape[0] - 1) / (w_max - w_min)
    w = w_start
    previous = w_start
    mean = w_start
    after_up = w_start
    for pair in range(max_pairs):
        w = crossbar.step_state(w, crossbar.POLARITY_UP, table_up, table_down, scale_up, scale_down, w_min, w_max,
                                inv_span, 0.0)
        after_up = w
        w = crossbar.step_state(w, crossbar.POLARITY_DOWN, table_up, table_down, scale_up, scale_down, w_min, w_max,
                                inv_span, 0.0)
        mean = 0.5 * (after_up + w)
        if pair > 0 and abs(mean - previous) < tolerance:
            return mean, after_up, w, pair + 1
        previous = mean
    return mean, after_up, w, max_pairs


def _pair_drift(model: PiecewiseStepModel, w: float) -> float:
    """How far one up/down pair moves state w (noise-free, with clipping)."""
    args = model.kernel_args()
    after_up = crossbar.apply_pulse(w, crossbar.POLARITY_UP, *args, 0.0)
    return float(crossbar.apply_pulse(after_up, crossbar.POLARITY_DOWN, *args, 0.0) - w)


def _settle_robustly(model: PiecewiseStepModel, w_start: float, max_pairs: int, tolerance: float):
    """Settle from w_start, continuing past a stop at a repelling point.

    The settle criterion (pair mean moves less than `tolerance`) also holds next to a repelling root of the pair drift,
    where a grid start may sit. So a run counts as settled only where the pair drift does not increase through the
    state it stopped at (slope probed over +-STALL_PROBE x range), or where the cycle clips at a bound; otherwise it
    is nudged along its drift (along its start's drift if that is zero) and continued.

    Returns (mean, after_up, after_down, pairs, converged).
    """
    args = model.kernel_args()
    h = STALL_PROBE * (model.w_max - model.w_min)
    start_drift = _pair_drift(model, w_start)
    w, total = w_start, 0
    for _ in range(MAX_ESCAPES):
        mean, after_up, after_down, pairs = _settle(w, *args, max_pairs, tolerance)
        total += pairs
        if pairs >= max_pairs:
            return mean, after_up, after_down, total, False
        if after_up >= model.w_max or after_down <= model.w_min:
            return mean, after_up, after_down, total, True
        # after_down is where the next pair starts: next to the pair map's fixed point
        lo, hi = max(after_down - h, model.w_min), min(after_down + h, model.w_max)
        if _pair_drift(model, hi) - _pair_drift(model, lo) <= 0.0:  # attracting (or neutral)
            return mean, after_up, after_down, total, True
        drift = _pair_drift(model, after_down)
        direction = math.copysign(1.0, drift if drift != 0.0 else (start_drift if start_drift != 0.0 else 1.0))
        w = min(max(after_down + direction * 2.0 * h, model.w_min), model.w_max)
    return mean, after_up, after_down, total, False

# --------------------------------------------------------------------------------------------- stable points


@dataclass
class StablePoint:
    """One attractor of the alternating-pulse dynamics."""

    w: float  # settled pair mean (mean over the starts that reach it)
    basin: list[list[float]]  # [lo, hi] intervals of grid starts that reach it (contiguous runs)
    basin_fraction: float  # share of the grid starts that reach it
    at_bound: bool  # within BOUND_TOLERANCE of the range from a bound, or the settled cycle clips at one
    bound: str  # "w_min", "w_max" or ""
    spread: float  # max - min of the settled values of its starts
    pairs_max: int  # most pairs any of its starts needed
    # the nearest stable root of up - down or bound the analytic drift runs into, within ROOT_MATCH of the range plus
    # the steps there;
    # None: an attractor of the discrete pulse dynamics only (finite steps across a kink of the tables)
    analytic_root: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Root:
    """A zero of up(w) - down(w) on the step tables (exact: both are piecewise linear on the same nodes)."""

    w: float
    stable: bool  # the difference falls through zero (drift towards it from both sides)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StablePoints:
    points: list[StablePoint]
    roots: list[Root]  # interior sign changes, sorted by w
    bound_attractors: list[str]  # bounds the analytic drift runs into: "w_min" if down > up there, "w_max" if up > down
    w_min: float
    w_max: float
    grid: int
    unconverged: int  # starts that reached max_pairs (not in any basin)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def __getitem__(self, k):
        return self.points[k]

    def to_dict(self) -> dict:
        return dict(points=[p.to_dict() for p in self.points], roots=[r.to_dict() for r in self.roots],
                    bound_attractors=list(self.bound_attractors), w_min=self.w_min, w_max=self.w_max, grid=self.grid,
                    unconverged=self.unconverged)


def step_difference_roots(model: PiecewiseStepModel) -> tuple[list[Root], list[str]]:
    """Interior roots of up(w) - down(w), stable (falling) or unstable (rising), and the bounds the drift runs into.

    A run of nodes where the difference is exactly zero counts as one root at its middle.
    """
    grid = model.nodes
    diff = np.asarray(model.step_up(grid) - model.step_down(grid), float)
    sign = np.sign(diff)
    nonzero = np.nonzero(sign)[0]
    roots = []
    for i, j in zip(nonzero[:-1], nonzero[1:]):
        if sign[i] == sign[j]:
            continue
        if j == i + 1:
            a, b = diff[i], diff[j]
            w = grid[i] + a / (a - b) * (grid[j] - grid[i])
        else:  # zeros at the nodes between
            w = 0.5 * (grid[i + 1] + grid[j - 1])
        roots.append(Root(w=float(w), stable=bool(sign[i] > 0)))
    bounds = []
    if nonzero.size:
        if sign[nonzero[0]] < 0:
            bounds.append("w_min")
        if sign[nonzero[-1]] > 0:
            bounds.append("w_max")
    return roots, bounds


def stable_points(model: PiecewiseStepModel, grid: int = 201, max_pairs: int = MAX_SETTLE_PAIRS,
                  tolerance: float = SETTLE_TOLERANCE, cluster_tolerance: float = CLUSTER_TOLERANCE) -> StablePoints:
    """All attractors of noise-free alternating up/down pulses, with their basins, sorted by w.

    `grid` starts evenly spaced over [w_min, w_max] each alternate (up then down) until the pair mean moves less than
    `tolerance` per pair; settled values within `cluster_tolerance` x range of their neighbour are one attractor. A
    basin interval runs from the first to the last grid start of a contiguous run, so its true edge lies within one
    grid spacing of the interval's end (at an unstable root of the step difference, see `roots`).
    """
    if grid < 2:
        raise EdgelearnError(f"grid: expected at least 2 starting states, got {grid}")
    span = model.w_max - model.w_min
    starts = np.linspace(model.w_min, model.w_max, grid)
    settled = np.empty(grid)
    after_up = np.empty(grid)
    after_down = np.empty(grid)
    pairs = np.empty(grid, np.int64)
    converged = np.empty(grid, bool)
    for k, w0 in enumerate(starts):
        settled[k], after_up[k], after_down[k], pairs[k], converged[k] = _settle_robustly(model, float(w0), max_pairs,
                                                                                         tolerance)
    # single-linkage clusters of the converged settled values
    label = np.full(grid, -1)
    ok = np.nonzero(converged)[0]
    order = ok[np.argsort(settled[ok], kind="stable")]
    current = -1
    for n, k in enumerate(order):
        if n == 0 or settled[k] - settled[order[n - 1]] > cluster_tolerance * span:
            current += 1
        label[k] = current
    bound_tol = BOUND_TOLERANCE * span
    points = []
    for c in range(current + 1):
        members = np.nonzero(label == c)[0]
        w = float(settled[members].mean())
        basin, run_start = [], None
        for k in range(grid + 1):
            inside = k < grid and label[k] == c
            if inside and run_start is None:
                run_start = k
            elif not inside and run_start is not None:
                basin.append([float(starts[run_start]), float(starts[k - 1])])
                run_start = None
        clips_high = bool(np.any(after_up[members] >= model.w_max))
        clips_low = bool(np.any(after_down[members] <= model.w_min))
        bound = ""
        if w - model.w_min <= bound_tol or clips_low:
            bound = "w_min"
        elif model.w_max - w <= bound_tol or clips_high:
            bound = "w_max"
        points.append(StablePoint(w=w, basin=basin, basin_fraction=len(members) / grid, at_bound=bool(bound),
                                  bound=bound, spread=float(np.ptp(settled[members])),
                                  pairs_max=int(pairs[members].max())))
    points.sort(key=lambda p: p.w)
    roots, bounds = step_difference_roots(model)
    candidates = [r.w for r in roots if r.stable] + [getattr(model, b) for b in bounds]
    for p in points:
        reach = ROOT_MATCH * span + float(model.step_up(p.w)) + float(model.step_down(p.w))
        near = [c for c in candidates if abs(c - p.w) <= reach]
        p.analytic_root = float(min(near, key=lambda c: abs(c - p.w))) if near else None
    return StablePoints(points=points, roots=roots, bound_attractors=bounds, w_min=model.w_min, w_max=model.w_max,
                        grid=grid, unconverged=int((~converged).sum()))


# --------------------------------------------------------------------------------------- symmetry-point spread


@dataclass
class Spread:
    """Median and percentile interval of one kind of symmetry point over the refits (full trace's w scale)."""

    median: float
    lo: float
    hi: float
    values: list[float]

    @classmethod
    def of(cls, values, level: float) -> "Spread":
        v = np.asarray(values, float)
        if v.size == 0:
            return cls(median=math.nan, lo=math.nan, hi=math.nan, values=[])
        tail = 0.5 * (1.0 - level)
        return cls(median=float(np.median(v)), lo=float(np.quantile(v, tail)), hi=float(np.quantile(v, 1.0 - tail)),
                   values=v.tolist())


@dataclass
class SymmetryInterval:
    """Bootstrap of the symmetry point by refits on random subsets of contiguous blocks of one trace."""

    trace: str
    analytic: Spread  # from the step tables (devices.symmetry_points, first value)
    simulated: Spread  # alternating pulses from w = 0 (second value)
    full_analytic: float  # the fit on every row
    full_simulated: float
    w_min: float  # the full trace's w range (every value is on this scale)
    w_max: float
    resamples: int
    fraction: float
    blocks: int
    kept_blocks: int
    seed: int
    level: float
    failed: int  # refits that raised (e.g. a subset without two pulses of one branch)
    failures: list[str] = field(default_factory=list)
    subsets: list[list[int]] = field(default_factory=list)  # block indices kept by each resample, in order

    # the analytic figure is what cards report as `symmetry_point`
    @property
    def median(self) -> float:
        return self.analytic.median

    @property
    def interval(self) -> tuple[float, float]:
        return self.analytic.lo, self.analytic.hi

    @property
    def values(self) -> list[float]:
        return self.analytic.values

    def to_dict(self) -> dict:
        return asdict(self)


def _subset(trace: Trace, rows: np.ndarray) -> Trace:
    return replace(trace, pulse=trace.pulse[rows], amplitude_v=trace.amplitude_v[rows],
                   polarity=trace.polarity[rows], conductance_s=trace.conductance_s[rows])


def _refit_blocks(trace: Trace, pieces: list, chosen: np.ndarray, nodes: int, smoothing: float) -> DeviceCard:
    """fit_device on the rows of the chosen blocks (gaps re-anchor; the subsampling warning is not repeated)."""
    rows = np.concatenate([pieces[b] for b in chosen])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgelearnWarning)
        return fit_device(_subset(trace, rows), nodes=nodes, smoothing=smoothing)


def resample_blocks(blocks: int, keep: int, seed: int, k: int) -> np.ndarray:
    """Sorted indices of the `keep` of `blocks` blocks that resample k of seed `seed` refits on."""
    return np.sort(np.random.default_rng([seed, k]).choice(blocks, size=keep, replace=False))


def symmetry_interval(trace: Trace, nodes: int = DEFAULT_NODES, smoothing: float = DEFAULT_SMOOTHING,
                      resamples: int = 20, fraction: float = 0.7, blocks: int = 10, seed: int = 0,
                      level: float = 0.90) -> SymmetryInterval:
    """Refit the trace on `resamples` random subsets of round(fraction x blocks) of its `blocks` contiguous blocks of
    rows and report the spread of the symmetry point.

    Resample k draws its blocks from np.random.default_rng([seed, k]), so results do not depend on global random
    state or on the number of resamples before it. A subset's rows keep their pulse numbers, so the fit re-anchors at
    every gap. Each refit normalises w on its own rows; its symmetry points are mapped to conductance with the refit's
    g_ref/g_min/g_max and back to w with the full trace's, so all values share the full trace's scale.
    """
    n = len(trace)
    if not 2 <= blocks <= n:
        raise EdgelearnError(f"blocks: expected 2 to {n} (the trace's rows), got {blocks}")
    if not 0.0 < fraction <= 1.0:
        raise EdgelearnError(f"fraction: expected a number in (0, 1], got {fraction}")
    if not 0.0 < level < 1.0:
        raise EdgelearnError(f"level: expected a number in (0, 1), got {level}")
    if resamples < 1:
        raise EdgelearnError(f"resamples: expected at least 1, got {resamples}")
    keep = min(blocks, max(1, round(fraction * blocks)))
    full_scale = conductance_scale(trace.conductance_s)

    def to_full_w(card, w):
        return float(to_weight(card.conductance_from_weight(w), full_scale))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgelearnWarning)
        full = fit_device(trace, nodes=nodes, smoothing=smoothing)
    full_analytic, full_simulated, _ = symmetry_points(full.model)
    pieces = np.array_split(np.arange(n), blocks)
    analytic, simulated, failures, subsets = [], [], [], []
    for k in range(resamples):
        chosen = resample_blocks(blocks, keep, seed, k)
        subsets.append(chosen.tolist())
        try:
            card = _refit_blocks(trace, pieces, chosen, nodes, smoothing)
        except (EdgelearnError, ValidationError) as exc:
            failures.append(f"resample {k} (blocks {chosen.tolist()}): {str(exc).splitlines()[0]}")
            continue
        sym, sym_sim, _ = symmetry_points(card.model)
        analytic.append(to_full_w(card, sym))
        simulated.append(to_full_w(card, sym_sim))
    return SymmetryInterval(
        trace=trace.meta.source or str(trace.path), analytic=Spread.of(analytic, level),
        simulated=Spread.of(simulated, level), full_analytic=float(full_analytic), full_simulated=float(full_simulated),
        w_min=float(full.model.w_min), w_max=float(full.model.w_max), resamples=resamples, fraction=fraction,
        blocks=blocks, kept_blocks=keep, seed=seed, level=level, failed=len(failures), failures=failures,
        subsets=subsets)


def bootstrap_cards(trace: Trace, n: int = 10, nodes: int = DEFAULT_NODES, smoothing: float = DEFAULT_SMOOTHING,
                    fraction: float = 0.7, blocks: int = 10, seed: int = 0) -> list[DeviceCard]:
    """An ensemble of `n` cards of one trace, each refitted on the random subset of blocks that resample k of
    `symmetry_interval` (same seed) uses: train or sweep over them so that an accuracy comes with the spread the fit's
    uncertainty (its symmetry point above all) leaves. Card ids get '-bK'; a subset the fit refuses is skipped with an
    EdgelearnWarning and the next resample is drawn."""
    if n < 1:
        raise EdgelearnError(f"n: expected at least 1 card, got {n}")
    rows_n = len(trace)
    if not 2 <= blocks <= rows_n:
        raise EdgelearnError(f"blocks: expected 2 to {rows_n} (the trace's rows), got {blocks}")
    keep = min(blocks, max(1, round(fraction * blocks)))
    pieces = np.array_split(np.arange(rows_n), blocks)
    cards, k = [], 0
    while len(cards) < n:
        if k >= 10 * n:
            raise EdgelearnError(f"only {len(cards)} of {n} subsets could be fitted after {k} tries")
        chosen = resample_blocks(blocks, keep, seed, k)
        try:
            card = _refit_blocks(trace, pieces, chosen, nodes, smoothing)
        except (EdgelearnError, ValidationError) as exc:
            warnings.warn(f"bootstrap subset {k} skipped: {str(exc).splitlines()[0]}", EdgelearnWarning, stacklevel=2)
            k += 1
            continue
        card.card_id = f"{card.card_id}-b{k}"
        card.provenance.fit = dict(card.provenance.fit, bootstrap=dict(resample=k, blocks=blocks,
                                                                       kept=chosen.tolist(), seed=seed))
        cards.append(card)
        k += 1
    return cards
