"""How well a device fit predicts pulses it was not fitted on (docs/devices.md, "Out-of-sample validation").

The in-sample replay error of a card (its `nrmse`) measures how well the fit reproduces its own trace; with one up/down
cycle per trace and 2 x nodes parameters that overstates what the card predicts. Three checks, all in one unit, the
RMS conductance error over compared pulses divided by the trace's measured conductance range (the card's nrmse):

- **Blocked cross-validation** (`cross_validate`): the trace's pulses are cut into `folds` contiguous stretches in
  pulse order; for each, the card is refitted on the rest (the gap re-anchors the fit's replay) and the held-out
  stretch is replayed from the last measured state before it. Held-out errors of all folds are pooled.
- **A constant-step baseline** on the same folds: one step up and one step down, clipped at the fitted bounds, fitted
  on the same training pulses by the same replay objective. A card whose out-of-sample error does not beat it
  predicts no better than a trivial model.
- **Cross-run replay** (`validate_card` on another run of the same device and width): `edgelearn device validate`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .devices import (DEFAULT_NODES, DEFAULT_SMOOTHING, DeviceCard, PiecewiseStepModel, conductance_scale, fit_device,
                      replay_trace, to_weight)
from .errors import EdgelearnError, EdgelearnWarning
from .traces import Trace

_log = logging.getLogger(__name__)  # status lines (the CLI prints them on stderr unless --quiet)
DEFAULT_FOLDS = 10  # stretches of a tenth of the trace (5 folds make the first one pure extrapolation)
MIN_FOLD_PULSES = 3  # a held-out stretch compares at least this many pulses


@dataclass
class CrossValidation:
    """Blocked cross-validation of one fit setting on one trace, with the constant-step baseline on the same folds."""

    trace: str
    folds: int
    nodes: int
    smoothing: float
    parameters: int  # fitted step-table values: 2 x nodes
    n_pulses: int  # pulses compared in the in-sample replay
    in_sample_nrmse: float  # the full fit replaying its own trace (the card's nrmse)
    out_of_sample_nrmse: float  # held-out stretches, pooled over the folds
    baseline_in_sample_nrmse: float  # constant steps fitted on the whole trace
    baseline_out_of_sample_nrmse: float  # constant steps, same folds
    per_fold: list = field(default_factory=list)  # start, stop, compared pulses, nrmse, baseline nrmse

    @property
    def ratio(self) -> float:
        """out-of-sample / in-sample error."""
        return self.out_of_sample_nrmse / self.in_sample_nrmse if self.in_sample_nrmse > 0 else math.inf

    @property
    def beats_baseline(self) -> bool:
        return self.out_of_sample_nrmse < self.baseline_out_of_sample_nrmse

    def to_dict(self) -> dict:
        return dict(asdict(self), ratio=self.ratio, beats_baseline=self.beats_baseline)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _rows(trace: Trace, rows: np.ndarray) -> Trace:
    """The trace restricted to `rows` (pulse numbers keep their gaps, so a replay re-anchors there)."""
    return replace(trace, pulse=trace.pulse[rows], amplitude_v=trace.amplitude_v[rows],
                   polarity=trace.polarity[rows], conductance_s=trace.conductance_s[rows])


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """[start, stop) of `folds` contiguous stretches covering rows 0..n-1 in order."""
    if folds < 2:
        raise EdgelearnError(f"folds: expected at least 2, got {folds}")
    if n < folds * (MIN_FOLD_PULSES + 1):
        raise EdgelearnError(f"a trace of {n} pulses is too short for {folds}-fold validation (each held-out stretch "
                             f"needs at least {MIN_FOLD_PULSES + 1} pulses)")
    edges = np.linspace(0, n, folds + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def constant_step_model(trace: Trace, g_scale: tuple[float, float, float] | None = None) -> PiecewiseStepModel:
    """One step up and one step down (normalised w per pulse), between the measured bounds, fitted by least squares on
    the replay of `trace` (the `constant` family of edgelearn.families, as a card model). g_scale (g_ref, g_min,
    g_max) sets the w scale (default: the trace's own, as fit_device)."""
    from .families import fit_family

    fitted = fit_family(trace, "constant", g_scale)
    ones = np.ones(3)
    return PiecewiseStepModel.from_absolute(fitted.w_min, fitted.w_max, fitted.p_up[0] * ones,
                                            fitted.p_down[0] * ones)


def _stretch_errors_g(model: PiecewiseStepModel, g_scale, trace: Trace, start: int, stop: int) -> np.ndarray:
    """Conductance errors of replaying rows [start, stop) from the last measured state before them (row start - 1;
    the first row itself when start is 0), re-anchored after gaps; anchors are not compared."""
    part = _rows(trace, np.arange(max(0, start - 1), stop))
    w = to_weight(part.conductance_s, g_scale)
    return (replay_trace(model, w, part) - w)[~part.anchors] * (g_scale[2] - g_scale[1]) / 2.0


def _scale(card: DeviceCard) -> tuple[float, float, float]:
    return card.g_ref_s, card.g_min_s, card.g_max_s


def cross_validate(trace: Trace, folds: int = DEFAULT_FOLDS, nodes: int = DEFAULT_NODES,
                   smoothing: float = DEFAULT_SMOOTHING, card: DeviceCard | None = None,
                   method: str = "replay") -> CrossValidation:
    """Blocked cross-validation of fit_device(nodes, smoothing) (method "replay") or fit_poly5 (method "poly5") on
    `trace` (see the module docstring). `card`: the full fit, if already made (its in-sample error is reported)."""
    n = len(trace)
    bounds = fold_bounds(n, folds)
    g = trace.conductance_s
    g_range = float(g.max() - g.min())
    full = card if card is not None else _quiet_fit(trace, nodes, smoothing, method)
    full_scale = conductance_scale(g)
    base_full = constant_step_model(trace, full_scale)
    base_in = _stretch_errors_g(base_full, full_scale, trace, 0, n)
    errors, base_errors, per_fold = [], [], []
    for start, stop in bounds:
        train_rows = np.r_[np.arange(0, start), np.arange(stop, n)]
        train = _rows(trace, train_rows)
        fold_card = _quiet_fit(train, nodes, smoothing, method)
        scale = _scale(fold_card)
        err = _stretch_errors_g(fold_card.model, scale, trace, start, stop)
        base = _stretch_errors_g(constant_step_model(train, scale), scale, trace, start, stop)
        errors.append(err)
        base_errors.append(base)
        per_fold.append(dict(start=start, stop=stop, compared=int(err.size),
                             nrmse=float(np.sqrt(np.mean(err ** 2)) / g_range) if err.size else float("nan"),
                             baseline_nrmse=float(np.sqrt(np.mean(base ** 2)) / g_range) if base.size
                             else float("nan")))
    pooled = np.concatenate(errors)
    pooled_base = np.concatenate(base_errors)
    return CrossValidation(
        trace=trace.meta.source or trace.path, folds=folds, nodes=nodes, smoothing=smoothing, parameters=2 * nodes,
        n_pulses=full.figures.n_pulses, in_sample_nrmse=full.figures.nrmse,
        out_of_sample_nrmse=float(np.sqrt(np.mean(pooled ** 2)) / g_range),
        baseline_in_sample_nrmse=float(np.sqrt(np.mean(base_in ** 2)) / g_range),
        baseline_out_of_sample_nrmse=float(np.sqrt(np.mean(pooled_base ** 2)) / g_range), per_fold=per_fold)


def _fit(trace: Trace, nodes: int, smoothing: float, method: str = "replay") -> DeviceCard:
    """fit_device, or fit_poly5 for method "poly5" (which has no smoothing)."""
    if method == "poly5":
        from .poly5 import fit_poly5

        return fit_poly5(trace, nodes=nodes)
    return fit_device(trace, nodes=nodes, smoothing=smoothing)


def _quiet_fit(trace: Trace, nodes: int, smoothing: float, method: str = "replay") -> DeviceCard:
    """_fit without the subsampling warning (said once, by the full fit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgelearnWarning)
        return _fit(trace, nodes, smoothing, method)


@dataclass
class FamilyValidation:
    """In-sample and blocked out-of-sample error of one low-dimensional family (edgelearn.families) on a trace."""

    family: str
    parameters: int
    in_sample_nrmse: float
    out_of_sample_nrmse: float

    def to_dict(self) -> dict:
        return asdict(self)


def cross_validate_family(trace: Trace, family: str, folds: int = DEFAULT_FOLDS) -> FamilyValidation:
    """The blocked cross-validation of `cross_validate` for a family model: refit on the rest of the trace, replay
    each held-out stretch from the last measured state before it; pooled, / the trace's conductance range."""
    from .families import fit_family

    n = len(trace)
    g = trace.conductance_s
    g_range = float(g.max() - g.min())
    full = fit_family(trace, family)
    in_err = full.replay_g_errors(trace)
    errors = []
    for start, stop in fold_bounds(n, folds):
        train = _rows(trace, np.r_[np.arange(0, start), np.arange(stop, n)])
        model = fit_family(train, family)
        errors.append(model.replay_g_errors(_rows(trace, np.arange(max(0, start - 1), stop))))
    pooled = np.concatenate(errors)
    return FamilyValidation(family=family, parameters=full.parameters,
                            in_sample_nrmse=float(np.sqrt(np.mean(in_err ** 2)) / g_range),
                            out_of_sample_nrmse=float(np.sqrt(np.mean(pooled ** 2)) / g_range))


COMPLEXITY_NODES = (4, 8, 16, 32)
COMPLEXITY_SMOOTHING = (0.01, 0.1, 1.0)


@dataclass
class ComplexityChoice:
    """The fit setting with the lowest blocked out-of-sample error among the candidates with no more parameters
    than pulses (ties: fewer parameters, then more smoothing)."""

    nodes: int
    smoothing: float
    out_of_sample_nrmse: float
    candidates: list  # nodes, smoothing, parameters, in-sample and out-of-sample nrmse of every candidate tried

    def to_dict(self) -> dict:
        return asdict(self)


def choose_complexity(trace: Trace, folds: int = DEFAULT_FOLDS, nodes=COMPLEXITY_NODES,
                      smoothing=COMPLEXITY_SMOOTHING) -> ComplexityChoice:
    """Node count and smoothing chosen by blocked cross-validation (never more fitted values than pulses)."""
    n_pulses = int((~trace.anchors).sum())
    tried = []
    for k in sorted(nodes):
        if 2 * k > n_pulses:
            continue
        for lam in sorted(smoothing):
            cv = cross_validate(trace, folds, k, lam)
            tried.append(dict(nodes=k, smoothing=lam, parameters=2 * k, in_sample_nrmse=cv.in_sample_nrmse,
                              out_of_sample_nrmse=cv.out_of_sample_nrmse))
    if not tried:
        raise EdgelearnError(f"{trace.meta.source or trace.path}: {n_pulses} pulses cannot support even "
                             f"{2 * min(nodes)} fitted values")
    best = min(tried, key=lambda c: (round(c["out_of_sample_nrmse"], 4), c["parameters"], -c["smoothing"]))
    return ComplexityChoice(nodes=best["nodes"], smoothing=best["smoothing"],
                            out_of_sample_nrmse=best["out_of_sample_nrmse"], candidates=tried)


def fit_card(trace: Trace, nodes: int | str = DEFAULT_NODES, smoothing: float | str = DEFAULT_SMOOTHING,
             folds: int = DEFAULT_FOLDS, families=("constant", "soft-bounds", "power", "power-amplitude"),
             stability: bool = True, method: str = "replay", sp_resamples: int = 0,
             amplitude: bool = True) -> DeviceCard:
    """fit_device plus what says how far the card can be trusted, stored in its figures: blocked cross-validation
    against the constant-step baseline and the low-dimensional families (`out_of_sample`), every stable point with
    its basin (`stable_points`). nodes / smoothing "auto": chosen by choose_complexity (both or neither).
    folds 0: no cross-validation (nor a complexity choice). sp_resamples > 0: the symmetry point's median and 90 %
    interval over that many refits on 70 % of the trace (edgelearn.stability.symmetry_interval). method "poly5": the published pipeline
    (edgelearn.poly5.fit_poly5: np.gradient per branch, a degree-5 polynomial per direction; nodes only).
    amplitude: also fit the card's amplitude response (edgelearn.amplitude) where both directions' pulses span a
    range of amplitudes, cross-validated on the same folds beside the amplitude-blind card."""
    if method not in ("replay", "poly5"):
        raise EdgelearnError(f"--method: expected replay or poly5, got '{method}'")
    if method == "poly5" and (nodes == "auto" or smoothing == "auto"):
        raise EdgelearnError("--method poly5 has a fixed form (degree 5 on --nodes nodes): no auto complexity")
    auto = nodes == "auto" or smoothing == "auto"
    choice = None
    if auto:
        if nodes != "auto" or smoothing != "auto":
            raise EdgelearnError("--nodes auto and --smoothing auto go together")
        if folds < 2:
            raise EdgelearnError("--nodes auto needs cross-validation (--folds >= 2)")
        choice = choose_complexity(trace, folds)
        nodes, smoothing = choice.nodes, choice.smoothing
    card = _fit(trace, int(nodes), float(smoothing), method)
    figures = card.figures
    if folds:
        # a short trace gets fewer folds (each held-out stretch keeps MIN_FOLD_PULSES + 1 rows); the card says how many
        folds = max(2, min(folds, len(trace) // (MIN_FOLD_PULSES + 1)))
        _log.info(f"out-of-sample check: {folds} refits (blocked cross-validation) and {len(families)} families "
                  "(--folds 0 skips it)")
        try:
            cv = cross_validate(trace, folds, int(nodes), float(smoothing), card, method)
        except EdgelearnError as exc:
            figures.out_of_sample = dict(folds=folds, nrmse=None, skipped=str(exc))
        else:
            figures.out_of_sample = dict(
                folds=folds, protocol="blocked: contiguous stretches in pulse order, refit on the rest, replay the "
                "stretch from the last measured state before it; pooled RMS conductance error / measured range",
                nrmse=cv.out_of_sample_nrmse, ratio=cv.ratio, baseline_nrmse=cv.baseline_out_of_sample_nrmse,
                baseline_in_sample_nrmse=cv.baseline_in_sample_nrmse, beats_baseline=cv.beats_baseline,
                families={f: cross_validate_family(trace, f, folds).to_dict() for f in families},
                complexity=choice.to_dict() if choice else None)
    if amplitude and method == "replay":
        from .amplitude import cross_validate_amplitude, fit_amplitude, has_amplitude_range

        # never more fitted values (2 x nodes + 4) than pulses: fewer nodes than the card on a short trace
        amp_nodes = min(int(nodes), (figures.n_pulses - 4) // 2)
        if has_amplitude_range(trace) and amp_nodes >= 3:
            _log.info("amplitude response: tables and one sigmoid per direction, fitted jointly")
            response = fit_amplitude(trace, card, nodes=amp_nodes)
            if figures.out_of_sample and figures.out_of_sample.get("nrmse") is not None:
                response.out_of_sample = cross_validate_amplitude(
                    trace, figures.out_of_sample["folds"], amp_nodes, float(smoothing),
                    blind=cv if amp_nodes == int(nodes) else None, full=response).to_dict()
            card.amplitude = response
    if stability:
        from .stability import stable_points

        figures.stable_points = [p.to_dict() for p in stable_points(card.model)]
    if sp_resamples and method == "replay":
        from .stability import symmetry_interval

        _log.info(f"symmetry point's interval: {sp_resamples} refits on 70 % subsets")
        i = symmetry_interval(trace, int(nodes), float(smoothing), resamples=sp_resamples)
        # on the card's w scale (the full trace's, as the card) the card's own figure is i.full_analytic
        figures.symmetry_interval = dict(
            median=i.analytic.median, low=i.analytic.lo, high=i.analytic.hi, level=i.level, resamples=i.resamples,
            failed=i.failed, values=i.analytic.values, simulated_median=i.simulated.median,
            simulated_low=i.simulated.lo, simulated_high=i.simulated.hi, fraction=i.fraction, blocks=i.blocks,
            seed=i.seed)
    return card
