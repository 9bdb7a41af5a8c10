"""tools/transfer_diagnostics.py: the figures it reads from a checkpoint, on hand-made arrays."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from firmware_model.crossbar import N_PARAMS, P_W_MAX, P_W_MIN

TOOL = Path(__file__).resolve().parent.parent / "tools" / "transfer_diagnostics.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("transfer_diagnostics", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params(shape):
    p = np.zeros(shape + (N_PARAMS,))
    p[..., P_W_MIN], p[..., P_W_MAX] = -1.0, 1.0
    return p


def test_layer_figures_from_a_checkpoint(tmp_path):
    tool = load_tool()
    # layer 0 on two tiles (ids 0 and 1), with a fast array and buffer each; layer 1 on one tile, no transfer state
    c0 = np.array([[0.95, -0.2], [0.0, -0.96]])   # two of four within 0.1 of a bound
    c1 = np.array([[0.5, 0.5]])
    a0 = np.array([[0.0, 1.0], [-1.0, 0.0]])       # two of four at a bound
    a1 = np.array([[0.0, 0.0]])
    h0 = np.array([[127, 0], [-127, 5]], np.int8)  # two of four saturated
    h1 = np.array([[0, 0]], np.int8)
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **{"layer0.0.state": c0, "layer0.0.params": params(c0.shape),
                      "layer0.1.state": c1, "layer0.1.params": params(c1.shape),
                      "transfer.0.fast.state": a0, "transfer.0.fast.params": params(a0.shape), "transfer.0.h": h0,
                      "transfer.1.fast.state": a1, "transfer.1.fast.params": params(a1.shape), "transfer.1.h": h1,
                      "layer1.2.state": np.array([[0.1, -0.3]]), "layer1.2.params": params((1, 2))})
    with np.load(path) as z:
        first = tool.layer_figures(z, 0, 0.1)
        second = tool.layer_figures(z, 1, 0.1)
        assert tool.layer_figures(z, 2, 0.1) == {}
    everything_c = np.concatenate([c0.ravel(), c1.ravel()])
    assert first["c_abs_w"] == pytest.approx(np.abs(everything_c).mean())
    assert first["c_at_bound"] == pytest.approx(2 / 6)
    assert first["a_std"] == pytest.approx(np.concatenate([a0.ravel(), a1.ravel()]).std())
    assert first["a_at_bound"] == pytest.approx(2 / 6)
    assert first["h_saturated"] == pytest.approx(2 / 6)
    assert second == {"c_abs_w": pytest.approx(0.2), "c_at_bound": 0.0}


def test_refuses_a_directory_without_a_finished_run(tmp_path, capsys):
    tool = load_tool()
    with pytest.raises(SystemExit, match="expected a finished run"):
        tool.main([str(tmp_path)])
