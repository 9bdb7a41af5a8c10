"""The speed tools' own logic: paired blocks in bench_tile.py, the product floor of blas_floor.py, ab_epoch.py's
refusal of a directory that is not a checkout, two_cores.py's throughput and its refusals. (Their timings are
benchmarks, not tests.)"""

import importlib.util
import os
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name):
    """Import tools/<name>.py; the tools pin thread counts in os.environ at import, which is put back here."""
    saved = dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


def test_paired_blocks_alternate_and_take_the_median_ratio():
    bench = load_tool("bench_tile")
    calls = []
    a_times = iter([2.0, 4.0, 6.0, 8.0, 10.0])
    b_times = iter([1.0, 1.0, 2.0, 2.0, 1.0])

    def block_a():
        calls.append("a")
        return next(a_times)

    def block_b():
        calls.append("b")
        return next(b_times)

    result = bench.paired(block_a, block_b, 5)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # the order alternates pair by pair
    assert result["a"] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert result["ratios"] == [2.0, 4.0, 3.0, 4.0, 10.0]
    assert result["ratio_median"] == 4.0


def test_blas_floor_adds_the_epochs_products():
    tool = load_tool("blas_floor")
    result = tool.floor(repeats=1)
    p, e = result["products_s"], result["epoch_floor_s"]
    assert set(p) == {f"forward L{k} {t}" for k in range(3) for t in ("train", "eval")} | {
        "backward L1", "backward L2"} | {f"gradient L{k}" for k in range(3)}  # no backward for the first layer
    train_batch = sum(p[f"forward L{k} train"] for k in range(3)) + p["backward L1"] + p["backward L2"]
    gradient = sum(p[f"gradient L{k}"] for k in range(3))
    evaluation = sum(p[f"forward L{k} eval"] for k in range(3))
    assert e["sgd"] == pytest.approx(750 * train_batch + 12 * evaluation)
    assert e["mp"] == pytest.approx(750 * (train_batch + gradient) + 12 * evaluation)
    assert e["sp-shift"] == e["sgd"]
    assert result["paper_sweep_floor_s"] == pytest.approx(5 * 25 * (2 * e["sgd"] + e["mp"]) / 2)
    assert result["mp_training_samples_per_s_ceiling"] == pytest.approx(64 / (train_batch + gradient))


def test_ab_epoch_refuses_a_directory_that_is_not_a_checkout(tmp_path):
    tool = load_tool("ab_epoch")
    with pytest.raises(SystemExit, match=f"ab_epoch: {tmp_path}: not a checkout of edgelearn"):
        tool.run(str(tmp_path), str(TOOLS.parent), "mp", 4, 1, str(tmp_path))


def test_two_cores_throughput_is_two_copies_over_the_slower_one():
    tool = load_tool("two_cores")
    assert tool.two_core_throughput(1.0, [1.0, 1.0]) == 2.0
    assert tool.two_core_throughput(3.0, [4.0, 3.5]) == pytest.approx(1.5)  # the slower copy sets the pace
    with pytest.raises(ValueError, match="two positive times together"):
        tool.two_core_throughput(1.0, [1.0])


def test_two_cores_refuses_bad_rounds_and_a_missing_dataset(tmp_path, capsys):
    tool = load_tool("two_cores")
    with pytest.raises(SystemExit):
        tool.main(["--rounds", "0", "--workloads", "alu"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--workloads", "epoch", "--mnist", str(tmp_path / "absent")])
    assert f"--mnist {tmp_path / 'absent'}: no such directory" in capsys.readouterr().err
