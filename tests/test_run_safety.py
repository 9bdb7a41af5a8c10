"""Crash safety of long jobs (issue 12, items 1, 7, 8): errors cross process boundaries intact, one bad run never takes
a sweep down, checkpoints are written atomically and every kind of damage is one line (and recovered from in a
sweep), an existing run is never silently overwritten, and a killed sweep takes its workers with it while run
directories are locked against a second executor."""

import errno
import fcntl
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

import edgelearn.train as train_module
from edgelearn.cli import main
from edgelearn.devices import bundled_card_path
from edgelearn.errors import EdgelearnError, InputError
from edgelearn.runlock import RunBusy, run_lock
from edgelearn.sweep import (PlannedRun, RunFailed, SweepResult, SweepSpec, _drive_pool, _Progress, load_spec, plan,
                             run_sweep)
from edgelearn.train import CheckpointError, TrainConfig, _digest, _read_checkpoint, build
from test_train import fake_mnist

REPO = Path(__file__).resolve().parents[1]
TINY = ["--card", "ID170ZR5000-20ns", "--network", "784-8-10", "--max-train-samples", "96", "--batch-size", "16",
        "--quiet"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=12500, n_test=40)


def train_cli(mnist_dir, out, *extra, epochs=1, seed=0):
    return main(["train", *TINY, "--data-dir", str(mnist_dir), "--epochs", str(epochs), "--seed", str(seed),
                 "--out", str(out), *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("edgelearn: error: ") and err.count("\n") == 1, err
    return err[len("edgelearn: error: "):-1]


def spec_file(path, mnist_dir, cards, epochs=1, retries=1, seeds=(0,)):
    path.write_text(f'name = "safety"\nretries = {retries}\n[axes]\ncard = {json.dumps([str(c) for c in cards])}\n'
                    f'seed = {list(seeds)}\n[fixed]\nepochs = {epochs}\nnetwork = "784-8-10"\n'
                    f'max_train_samples = 96\nbatch_size = 16\ndata_dir = "{mnist_dir}"\n')
    return path


# ------------------------------------------------------------------------------------ 1. errors between processes

def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def error_cases():
    import importlib
    import pkgutil

    import edgelearn
    from edgelearn.hil.serial_board import BoardReportedError, HilError

    for module in pkgutil.walk_packages(edgelearn.__path__, "edgelearn."):  # every subclass there is, below
        importlib.import_module(module.name)
    return {
        EdgelearnError: EdgelearnError("plain message"),
        InputError: InputError("cards/x.json", "not valid JSON", line=3, field="model"),
        HilError: HilError("loop://: no response"),
        BoardReportedError: BoardReportedError("board refused APPLY_PULSES", 5),
        RunBusy: RunBusy("out/runs/abc", "pid 42 on host"),
        RunFailed: RunFailed("InputError: x.json: bad", "Traceback (most recent call last):\n  ...\n"),
        CheckpointError: CheckpointError("out/checkpoint.npz", "damaged checkpoint: empty file (0 bytes)"),
    }


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_edgelearn_error_survives_pickling(protocol):
    cases = error_cases()
    untested = {c for c in _all_subclasses(EdgelearnError) if c.__module__.startswith("edgelearn")} - set(cases)
    assert not untested, f"add these to error_cases(): {untested}"
    for cls, error in cases.items():
        again = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(again) is cls and str(again) == str(error) and again.args == error.args
        assert vars(again) == vars(error)
    by_name = {cls.__name__: error for cls, error in cases.items()}
    assert pickle.loads(pickle.dumps(by_name["InputError"])).field == "model"
    assert pickle.loads(pickle.dumps(by_name["BoardReportedError"])).status == 5


def test_one_bad_run_fails_alone_with_its_traceback_and_a_rerun_redoes_only_it(tmp_path, mnist_dir, capsys):
    bad = tmp_path / "bad-card.json"
    bad.write_text("{ not json")  # load_card raises InputError in the worker: it used to break the whole pool
    spec = spec_file(tmp_path / "s.toml", mnist_dir, ["ID170ZR5000-20ns", bad], retries=1)
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--jobs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "edgelearn: 1 of 2 runs failed; run the same command again to retry only those" in err
    (failure,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*/error.json")]
    assert len(list((out / "runs").glob("*/summary.json"))) == 1  # the good run completed
    assert failure["error"].startswith(f"InputError: {bad}:1: not valid JSON") and failure["attempts"] == 2
    assert failure["traceback"].startswith("Traceback (most recent call last):") and "load_card" in failure["traceback"]
    shutil.copy(bundled_card_path("ID170ZR5000-2us"), bad)  # fix the card; the rerun redoes only the failed run
    again = run_sweep(load_spec(spec), out, jobs=2, progress=False)
    assert (again.already_complete, again.completed, again.failed) == (1, 1, [])
    assert not list((out / "runs").glob("*/error.json"))


class FakePool:
    """Stands in for the process pool: runs execute at once; a run whose card is 'killer' kills 'its worker', which
    (as in a real ProcessPoolExecutor) breaks every future of the pool."""

    def __init__(self, log):
        self.log, self.broken = log, False

    def submit(self, fn, kind, config, run_dir):
        future = Future()
        self.log.append((id(self), config["card"]))
        if config["card"] == "killer" or self.broken:
            self.broken = True
            future.set_exception(BrokenProcessPool("a process in the pool was terminated abruptly"))
        else:
            future.set_result({"wall_s": 0.0, "pid": 1, "restarted": None, "skipped": None})
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_a_dead_worker_costs_only_the_runs_in_flight_with_it(tmp_path):
    runs = [PlannedRun(f"k{i}", {"card": c}, {"card": c}) for i, c in enumerate(["a", "killer", "b", "c"])]
    for run in runs:
        (tmp_path / "runs" / run.key).mkdir(parents=True)
    spec, result, log, pools = SweepSpec(axes={"card": ["a"]}, retries=1), SweepResult(str(tmp_path), 4, 0, 0), [], []

    def new_pool():
        pools.append(FakePool(log))
        return pools[-1]

    _drive_pool(new_pool, spec, tmp_path, runs, 2, _Progress(4, False, ""), result)
    assert result.completed == 3 and [f["key"] for f in result.failed] == ["k1"]
    assert result.failed[0]["attempts"] == 2 and "worker process died" in result.failed[0]["error"]
    assert len(pools) == 3  # a fresh pool after each break; the innocent run in flight with the killer was redone
    error = json.loads((tmp_path / "runs" / "k1" / "error.json").read_text())
    assert error["config"] == {"card": "killer"}


# ------------------------------------------------------------------------------------ 7. checkpoints

@pytest.fixture(scope="module")
def base_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("base") / "run"
    assert train_cli(mnist_dir, out) == 0
    return out


def _arrays(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def _rewrite(path, change, redigest=False):
    """Rewrite the checkpoint as a well-formed npz after change(arrays, meta) (optionally with a matching digest)."""
    arrays = _arrays(path)
    meta = json.loads(arrays.pop("__meta__").tobytes())
    change(arrays, meta)
    if redigest:
        meta["sha256"] = _digest(arrays, meta)
    arrays.setdefault("__meta__", np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _flip_in(path, member, offset):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        at = archive.getinfo(member).header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])
    data[at + 30 + name_len + extra_len + offset] ^= 0x10
    path.write_bytes(bytes(data))


def _set(key, value):
    def change(arrays, meta):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return change


def _nan_state(arrays, meta):
    arrays["layer0.0.state"] = arrays["layer0.0.state"].copy()
    arrays["layer0.0.state"][3, 7] = np.nan


def _no_metadata(path):
    arrays = _arrays(path)
    del arrays["__meta__"]
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _drop(key):
    def change(arrays, meta):
        (meta if key in meta else arrays).pop(key)
    return change


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "damaged checkpoint: empty file (0 bytes)"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]),
                  "damaged checkpoint: truncated (the end of the zip archive, its directory, is missing)"),
    "bit flip": (lambda p: _flip_in(p, "layer0.0.state.npy", 1000),
                 "damaged checkpoint: unreadable archive (BadZipFile: Bad CRC-32 for file 'layer0.0.state.npy')"),
    "garbage": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
                "damaged checkpoint: not an npz archive (garbage, or another kind of file)"),
    "pickled objects": (lambda p: _rewrite(p, _set("layer0.0.state", np.array([{"x": 1}], dtype=object))),
                        "damaged checkpoint: array 'layer0.0.state' holds Python objects (pickled data), refused"),
    "no metadata": (lambda p: _no_metadata(p),
                    "damaged checkpoint: no metadata (__meta__ array): not written by edgelearn train"),
    "metadata not JSON": (lambda p: _rewrite(p, _set("__meta__", np.frombuffer(b'{"format": 2, oops', np.uint8))),
                          "damaged checkpoint: the metadata is not valid JSON (Expecting property name enclosed in "
                          "double quotes at character 14)"),
    "metadata key missing": (lambda p: _rewrite(p, _drop("epochs")),
                             "damaged checkpoint: metadata field 'epochs': Field required"),
    "metadata wrong type": (lambda p: _rewrite(p, lambda arrays, meta: meta.update(epoch="one")),
                            "damaged checkpoint: metadata field 'epoch': Input should be a valid integer, unable to "
                            "parse string as an integer"),
    "epochs inconsistent": (lambda p: _rewrite(p, lambda arrays, meta: meta.update(epoch=3)),
                            "damaged checkpoint: metadata says epoch 3 but holds metrics of epochs [1]"),
    "array missing": (lambda p: _rewrite(p, _drop("layer1.1.chi")),
                      "damaged checkpoint: array 'layer1.1.chi' is missing for this network"),
    "wrong shape": (lambda p: _rewrite(p, _set("layer0.0.state", np.zeros((3, 3)))),
                    "damaged checkpoint: array 'layer0.0.state' is (3, 3) float64, expected (8, 785) float64 for this "
                    "network"),
    "values changed": (lambda p: _rewrite(p, _set("layer0.0.state", lambda a: a + 1e-12)),
                       "damaged checkpoint: integrity check failed (the SHA-256 of its arrays and metadata differs "
                       "from the one recorded when it was written)"),
    "NaN state": (lambda p: _rewrite(p, _nan_state, redigest=True),
                  "array 'layer0.0.state' holds NaN or infinite values: cannot resume from it"),
    "older format": (lambda p: _rewrite(p, _drop("format")),
                     "written by an older edgelearn, without a format number and integrity digest: it cannot be "
                     "verified; start the run again (--overwrite)"),
}



@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_on_resume(kind, base_run, mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    damage, message = DAMAGE[kind]
    damage(run / "checkpoint.npz")
    assert train_cli(mnist_dir, run, "--resume", epochs=2) == 2
    assert one_line_error(capsys) == f"{run / 'checkpoint.npz'}: {message}"
    assert json.loads((run / "summary.json").read_text())["epochs"][-1]["epoch"] == 1  # nothing was touched


def test_random_bit_flips_are_caught_or_harmless(base_run, tmp_path):
    """A single flipped bit anywhere (array data, npy and zip headers, the zip directory, the metadata) is a
    CheckpointError, or it hit a field nobody reads (zip timestamps) and the very same state loads."""
    config = TrainConfig.model_validate(json.loads((base_run / "summary.json").read_text())["config"])
    expected = build(config)[0].state_dict()
    path = base_run / "checkpoint.npz"
    raw = path.read_bytes()
    ref_meta, ref = _read_checkpoint(path, config, expected)
    with zipfile.ZipFile(path) as archive:
        regions = [(i.header_offset, i.header_offset + 200) for i in archive.infolist()]  # zip + npy headers
    end = raw.rfind(b"PK\x05\x06")
    directory = struct.unpack("<I", raw[end + 16:end + 20])[0]  # the zip's central directory and its end record
    regions += [(directory, len(raw)), (0, len(raw))]
    flipped = tmp_path / "checkpoint.npz"
    rng = np.random.default_rng(12)
    outcomes = {"caught": 0, "harmless": 0}
    for _ in range(300):
        lo, hi = regions[int(rng.integers(len(regions)))]
        data = bytearray(raw)
        data[int(rng.integers(lo, hi))] ^= 1 << int(rng.integers(8))
        flipped.write_bytes(bytes(data))
        try:
            meta, arrays = _read_checkpoint(flipped, config, expected)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{flipped}: ")
            outcomes["caught"] += 1
            continue
        assert meta == ref_meta and all(np.array_equal(arrays[k], ref[k]) for k in ref)
        outcomes["harmless"] += 1
    assert outcomes["caught"] > 150


def test_a_failed_checkpoint_write_leaves_nothing_and_the_previous_one_intact(base_run, mnist_dir, tmp_path,
                                                                             monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = (run / "checkpoint.npz").read_bytes()
    real_savez = np.savez

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module.np, "savez", disk_full)
    assert train_cli(mnist_dir, run, "--resume", epochs=2) == 2
    assert one_line_error(capsys) == (f"{run / 'checkpoint.npz'}: cannot write the checkpoint: No space left on "
                                      "device (ENOSPC); the previous checkpoint, if any, is unchanged")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.npz", "metrics.csv", "summary.json"]
    assert (run / "checkpoint.npz").read_bytes() == before
    monkeypatch.setattr(train_module.np, "savez", real_savez)  # space again: the run resumes from epoch 1
    assert train_cli(mnist_dir, run, "--resume", epochs=2) == 0
    assert json.loads((run / "summary.json").read_text())["resumed_from_epoch"] == 1


def test_a_full_disk_for_real_leaves_no_temporary_file(base_run, mnist_dir, tmp_path):
    """A real write failure from the kernel (the file-size limit: EFBIG, as ENOSPC would be) in a real process."""
    import resource

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    limit = (run / "checkpoint.npz").stat().st_size // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "edgelearn.cli", "train", *TINY, "--data-dir", str(mnist_dir),
                           "--epochs", "2", "--out", str(run), "--resume"], env=env, preexec_fn=small_files,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"edgelearn: error: {run / 'checkpoint.npz'}: cannot write the checkpoint: File too large "
                           "(EFBIG); the previous checkpoint, if any, is unchanged\n")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.npz", "metrics.csv", "summary.json"]


def test_stale_temporaries_of_a_killed_write_never_block_resume(base_run, mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    (run / ".checkpoint.npz.4242.0badf00d.tmp").write_bytes(b"PK\x03\x04 half written")
    (run / "checkpoint.npz.tmp.npz").write_bytes(b"PK\x03\x04 left by edgelearn 0.1.0 on a full disk")
    assert train_cli(mnist_dir, run, "--resume", epochs=2) == 0
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.npz", "metrics.csv", "summary.json"]


def test_an_existing_run_is_never_overwritten_silently(base_run, mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert train_cli(mnist_dir, run, seed=1) == 2
    assert one_line_error(capsys) == (f"--out {run}: already holds a training run (summary.json, metrics.csv, "
                                      "checkpoint.npz); pass --resume to continue it, --overwrite to replace it, or "
                                      "choose another directory")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    assert train_cli(mnist_dir, run, "--resume", "--overwrite") == 2
    assert "--resume and --overwrite exclude each other" in one_line_error(capsys)
    assert train_cli(mnist_dir, run, "--overwrite", seed=1, epochs=2) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["seed"] == 1 and summary["resumed_from_epoch"] == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


def test_a_sweep_restarts_a_run_whose_checkpoint_is_damaged(tmp_path, mnist_dir, capsys):
    spec = spec_file(tmp_path / "s.toml", mnist_dir, ["ID170ZR5000-20ns"], epochs=2)
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    (run,) = (out / "runs").iterdir()
    expected = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # as if killed after its last checkpoint, which is then damaged
    checkpoint = run / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    reason = (f"{checkpoint}: damaged checkpoint: truncated (the end of the zip archive, its directory, is missing); "
              "moved it to checkpoint.npz.damaged and restarted the run from epoch 1")
    assert f"edgelearn: warning: run {run.name} " in err and reason in err
    assert (run / "checkpoint.npz.damaged").stat().st_size == 1000 and reason in (run / "events.log").read_text()
    again = json.loads((run / "summary.json").read_text())
    assert again["resumed_from_epoch"] == 0 and again["test_accuracy"] == expected["test_accuracy"]
    assert again["counters"] == expected["counters"]  # the redone run is the same run


# ------------------------------------------------------------------------------------ 8. kill -9 and locks

def _hold_lock(directory, note="pid 4242 on elsewhere\n"):
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, note.encode())
    return fd


def test_a_locked_run_directory_is_busy_not_executed(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    fd = _hold_lock(run)  # another process (here: another open file description) is executing this run
    try:
        assert train_cli(mnist_dir, run) == 2
        assert one_line_error(capsys) == (f"{run}: in use by another edgelearn process (pid 4242 on elsewhere); wait "
                                          "for it to finish, or stop it first")
        spec = spec_file(tmp_path / "s.toml", mnist_dir, ["ID170ZR5000-20ns"], seeds=(0, 1))
        out = tmp_path / "out"
        plan_keys = [r.key for r in plan(load_spec(spec))]
        busy_dir = out / "runs" / plan_keys[1]
        fd2 = _hold_lock(busy_dir)
        try:
            assert main(["sweep", "run", str(spec), "--out", str(out), "--jobs", "1", "--quiet"]) == 1
            err = capsys.readouterr().err
            assert f"edgelearn: run {plan_keys[1]} " in err and "skipped: " in err and "in use by another" in err
            assert "edgelearn: 0 of 2 runs failed, 1 skipped as busy" in err
            assert not (busy_dir / "summary.json").exists() and not (busy_dir / "error.json").exists()
        finally:
            os.close(fd2)
        result = run_sweep(load_spec(spec), out, jobs=1, progress=False)
        assert (result.already_complete, result.completed, result.busy) == (1, 1, [])
    finally:
        os.close(fd)
    with run_lock(run), run_lock(run):  # re-entrant within a process, released after
        pass
    assert train_cli(mnist_dir, run) == 0


def _lock_pid(run_dir):
    try:
        note = (run_dir / ".lock").read_text().split()
    except OSError:
        return None
    return int(note[1]) if len(note) == 4 and note[0] == "pid" and note[1].isdigit() else None


def _dead(proc) -> bool:
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_of_a_sweep_takes_its_workers_and_resource_tracker_along(tmp_path, mnist_dir):
    psutil = pytest.importorskip("psutil")
    spec = spec_file(tmp_path / "s.toml", mnist_dir, ["ID170ZR5000-20ns"], epochs=3, seeds=(0, 1))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "edgelearn.cli", "sweep", "run", str(spec), "--out", str(out),
                             "--jobs", "2", "--quiet"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family = []
    try:
        parent = psutil.Process(proc.pid)
        deadline, started = time.time() + 60, []
        while time.time() < deadline and not started:  # until a worker is inside a run: it holds the run's lock
            time.sleep(0.05)  # (and writes its pid there), or, with a build without locks, wrote a first checkpoint
            started = [d for d in out.glob("runs/*") if _lock_pid(d) or (d / "checkpoint.npz").exists()]
        assert started, "no worker ever started a run"
        family = parent.children(recursive=True)
        assert {_lock_pid(d) for d in started} - {None} <= {p.pid for p in family}
        assert sum("spawn_main" in " ".join(p.cmdline()) for p in family) == 2  # the two workers
        assert sum("resource_tracker" in " ".join(p.cmdline()) for p in family) == 1
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process only, as the OOM killer or kill -9 would
        proc.wait()
        t0 = time.time()
        while time.time() - t0 < 10 and not all(_dead(p) for p in family):
            time.sleep(0.05)
        waited = time.time() - t0
        assert all(_dead(p) for p in family), f"still running after {waited:.1f} s: {family}"
        assert waited < 5
        result = run_sweep(load_spec(spec), out, jobs=2, progress=False)  # no orphan holds a run: nothing is busy
        assert (result.already_complete + result.completed, result.failed, result.busy) == (2, [], [])
    finally:
        for p in family:
            if not _dead(p):
                p.kill()
        if proc.poll() is None:
            proc.kill()
