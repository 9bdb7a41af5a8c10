"""Design-space sweeps: a TOML spec of axes expands into full run configs; every run lives in its own directory keyed
by a hash of its config, so a sweep resumes where it stopped and never redoes finished work. Runs execute on a local
process pool (workers pinned to one thread) or on a Dask cluster (`scheduler=ADDRESS`); `report()` aggregates a
results directory into a table and plots (accuracy vs energy with the Pareto front, epochs to target vs pulse width,
per-algorithm comparisons). `edgelearn sweep run|report|list` are thin layers over `run_sweep` / `report` / `plan`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import re
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import EdgelearnError, InputError, bundled_files, read_toml, validation_error
from .runlock import RunBusy, run_lock
from .traces import write_atomically

THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Match(BaseModel):
    """Settings tied to a combination of axis values:
    [[match]] where = {card = "X", method = ["a", "b"]}, set = {...}."""

    model_config = ConfigDict(extra="forbid")
    where: dict[str, Any] = Field(min_length=1, description="axis -> value or list of values, all of which must hold")
    set: dict[str, Any] = Field(min_length=1, description="config fields for the matching runs")


def merge_settings(base: dict, over: dict) -> dict:
    """`over` on top of `base`; tables (dicts) merge key by key, so a nested setting (transfer.fast_lr) given in two
    places combines instead of the later table replacing the earlier one whole."""
    out = dict(base)
    for name, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = merge_settings(out[name], value)
        else:
            out[name] = value
    return out


class SweepSpec(BaseModel):
    """A sweep: every combination of the axes' values, on top of the fixed options."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("sweep", description="shown in reports")
    kind: Literal["train", "stream"] = Field("train", description="train: MNIST training runs (TrainConfig fields); "
                                                                  "stream: `edgelearn run` scenarios (RunConfig)")
    axes: dict[str, list[Any]] = Field(description="config field -> values; card values may be glob patterns over "
                                                   "the bundled cards (e.g. 'ID170ZR5000-*'). An axis that is not a "
                                                   "config field is a label axis: each of its values names a "
                                                   "[when.AXIS.VALUE] table that says what the value means")
    fixed: dict[str, Any] = Field(default_factory=dict, description="config fields shared by every run")
    when: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="settings tied to an axis value, e.g. [when.algorithm.sgd] lr = 0.1: runs "
        "whose algorithm is sgd get lr 0.1 (over the fixed options; an axis of the same field wins)")
    match: list[Match] = Field(default_factory=list, description="[[match]] tables: settings for the runs whose axis "
                                                                 "values match every entry of `where` (a value or a "
                                                                 "list of values per axis), applied after `when`")
    metric: str = Field("test_accuracy", description="summary field the report ranks runs by")
    goal: Literal["max", "min"] = "max"
    target_accuracy: float = Field(0.95, gt=0, le=1, description="validation accuracy for epochs- and "
                                                                 "energy-to-target")
    energy_models: list[str] = Field(["table"], min_length=1, description="energy models the report costs runs in")
    retries: int = Field(1, ge=0, description="re-executions of a run that raised, within one sweep invocation")


@dataclass
class PlannedRun:
    key: str
    axes: dict
    config: dict  # the full config (every field, defaults included): what the key hashes


def bundled_specs() -> dict[str, Path]:
    """The shipped sweep specs (traces/sweeps/*.toml, installed as edgelearn.bundled), by name."""
    return bundled_files("sweeps", "*.toml")


def spec_path(path_or_name: str | Path) -> Path:
    """A spec file, or the name of a shipped spec (e.g. 'paper')."""
    path = Path(path_or_name)
    if path.exists() or path.suffix == ".toml":
        return path
    specs = bundled_specs()
    if str(path_or_name) in specs:
        return specs[str(path_or_name)]
    raise InputError(path, f"no such spec file, and no shipped spec of that name (shipped: {', '.join(sorted(specs))})")


def load_spec(path: str | Path) -> SweepSpec:
    path = spec_path(path)
    data = read_toml(path)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, "spec") from None
    plan(spec, source=path)  # every run's config is validated here, before anything runs
    return spec


def _config_class(kind: str):
    if kind == "train":
        from .train import TrainConfig

        return TrainConfig
    from .continual import RunConfig

    return RunConfig


def _expand_cards(values: list, source) -> list:
    """Glob patterns (containing * ? [) expand to the matching bundled card ids, sorted, or, for a pattern with a
    folder or ending in .json, to the matching card files (e.g. a bootstrap ensemble: "cards/ID170-b*.json",
    relative to the working directory); other values stay."""
    import glob

    from .devices import bundled_cards

    out = []
    for value in values:
        if isinstance(value, str) and any(ch in value for ch in "*?[") and ("/" in value or value.endswith(".json")):
            files = sorted(glob.glob(value))
            if not files:
                raise InputError(source, f"card pattern '{value}' matches no card file", field="axes.card")
            out += files
        elif isinstance(value, str) and any(ch in value for ch in "*?["):
            ids = sorted(bundled_cards())
            matches = [c for c in ids if fnmatch.fnmatch(c, value)]
            if not matches:
                raise InputError(source, f"card pattern '{value}' matches no bundled card", field="axes.card")
            out += matches
        else:
            out.append(value)
    return out


# Config fields added after sweeps were in use, left out of a run's key while they hold their default (None), so a
# sweep folder made before them keeps its keys and resumes: (section, field).
KEY_OMIT_WHEN_DEFAULT = (("pulses", "amplitude_up_v"), ("pulses", "amplitude_down_v"), ("pulses", "chi_bits"),
                         (None, "transfer"))


def run_key(kind: str, config: dict) -> str:
    """The run's identity: a hash of its kind and full config (defaults included, but KEY_OMIT_WHEN_DEFAULT)."""
    from .train import drop_unset

    config = drop_unset(json.loads(json.dumps(config, default=str)), KEY_OMIT_WHEN_DEFAULT)
    blob = json.dumps({"kind": kind, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def label_axes(spec: SweepSpec) -> list[str]:
    """The axes that are not config fields, in the spec's order: their values are [when.AXIS.VALUE] tables."""
    fields = set(_config_class(spec.kind).model_fields)
    return [name for name in spec.axes if name not in fields]


def series_axis(spec: SweepSpec) -> str:
    """What the report's plots colour runs by: the first label axis (e.g. method = mp / mp-int8 / ttv2), else the
    algorithm."""
    return next(iter(label_axes(spec)), "algorithm")


def _check_settings(settings: dict, fields: set, spec: SweepSpec, source, where: str) -> None:
    for name in settings:
        if name not in fields:
            raise InputError(source, f"not a {spec.kind} config field", field=f"{where}.{name}")


def _matches(value, wanted, card: bool = False) -> bool:
    """An axis value against a [[match]] entry (a value or a list): equal to one, or for the card axis a glob pattern
    over it or a bundled card's short name ('ID170ZR5000-200us' for the card id 'ID170ZR5000-200us-20241024T135335'
    that a pattern in the axis expanded to)."""
    for one in (wanted if isinstance(wanted, list) else [wanted]):
        if str(value) == str(one):
            return True
        if card and isinstance(one, str) and (fnmatch.fnmatchcase(str(value), one)
                                              or str(value).startswith(one + "-")):
            return True
    return False


def plan(spec: SweepSpec, source: str | Path = "spec") -> list[PlannedRun]:
    """Every run of the sweep, in axis order, each validated; one-line errors naming the spec and field."""
    cls = _config_class(spec.kind)
    fields = set(cls.model_fields)
    labels = set(label_axes(spec))
    for name in list(spec.axes) + list(spec.fixed):
        if name not in fields and not (name in labels and name in spec.when):
            hint = f"; a label axis needs [when.{name}.VALUE] tables" if name in spec.axes else ""
            raise InputError(source, f"not a {spec.kind} config field (known: {', '.join(sorted(fields))}){hint}",
                             field=name)
    both = set(spec.axes) & set(spec.fixed)
    if both:
        raise InputError(source, "given both as an axis and as fixed", field=sorted(both)[0])
    for axis, cases in spec.when.items():
        if axis not in spec.axes:
            raise InputError(source, "[when.X] needs X to be an axis", field=f"when.{axis}")
        for value, settings in cases.items():
            if value not in {str(v) for v in spec.axes[axis]}:
                raise InputError(source, f"'{value}' is not a value of axis {axis}", field=f"when.{axis}")
            _check_settings(settings, fields, spec, source, f"when.{axis}.{value}")
    for axis in sorted(labels):
        missing = [str(v) for v in spec.axes[axis] if str(v) not in spec.when[axis]]
        if missing:
            raise InputError(source, f"label axis value '{missing[0]}' has no [when.{axis}.{missing[0]}] table",
                             field=f"axes.{axis}")
    axes = {name: list(values) for name, values in spec.axes.items()}
    for name, values in axes.items():
        if not values:
            raise InputError(source, "an axis needs at least one value", field=f"axes.{name}")
    if "card" in axes:
        axes["card"] = _expand_cards(axes["card"], source)
    for n, rule in enumerate(spec.match):
        for axis, wanted in rule.where.items():
            if axis not in spec.axes:
                raise InputError(source, f"'{axis}' is not an axis", field=f"match[{n}].where.{axis}")
            for value in (wanted if isinstance(wanted, list) else [wanted]):
                if not any(_matches(v, value, axis == "card") for v in axes[axis]):
                    raise InputError(source, f"'{value}' is not a value of axis {axis}",
                                     field=f"match[{n}].where.{axis}")
        _check_settings(rule.set, fields, spec, source, f"match[{n}].set")
    runs, seen = [], set()
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        chosen = dict(zip(names, combo))
        settings = dict(spec.fixed)
        for axis, cases in spec.when.items():
            settings = merge_settings(settings, cases.get(str(chosen[axis]), {}))
        for rule in spec.match:
            if all(_matches(chosen[axis], wanted, axis == "card") for axis, wanted in rule.where.items()):
                settings = merge_settings(settings, rule.set)
        settings.update({name: value for name, value in chosen.items() if name not in labels})
        try:
            config = cls.model_validate(settings).model_dump(mode="json")
        except ValidationError as exc:
            raise validation_error(source, exc, suffix=f" (run {chosen})") from None
        key = run_key(spec.kind, config)
        if key not in seen:  # two axis values that mean the same config are one run
            seen.add(key)
            # an axis value the config dropped (a digital run's card) is recorded as the config has it
            axes_of_run = {name: (config[name] if name in config and config[name] is None else value)
                           for name, value in chosen.items()}
            runs.append(PlannedRun(key, axes_of_run, config))
    return runs


# ---------------------------------------------------------------------------------------------------- one run

class RunFailed(EdgelearnError):
    """A run raised in a worker: the error's type and message and the worker's traceback, as plain strings, so it
    always reaches the parent (whatever the original exception held) and error.json keeps the traceback."""

    def __init__(self, error: str, traceback_text: str):
        self.error = error
        self.traceback_text = traceback_text
        super().__init__(error)


def execute(kind: str, config: dict, run_dir: str) -> dict:
    """Run one config into run_dir (what a worker executes), holding the run's lock (runlock: another process
    executing the same run makes this raise RunBusy). A training run resumes from its checkpoint if one is there;
    a checkpoint that cannot be resumed from (damaged, see train.CheckpointError) is moved aside to
    checkpoint.npz.damaged, noted in the run's events.log, and the run starts again from epoch 1 instead of failing on
    every rerun. The summary is written last, atomically, so its presence means the run is complete."""
    t0 = time.perf_counter()
    out = Path(run_dir)
    restarted = None
    with run_lock(out):
        if is_complete(out):  # finished by another process since the sweep was planned
            return {"wall_s": 0.0, "pid": os.getpid(), "restarted": None, "skipped": "complete"}
        if kind == "train":
            from .train import CHECKPOINT, CheckpointError, TrainConfig, train

            cfg = TrainConfig.model_validate(config)
            checkpoint = out / CHECKPOINT
            resume = checkpoint.is_file()
            try:
                train(cfg, out=out, resume=resume, overwrite=not resume, progress=False)
            except CheckpointError as exc:  # raised only while reading the checkpoint, before any training
                damaged = out / (CHECKPOINT + ".damaged")
                os.replace(checkpoint, damaged)
                restarted = f"{exc}; moved it to {damaged.name} and restarted the run from epoch 1"
                _log_event(out, restarted)
                train(cfg, out=out, overwrite=True, progress=False)
        else:
            from .continual import RunConfig, run_stream

            result = run_stream(RunConfig.model_validate(config), progress=False)
            write_atomically(out / "summary.json", result.to_json() + "\n")
    return {"wall_s": time.perf_counter() - t0, "pid": os.getpid(), "restarted": restarted, "skipped": None}


def _log_event(run_dir: Path, text: str) -> None:
    """One timestamped line in the run's events.log (what the sweep did to the run besides running it)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError), open(run_dir / "events.log", "a") as f:
        f.write(f"{stamp} pid {os.getpid()}: {text}\n")


def _worker_execute(kind: str, config: dict, run_dir: str) -> dict:
    """execute() as submitted to a worker: any error comes back as RunFailed (message + traceback text), RunBusy as
    itself; both are plain picklable errors, so one bad run can never break the pool."""
    try:
        return execute(kind, config, run_dir)
    except RunBusy:
        raise
    except Exception as exc:  # noqa: BLE001 - every error of a run is recorded, with its traceback
        raise RunFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()) from None


PARENT_GONE_EXIT = 75  # exit status of a local worker whose sweep process died (EX_TEMPFAIL)


def _init_worker(parent_pid: int) -> None:
    """Local pool initializer: one thread per worker, and a watchdog that ends the worker when the sweep process that
    started it is gone (kill -9 included: the worker is re-parented, os.getppid() changes). Without it an orphaned
    worker trains on (and keeps the resource tracker alive) while a rerun starts the same run again."""
    _pin_threads()
    if os.getppid() != parent_pid:
        os._exit(PARENT_GONE_EXIT)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="edgelearn-parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int, interval_s: float = 0.2) -> None:
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent_pid:
            os._exit(PARENT_GONE_EXIT)  # at once: the run's lock is released by the kernel, its checkpoint stays


def _pin_threads() -> None:
    """One numba / BLAS thread per worker (the environment was set before the spawn too)."""
    for name in THREAD_ENV:
        os.environ[name] = "1"
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass


@contextlib.contextmanager
def _single_thread_env():
    saved = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: "1" for k in THREAD_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    out: str
    planned: int
    already_complete: int
    completed: int
    failed: list = field(default_factory=list)  # [{key, axes, error, attempts}]
    busy: list = field(default_factory=list)  # [{key, axes, error}]: executed by another live process, skipped
    restarted: list = field(default_factory=list)  # [{key, axes, reason}]: damaged checkpoint set aside, run redone
    wall_s: float = 0.0
    backend: str = "local"
    workers: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def is_complete(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


_SCHEDULER = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?$")
DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_scheduler(address: str) -> str:
    """A Dask scheduler address `[tcp|tls|ws|wss|ucx://]host:port`, or a one-line EdgelearnError (checked before
    anything is written or any connection is tried)."""
    if address.startswith("inproc://"):  # an in-process LocalCluster (processes=False), from the Python API
        return address
    match = _SCHEDULER.match(address.strip())
    scheme = (match.group("scheme") or "tcp") if match else None
    if match is None or scheme not in DASK_SCHEMES or match.group("port") is None or \
            not 1 <= int(match.group("port")) <= 65535:
        raise EdgelearnError(f"--scheduler: expected a Dask scheduler address like tcp://host:8786 "
                             f"(schemes {', '.join(DASK_SCHEMES)}; port 1-65535), got '{address}'")
    return address.strip()


def run_sweep(spec: SweepSpec, out: str | Path, jobs: int | None = None, scheduler: str | None = None,
              progress: bool = True, spec_text: str | None = None) -> SweepResult:
    """Execute every run of the spec not yet complete in `out`; failed runs are retried `spec.retries` times, then
    recorded in runs/KEY/error.json (with config and traceback) and reported; the other runs go on. A run that
    another live process is executing (its directory is locked) is skipped and reported as busy. Re-running the same
    command resumes: only failed, busy and pending runs are executed."""
    t0 = time.perf_counter()
    if scheduler:
        scheduler = check_scheduler(scheduler)
    out = Path(out)
    runs = plan(spec)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if spec_text is not None:
        write_atomically(out / "spec.toml", spec_text)
    write_atomically(out / "sweep.json", json.dumps({"name": spec.name, "kind": spec.kind, "metric": spec.metric,
                                                     "goal": spec.goal, "target_accuracy": spec.target_accuracy,
                                                     "energy_models": spec.energy_models,
                                                     "series": series_axis(spec),
                                                     "runs": [r.key for r in runs]}, indent=2) + "\n")
    pending = []
    for run in runs:
        run_dir = out / "runs" / run.key
        run_dir.mkdir(exist_ok=True)
        write_atomically(run_dir / "config.json", json.dumps({"kind": spec.kind, "key": run.key, "axes": run.axes,
                                                              "config": run.config}, indent=2) + "\n")
        if not is_complete(run_dir):
            pending.append(run)
    result = SweepResult(str(out), len(runs), len(runs) - len(pending), 0)
    if pending:
        if scheduler:
            _run_dask(spec, out, pending, scheduler, progress, result)
        else:
            _run_local(spec, out, pending, jobs or min(len(pending), os.cpu_count() or 1), progress, result)
    result.wall_s = time.perf_counter() - t0
    return result


class _Progress:
    def __init__(self, total: int, enabled: bool, label: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="run")
        self.done = self.failed = self.busy = self.running = 0

    def update(self, done: int = 0, failed: int = 0, running: int | None = None, busy: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.busy += busy
        if running is not None:
            self.running = running
        if self.bar is not None:
            self.bar.set_postfix(finished=self.done, running=self.running, failed=self.failed, busy=self.busy,
                                 refresh=False)
            self.bar.update(done + failed + busy)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _record_failure(out: Path, spec: SweepSpec, run: PlannedRun, error: BaseException | str, attempts: int,
                    result: SweepResult) -> None:
    if isinstance(error, RunFailed):  # the worker's own traceback
        text, message = error.traceback_text, error.error
    elif isinstance(error, BaseException):
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        message = f"{type(error).__name__}: {error}"
    else:
        text = message = str(error)
    record = {"key": run.key, "axes": run.axes, "config": run.config, "error": message, "traceback": text,
              "attempts": attempts}
    write_atomically(out / "runs" / run.key / "error.json", json.dumps(record, indent=2) + "\n")
    result.failed.append({"key": run.key, "axes": run.axes, "error": message, "attempts": attempts})


def _finished(run: PlannedRun, value: dict, result: SweepResult, bar: _Progress) -> None:
    if value.get("restarted"):
        result.restarted.append({"key": run.key, "axes": run.axes, "reason": value["restarted"]})
    result.completed += 1
    bar.update(done=1)


def _busy(run: PlannedRun, error: RunBusy, result: SweepResult, bar: _Progress) -> None:
    result.busy.append({"key": run.key, "axes": run.axes, "error": str(error)})
    bar.update(busy=1)


def _run_local(spec, out, pending, jobs, progress, result):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    result.backend, result.workers = "local", jobs
    bar = _Progress(len(pending), progress, f"sweep {spec.name} ({jobs} workers)")
    context = multiprocessing.get_context("spawn")
    pools = []

    def new_pool():
        pools.append(ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                         initargs=(os.getpid(),)))
        return pools[-1]

    try:
        with _single_thread_env():
            _drive_pool(new_pool, spec, out, pending, jobs, bar, result)
    except KeyboardInterrupt:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        raise EdgelearnError(f"interrupted after {result.completed} of {len(pending)} runs: run the same command again "
                             "to finish the rest (complete runs are kept, training runs resume from their last "
                             "epoch)") from None
    for pool in pools:
        pool.shutdown(wait=True)
    bar.close()


def _drive_pool(new_pool, spec, out, pending, jobs, bar, result):
    """At most `jobs` runs in flight (so every submitted run is running). A run that raises is retried up to
    spec.retries times, then recorded; a worker that dies (killed, out of memory, crashed) breaks only its pool: the
    runs that were in it are charged one attempt, a new pool is started and the sweep goes on."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    queue = list(pending)
    attempts = {r.key: 0 for r in pending}
    futures = {}
    pool = new_pool()

    def retry_or_record(run, error):
        if attempts[run.key] <= spec.retries:
            queue.insert(0, run)
            return
        _record_failure(out, spec, run, error, attempts[run.key], result)
        bar.update(failed=1)

    while queue or futures:
        while queue and len(futures) < jobs:
            run = queue.pop(0)
            attempts[run.key] += 1
            (out / "runs" / run.key / "error.json").unlink(missing_ok=True)
            futures[pool.submit(_worker_execute, spec.kind, run.config, str(out / "runs" / run.key))] = run
        bar.update(running=len(futures))
        finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
        broken = False
        while finished:
            for future in finished:
                run = futures.pop(future)
                try:
                    value = future.result()
                except BrokenProcessPool:
                    broken = True
                    retry_or_record(run, "worker process died (killed, out of memory or crashed) while this run was "
                                         "in flight")
                except RunBusy as exc:
                    _busy(run, exc, result, bar)
                except Exception as exc:  # noqa: BLE001 - any error of a run is recorded with its config
                    retry_or_record(run, exc)
                else:
                    _finished(run, value, result, bar)
            # a broken pool fails every run still in it at once: collect them all before starting a new pool
            finished = wait(list(futures))[0] if broken else set()
        if broken:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = new_pool()
        bar.update(running=len(futures))


def _run_dask(spec, out, pending, scheduler, progress, result):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise EdgelearnError("--scheduler needs Dask: pip install 'edgelearn[dask]' (dask[distributed])") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise EdgelearnError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    with client:
        workers = len(client.scheduler_info().get("workers", {}))
        result.backend, result.workers = f"dask {scheduler}", workers
        client.run(_pin_threads)
        bar = _Progress(len(pending), progress, f"sweep {spec.name} (dask, {workers} workers)")
        futures = {}
        for run in pending:
            future = client.submit(_worker_execute, spec.kind, run.config, str((out / "runs" / run.key).resolve()),
                                   key=f"edgelearn-run-{run.key}", pure=False, retries=spec.retries)
            futures[future] = run
        bar.update(running=min(workers, len(futures)))
        remaining = len(futures)
        for future in as_completed(list(futures)):
            run = futures[future]
            remaining -= 1
            if future.status == "finished":
                _finished(run, future.result(), result, bar)
            else:
                exc = future.exception()
                if isinstance(exc, RunBusy):
                    _busy(run, exc, result, bar)
                else:
                    _record_failure(out, spec, run, exc, spec.retries + 1, result)
                    bar.update(failed=1)
            bar.update(running=min(workers, remaining))
        bar.close()


# ---------------------------------------------------------------------------------------------------- the report

@dataclass
class SweepReport:
    out: str
    name: str
    kind: str
    metric: str
    goal: str
    rows: list  # one dict per run: axes, status, figures
    pareto: list  # keys on the accuracy / energy Pareto front
    files: list

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def pareto_front(points: list[tuple]) -> list[str]:
    """Keys of the points (key, energy, accuracy) or (key, energy, accuracy, memory) that no other point beats: none
    has energy <= and accuracy >= (and memory <=) with one of them strict. Sorted by energy."""
    def beats(p, q):  # p dominates q
        costs_p, costs_q = (p[1], *p[3:]), (q[1], *q[3:])
        no_worse = all(x <= y for x, y in zip(costs_p, costs_q)) and p[2] >= q[2]
        return no_worse and (any(x < y for x, y in zip(costs_p, costs_q)) or p[2] > q[2])

    front = [(p[1], p[0]) for p in points if not any(beats(q, p) for q in points)]
    return [k for _, k in sorted(front)]


def _train_row(summary: dict, spec: dict, energy_models) -> dict:
    from .energy import report_run

    target = spec["target_accuracy"]
    epochs = summary["epochs"]
    hit = next((m["epoch"] for m in epochs if m["validation_accuracy"] >= target), None)
    config = summary["config"]
    counters = summary.get("counters", {})
    row = {"card_id": summary.get("card_id"), "algorithm": config["algorithm"], "lr": config["lr"],
           "seed": config["seed"], "epochs": len(epochs), "test_accuracy": summary["test_accuracy"],
           "final_validation_accuracy": epochs[-1]["validation_accuracy"] if epochs else None,
           "epochs_to_target": hit,
           "pulses": sum(counters.get(k, 0) for k in ("pulses_up", "pulses_down")),
           "calibration_pulses": sum(counters.get(k, 0) for k in ("calibration_pulses_up",
                                                                   "calibration_pulses_down")),
           "wall_s": summary.get("wall_s")}
    memory = summary.get("memory") or {}
    if memory:  # the controller's SRAM: the algorithm's own state (chi, H, chopper, references) and the whole
        items = memory.get("items", {})
        row["algorithm_sram_bytes"] = sum(items.get(k, 0) for k in ("accumulator", "buffer", "transfer_state"))
        row["sram_bytes"] = memory.get("total_bytes")
    for model in energy_models:
        if summary.get("card_id"):
            r = report_run(summary, model, targets=(target,))
            row[f"energy_j[{model.name}]"] = r.components_j["total"]
            row[f"energy_to_target_j[{model.name}]"] = r.energy_to_target_j[f"{target:.2f}"]
        else:
            row[f"energy_j[{model.name}]"] = None
            row[f"energy_to_target_j[{model.name}]"] = None
    return row


def _stream_row(summary: dict, spec: dict, energy_models) -> dict:
    return {"card_id": summary.get("card_id"), "algorithm": summary["config"]["algorithm"],
            "lr": summary["config"]["lr"], "seed": summary["config"]["seed"],
            "prequential_accuracy": summary["prequential_accuracy"], "accuracy_before": summary["accuracy_before"],
            "accuracy_after": summary["accuracy_after"], "pulses": summary["pulses"],
            f"energy_j[{summary['energy_model']}]": summary["energy_per_day_j"],
            "energy_per_day_j": summary["energy_per_day_j"], "wall_s": summary["wall_s"]}


def report(out: str | Path, plots: bool = True) -> SweepReport:
    """Aggregate a sweep directory: report.csv, report.md and (with matplotlib) pareto.png, epochs_to_target.png,
    algorithms.png. Incomplete runs are listed as pending, failed ones with their error."""
    import csv
    import io

    from .devices import load_card
    from .energy import load_energy_model

    out = Path(out)
    try:
        spec = json.loads((out / "sweep.json").read_text())
    except FileNotFoundError:
        raise InputError(out / "sweep.json", "not a sweep directory (run `edgelearn sweep run` first)") from None
    energy_models = [load_energy_model(m) for m in spec["energy_models"]] if spec["kind"] == "train" else []
    rows = []
    for key in spec["runs"]:
        run_dir = out / "runs" / key
        try:
            meta = json.loads((run_dir / "config.json").read_text())
        except FileNotFoundError:
            raise InputError(run_dir / "config.json", "missing: the sweep directory is damaged") from None
        row = {"key": key, **{f"axis:{k}": v for k, v in meta["axes"].items()}}
        if is_complete(run_dir):
            summary = json.loads((run_dir / "summary.json").read_text())
            row["status"] = "complete"
            row.update(_train_row(summary, spec, energy_models) if spec["kind"] == "train"
                       else _stream_row(summary, spec, energy_models))
            if row.get("card_id"):
                try:
                    row["pulse_width_s"] = load_card(meta["config"]["card"]).pulse_width_s
                except EdgelearnError:
                    row["pulse_width_s"] = None
            row["metric"] = summary.get(spec["metric"])
        elif (run_dir / "error.json").exists():
            row["status"] = "failed"
            row["error"] = json.loads((run_dir / "error.json").read_text())["error"]
        else:
            row["status"] = "pending"
        rows.append(row)
    done = [r for r in rows if r["status"] == "complete"]
    energy_key = (f"energy_j[{energy_models[0].name}]" if energy_models else
                  next((k for k in (done[0] if done else {}) if k.startswith("energy_j[")), None))
    points = [(r["key"], r[energy_key], r["metric"]) for r in done
              if energy_key and r.get(energy_key) is not None and r.get("metric") is not None]
    if spec["goal"] == "min":
        points = [(k, e, -a) for k, e, a in points]
    front = pareto_front(points)
    by_key = {r["key"]: r for r in done}
    with_memory = [(k, e, a, by_key[k]["sram_bytes"]) for k, e, a in points if by_key[k].get("sram_bytes") is not None]
    memory_front = pareto_front(with_memory) if with_memory else []
    for r in rows:
        r["pareto"] = r["key"] in front
        if with_memory:
            r["pareto_memory"] = r["key"] in memory_front
    columns = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    write_atomically(out / "report.csv", buffer.getvalue())
    files = ["report.csv", "report.md"]
    if plots and done:
        series = spec.get("series", "algorithm")
        series_of = ((lambda r: r["algorithm"]) if series == "algorithm"
                     else (lambda r: str(r.get(f"axis:{series}"))))
        files += _plots(out, spec, done, energy_key, front, memory_front, series_of)
    write_atomically(out / "report.md", _markdown(spec, rows, columns, front, files))
    return SweepReport(str(out), spec["name"], spec["kind"], spec["metric"], spec["goal"], rows, front, files)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(spec: dict, rows: list, columns: list, front: list, files: list) -> str:
    done = [r for r in rows if r["status"] == "complete"]
    reverse = spec["goal"] == "max"
    done.sort(key=lambda r: (r.get("metric") is None, -(r["metric"] or 0) if reverse else (r["metric"] or 0)))
    axes = [c for c in columns if c.startswith("axis:")]
    hidden = {"status", "error", "pareto", "pareto_memory", "key", "metric"} | {c[5:] for c in axes}
    shown = axes + [c for c in columns if c not in hidden and not c.startswith("axis:")]
    lines = [f"# Sweep `{spec['name']}`", "",
             f"{len(rows)} runs: {len(done)} complete, {sum(r['status'] == 'failed' for r in rows)} failed, "
             f"{sum(r['status'] == 'pending' for r in rows)} pending. Ranked by `{spec['metric']}` ({spec['goal']}); "
             f"target validation accuracy {spec['target_accuracy']}. Pareto front (accuracy vs energy) marked *"
             + ("; with the controller's SRAM as a third axis, marked †." if any("pareto_memory" in r for r in done)
                else "."), "",
             "| run | " + " | ".join(c[5:] if c.startswith("axis:") else c for c in shown) + " |",
             "|" + "---|" * (len(shown) + 1)]
    for r in done:
        mark = (" *" if r["pareto"] else "") + (" †" if r.get("pareto_memory") else "")
        lines.append(f"| {r['key'][:8]}{mark} | " + " | ".join(_fmt(r.get(c)) for c in shown) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (config and traceback in runs/KEY/error.json):", ""]
        lines += [f"- {r['key']} {json.dumps({k[5:]: v for k, v in r.items() if k.startswith('axis:')})}: "
                  f"{r['error']}" for r in failed]
    pictures = [f for f in files if f.endswith(".png")]
    if pictures:
        lines += [""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def _plots(out: Path, spec: dict, done: list, energy_key: str | None, front: list,
           memory_front: list = (), series_of=lambda r: r["algorithm"]) -> list[str]:
    try:
        from .report import _pyplot

        plt = _pyplot()
    except EdgelearnError:
        return []
    import numpy as np

    files = []
    algorithms = list(dict.fromkeys(series_of(r) for r in done))  # in the spec's order
    colors = {a: f"C{k}" for k, a in enumerate(algorithms)}
    def scatter(name, x_of, xlabel, front_points, front_style, log=False):
        """One accuracy-against-x plot, a colour per series (algorithm or label), the Pareto runs drawn over it."""
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for a in algorithms:
            pts = [(x_of(r), r["metric"]) for r in done if series_of(r) == a and x_of(r)]
            if pts:
                ax.scatter(*zip(*pts), color=colors[a], label=a, s=22)
        if front_points:
            front_style(ax, front_points)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(spec["metric"])
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)

    if energy_key:
        scatter("pareto.png", lambda r: r.get(energy_key), energy_key.replace("energy_j", "total energy, J "),
                sorted((r[energy_key], r["metric"]) for r in done if r["key"] in front),
                lambda ax, p: ax.plot(*zip(*p), color="k", lw=1, ls="--", label="Pareto front"), log=True)
    if any(r.get("sram_bytes") for r in done):
        scatter("memory.png", lambda r: (r.get("sram_bytes") or 0) / 1024, "controller SRAM, KiB",
                [(r["sram_bytes"] / 1024, r["metric"]) for r in done if r["key"] in memory_front],
                lambda ax, p: ax.scatter(*zip(*p), facecolors="none", edgecolors="k", s=80,
                                         label="Pareto (energy, SRAM)"))
    with_width = [r for r in done if r.get("pulse_width_s")]
    if with_width and spec["kind"] == "train":
        for name, field_name, label in (("epochs_to_target.png", "epochs_to_target",
                                         f"epochs to {spec['target_accuracy']:.0%} validation"),
                                        ("algorithms.png", "metric", spec["metric"])):
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            for a in algorithms:
                by_width: dict = {}
                for r in with_width:
                    if series_of(r) == a and r.get(field_name) is not None:
                        by_width.setdefault(r["pulse_width_s"], []).append(r[field_name])
                if by_width:
                    w = sorted(by_width)
                    mean = [np.mean(by_width[x]) for x in w]
                    std = [np.std(by_width[x]) for x in w]
                    ax.errorbar(w, mean, yerr=std, color=colors[a], marker="o", capsize=3, label=a)
            if not ax.has_data():
                plt.close(fig)
                continue
            ax.set_xscale("log")
            ax.set_xlabel("pulse width, s")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
            ax.set_title("mean ± std over seeds; runs that never reach the target are left out"
                         if field_name == "epochs_to_target" else "mean ± std over seeds", fontsize=8)
            fig.tight_layout()
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            files.append(name)
    return files
