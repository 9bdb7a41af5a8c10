"""Sweeps: spec validation, local pool vs Dask with identical runs, resume after a kill, failures reported with their
config, the report and its Pareto front."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgelearn.cli import main
from edgelearn.errors import InputError
from edgelearn.sweep import SweepSpec, load_spec, pareto_front, plan, report, run_key, run_sweep
from test_train import fake_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=12500, n_test=40)


def small_spec(path, mnist_dir, extra_axes="", name="small"):
    path.write_text(f'name = "{name}"\ntarget_accuracy = 0.1\nenergy_models = ["table", "schottky-bound"]\n'
                    '[axes]\ncard = ["ID170ZR5000-20ns", "ID170ZR5000-200us"]\nalgorithm = ["mp", "sgd"]\n'
                    f'seed = [0, 1]\n{extra_axes}'
                    f'[fixed]\nepochs = 2\nnetwork = "784-8-10"\nmax_train_samples = 96\nbatch_size = 16\n'
                    f'data_dir = "{mnist_dir}"\n')
    return path


def numbers(out):
    """Every run's summary without wall times: what must not depend on where the run executed."""
    result = {}
    for run_dir in sorted((out / "runs").iterdir()):
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.pop("wall_s")
        for m in summary["epochs"]:
            m.pop("wall_s")
        result[run_dir.name] = summary
    return result


def test_spec_errors_name_file_and_field(tmp_path, mnist_dir):
    spec = tmp_path / "s.toml"
    cases = [
        ('[axes]\ncolour = ["red"]\n', r"s\.toml: field 'colour': not a train config field"),
        ('[axes]\nlr = []\n', r"s\.toml: field 'axes.lr': an axis needs at least one value"),
        ('[axes]\nlr = [0.1]\n[fixed]\nlr = 0.2\n', r"s\.toml: field 'lr': given both as an axis and as fixed"),
        ('[axes]\ncard = ["NOPE-*"]\n', r"s\.toml: field 'axes.card': card pattern 'NOPE-\*' matches no bundled card"),
        ('[axes]\nlr = [0.1, -1.0]\n[fixed]\ndata_dir = "x"\n',
         r"s\.toml: field 'lr': Input should be greater than 0 \(run \{'lr': -1.0\}\)"),
        ('kind = "batch"\n[axes]\nlr = [0.1]\n', r"s\.toml: field 'kind': Input should be 'train' or 'stream'"),
        ('[axes\n', r"s\.toml: not valid TOML"),
        ('[axes]\nlr = [0.1]\n[when.algorithm.sgd]\nlr = 0.2\n', r"field 'when.algorithm': \[when.X\] needs X"),
        ('[axes]\nalgorithm = ["mp"]\n[when.algorithm.sgd]\nlr = 0.2\n',
         r"field 'when.algorithm': 'sgd' is not a value of axis algorithm"),
        ('[axes]\nalgorithm = ["mp"]\n[when.algorithm.mp]\nrate = 0.2\n',
         r"field 'when.algorithm.mp.rate': not a train config field"),
    ]
    for text, message in cases:
        spec.write_text(text)
        with pytest.raises(InputError, match=message):
            load_spec(spec)


def test_shipped_paper_spec_is_the_papers_grid():
    spec = load_spec("paper")
    runs = plan(spec)
    assert len(runs) == 15 and {r.config["epochs"] for r in runs} == {25}
    assert {r.axes["algorithm"] for r in runs} == {"sgd", "mp", "sp-shift"}
    assert sorted({r.axes["card"].split("-")[1] for r in runs}) == ["200ns", "200us", "20ns", "20us", "2us"]
    assert {(r.axes["algorithm"], r.config["lr"]) for r in runs} == {("mp", 0.5), ("sgd", 0.1), ("sp-shift", 0.1)}
    with pytest.raises(InputError, match=r"nope: no such spec file, and no shipped spec of that name \(shipped: "
                                          r"memory-light, paper\)"):
        load_spec("nope")


def test_label_axis_match_tables_and_a_digital_run_without_card(tmp_path, mnist_dir):
    spec = SweepSpec(
        axes={"card": ["ID170ZR5000-20ns", "ID170ZR5000-200us"], "method": ["narrow", "c-ttv2", "base"]},
        when={"method": {"narrow": {"algorithm": "mp", "pulses": {"chi_bits": 8}},
                         "c-ttv2": {"algorithm": "c-ttv2", "transfer": {"fast_lr": 50.0, "transfer_lr": 0.3}},
                         "base": {"algorithm": "digital"}}},
        match=[{"where": {"card": "*200us", "method": ["c-ttv2"]}, "set": {"transfer": {"fast_lr": 100.0}}}],
        fixed={"data_dir": str(mnist_dir)})
    runs = plan(spec)
    got = [(r.axes["card"], r.axes["method"], r.config["algorithm"], r.config["pulses"]["chi_bits"],
            r.config["transfer"] and (r.config["transfer"]["fast_lr"], r.config["transfer"]["transfer_lr"]))
           for r in runs]
    assert got == [("ID170ZR5000-20ns", "narrow", "mp", 8, None),
                   ("ID170ZR5000-20ns", "c-ttv2", "c-ttv2", None, (50.0, 0.3)),
                   (None, "base", "digital", None, None),  # one digital run: its card is dropped
                   ("ID170ZR5000-200us", "narrow", "mp", 8, None),
                   ("ID170ZR5000-200us", "c-ttv2", "c-ttv2", None, (100.0, 0.3))]  # merged with the [when] table
    assert "method" not in runs[0].config


def test_match_on_a_card_axis_given_as_a_pattern(tmp_path):
    """A [[match]] names a card by its short name, or a pattern, even where the axis expanded a pattern to card ids;
    one that matches no card of the axis is refused."""
    match = [{"where": {"card": "ID170ZR5000-200us"}, "set": {"transfer": {"fast_lr": 100.0}}},
             {"where": {"card": "*-2ms-*"}, "set": {"transfer": {"transfer_lr": 0.01}}}]
    spec = SweepSpec(axes={"card": ["ID170ZR5000-2*"], "algorithm": ["c-ttv2"]}, match=match,
                     fixed={"data_dir": str(tmp_path), "transfer": {"fast_lr": 50.0, "transfer_lr": 0.3}})
    got = {r.axes["card"].split("-")[1]: (r.config["transfer"]["fast_lr"], r.config["transfer"]["transfer_lr"])
           for r in plan(spec)}
    assert got == {"200ns": (50.0, 0.3), "200us": (100.0, 0.3), "20ns": (50.0, 0.3), "20us": (50.0, 0.3),
                   "2ms": (50.0, 0.01), "2us": (50.0, 0.3)}
    spec = SweepSpec(axes={"card": ["ID170ZR5000-2*"]}, fixed={"data_dir": str(tmp_path)},
                     match=[{"where": {"card": "ID161ZR15000"}, "set": {"lr": 0.1}}])
    with pytest.raises(InputError, match=r"field 'match\[0\].where.card': 'ID161ZR15000' is not a value of axis card"):
        plan(spec)


def test_shipped_memory_light_spec_reuses_the_paper_runs():
    runs = plan(load_spec("memory-light"))
    paper = {r.key for r in plan(load_spec("paper"))}
    assert len(runs) == 22  # 3 cards x 7 methods + one digital run
    same = {(r.axes["card"], r.axes["method"]) for r in runs if r.key in paper}
    assert same == {(f"ID170ZR5000-{w}", m) for w in ("20ns", "2us", "200us") for m in ("mp", "sgd", "sp-shift")}
    fast = {(r.axes["card"][12:], r.axes["method"]): r.config["transfer"]["fast_lr"] for r in runs
            if r.config["transfer"]}
    assert fast == {("20ns", "ttv2"): 10.0, ("2us", "ttv2"): 10.0, ("200us", "ttv2"): 100.0,
                    ("20ns", "c-ttv2"): 50.0, ("2us", "c-ttv2"): 50.0, ("200us", "c-ttv2"): 100.0,
                    ("20ns", "agad"): 50.0, ("2us", "agad"): 50.0, ("200us", "agad"): 100.0}


def test_label_axis_and_match_errors(tmp_path):
    spec = tmp_path / "s.toml"
    cases = [
        ('[axes]\nmethod = ["a"]\n', r"field 'method': not a train config field .*; a label axis needs "
                                     r"\[when.method.VALUE\] tables"),
        ('[axes]\nmethod = ["a", "b"]\n[when.method.a]\nalgorithm = "mp"\n',
         r"field 'axes.method': label axis value 'b' has no \[when.method.b\] table"),
        ('[axes]\nalgorithm = ["mp"]\n[[match]]\nwhere = { seed = 0 }\nset = { lr = 0.1 }\n',
         r"field 'match\[0\].where.seed': 'seed' is not an axis"),
        ('[axes]\nalgorithm = ["mp"]\n[[match]]\nwhere = { algorithm = ["mp", "sgd"] }\nset = { lr = 0.1 }\n',
         r"field 'match\[0\].where.algorithm': 'sgd' is not a value of axis algorithm"),
        ('[axes]\nalgorithm = ["mp"]\n[[match]]\nwhere = { algorithm = "mp" }\nset = { rate = 0.1 }\n',
         r"field 'match\[0\].set.rate': not a train config field"),
    ]
    for text, message in cases:
        spec.write_text(text)
        with pytest.raises(InputError, match=message):
            load_spec(spec)


def test_plan_expands_globs_and_keys_by_full_config(tmp_path, mnist_dir):
    spec = SweepSpec(axes={"card": ["ID170ZR5000-2*"], "lr": [0.5, 0.50]}, fixed={"data_dir": str(mnist_dir)})
    runs = plan(spec)
    assert [r.axes["card"] for r in runs] == ["ID170ZR5000-200ns-20241024T133047", "ID170ZR5000-200us-20241024T135335",
                                              "ID170ZR5000-20ns-20241024T132232", "ID170ZR5000-20us-20241024T134645",
                                              "ID170ZR5000-2ms-20241024T140002", "ID170ZR5000-2us-20241024T133858"]
    assert len({r.key for r in runs}) == 6  # lr 0.5 and 0.50 are one config: one run
    assert runs[0].config["epochs"] == 25 and runs[0].config["periphery"]["adc_bits"] == 9  # defaults are hashed too


def test_local_pool_and_dask_give_identical_runs(tmp_path, mnist_dir):
    distributed = pytest.importorskip("distributed", reason="Dask is an optional extra (edgelearn[dask])")
    spec = load_spec(small_spec(tmp_path / "s.toml", mnist_dir))
    local = run_sweep(spec, tmp_path / "local", jobs=2, progress=False)
    assert (local.planned, local.completed, local.failed, local.workers) == (8, 8, [], 2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        on_dask = run_sweep(spec, tmp_path / "dask", scheduler=cl.scheduler_address, progress=False)
    assert (on_dask.completed, on_dask.failed, on_dask.workers) == (8, [], 2)
    assert on_dask.backend.startswith("dask tcp://")
    assert numbers(tmp_path / "local") == numbers(tmp_path / "dask")
    again = run_sweep(spec, tmp_path / "local", jobs=2, progress=False)
    assert (again.already_complete, again.completed) == (8, 0)  # nothing is redone


def test_killed_sweep_resumes_with_only_the_missing_runs(tmp_path, mnist_dir):
    spec_path = small_spec(tmp_path / "s.toml", mnist_dir)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "edgelearn.cli", "sweep", "run", str(spec_path), "--out", str(out),
                             "--jobs", "1", "--quiet"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and len(done) < 3:
        time.sleep(0.2)
        done = sorted((out / "runs").glob("*/summary.json")) if (out / "runs").is_dir() else []
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-way
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    assert 3 <= len(done) < 8
    result = run_sweep(load_spec(spec_path), out, jobs=2, progress=False)
    assert result.already_complete == len(done) and result.completed == 8 - len(done) and not result.failed
    assert {k: (out / "runs" / k / "summary.json").stat().st_mtime_ns for k in done} == done  # not rewritten


def test_failing_run_is_reported_with_its_config(tmp_path, mnist_dir, capsys):
    spec_path = tmp_path / "bad.toml"
    spec_path.write_text('name = "bad"\nretries = 1\n[axes]\ncard = ["ID170ZR5000-20ns", "missing-card.json"]\n'
                         f'[fixed]\nepochs = 1\nnetwork = "784-4-10"\nmax_train_samples = 32\n'
                         f'data_dir = "{mnist_dir}"\n')
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec_path), "--out", str(out), "--jobs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert 'failed after 2 attempt(s): EdgelearnError: missing-card.json: no such card file' in err
    (failure,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*/error.json")]
    assert failure["config"]["card"] == "missing-card.json" and failure["attempts"] == 2
    assert "Traceback" in failure["traceback"]
    rep = report(out)
    assert [r["status"] for r in rep.rows] == ["complete", "failed"]
    assert "missing-card.json" in (out / "report.md").read_text()


def test_report_table_plots_and_pareto(tmp_path, mnist_dir):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    run_sweep(load_spec(small_spec(tmp_path / "s.toml", mnist_dir)), out, jobs=2, progress=False)
    assert main(["sweep", "report", str(out)]) == 0
    rep = report(out)
    assert set(rep.files) == {"report.csv", "report.md", "pareto.png", "epochs_to_target.png", "algorithms.png",
                              "memory.png"}
    rows = rep.rows
    assert len(rows) == 8 and all(r["status"] == "complete" for r in rows)
    assert {r["pulse_width_s"] for r in rows} == {2e-8, 2e-4}
    for r in rows:  # the energy columns are the energy module's, from the run's counters
        assert r["energy_j[table]"] > 0 and r["energy_j[schottky-bound]"] > r["energy_j[table]"]
    points = [(r["key"], r["energy_j[table]"], r["test_accuracy"]) for r in rows]
    assert rep.pareto == pareto_front(points)
    for key, e, a in points:  # nothing on the front is beaten; everything off it is
        beaten = any(e2 <= e and a2 >= a and (e2 < e or a2 > a) for _, e2, a2 in points)
        assert beaten == (key not in rep.pareto)
    lines = (out / "report.csv").read_text().splitlines()
    assert len(lines) == 9 and "energy_to_target_j[table]" in lines[0]
    # the controller's SRAM is a column and a third Pareto axis: a front over more objectives keeps every 2-D member
    assert all(r["sram_bytes"] > 0 and r["algorithm_sram_bytes"] >= 0 for r in rows)
    assert {r["key"] for r in rows if r["pareto_memory"]} >= set(rep.pareto)
    assert "marked †" in (out / "report.md").read_text()


def test_pareto_front_by_hand():
    points = [("a", 1.0, 0.5), ("b", 2.0, 0.9), ("c", 3.0, 0.8), ("d", 2.0, 0.9), ("e", 0.5, 0.1), ("f", 1.0, 0.4)]
    assert pareto_front(points) == ["e", "a", "b", "d"]
    # a third cost (memory): "c" (worse energy and accuracy than "b") survives with the least memory, "f" too
    with_memory = [(k, e, a, m) for (k, e, a), m in zip(points, [5, 5, 1, 5, 5, 4])]
    assert pareto_front(with_memory) == ["e", "a", "f", "b", "d", "c"]


def test_shipped_memory_light_spec_and_the_paper_keys_it_leaves_alone():
    runs = plan(load_spec("memory-light"))
    assert all((r.config["transfer"] is None) == (r.config["algorithm"] not in ("ttv2", "c-ttv2", "agad"))
               for r in runs)
    # fields added for issue 17 (pulses.chi_bits, transfer) stay out of a run's key at their default: a paper sweep
    # folder made before them keeps its keys
    config = plan(load_spec("paper"))[0].config
    assert config["transfer"] is None and config["pulses"]["chi_bits"] is None
    bare = {k: v for k, v in config.items() if k != "transfer"}
    bare["pulses"] = {k: v for k, v in config["pulses"].items() if k != "chi_bits"}
    assert run_key("train", config) == run_key("train", bare)
