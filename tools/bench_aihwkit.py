"""Optional side-by-side benchmark on IBM aihwkit, one thread: the tile workload of bench_tile.py and an MLP epoch.

aihwkit needs torch, which is not a dependency of edgelearn, so this script lives in its own virtual environment and
imports only torch, aihwkit, numpy and the standard library (never edgelearn):

    bash tools/aihwkit_venv.sh .aihwkit-venv          # once: creates the venv (torch 2.10.0 + aihwkit 1.1.0)
    .aihwkit-venv/bin/python tools/bench_aihwkit.py [--updates 200] [--samples 6400] [--mnist DIR] [--seed 0] [--json]

Everything runs on one thread: OMP/MKL/OPENBLAS_NUM_THREADS=1 are set before torch is imported, and
torch.set_num_threads(1).

Workload (a), pulsed rank-1 tile update:
    AnalogTile(256 outputs, 784 inputs, no bias) from SingleRPUConfig with
    SoftBoundsDevice(dw_min=0.001, w_min=-1, w_max=1, dw_min_std=0.3, dw_min_dtod=0, up_down_dtod=0, w_min_dtod=0,
    w_max_dtod=0); update parameters pulse_type=StochasticCompressed, desired_bl=31, update_bl_management=True,
    update_management=True; learning rate 0.01. Inputs x ~ U[0, 1] (64 fixed vectors of 784, cycled) and
    d ~ N(0, 0.1^2) (64 fixed vectors of 256, cycled), seeded with --seed. Batch-1 updates through tile.update(x, d)
    with x of shape (1, 784) and d of shape (1, 256). 10 warm-up updates, then 5 timed blocks of --updates updates
    (time.perf_counter); reported: median and best ns per cell per update = block time / updates / (256 * 784) * 1e9.

Workload (b), mixed-precision MLP training throughput:
    784-256-128-10 sigmoid MLP: AnalogSequential(AnalogLinear(784, 256), Sigmoid, AnalogLinear(256, 128), Sigmoid,
    AnalogLinear(128, 10), LogSoftmax), every AnalogLinear with bias, NLL loss. rpu_config =
    DigitalRankUpdateRPUConfig(device=MixedPrecisionCompound(device=<the SoftBoundsDevice of (a)>)) with
    mapping digital_bias=False, max_input_size=0, max_output_size=0 (as in edgelearn: one physical tile per layer,
    the bias an extra input column on the crossbar; aihwkit's defaults would split the 784-input layer into two
    tiles and keep the bias digital), AnalogSGD(lr=0.5) with regroup_param_groups, batch 64. After one warm-up
    training batch, one timed pass of --samples training samples (batches of 64, the last one possibly smaller)
    followed by a forward-only (torch.no_grad, eval mode) pass over --samples / 4 evaluation samples; this mirrors
    edgelearn's epoch of 48k training + 12k validation samples.
    Reported: samples_per_s = training samples / (training + evaluation wall time), and train_samples_per_s =
    training samples / training wall time.
    Data: with --mnist DIR, the MNIST training set (train-images-idx3-ubyte and train-labels-idx1-ubyte, optionally
    .gz) scaled to [0, 1]: the first --samples images train, the next --samples / 4 evaluate (indices wrap around past
    60,000). Without --mnist, seeded random inputs in [0, 1] and random labels 0-9.

Output: a short table, or with --json one JSON object (aihwkit_version, torch_version, threads, tile {...}, mlp {...}
and the workload parameters). If torch or aihwkit cannot be imported, one line on stderr and exit status 2.
--seed fixes the inputs and torch's generator; aihwkit's C++ pulse-train generator has no seed in its Python API.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

VENV_HINT = "create the venv with: bash tools/aihwkit_venv.sh .aihwkit-venv, then run .aihwkit-venv/bin/python " \
            "tools/bench_aihwkit.py"

try:
    import numpy as np
    import torch
    from torch import nn
    import aihwkit
    from aihwkit.nn import AnalogLinear, AnalogSequential
    from aihwkit.optim import AnalogSGD
    from aihwkit.simulator.configs import (DigitalRankUpdateRPUConfig, MixedPrecisionCompound, SingleRPUConfig,
                                           SoftBoundsDevice)
    from aihwkit.simulator.parameters.enums import PulseType
except ImportError as _err:  # pragma: no cover - depends on the environment
    print(f"bench_aihwkit: cannot import {_err.name or _err} ({_err}); {VENV_HINT}", file=sys.stderr)
    sys.exit(2)

ROWS, COLS = 256, 784
LAYERS = (784, 256, 128, 10)
TILE_LR = 0.01
MLP_LR = 0.5
BATCH = 64
WARMUP_UPDATES = 10
BLOCKS = 5
N_VECTORS = 64
DEVICE_PARAMS = dict(dw_min=0.001, w_min=-1.0, w_max=1.0, dw_min_std=0.3,
                     dw_min_dtod=0.0, up_down_dtod=0.0, w_min_dtod=0.0, w_max_dtod=0.0)
UPDATE_PARAMS = dict(pulse_type="StochasticCompressed", desired_bl=31, update_bl_management=True,
                     update_management=True)
MLP_MAPPING = dict(digital_bias=False, max_input_size=0, max_output_size=0)
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def soft_bounds_device() -> SoftBoundsDevice:
    """The soft-bounds device of both workloads, without device-to-device variation."""
    return SoftBoundsDevice(**DEVICE_PARAMS)


def tile_rpu_config() -> SingleRPUConfig:
    """SingleRPUConfig of workload (a): soft-bounds device, stochastic compressed pulse trains, BL <= 31."""
    config = SingleRPUConfig(device=soft_bounds_device())
    config.update.pulse_type = PulseType(UPDATE_PARAMS["pulse_type"])
    config.update.desired_bl = UPDATE_PARAMS["desired_bl"]
    config.update.update_bl_management = UPDATE_PARAMS["update_bl_management"]
    config.update.update_management = UPDATE_PARAMS["update_management"]
    return config


def mlp_rpu_config() -> DigitalRankUpdateRPUConfig:
    """DigitalRankUpdateRPUConfig of workload (b): mixed-precision compound around the soft-bounds device.

    As in edgelearn, each layer is one physical tile with the bias as an extra input column on the crossbar:
    aihwkit 1.x would otherwise split the 784-input layer into two 392-column tiles (mapping.max_input_size=512)
    and keep the bias in digital (mapping.digital_bias=True).
    """
    config = DigitalRankUpdateRPUConfig(device=MixedPrecisionCompound(device=soft_bounds_device()))
    for name, value in MLP_MAPPING.items():
        setattr(config.mapping, name, value)
    return config


def bench_tile(n_updates: int, seed: int) -> dict:
    """Workload (a): median and best ns per cell per update over BLOCKS blocks of n_updates rank-1 updates."""
    rpu_config = tile_rpu_config()
    tile_class = rpu_config.tile_class  # AnalogTile in aihwkit 1.x
    tile = tile_class(ROWS, COLS, rpu_config, bias=False)
    tile.set_learning_rate(TILE_LR)
    rng = np.random.default_rng(seed)
    xs = [torch.from_numpy(v).reshape(1, COLS) for v in rng.uniform(0.0, 1.0, (N_VECTORS, COLS)).astype(np.float32)]
    ds = [torch.from_numpy(v).reshape(1, ROWS) for v in rng.normal(0.0, 0.1, (N_VECTORS, ROWS)).astype(np.float32)]
    for k in range(WARMUP_UPDATES):
        tile.update(xs[k % N_VECTORS], ds[k % N_VECTORS])
    times = []
    k = WARMUP_UPDATES
    for _ in range(BLOCKS):
        start = time.perf_counter()
        for _ in range(n_updates):
            tile.update(xs[k % N_VECTORS], ds[k % N_VECTORS])
            k += 1
        times.append(time.perf_counter() - start)
    per_cell = [t / n_updates / (ROWS * COLS) * 1e9 for t in times]
    return {"rows": ROWS, "cols": COLS, "ns_per_cell_median": statistics.median(per_cell),
            "ns_per_cell_best": min(per_cell), "updates_per_block": n_updates, "blocks": BLOCKS,
            "warmup_updates": WARMUP_UPDATES, "block_s": times, "tile_class": type(tile).__name__,
            "params": {"device": "SoftBoundsDevice", **DEVICE_PARAMS, **UPDATE_PARAMS, "lr": TILE_LR,
                       "batch": 1, "bias": False, "x": "U[0,1], 64 fixed vectors, cycled",
                       "d": "N(0,0.1^2), 64 fixed vectors, cycled", "seed": seed}}


def _read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzip-compressed) as a uint8 array of its header's shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:  # 0x08: unsigned byte data
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    n_dims = magic & 0xFF
    dims = struct.unpack(">" + "I" * n_dims, data[4:4 + 4 * n_dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * n_dims).reshape(dims)


def _find_idx(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name}[.gz] not found in {directory}")


def load_data(mnist: str | None, n_train: int, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs float32 [n_train + n_eval, 784] in [0, 1], labels int64, description): MNIST or seeded random."""
    n = n_train + n_eval
    if mnist is None:
        rng = np.random.default_rng(seed + 1)
        return rng.uniform(0.0, 1.0, (n, LAYERS[0])).astype(np.float32), rng.integers(0, 10, n), "random"
    directory = Path(mnist)
    images = _read_idx(_find_idx(directory, MNIST_FILES[0])).reshape(-1, LAYERS[0])
    labels = _read_idx(_find_idx(directory, MNIST_FILES[1]))
    index = np.arange(n) % len(images)
    return (images[index] / 255.0).astype(np.float32), labels[index].astype(np.int64), f"mnist:{directory}"


def build_mlp() -> AnalogSequential:
    """The 784-256-128-10 sigmoid MLP with log-softmax output, analog layers with bias."""
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        layers.append(AnalogLinear(n_in, n_out, bias=True, rpu_config=mlp_rpu_config()))
        layers.append(nn.Sigmoid() if k < len(LAYERS) - 2 else nn.LogSoftmax(dim=1))
    return AnalogSequential(*layers)


def bench_mlp(n_samples: int, data: str | None, seed: int) -> dict:
    """Workload (b): one timed training pass of n_samples plus a forward-only pass of n_samples // 4."""
    torch.manual_seed(seed)
    n_eval = n_samples // 4
    inputs, labels, source = load_data(data, n_samples, n_eval, seed)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(labels)
    x_train, y_train = x_all[:n_samples], y_all[:n_samples]
    x_eval, y_eval = x_all[n_samples:], y_all[n_samples:]
    model = build_mlp()
    optimizer = AnalogSGD(model.parameters(), lr=MLP_LR)
    optimizer.regroup_param_groups(model)
    loss_fn = nn.NLLLoss()

    def train_batch(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    model.train()
    train_batch(x_train[:BATCH], y_train[:BATCH])  # warm-up
    start = time.perf_counter()
    losses = [train_batch(x_train[i:i + BATCH], y_train[i:i + BATCH]) for i in range(0, n_samples, BATCH)]
    train_s = time.perf_counter() - start
    model.eval()
    correct = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n_eval, BATCH):
            correct += int((model(x_eval[i:i + BATCH]).argmax(dim=1) == y_eval[i:i + BATCH]).sum())
    eval_s = time.perf_counter() - start
    wall_s = train_s + eval_s
    return {"samples": n_samples, "eval_samples": n_eval, "batch": BATCH,
            "samples_per_s": n_samples / wall_s, "train_samples_per_s": n_samples / train_s,
            "wall_s": wall_s, "train_s": train_s, "eval_s": eval_s,
            "eval_accuracy": correct / n_eval if n_eval else None, "last_loss": losses[-1] if losses else None,
            "params": {"layers": list(LAYERS), "activation": "sigmoid", "output": "log_softmax + NLL", "bias": True,
                       "rpu_config": "DigitalRankUpdateRPUConfig(MixedPrecisionCompound(SoftBoundsDevice))",
                       "device": "SoftBoundsDevice", **DEVICE_PARAMS, "mapping": MLP_MAPPING,
                       "optimizer": "AnalogSGD", "lr": MLP_LR,
                       "data": source, "seed": seed, "warmup_batches": 1}}


def print_table(result: dict) -> None:
    """Short readable summary of `result`."""
    tile, mlp = result["tile"], result["mlp"]
    print(f"aihwkit {result['aihwkit_version']}, torch {result['torch_version']}, threads {result['threads']}")
    print(f"tile {tile['rows']}x{tile['cols']} pulsed rank-1 update ({tile['blocks']} blocks x "
          f"{tile['updates_per_block']} updates):")
    print(f"  ns per cell per update   median {tile['ns_per_cell_median']:8.3f}   best {tile['ns_per_cell_best']:8.3f}")
    print(f"MLP {'-'.join(map(str, mlp['params']['layers']))} mixed precision, batch {mlp['batch']}, "
          f"{mlp['samples']} train + {mlp['eval_samples']} eval samples ({mlp['params']['data']}):")
    print(f"  samples/s (train + eval) {mlp['samples_per_s']:10.1f}")
    print(f"  samples/s (train only)   {mlp['train_samples_per_s']:10.1f}")
    print(f"  wall s                   {mlp['wall_s']:10.2f}   (eval accuracy {mlp['eval_accuracy']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200, help="updates per timed block of the tile workload")
    parser.add_argument("--samples", type=int, default=6400, help="training samples of the MLP workload")
    parser.add_argument("--mnist", metavar="DIR", help="directory with the MNIST IDX files (optionally .gz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.updates < 1 or args.samples < 1:
        parser.error("--updates and --samples must be positive")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. when main() is called twice in one process)
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tile = bench_tile(args.updates, args.seed)
            mlp = bench_mlp(args.samples, args.mnist, args.seed)
    except ModuleNotFoundError as err:  # torch imports some of its dependencies lazily (e.g. sympy for the optimizer)
        print(f"bench_aihwkit: missing module {err.name} at run time; {VENV_HINT}", file=sys.stderr)
        return 2
    result = {"aihwkit_version": aihwkit.__version__, "torch_version": torch.__version__,
              "numpy_version": np.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "tile": tile, "mlp": mlp}
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
