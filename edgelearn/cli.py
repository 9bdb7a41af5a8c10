"""The `edgelearn` command: a thin layer over the Python API (every command calls one documented function)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import EdgelearnError, EdgelearnWarning


def _trace_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cutoffs", metavar="CSV", help="cut-off file giving each run's usable voltage range "
                       "(WGFMU .dat only; default: the file's analysis block)")
    group.add_argument("--no-cutoffs", action="store_true", help="keep every pulse of a WGFMU .dat file")


def _load_trace(args):
    from .traces import load_trace

    return load_trace(args.trace, cutoffs=args.cutoffs, use_cutoffs=not args.no_cutoffs)


def _print_table(rows: dict) -> None:
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.6g}" if value == value else "-"  # NaN (nothing to measure): a dash, as in JSON null
        print(f"{key:<{width}}  {value}")


def _auto_or(value: str, kind, option: str):
    """'auto' or a number of `kind` for --nodes / --smoothing, else a one-line error."""
    if value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        raise EdgelearnError(f"{option}: expected a {'whole number' if kind is int else 'number'} or 'auto', got "
                             f"'{value}'") from None


def _card_warnings(card, implausible_only: bool = False) -> None:
    """The card's plausibility warnings, one line each on stderr."""
    from .devices import card_warnings

    for line in card_warnings(card, implausible_only):
        print(f"edgelearn: warning: {card.card_id}: {line}", file=sys.stderr, flush=True)


def cmd_device_fit(args) -> int:
    from .validation import fit_card

    trace = _load_trace(args)
    nodes = _auto_or(str(args.nodes), int, "--nodes")
    smoothing = _auto_or(str(args.smoothing), float, "--smoothing")
    if args.folds < 0 or args.folds == 1:
        raise EdgelearnError(f"--folds: expected 0 (no cross-validation) or at least 2, got {args.folds}")
    if args.sp_resamples < 0:
        raise EdgelearnError(f"--sp-resamples: expected 0 or more, got {args.sp_resamples}")
    card = fit_card(trace, nodes=nodes, smoothing=smoothing, folds=args.folds, method=args.method,
                    sp_resamples=args.sp_resamples, amplitude=not args.no_amplitude)
    card.save(args.output)
    _card_warnings(card)
    if args.json:
        print(json.dumps(card.summary(), indent=2))
    else:
        _print_table(_summary_rows(card))
        print(f"wrote {args.output}")
    return 0


def _summary_rows(card) -> dict:
    """A card's summary with its out-of-sample figures and stable points as readable rows."""
    rows = card.summary()
    rows.pop("nrmse_out_of_sample", None)  # shown below with its protocol
    rows.pop("read_noise_w", None)
    f = card.figures
    oos = f.out_of_sample or {}
    if oos.get("nrmse") is not None:
        rows["nrmse"] = f"{f.nrmse:.4f} (in-sample)"
        rows["nrmse out of sample"] = (f"{oos['nrmse']:.4f} ({oos['folds']}-fold blocked cross-validation; "
                                       f"constant-step baseline {oos['baseline_nrmse']:.4f})")
        families = oos.get("families") or {}
        if families:
            rows["families, out of sample"] = ", ".join(f"{k} ({v['parameters']}) {v['out_of_sample_nrmse']:.4f}"
                                                         for k, v in families.items())
    elif oos.get("skipped"):
        rows["nrmse out of sample"] = f"- ({oos['skipped']})"
    if f.read_noise_w is not None:
        rows["read noise (w)"] = f.read_noise_w
    if f.stable_points:
        rows["stable points (basin share)"] = ", ".join(f"{p['w']:+.3f} ({p['basin_fraction']:.0%})"
                                                       for p in f.stable_points)
    if f.symmetry_interval:
        i = f.symmetry_interval
        rows["symmetry point, refits"] = (f"median {i['median']:+.3f}, 90 % interval [{i['low']:+.3f}, "
                                          f"{i['high']:+.3f}] over {i['resamples']} refits")
    a = card.amplitude
    if a is not None:
        o = a.out_of_sample or {}
        rows["amplitude response"] = (
            f"up {a.range_up_v[0]:g}-{a.range_up_v[1]:g} V (v0 {a.v0_up_v:.2f}, vs {a.vs_up_v:.3f}), down "
            f"{a.range_down_v[0]:g}-{a.range_down_v[1]:g} V (v0 {a.v0_down_v:.2f}, vs {a.vs_down_v:.3f}); "
            f"{'identified (ramps both ways)' if a.identified else 'not identified (one-way ramps)'}")
        rows["amplitude-aware nrmse"] = (f"{a.nrmse:.4f} in-sample" + (
            f", {o['out_of_sample_nrmse']:.4f} out of sample (amplitude-blind {o['blind_out_of_sample_nrmse']:.4f})"
            if o.get("out_of_sample_nrmse") is not None else ""))
        rows["step at w = 0 vs |V| (x the reference)"] = ", ".join(
            f"{v:g} V {a.factor(v, 'up'):.2f}/{a.factor(v, 'down'):.2f}"
            for v in np.linspace(max(a.range_up_v[0], a.range_down_v[0]), min(a.range_up_v[1], a.range_down_v[1]),
                                 5).round(2))
    return rows


def cmd_device_validate(args) -> int:
    from .devices import load_card, validate_card

    card = load_card(args.card)
    trace = _load_trace(args)
    report = validate_card(card, trace)
    own = bool(card.provenance.source_sha256) and card.provenance.source_sha256 == trace.meta.source_sha256
    cv = None
    if args.folds:
        from .validation import cross_validate

        if args.folds < 2:
            raise EdgelearnError(f"--folds: expected 0 (none) or at least 2, got {args.folds}")
        fit = card.provenance.fit
        cv = cross_validate(trace, args.folds, int(fit.get("nodes", 32)), float(fit.get("smoothing", 0.01)))
    if args.plot:
        from .report import plot_replay

        plot_replay(card, trace, args.plot)
    if args.json:
        out = dict(json.loads(report.to_json()), in_sample=own)
        if cv is not None:
            out["cross_validation"] = cv.to_dict()
        print(json.dumps(out, indent=2))
    else:
        rows = {k: v for k, v in vars(report).items()}
        rows["nrmse"] = f"{report.nrmse:.4f} " + ("(in-sample: the card's own trace)" if own else
                                                 "(out of sample: a trace the card was not fitted on)")
        if cv is not None:
            rows["refit on this trace, out of sample"] = (
                f"{cv.out_of_sample_nrmse:.4f} ({cv.folds}-fold blocked cross-validation with the card's nodes and "
                f"smoothing; in-sample {cv.in_sample_nrmse:.4f}; constant steps {cv.baseline_out_of_sample_nrmse:.4f})")
        _print_table(rows)
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def cmd_device_ensemble(args) -> int:
    from .stability import bootstrap_cards

    trace = _load_trace(args)
    _output_dir(args.output, "-o")
    if not 1 <= args.n <= 1000:
        raise EdgelearnError(f"-n: expected 1 to 1000 cards, got {args.n}")
    nodes = _auto_or(str(args.nodes), int, "--nodes")
    if nodes == "auto":
        raise EdgelearnError("--nodes: the ensemble refits one setting; give a number (device fit --nodes auto "
                             "chooses one)")
    cards = bootstrap_cards(trace, args.n, nodes=nodes, smoothing=float(args.smoothing), seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from .devices import symmetry_points

    for card in cards:
        card.save(out / f"{card.card_id}.json")
    sps = sorted(symmetry_points(c.model)[0] for c in cards)
    print(f"wrote {len(cards)} cards to {out} (symmetry points {sps[0]:+.3f} .. {sps[-1]:+.3f}, each on its own "
          f"subset's w scale); sweep over them with axes.card = [\"{out}/*.json\"]")
    return 0


def cmd_device_show(args) -> int:
    from .devices import card_warnings, load_card

    card = load_card(args.card)
    if args.json:
        print(json.dumps(dict(card.summary(), warnings=card_warnings(card)), indent=2))
    else:
        _card_warnings(card)
        _print_table(_summary_rows(card))
    return 0


def cmd_device_list(args) -> int:
    from .devices import bundled_cards, load_card

    rows = sorted((load_card(path).summary() for path in bundled_cards().values()),
                  key=lambda r: (r["device_id"], r["pulse_width_s"], r["card_id"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'card':44s} {'epsilon':>8s} {'sym.pt':>7s} {'states':>7s} {'on/off':>7s} {'nrmse':>7s} {'oos':>7s}")
    for r in rows:
        oos = r.get("nrmse_out_of_sample")
        print(f"{r['card_id']:44s} {r['granularity']:8.4f} {r['symmetry_point']:+7.3f} {r['n_states']:7.1f} "
              f"{r['on_off_ratio']:7.2f} {r['nrmse']:7.4f} {'-' if oos is None else f'{oos:.4f}':>7s}")
    print("nrmse: in-sample (the card's own trace); oos: blocked cross-validation (docs/devices.md)")
    return 0


def cmd_trace_import(args) -> int:
    trace = _load_trace(args)
    trace.to_csv(args.output)
    print(f"wrote {args.output}: {len(trace)} pulses of {trace.meta.device_id} at {trace.meta.pulse_width_s:g} s "
          f"(selection {trace.meta.selection}, {trace.dropped} dropped)")
    return 0


def _output_dir(path, option: str = "--out") -> None:
    """Refuse at once (before any work) an output directory that is a file, or lies below one."""
    if path is None:
        return
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise EdgelearnError(f"{option} {path}: " + ("exists and is not a directory" if part == Path(path)
                                                             else f"{part} is a file, not a directory"))
            return


# TrainConfig fields set by options of another name (the rest: --field-name)
_TRAIN_OPTIONS = {"max_tile_rows": "--max-tile", "max_tile_cols": "--max-tile", "pulses": "--amplitude"}


def _pulse_options(args) -> dict:
    """PulseConfig fields from --amplitude (both directions) / --amplitude-up / --amplitude-down."""
    if args.amplitude is not None and (args.amplitude_up is not None or args.amplitude_down is not None):
        raise EdgelearnError("--amplitude sets both directions: give it, or --amplitude-up / --amplitude-down")
    up = args.amplitude if args.amplitude is not None else args.amplitude_up
    down = args.amplitude if args.amplitude is not None else args.amplitude_down
    for name, v in (("--amplitude-up", up), ("--amplitude-down", down)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise EdgelearnError(f"{name}: expected a pulse amplitude magnitude in volts > 0, got {v:g}")
    return dict(amplitude_up_v=up, amplitude_down_v=down)


_TRANSFER_FLAGS = ("fast_lr", "transfer_lr", "transfer_every", "buffer_bits", "momentum", "chop_prob", "max_steps",
                   "reference", "chop_random")


def _transfer_options(args) -> dict | None:
    """TransferConfig fields from the transfer flags that were given (None when none was: the defaults)."""
    given = {name: getattr(args, name) for name in _TRANSFER_FLAGS if getattr(args, name) is not None}
    if given and args.algorithm not in ("ttv2", "c-ttv2", "agad"):
        flag = "--" + next(iter(given)).replace("_", "-")
        raise EdgelearnError(f"{flag}: a transfer-algorithm setting; --algorithm is {args.algorithm}")
    return given or None


def _options_error(exc, options: dict) -> EdgelearnError:
    """The first problem of a pydantic ValidationError of a config built from command-line options, as one line
    naming the option: '--epochs: expected a number >= 1, got 0'."""
    from .errors import error_message

    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    if name in ("transfer", "pulses") and len(err["loc"]) > 1 and str(err["loc"][1]) in (*_TRANSFER_FLAGS, "chi_bits"):
        name = str(err["loc"][1])  # a nested setting with a flag of its own
    option = options.get(name, "--" + name.replace("_", "-") if name else "options")
    return EdgelearnError(f"{option}: {error_message(err)}")


def _profile_options(parser) -> None:
    parser.add_argument("--profile", metavar="NAME|FILE", help="hardware profile the memory verdict is checked "
                        "against: a bundled name (m4f-lowpower, m33) or a TOML file (default: m4f-lowpower)")
    parser.add_argument("--require-fit", action="store_true", help="exit 2 when the configuration does not fit the "
                        "profile's SRAM (default: a warning, and the emulation goes on)")


def _memory_verdict(report, profile, require_fit: bool) -> str:
    """Check a MemoryReport against the profile; a configuration that does not fit warns in one line on stderr, or
    (require_fit) is refused with that line. Returns the verdict's message."""
    report.check(profile)
    if not report.fits:
        if require_fit:
            raise EdgelearnError(report.message)
        print(f"edgelearn: warning: {report.message}", file=sys.stderr, flush=True)
    return report.message


def cmd_train(args) -> int:
    from pydantic import ValidationError

    from .train import TrainConfig, train

    if args.data_dir is None:
        raise EdgelearnError("--data-dir: give the directory holding the four MNIST IDX files "
                             "(train-images-idx3-ubyte.gz, ...)")
    try:
        config = TrainConfig(card=args.card, algorithm=args.algorithm, network=args.network,
                             activation=args.activation, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             lr_step=args.lr_step, lr_gamma=args.lr_gamma, seed=args.seed,
                             max_train_samples=args.max_train_samples, data_dir=args.data_dir, epsilon=args.epsilon,
                             epsilon_down=args.epsilon_down, deterministic=args.deterministic,
                             max_tile_rows=args.max_tile, max_tile_cols=args.max_tile,
                             pulses={**_pulse_options(args), "chi_bits": args.chi_bits},
                             transfer=_transfer_options(args))
    except ValidationError as exc:
        raise _options_error(exc, _TRAIN_OPTIONS) from None
    from .profiles import load_profile
    from .train import train_memory

    profile = load_profile(args.profile)
    memory = train_memory(config).check(profile)  # refused before training with --require-fit, else warned after
    if args.require_fit:
        _memory_verdict(memory, profile, True)
    _output_dir(args.out)
    result = train(config, out=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    last = result.epochs[-1]
    summary = dict(card_id=result.card_id, algorithm=config.algorithm, epochs=len(result.epochs),
                   validation_accuracy=last.validation_accuracy, test_accuracy=result.test_accuracy,
                   pulses_up=result.counters.get("pulses_up", 0), pulses_down=result.counters.get("pulses_down", 0),
                   calibration_pulses=result.counters.get("calibration_pulses_up", 0)
                   + result.counters.get("calibration_pulses_down", 0), wall_s=result.wall_s)
    if result.endurance:  # analog runs: the worst device's pulses in this run, and how many such runs it survives
        e = result.endurance
        runs = e["training_runs_to_endurance"]
        summary["worst device: pulses in this run / runs to endurance"] = (
            f"{e['worst_device_pulses']} / {'unlimited (no pulses)' if runs is None else f'{runs:.3g}'} "
            f"(endurance {e['endurance_cycles']:.3g} cycles, {e['endurance_source']})")
    summary[f"memory (profile {profile.name})"] = _memory_verdict(memory, profile, False)
    if config.card:  # after the run, so that a bad option is still one line; all checks are in summary.json
        from .devices import load_card

        _card_warnings(load_card(config.card), implausible_only=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
        if args.out:
            print(f"wrote {args.out}/metrics.csv, {args.out}/summary.json")
    return 0


def cmd_energy(args) -> int:
    from .energy import load_energy_model, model_band, report_run

    path = Path(args.summary)
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgelearnError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise EdgelearnError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(summary, dict) or not {"counters", "epochs", "config"} <= set(summary):
        raise EdgelearnError(f"{path}: not a summary.json of edgelearn train (needs counters, epochs, config)")
    names = (args.model or []) + (args.config or []) or ["schottky-bound"]
    reports = [report_run(summary, load_energy_model(name)) for name in names]
    band = model_band({r.model: r.components_j for r in reports}) if len(reports) > 1 else None
    if args.json:
        if band is None:
            print(reports[0].to_json())
        else:  # several models: every report, and the band they span
            print(json.dumps(dict(reports=[json.loads(r.to_json()) for r in reports], band=band), indent=2))
        return 0
    for r in reports:
        u = r.units
        print(f"{r.card_id} under {r.model}: pulse up {u['pulse_up_j']:.3e} J at {u['amplitude_up_v']:.2f} V, "
              f"down {u['pulse_down_j']:.3e} J at {u['amplitude_down_v']:.2f} V, area {u['area_m2']:.3e} m^2")
        _print_table({f"  {k} (J)": v for k, v in r.components_j.items()})
        _print_table({"  per sample (J)": r.energy_per_sample_j, "  programming per update (J)":
                      r.programming_per_update_j, **{f"  programming to {k} val (J)": v
                                                     for k, v in r.energy_to_target_j.items()}})
    if band is not None:
        ratio = f"{band['ratio']:.3g}x" if band["ratio"] else "from 0"
        rows = {"band over the models (total J)": f"{band['min_j']:.3e} .. {band['max_j']:.3e} ({ratio})"}
        if band["driver"]:
            lo, hi = band["driver_range_j"]
            rows["  driven by"] = (f"{band['driver']} ({lo:.3e} .. {hi:.3e} J, {band['driver_share_of_spread']:.0%} "
                                   "of the spread); docs/energy.md says which model suits which question")
        _print_table(rows)
    return 0


def _list_bundled(files: dict, what: str, describe, hint: str) -> int:
    """Shipped files (name -> path): name and description on one line, the file on the next, then how to use one."""
    if not files:
        raise EdgelearnError(f"no shipped {what} found (edgelearn.bundled/{what}): reinstall edgelearn")
    width = max(len(name) for name in files)
    for name, path in files.items():
        print(f"{name:<{width}}  {describe(path)}")
        print(f"{'':<{width}}  {path}")
    print(hint)
    return 0


def _list_profiles() -> int:
    """The bundled hardware profiles: name, what they are, and the file to copy and edit."""
    from .profiles import bundled_profiles, load_profile

    def describe(path) -> str:
        profile = load_profile(path)
        m = profile.mcu
        return (f"{profile.description} ({m.core}, {m.clock_hz / 1e6:g} MHz, {m.sram_bytes // 1024} KiB SRAM"
                f"{', typical figures' if profile.typical else ''})")

    return _list_bundled(bundled_profiles(), "profiles", describe, "use one with --profile NAME; for your own board "
                         "copy a file, edit it and pass --profile my.toml")


def cmd_budget(args) -> int:
    from .energy import BUILTIN_MODELS, load_energy_model, parse_quantity
    from .profiles import load_profile
    from .system import breakdown_rows, system_budget

    if args.list_profiles:
        return _list_profiles()

    modes = [name for name, value in (("--from-run", args.from_run), ("--config", args.config),
                                      ("--card", args.card)) if value]
    if len(modes) != 1:
        raise EdgelearnError("budget: give one of --from-run SUMMARY (a finished run), --config RUN.TOML (measure a "
                             "stream as `run` does) or --card CARD (quick estimate on random inputs)"
                             + (f"; got {' and '.join(modes)}" if modes else ""))
    quick_only = [opt for opt, value in (("--daily-budget", args.daily_budget), ("--algorithm", args.algorithm),
                                         ("--network", args.network), ("--batch-size", args.batch_size),
                                         ("--label-rate", args.label_rate), ("--rate-hz", args.rate_hz),
                                         ("--channels", args.channels), ("--windows-per-day", args.windows_per_day))
                  if value is not None]
    if not args.card and quick_only:
        raise EdgelearnError(f"{quick_only[0]}: only for the quick estimate (--card); {modes[0]} takes the run's own "
                             "settings")
    battery_mah = None
    if args.battery_mah:  # '300' is mAh, as the option's name says; '1.2Ah' or '300mAh' carry their unit
        value = parse_quantity(args.battery_mah, "Ah", "--battery-mah")
        battery_mah = value * 1e3 if args.battery_mah.strip().endswith("Ah") else value
    battery_v = parse_quantity(args.battery_v, "V", "--battery-v") if args.battery_v else None
    if (battery_mah is None) != (battery_v is None):
        raise EdgelearnError("--battery-mah and --battery-v go together")
    profile = load_profile(args.profile)
    chip = None
    if args.from_run:
        from .system import read_run_summary, workload_from_run

        work = workload_from_run(read_run_summary(args.from_run), f"run summary {args.from_run}")
    elif args.config:
        from .continual import load_run_config
        from .system import workload_from_config

        config = load_run_config(args.config)
        work = workload_from_config(config, progress=not args.quiet, source=f"run config {args.config} (measured)",
                                    profile=profile, require_fit=args.require_fit)
    else:
        from .budget import estimate
        from .devices import load_card
        from .memory import memory_footprint
        from .network import parse_sizes
        from .system import check_quick_options, quick_estimate

        algorithm, network = args.algorithm or "mp", args.network or "paper"
        batch = 8 if args.batch_size is None else args.batch_size
        label_rate = 0.1 if args.label_rate is None else args.label_rate
        channels = 6 if args.channels is None else args.channels
        rate = args.rate_hz if args.rate_hz is not None else (profile.imu.odr_hz if profile.imu else 100.0)
        check_quick_options(batch, label_rate, rate, channels, args.windows_per_day)  # before any measuring
        memory = memory_footprint(parse_sizes(network), algorithm, batch=batch)
        _memory_verdict(memory, profile, args.require_fit)  # before the step costs are measured
        card = load_card(args.card)
        steps = None
        if args.daily_budget is not None:  # the chip's own daily budget decides the learning steps
            budget = parse_quantity(args.daily_budget, "J", "--daily-budget")
            chip = estimate(card, algorithm, budget, load_energy_model((args.model or ["schottky-bound"])[0]),
                            windows_per_day=args.windows_per_day if args.windows_per_day is not None else 67_500,
                            network=network, battery_mah=None, battery_v=None, batch_size=batch)
            steps = chip.learning_steps_per_day
        work = quick_estimate(card, algorithm, network, batch_size=batch, label_rate=label_rate,
                              learning_steps_per_day=steps, rate_hz=rate, channels=channels,
                              windows_per_day=args.windows_per_day if args.daily_budget is None else
                              chip.windows_per_day, energy_model="schottky-bound")
    models = args.model or [work.energy_model] + [m for m in BUILTIN_MODELS if m != work.energy_model]
    result = system_budget(work, profile, models, battery_mah=battery_mah, battery_v=battery_v)
    if result.memory and not args.card:
        from .memory import MemoryReport

        _memory_verdict(MemoryReport(**result.memory), profile, args.require_fit)
    if args.json:
        out = json.loads(result.to_json())
        if chip is not None:
            out["chip_budget"] = json.loads(chip.to_json())
        print(json.dumps(out, indent=2))
        return 0
    if chip is not None:
        rows = {"chip budget (crossbar + controller digital, J/day)": chip.daily_budget_j,
                "energy per inference (J)": chip.energy_per_inference_j,
                f"energy per learning step of {chip.batch_size} (J)": chip.energy_per_learning_step_j,
                "  of which programming": f"{chip.programming_share:.1%}",
                "learning steps in the chip budget": chip.learning_steps_per_day,
                "chip budget holds inference": "yes" if chip.fits else "no: inference alone exceeds it"}
        if chip.best_card_id:
            rows["best pulse width"] = f"{chip.best_pulse_width_s:g} s ({chip.best_card_id})"
        _print_table(rows)
    _print_table(breakdown_rows(result))
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _list_run_configs() -> int:
    """The shipped configs of `edgelearn run`: name, what it is for, and the file to copy and edit."""
    from .continual import bundled_configs, config_description

    return _list_bundled(bundled_configs(), "configs", config_description, "run one with --config NAME; to change "
                         "one, copy its file (cp FILE my.toml) and run --config my.toml")


def cmd_run(args) -> int:
    from .continual import load_run_config, run_stream, write_outputs

    if args.list_configs:
        return _list_run_configs()
    overrides = dict(source=args.source, path=args.path, card=args.card, algorithm=args.algorithm,
                     label_rate=args.label_rate, lr=args.lr, seed=args.seed, energy_model=args.energy_model,
                     rate_hz=args.rate_hz, duration_s=args.duration_s, pretrain_path=args.pretrain_path,
                     header=args.header)
    config = load_run_config(args.config, overrides)
    from .memory import MemoryReport
    from .profiles import load_profile
    from .system import SystemBudget, breakdown_rows

    profile = load_profile(args.profile)
    _output_dir(args.out)
    result = run_stream(config, progress=not args.quiet, require_fit=args.require_fit, profile=profile)
    memory = MemoryReport(**result.memory) if result.memory else None
    if memory is not None:
        _memory_verdict(memory, profile, args.require_fit)
    if args.out:
        write_outputs(result, args.out)
    if args.json:
        print(result.to_json())
        return 0
    pre = result.pretrain.get("train_accuracy")
    lo, hi = (list(result.gain_interval) + [float("nan"), float("nan")])[:2]
    _print_table({"card": result.card_id, "algorithm": config.algorithm, "stream (s)": result.stream_seconds,
                  "sensor": "turned 90 degrees about z (moved_sensor)" if config.moved_sensor else "as recorded",
                  "front end": _front_end_text(result.pretrain.get("normalisation")),
                  "windows streamed": result.windows, "learning steps": result.learning_steps,
                  "pre-training accuracy (in-sample)": "-" if pre is None else pre,
                  "prequential accuracy": result.prequential_accuracy,
                  "prequential accuracy, control arm": result.control_prequential_accuracy,
                  "held-out windows": result.held_out_windows,
                  "chance (commonest held-out class)": result.chance_accuracy,
                  "held-out accuracy before": result.accuracy_before, "held-out accuracy after": result.accuracy_after,
                  "held-out accuracy after, control arm": result.control_accuracy_after,
                  "adaptation gain (learning - control)": f"{result.gain:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}]"
                  if np.isfinite(result.gain) else "- (no labelled held-out window)",
                  "pulses": result.pulses, f"chip energy per window (J, {result.energy_model})":
                  result.energy_per_window_j, "chip energy per day (J)": result.energy_per_day_j,
                  "real-time factor": result.real_time_factor})
    print("the wearable's day (whole system, edgelearn budget --from-run gives the same on another profile):")
    system = SystemBudget(**result.system)
    _print_table({k: v for k, v in breakdown_rows(system).items() if k != "source"})
    for note in system.notes:
        print(f"note: {note}")
    if args.out:
        print(f"wrote {args.out}/summary.json, {args.out}/stream.png")
    return 0


def _front_end_text(norm) -> str:
    if isinstance(norm, dict) and norm.get("mode") == "factory":
        return f"features normalised at the factory ({norm.get('windows')} pre-training windows)"
    return "fixed scaling (features / sensor full scale)"


def cmd_board_emulator(args) -> int:
    from firmware_model.cbuild import BuildError

    from .hil.emulator import BoardEmulator, BoardFirmware, Faults, warm_up

    from .devices import load_card

    cards = [load_card(c) for c in args.card]
    if args.tcp is not None and not 0 <= args.tcp <= 65535:
        raise EdgelearnError(f"--tcp: expected a port number 0..65535 (0: any free port), got {args.tcp}")
    for name, value, low, high in (("--rows", args.rows, 1, 1024), ("--cols", args.cols, 1, 1024),
                                   ("--lease-s", args.lease_s, 0.1, 86400.0),
                                   ("--idle-timeout-s", args.idle_timeout_s, 0.1, 86400.0)):
        if not low <= value <= high:
            raise EdgelearnError(f"{name}: expected {low:g}..{high:g}, got {value:g}")
    try:
        faults = Faults(args.fault_drop, args.fault_corrupt, args.fault_delay_ms, seed=args.fault_seed,
                        spike_ms=args.fault_spike_ms, spike_rate=args.fault_spike_rate,
                        first_delay_ms=args.fault_first_delay_ms)
        firmware = BoardFirmware(cards, args.rows, args.cols, seed=args.seed, ideal=args.ideal, lease_s=args.lease_s,
                                 amplitude_aware=args.amplitude_aware, firmware=args.firmware)
    except ValueError as exc:
        raise EdgelearnError(str(exc).replace("fault ", "--fault-").replace("_", "-")) from None
    except BuildError as exc:
        raise EdgelearnError(f"--firmware c: {exc}") from None
    try:
        emulator = BoardEmulator(firmware, faults, transport="tcp" if args.tcp is not None else "pty",
                                 port=args.tcp or 0, idle_timeout_s=args.idle_timeout_s)
    except OSError as exc:
        raise EdgelearnError(f"cannot open the emulator's port ({exc.strerror or exc})") from None
    warm_up(cards[0], args.amplitude_aware, args.firmware)  # compile the kernels before the first host arrives, as a board boots before it enumerates
    print(emulator.url, flush=True)
    print(f"# {cards[0].device_id} {args.rows} x {args.cols}, widths "
          f"{', '.join(f'{w} ns' for w in firmware.cards)}, seed {args.seed}"
          f"{', ideal devices' if args.ideal else ''}; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        emulator.run()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


def _board(args):
    from .hil import SerialBoard

    return SerialBoard(args.port, timeout=args.timeout, retries=args.retries)


def firmware_table(result: dict) -> str:
    """The markdown table of `edgelearn firmware measure`: sizes, then instructions and estimated cycles per
    operation."""
    z = result["sizes"]
    lines = [f"{result['cpu']} ({result['cpu_note']}); {result['compiler']}, `{' '.join(result['flags'])}`; sources "
             f"{result['source_hash']}.", "",
             "| section | bytes |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in z.items()]
    lines += ["", "| operation | unit | instructions | cycles (estimate) | fixed overhead (instructions) | what |",
              "|---|---|---|---|---|---|"]
    for name, op in result["operations"].items():
        if "instructions" not in op:
            continue
        lines.append(f"| {name} | {op.get('unit', '')} | {op['instructions']:,.1f} | {op['cycles']:,.1f} | "
                     f"{op.get('overhead_instructions', 0):,.0f} | {op.get('note', '').replace('|', chr(92) + '|')} |")
    lines += ["", result["method"]]
    return "\n".join(lines)


def cmd_firmware_measure(args) -> int:
    from firmware_model.measure import measure

    try:
        result = measure(args.cpu)
    except (ImportError, RuntimeError, OSError) as exc:
        raise EdgelearnError(f"firmware measure: {str(exc).splitlines()[0]} (pip install \".[firmware]\")") from None
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(firmware_table(result))
    if args.profile_out:
        from .profiles import load_profile, measured_cycles, profile_with_cycles
        from .traces import write_atomically

        text = profile_with_cycles(args.profile or "m4f-lowpower", measured_cycles(result))
        name = Path(args.profile_out).stem
        text = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', text, count=1)
        write_atomically(args.profile_out, text)
        load_profile(args.profile_out)  # it reads back
        print(f"wrote {args.profile_out}: profile {args.profile or 'm4f-lowpower'} with measured cycles "
              f"(edgelearn budget --profile {args.profile_out})", file=sys.stderr)
    if args.doc:
        from .report import replace_marked_block

        doc = Path(args.doc)
        doc.write_text(replace_marked_block(doc.read_text(encoding="utf-8"), f"firmware-{args.cpu}",
                                            firmware_table(result), f"--doc {doc}"), encoding="utf-8")
        print(f"wrote {doc}", file=sys.stderr)
    return 0


def cmd_hil_identify(args) -> int:
    with _board(args) as board:
        info = board.info
        if args.json:
            print(info.to_json())
            return 0
        _print_table({"port": info.url, "firmware": info.firmware, "protocol": info.protocol,
                      "device": info.device_id, "array": f"{info.rows} x {info.cols}",
                      "DAC / ADC / read bits": f"{info.dac_bits} / {info.adc_bits} / {info.read_bits}",
                      "pulse widths": ", ".join(f"{w} ns ({lo / 1000:g}-{hi / 1000:g} V)" for w, (lo, hi)
                                                in zip(info.pulse_widths_ns, info.amplitude_ranges_mv)),
                      "counters": info.n_counters, "max payload (bytes)": info.max_payload})
    return 0


def cmd_hil_characterize(args) -> int:
    from .hil import characterize, resume_characterization
    from .hil.lab import journal_path, journal_rows, read_journal
    from .hil.serial_board import parse_width_ns

    output = Path(args.output)
    if output.is_dir():
        raise EdgelearnError(f"-o {output}: is a directory, expected a trace CSV file name")
    if not output.parent.is_dir():
        raise EdgelearnError(f"-o {output}: the directory {output.parent} does not exist")
    journal = journal_path(output)
    width = parse_width_ns(args.pulse_width) if args.pulse_width else None
    if not args.resume and width is None:
        raise EdgelearnError("--pulse-width is required (e.g. 20ns), unless --resume continues a journal")
    bar = None
    try:
        with _board(args) as board:
            if args.resume:
                if not journal.exists():
                    raise EdgelearnError(f"--resume: no interrupted characterisation in {journal}")
                plan, _, done, _ = read_journal(journal)
                _check_resume_options(args, plan, journal, width)
                bar = _progress(2 * plan["pulses"] * plan["cycles"], "characterise", args.quiet, initial=len(done))
                trace = resume_characterization(board, journal, progress=bar.update if bar is not None else None)
            else:
                pulses = 200 if args.pulses is None else args.pulses
                cycles = 2 if args.cycles is None else args.cycles
                bar = _progress(2 * pulses * cycles, "characterise", args.quiet)
                trace = characterize(board, width, pulses, cycles, args.amplitude, args.row or 0, args.col or 0,
                                     progress=bar.update if bar is not None else None, journal=journal,
                                     staircase_v=_staircase(args.staircase))
            stats = board.link.stats
    except (EdgelearnError, KeyboardInterrupt) as exc:
        if bar is not None:
            bar.close()
        rows = journal_rows(journal)
        if rows > 0:
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            raise EdgelearnError(f"{what}; the {rows} pulses measured so far are in {journal} (a trace CSV): rerun "
                                 "with --resume to continue") from None
        raise
    if bar is not None:
        bar.close()
    trace.to_csv(output)
    journal.unlink(missing_ok=True)
    print(f"wrote {output}: {len(trace)} pulses at {trace.meta.pulse_width_s * 1e9:g} ns ({stats.requests} commands, "
          f"{stats.retries} resends)")
    return 0


def _staircase(text: str | None) -> tuple[float, float] | None:
    """--staircase LOW:HIGH (volts) -> (low, high)."""
    if text is None:
        return None
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        values = float(low), float(high)
    except ValueError:
        raise EdgelearnError(f"--staircase: expected LOW:HIGH in volts (e.g. 0.5:3.0), got '{text}'") from None
    return values


def _check_resume_options(args, plan: dict, journal: Path, width) -> None:
    """--resume continues the journal's plan: options given explicitly must agree with it."""
    stair = _staircase(args.staircase)
    given = {"width_ns": width, "pulses": args.pulses, "cycles": args.cycles, "row": args.row, "col": args.col,
             "amplitude_mv": None if args.amplitude is None else int(round(abs(args.amplitude) * 1000)),
             "staircase_mv": None if stair is None else [int(round(abs(v) * 1000)) for v in stair]}
    for key, value in given.items():
        if value is not None and plan.get(key) != value:
            raise EdgelearnError(f"--resume: {journal} was started with {key} = {plan.get(key)}, this command asks "
                                 f"for {value} (leave the option out to continue the journal's plan)")


def cmd_hil_compare(args) -> int:
    from .hil import compare

    with _board(args) as board:
        result = compare(board, args.card, args.pulses, args.cycles, args.saturate, args.row, args.col,
                         args.amplitude)
    if args.json:
        print(result.to_json())
        return 0
    _print_table({"card": result.card_id, "port": result.url, "device": f"({result.row}, {result.col})",
                  "pulses compared": result.pulses_compared, "saturating pulses": result.saturating_pulses,
                  "rmse (S)": result.rmse_s, "max |error| (S)": result.max_abs_error_s,
                  "nrmse (of the board's span)": result.nrmse})
    return 0


def cmd_hil_train(args) -> int:
    from .hil import train_on_board

    with _board(args) as board:
        bar = _progress(None, "train on board", args.quiet)
        result = train_on_board(board, args.card, args.epochs, args.lr, args.batch_size, args.seed,
                                progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
    if args.json:
        print(result.to_json())
        return 0
    c = result.board_counters
    _print_table({"card": result.card_id, "port": result.url, "layer": f"{result.sizes[0]}+1 -> {result.sizes[1]}",
                  "epochs": result.epochs, "train accuracy (last epoch)": result.train_accuracy[-1],
                  "test accuracy, board": result.test_accuracy_board,
                  "test accuracy, emulator": result.test_accuracy_emulator,
                  "pulses on the board": c["pulses_up"] + c["pulses_down"], "round trips": result.round_trips,
                  "retries": result.retries, "wall (s)": result.wall_s})
    return 0


def cmd_sweep_run(args) -> int:
    from .sweep import load_spec, run_sweep, spec_path

    spec = load_spec(args.spec)
    if args.jobs is not None and args.jobs < 1:
        raise EdgelearnError(f"--jobs: expected a positive number of workers, got {args.jobs}")
    if args.scheduler:
        from .sweep import check_scheduler

        check_scheduler(args.scheduler)
    _output_dir(args.out)
    result = run_sweep(spec, args.out, jobs=args.jobs, scheduler=args.scheduler, progress=not args.quiet,
                       spec_text=spec_path(args.spec).read_text())
    if args.json:
        print(result.to_json())
    else:
        print(f"sweep {spec.name}: {result.planned} runs, {result.already_complete} already complete, "
              f"{result.completed} completed now, {len(result.failed)} failed"
              + (f", {len(result.busy)} busy" if result.busy else "") + f" ({result.backend}, {result.workers} "
              f"workers, {result.wall_s:.0f} s); report: edgelearn sweep report {args.out}")
    for failure in result.failed:
        print(f"edgelearn: run {failure['key']} {json.dumps(failure['axes'])} failed after {failure['attempts']} "
              f"attempt(s): {failure['error']} (config and traceback: {args.out}/runs/{failure['key']}/error.json)",
              file=sys.stderr)
    for busy in result.busy:
        print(f"edgelearn: run {busy['key']} {json.dumps(busy['axes'])} skipped: {busy['error']}", file=sys.stderr)
    for restart in result.restarted:
        print(f"edgelearn: warning: run {restart['key']} {json.dumps(restart['axes'])}: {restart['reason']}",
              file=sys.stderr)
    if result.failed or result.busy:
        print(f"edgelearn: {len(result.failed)} of {result.planned} runs failed"
              + (f", {len(result.busy)} skipped as busy" if result.busy else "")
              + "; run the same command again to retry only those", file=sys.stderr)
    return 1 if result.failed or result.busy else 0


def cmd_sweep_report(args) -> int:
    from .sweep import report

    result = report(args.dir, plots=not args.no_plots)
    if args.json:
        print(result.to_json())
        return 0
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("complete", "failed", "pending")}
    print(f"sweep {result.name}: {counts['complete']} complete, {counts['failed']} failed, {counts['pending']} "
          f"pending; Pareto front: {', '.join(k[:8] for k in result.pareto) or '-'}")
    print("wrote " + ", ".join(f"{args.dir}/{f}" for f in result.files))
    return 0


def cmd_sweep_plan(args) -> int:
    from .sweep import is_complete, load_spec, plan

    spec = load_spec(args.spec)
    runs = plan(spec, source=args.spec)
    for run in runs:
        status = ""
        if args.out:
            run_dir = Path(args.out) / "runs" / run.key
            status = "complete" if is_complete(run_dir) else ("failed" if (run_dir / "error.json").exists()
                                                               else "pending")
        print(f"{run.key}  {status:<9} {json.dumps(run.axes)}")
    print(f"{len(runs)} runs")
    return 0


def _progress(total, desc, quiet, initial=0):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pulse" if total else "sample", leave=False, file=sys.stderr,
                initial=initial)


def _link_options(parser) -> None:
    parser.add_argument("--port", required=True, help="pyserial URL: /dev/ttyACM0, /dev/pts/N, socket://host:port")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one command may take, every resend "
                        "included (default 30; resends follow an adaptive per-command timeout)")
    parser.add_argument("--retries", type=int, default=None, help="cap on the resends of one command (default: none, "
                        "only --timeout limits them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgelearn", description="Emulate on-device learning on ferroelectric "
                                     "synaptic crossbars.")
    parser.add_argument("--version", action="version", version=f"edgelearn {__version__}")
    top = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    device = top.add_parser("device", help="fit, validate and inspect device cards")
    dev = device.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    fit = dev.add_parser("fit", help="fit a device card to a measured trace")
    fit.add_argument("trace", help="trace file: edgelearn CSV or WGFMU .dat")
    _trace_options(fit)
    fit.add_argument("--nodes", default="32", help="nodes per step table (default 32), or auto: nodes and smoothing "
                     "chosen by blocked cross-validation (with --smoothing auto)")
    fit.add_argument("--smoothing", default=None, help="weight of the smoothness penalty (default 0.01), or auto")
    fit.add_argument("--method", choices=["replay", "poly5"], default="replay", help="replay: step tables fitted to "
                     "the replayed trajectory (default); poly5: the published pipeline (np.gradient per branch, a "
                     "degree-5 polynomial per direction on the nodes), to compare a published card on the same trace")
    fit.add_argument("--folds", type=int, default=10, help="blocked cross-validation folds for the out-of-sample "
                     "error (default 10; 0: none)")
    fit.add_argument("--sp-resamples", type=int, default=0, help="refits on 70 %% subsets for the symmetry point's "
                     "90 %% interval (e.g. 20; default 0: none, each refit costs a fit)")
    fit.add_argument("--no-amplitude", action="store_true", help="skip the amplitude response (fitted by default "
                     "where each direction's pulses span a range of amplitudes)")
    fit.add_argument("-o", "--output", required=True, help="card JSON to write")
    fit.add_argument("--quiet", action="store_true", help="no status lines")
    fit.add_argument("--json", action="store_true", help="print the card summary as JSON")
    fit.set_defaults(func=cmd_device_fit)

    val = dev.add_parser("validate", help="replay a trace on a card and report the trajectory error")
    val.add_argument("card", help="card JSON file or bundled card name")
    val.add_argument("trace", help="trace file: edgelearn CSV or WGFMU .dat")
    _trace_options(val)
    val.add_argument("--folds", type=int, default=0, help="also refit the card's settings on this trace with blocked "
                     "cross-validation (e.g. 10; default 0: only the replay)")
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    val.add_argument("--plot", metavar="FILE.png", help="draw measured vs replayed trajectory (needs matplotlib)")
    val.set_defaults(func=cmd_device_validate)

    ens = dev.add_parser("ensemble", help="bootstrap cards of one trace (refits on random 70 %% subsets) to train or "
                         "sweep over, so that an accuracy comes with the fit's uncertainty")
    ens.add_argument("trace", help="trace file: edgelearn CSV or WGFMU .dat")
    _trace_options(ens)
    ens.add_argument("-n", type=int, default=10, help="cards (default 10)")
    ens.add_argument("--nodes", default="32", help="nodes per step table (default 32)")
    ens.add_argument("--smoothing", default=None, help="smoothness penalty (default 0.01)")
    ens.add_argument("--seed", type=int, default=0, help="seed of the subsets (default 0)")
    ens.add_argument("-o", "--output", required=True, help="folder for the card files")
    ens.set_defaults(func=cmd_device_ensemble)

    show = dev.add_parser("show", help="print a card's figures")
    show.add_argument("card", help="card JSON file or bundled card name (e.g. ID170ZR5000-20ns)")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=cmd_device_show)

    lst = dev.add_parser("list", help="list the bundled cards")
    lst.add_argument("--json", action="store_true", help="print as JSON")
    lst.set_defaults(func=cmd_device_list)

    tr_ = top.add_parser("train", help="train the MNIST MLP on emulated crossbars (or the digital baseline)")
    tr_.add_argument("--card", help="device card file or bundled name (not needed for --algorithm digital)")
    tr_.add_argument("--algorithm", choices=["sgd", "mp", "sp-shift", "ttv2", "c-ttv2", "agad", "digital"],
                     default="mp")
    tr_.add_argument("--epochs", type=int, default=25)
    tr_.add_argument("--batch-size", type=int, default=64)
    tr_.add_argument("--lr", type=float, default=0.5)
    tr_.add_argument("--lr-step", type=int, default=10, help="epochs between learning-rate decays (default 10)")
    tr_.add_argument("--lr-gamma", type=float, default=0.5, help="decay factor (default 0.5)")
    tr_.add_argument("--seed", type=int, default=0)
    tr_.add_argument("--max-train-samples", type=int, help="use only the first K of the 48k training images")
    tr_.add_argument("--data-dir", help="directory with the four MNIST IDX files")
    tr_.add_argument("--network", default="paper", help="network preset (default: paper, 784-256-128-10)")
    tr_.add_argument("--activation", default="sigmoid", choices=["sigmoid", "relu"])
    tr_.add_argument("--epsilon", type=float, help="mp threshold (default: the card's granularity)")
    tr_.add_argument("--epsilon-down", type=float, help="mp threshold for down pulses (default: --epsilon)")
    tr_.add_argument("--deterministic", action="store_true",
                     help="sgd / sp-shift: deterministic pulse counts instead of stochastic trains (per mini-batch, "
                     "no remainder kept: a small batch and a larger lr, e.g. --batch-size 8 --lr 2)")
    tr_.add_argument("--chi-bits", type=int, choices=[8, 16, 32], help="mp: accumulator width (default 32; 16 and 8 "
                     "keep the residual in units of granularity / 2^(bits-4) with stochastic rounding)")
    tg = tr_.add_argument_group("transfer algorithms (ttv2, c-ttv2, agad; docs/algorithms.md)")
    tg.add_argument("--fast-lr", type=float, help="lr of the update onto the fast array A, x the schedule's lr "
                    "(default 20)")
    tg.add_argument("--transfer-lr", type=float, help="H increment per weight unit read from A, in slow-array "
                    "pulses, x the schedule's lr (default 0.3)")
    tg.add_argument("--transfer-every", type=int, help="training samples per column read of A (default 1)")
    tg.add_argument("--buffer-bits", type=int, choices=[8, 16, 32], help="width of the buffer H (default 8)")
    tg.add_argument("--momentum", type=float, help="fraction of H kept after a transfer (default 0)")
    tg.add_argument("--chop-prob", type=float, help="c-ttv2: chopper flip probability per read; agad: flips every "
                    "round(1/p) reads (default 0.1)")
    tg.add_argument("--max-steps", type=int, help="most pulses per device and transfer (default 1)")
    tg.add_argument("--chop-random", action=argparse.BooleanOptionalAction, default=None,
                    help="agad: chopper flips at random (default) or, with --no-chop-random, regularly")
    tg.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                    help="read A against calibrated symmetry-point references (default: on for ttv2 only)")
    tr_.add_argument("--max-tile", type=int, default=1024, help="largest tile side; larger layers are split")
    tr_.add_argument("--amplitude", type=float, metavar="V", help="pulse amplitude magnitude (both directions): the "
                     "card's amplitude response gives the steps and energy prices the pulses there (default: the "
                     "card's amplitude-blind steps, priced at the top of the measured range)")
    tr_.add_argument("--amplitude-up", type=float, metavar="V", help="as --amplitude, up (negative) pulses only")
    tr_.add_argument("--amplitude-down", type=float, metavar="V", help="as --amplitude, down (positive) pulses only")
    tr_.add_argument("--out", help="directory for metrics.csv, summary.json and checkpoints")
    tr_.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr_.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out (without it, an existing run is refused)")
    tr_.add_argument("--quiet", action="store_true", help="no progress bars")
    tr_.add_argument("--json", action="store_true", help="print the summary as JSON")
    _profile_options(tr_)
    tr_.set_defaults(func=cmd_train)

    en = top.add_parser("energy", help="cost a finished training run under one or more energy models")
    en.add_argument("summary", help="summary.json written by edgelearn train")
    en.add_argument("--model", action="append", metavar="NAME|FILE",
                    help="schottky-bound (default), capacitive, table, or an EnergyModel JSON file; repeatable")
    en.add_argument("--config", action="append", metavar="FILE", help="an EnergyModel JSON file; repeatable")
    en.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    en.set_defaults(func=cmd_energy)

    bu = top.add_parser("budget", help="a day of the wearable: energy by term (sensor, MCU, front end, crossbar), "
                        "battery life, wear and memory, from a run, a run config or a quick estimate")
    bu.add_argument("--from-run", metavar="SUMMARY", help="summary.json of `edgelearn run`: the run's measured counts "
                    "per window, scaled to a day")
    bu.add_argument("--config", metavar="NAME|TOML", help="a run config (shipped name or TOML): measure its stream "
                    "exactly as `edgelearn run` does")
    bu.add_argument("--card", help="quick estimate: device card file or bundled name (random inputs)")
    bu.add_argument("--algorithm", choices=["sgd", "mp", "sp-shift"], help="quick estimate: algorithm (default mp)")
    bu.add_argument("--network", help="quick estimate: network preset or sizes like 30-32-4 (default paper)")
    bu.add_argument("--batch-size", type=int, help="quick estimate: samples per learning step (default 8, as run's "
                    "replay_batch)")
    bu.add_argument("--label-rate", type=float, help="quick estimate: fraction of windows that start a learning step "
                    "(default 0.1)")
    bu.add_argument("--rate-hz", type=float, help="quick estimate: sensor rate (default: the profile IMU's)")
    bu.add_argument("--channels", type=int, help="quick estimate: sensor channels (default 6)")
    bu.add_argument("--windows-per-day", type=int, help="quick estimate: inferences per day (default: 2.56 s windows "
                    "with 50%% overlap at the sensor rate)")
    bu.add_argument("--daily-budget", help="quick estimate: the chip's own energy per day (e.g. 1mJ); learning steps "
                    "are then what fits in it after inference")
    bu.add_argument("--model", action="append", metavar="NAME|FILE", help="energy model name or JSON file; "
                    "repeatable: the first is the headline, all of them make the band (default: the run's model, "
                    "or schottky-bound, then the other built-in models)")
    bu.add_argument("--battery-mah", help="battery capacity in mAh (default: the profile's battery)")
    bu.add_argument("--battery-v", help="battery voltage (e.g. 3.7V)")
    bu.add_argument("--quiet", action="store_true", help="--config: no progress bars")
    bu.add_argument("--list-profiles", action="store_true", help="list the bundled hardware profiles and their files")
    bu.add_argument("--json", action="store_true", help="print the answer as JSON")
    _profile_options(bu)
    bu.set_defaults(func=cmd_budget)

    run = top.add_parser("run", help="continuous wearable learning on a sensor stream (default: BasicMotions)")
    run.add_argument("--config", help="TOML file with any RunConfig fields, or a shipped config's name: "
                     "basicmotions, hapt, csv-template (--list-configs)")
    run.add_argument("--list-configs", action="store_true", help="list the shipped configs and their files")
    run.add_argument("--source", choices=["basicmotions", "hapt", "csv", "serial"])
    run.add_argument("--path", help="hapt npz, csv stream file, or serial sensor URL (/dev/ttyACM0, socket://h:p)")
    run.add_argument("--rate-hz", type=float, help="csv/serial: sampling rate")
    run.add_argument("--duration-s", type=float, help="serial: stream time to read")
    run.add_argument("--pretrain-path", help="csv/serial: a labelled CSV file to pre-train on")
    run.add_argument("--header", help="csv/serial: the stream's header line when it sends none (a sensor already "
                     "streaming), e.g. 'time_s,acc_x,acc_y,acc_z,label'")
    run.add_argument("--card")
    run.add_argument("--algorithm", choices=["mp", "sgd", "sp-shift"])
    run.add_argument("--label-rate", type=float, help="fraction of windows whose label arrives")
    run.add_argument("--lr", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--energy-model", help="energy model name or JSON file")
    run.add_argument("--out", help="directory for summary.json and stream.png")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--json", action="store_true")
    _profile_options(run)
    run.set_defaults(func=cmd_run)

    emu = top.add_parser("board-emulator", help="serve the board protocol from the emulator on a pty (or TCP port); "
                         "prints the port URL first")
    emu.add_argument("--card", action="append", required=True, help="device card (file or bundled name); repeat for "
                     "more pulse widths")
    emu.add_argument("--rows", type=int, default=8)
    emu.add_argument("--cols", type=int, default=8)
    emu.add_argument("--seed", type=int, default=0)
    emu.add_argument("--ideal", action="store_true", help="nominal devices: no device-to-device variation, no "
                     "cycle-to-cycle or read-out noise")
    emu.add_argument("--firmware", choices=["python", "c"], help="the board's firmware: the Python interpreter or the "
                     "portable C firmware built for this host (default: $EDGELEARN_BOARD_FIRMWARE, else python)")
    emu.add_argument("--amplitude-aware", action="store_true", help="the configured pulse amplitude scales the steps "
                     "by each card's amplitude response (cards fitted from amplitude staircases); default: every "
                     "amplitude gives the card's amplitude-blind steps")
    emu.add_argument("--tcp", type=int, metavar="PORT", help="listen on socket://127.0.0.1:PORT instead of a pty "
                     "(0: any free port)")
    emu.add_argument("--fault-drop", type=float, default=0.0, help="probability that a byte is lost (each way)")
    emu.add_argument("--fault-corrupt", type=float, default=0.0, help="probability that a byte has a bit flipped")
    emu.add_argument("--fault-delay-ms", type=float, default=0.0, help="delay before every response")
    emu.add_argument("--fault-spike-ms", type=float, default=0.0, help="latency spike added to a response ...")
    emu.add_argument("--fault-spike-rate", type=float, default=0.0, help="... with this probability per response")
    emu.add_argument("--fault-first-delay-ms", type=float, default=0.0, help="extra delay of the board's first response "
                     "(a board slow to come up)")
    emu.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (independent of --seed)")
    emu.add_argument("--lease-s", type=float, default=10.0, help="a host that sent nothing for this long no longer "
                     "holds the board (default 10)")
    emu.add_argument("--idle-timeout-s", type=float, default=60.0, help="TCP: close a connection idle this long "
                     "(default 60)")
    emu.set_defaults(func=cmd_board_emulator)

    fwp = top.add_parser("firmware", help="the C firmware: cross-compile and measure it on a Cortex-M core")
    fws = fwp.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    fwm = fws.add_parser("measure", help="code and RAM sizes, instructions and estimated cycles per operation, "
                         "executed in the unicorn CPU emulator (needs pip install \".[firmware]\")")
    fwm.add_argument("--cpu", default="cortex-m4", choices=["cortex-m4", "cortex-m33"])
    fwm.add_argument("--json", action="store_true", help="the whole result as JSON")
    fwm.add_argument("--doc", help="also rewrite the firmware-CPU block of this markdown file (docs/firmware.md)")
    fwm.add_argument("--profile-out", metavar="FILE.toml", help="write a hardware profile whose [cycles] table holds "
                     "the measured figures (the budget's controller cycles)")
    fwm.add_argument("--profile", metavar="NAME|FILE", help="the profile --profile-out starts from (default "
                     "m4f-lowpower)")
    fwm.set_defaults(func=cmd_firmware_measure)

    hil = top.add_parser("hil", help="drive a test board (or the board emulator) over a serial link")
    hs = hil.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    ident = hs.add_parser("identify", help="firmware, array size, pulse widths and amplitudes, counters")
    _link_options(ident)
    ident.add_argument("--json", action="store_true")
    ident.set_defaults(func=cmd_hil_identify)
    ch = hs.add_parser("characterize", help="pulse trains with reads on one device -> a trace CSV (fit it with "
                       "edgelearn device fit)")
    _link_options(ch)
    ch.add_argument("--pulse-width", help="e.g. 20ns, 2us, 200us (required unless --resume)")
    ch.add_argument("--pulses", type=int, help="pulses per train (default 200)")
    ch.add_argument("--cycles", type=int, help="down-then-up cycles (default 2)")
    ch.add_argument("--amplitude", type=float, help="pulse amplitude in volts (default: the top of the board's range)")
    ch.add_argument("--staircase", metavar="LOW:HIGH", help="ramp the amplitude between LOW and HIGH volts over "
                    "every train, rising in odd cycles and falling in even ones, so that the fit can separate the "
                    "amplitude from the state dependence (use --cycles 2 or more)")
    ch.add_argument("--row", type=int, help="device row (default 0)")
    ch.add_argument("--col", type=int, help="device column (default 0)")
    ch.add_argument("-o", "--output", required=True, help="trace CSV to write; while it runs, every measured pulse is "
                    "kept in OUTPUT.partial")
    ch.add_argument("--resume", action="store_true", help="continue the interrupted characterisation kept in "
                    "OUTPUT.partial (same board, same device)")
    ch.add_argument("--quiet", action="store_true")
    ch.set_defaults(func=cmd_hil_characterize)
    cmp_ = hs.add_parser("compare", help="replay one pulse schedule on the board and the emulator; trajectory error")
    _link_options(cmp_)
    cmp_.add_argument("--card", required=True, help="the card the emulator side uses")
    cmp_.add_argument("--pulses", type=int, default=100)
    cmp_.add_argument("--cycles", type=int, default=2)
    cmp_.add_argument("--saturate", type=int, help="down pulses that first drive the device into its lower bound "
                      "(default 2 x the card's states)")
    cmp_.add_argument("--amplitude", type=float)
    cmp_.add_argument("--row", type=int, default=0)
    cmp_.add_argument("--col", type=int, default=0)
    cmp_.add_argument("--json", action="store_true")
    cmp_.set_defaults(func=cmd_hil_compare)
    htr = hs.add_parser("train", help="train a single-layer BasicMotions classifier on the board (and on the emulator)")
    _link_options(htr)
    htr.add_argument("--card", required=True, help="card of the board's devices (host-side epsilon and weights)")
    htr.add_argument("--epochs", type=int, default=5)
    htr.add_argument("--lr", type=float, default=0.5)
    htr.add_argument("--batch-size", type=int, default=8)
    htr.add_argument("--seed", type=int, default=0)
    htr.add_argument("--quiet", action="store_true")
    htr.add_argument("--json", action="store_true")
    htr.set_defaults(func=cmd_hil_train)

    sweep = top.add_parser("sweep", help="design-space sweeps: run a TOML grid (local pool or Dask), report it")
    ss = sweep.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    srun = ss.add_parser("run", help="run every missing run of a sweep spec into DIR (resumes; never redoes)")
    srun.add_argument("spec", help="sweep spec TOML, or a shipped spec's name (paper)")
    srun.add_argument("--out", required=True, help="results directory (one subdirectory per run, by config hash)")
    srun.add_argument("--jobs", type=int, help="local worker processes (default: the number of cores)")
    srun.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786): run on that cluster instead")
    srun.add_argument("--quiet", action="store_true")
    srun.add_argument("--json", action="store_true")
    srun.set_defaults(func=cmd_sweep_run)
    srep = ss.add_parser("report", help="aggregate a sweep directory: report.csv, report.md, plots")
    srep.add_argument("dir")
    srep.add_argument("--no-plots", action="store_true")
    srep.add_argument("--json", action="store_true")
    srep.set_defaults(func=cmd_sweep_report)
    splan = ss.add_parser("plan", help="list a spec's runs (and their status in --out DIR)")
    splan.add_argument("spec")
    splan.add_argument("--out")
    splan.set_defaults(func=cmd_sweep_plan)

    trace = top.add_parser("trace", help="convert measured traces")
    tr = trace.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    imp = tr.add_parser("import", help="convert a WGFMU .dat file into an edgelearn trace CSV")
    imp.add_argument("trace", help="WGFMU .dat file")
    _trace_options(imp)
    imp.add_argument("-o", "--output", required=True, help="trace CSV to write")
    imp.set_defaults(func=cmd_trace_import)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """EdgelearnWarnings as one line, like errors; any other warning as Python prints it."""
    if issubclass(category, EdgelearnWarning):
        print(f"edgelearn: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class _StatusLines(logging.Handler):
    """The library's status lines (loggers under 'edgelearn', INFO and up) on stderr, one plain line each, so that
    stdout holds only the result (`--json`) and a log stays readable; --quiet leaves them out."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"edgelearn: {record.getMessage()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "smoothing", 0) is None:
        from .devices import DEFAULT_SMOOTHING

        args.smoothing = DEFAULT_SMOOTHING
    status, logger = _StatusLines(), logging.getLogger("edgelearn")
    level = logger.level
    if not getattr(args, "quiet", False):
        logger.addHandler(status)
        logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", EdgelearnWarning)
            warnings.showwarning = _show_warning
            return args.func(args)
    except EdgelearnError as exc:
        print(f"edgelearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgelearn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        logger.removeHandler(status)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
