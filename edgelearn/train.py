"""On-chip training runs: config, epoch loop, metrics, checkpoints and resume (what `edgelearn train` calls)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._version import __version__
from .algorithms import ALGORITHMS, make_algorithm
from .board import PeripheryConfig, PulseConfig
from .datasets import SPLIT_SEED, load_mnist
from .devices import load_card
from .errors import EdgelearnError
from .network import Network
from .traces import write_atomically


class TrainConfig(BaseModel):
    """One training run. Every field is recorded in summary.json."""

    model_config = ConfigDict(extra="forbid")
    card: str | None = Field(None, description="device card file or bundled name (not needed for digital)")
    algorithm: str = Field("mp", description="sgd, mp, sp-shift or digital")
    network: str = Field("paper", description="preset name (paper: 784-256-128-10 sigmoid MLP)")
    activation: str = Field("sigmoid", description="hidden activation: sigmoid or relu")
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.5, gt=0)
    lr_step: int = Field(10, ge=1, description="epochs between learning-rate decays")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="learning-rate factor at each decay")
    seed: int = Field(0, ge=0)
    max_train_samples: int | None = Field(None, ge=1, description="use the first K of the 48k training images")
    data_dir: str = Field(description="directory with the four MNIST IDX files")
    max_tile_rows: int = Field(1024, ge=1)
    max_tile_cols: int = Field(1024, ge=1)
    epsilon: float | None = Field(None, gt=0, description="mp threshold (default: the card's granularity)")
    epsilon_down: float | None = Field(None, gt=0, description="mp threshold for down pulses (default: epsilon)")
    deterministic: bool = Field(False, description="sgd / sp-shift: deterministic pulse counts, not trains")
    periphery: PeripheryConfig = PeripheryConfig()
    pulses: PulseConfig = PulseConfig()

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based epoch: lr * gamma^floor((epoch - 1) / lr_step)."""
        return self.lr * self.lr_gamma ** ((epoch - 1) // self.lr_step)

    def fingerprint(self) -> str:
        """Hash of everything but the epoch count (a resumed run may be extended)."""
        data = self.model_dump(exclude={"epochs"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EpochMetrics:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    validation_accuracy: float
    pulses_up: int
    pulses_down: int
    calibration_pulses: int
    wall_s: float


@dataclass
class TrainResult:
    config: dict
    card_id: str | None
    epochs: list[EpochMetrics]
    test_accuracy: float
    calibration: dict
    counters: dict
    wall_s: float
    version: str = __version__
    split_seed: int = SPLIT_SEED
    resumed_from_epoch: int = 0
    digital_macs: int = field(default=0)
    weight_histograms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)



def _counter_totals(network: Network) -> dict:
    """All of the network's tiles' counters summed ({} for the digital baseline, which has no board)."""
    return network.board.counters().counts if network.board is not None else {}


def build(config: TrainConfig):
    """(network, algorithm, card) for a config; the network is not yet calibrated nor initialised."""
    if config.algorithm not in ALGORITHMS:
        raise EdgelearnError(f"unknown algorithm '{config.algorithm}' (known: {', '.join(ALGORITHMS)})")
    options = {}
    if config.algorithm == "mp":
        options = dict(epsilon=config.epsilon, epsilon_down=config.epsilon_down)
    elif config.algorithm in ("sgd", "sp-shift"):
        options = dict(deterministic=config.deterministic)
    algorithm = make_algorithm(config.algorithm, **options)
    card = None
    if not algorithm.digital:
        if config.card is None:
            raise EdgelearnError(f"--card is required for algorithm '{config.algorithm}'")
        card = load_card(config.card)
    network = Network(config.network, config.activation, card=card, digital=algorithm.digital, seed=config.seed,
                      max_tile_rows=config.max_tile_rows, max_tile_cols=config.max_tile_cols,
                      references=algorithm.references, periphery=config.periphery, pulses=config.pulses)
    return network, algorithm, card


def train(config: TrainConfig, out: str | Path | None = None, resume: bool = False, progress: bool = True,
          data=None) -> TrainResult:
    """Train, evaluate and (with `out`) write metrics.csv, summary.json and a checkpoint after every epoch.
    With resume, continue from out/checkpoint.npz (the config must match, apart from a larger epoch count)."""
    start_wall = time.perf_counter()
    data = data if data is not None else load_mnist(config.data_dir, config.max_train_samples)
    network, algorithm, card = build(config)
    out = Path(out) if out is not None else None
    epochs: list[EpochMetrics] = []
    calibration: dict = {}
    first_epoch = 1
    checkpoint = out / "checkpoint.npz" if out is not None else None
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise EdgelearnError(f"--resume: no checkpoint in {out}")
        first_epoch, epochs, calibration = _load_checkpoint(checkpoint, config, network)
    else:
        calibration = algorithm.prepare(network)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    n_train = len(data.train)
    previous = _counter_totals(network)
    for epoch in range(first_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        lr = config.lr_at(epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(n_train)
        batches = range(0, n_train, config.batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        loss_sum, correct = 0.0, 0
        for start in batches:
            idx = order[start:start + config.batch_size]
            loss, hits, grads = network.gradients(data.train.x[idx], data.train.y[idx])
            for layer, (inputs, deltas) in zip(network.layers, grads):
                algorithm.update(layer, inputs, deltas, lr)
            loss_sum += loss * len(idx)
            correct += hits
        validation = network.accuracy(data.validation.x, data.validation.y)
        now = _counter_totals(network)
        diff = {k: now.get(k, 0) - previous.get(k, 0) for k in now}
        previous = now
        epochs.append(EpochMetrics(epoch, lr, loss_sum / n_train, correct / n_train, validation,
                                   diff.get("pulses_up", 0), diff.get("pulses_down", 0),
                                   diff.get("calibration_pulses_up", 0) + diff.get("calibration_pulses_down", 0),
                                   time.perf_counter() - t0))
        if progress:
            m = epochs[-1]
            print(f"epoch {epoch}: loss {m.train_loss:.4f}  train {m.train_accuracy:.4f}  validation "
                  f"{m.validation_accuracy:.4f}  pulses {m.pulses_up + m.pulses_down}  {m.wall_s:.1f} s", flush=True)
        if out is not None:
            _save_checkpoint(checkpoint, config, network, epoch, epochs, calibration)
            _write_metrics(out / "metrics.csv", epochs)
    test = network.accuracy(data.test.x, data.test.y)
    digital_macs = sum(getattr(layer, "macs", 0) for layer in network.layers)
    result = TrainResult(weight_histograms=weight_histograms(network), config=config.model_dump(), card_id=card.card_id if card else None, epochs=epochs,
                         test_accuracy=test, calibration=calibration, counters=_counter_totals(network),
                         wall_s=time.perf_counter() - start_wall, resumed_from_epoch=first_epoch - 1 if resume else 0,
                         digital_macs=digital_macs)
    if out is not None:
        write_atomically(out / "summary.json", result.to_json() + "\n")
    return result


def weight_histograms(network: Network, bins: int = 120, limit: float = 1.5) -> dict:
    """Per-layer histograms of the final weights and of the trainable devices' states, for the report."""
    edges = np.linspace(-limit, limit, bins + 1)

    def hist(values):
        return np.histogram(np.clip(values, -limit, limit), edges)[0].tolist()

    layers = []
    for layer in network.layers:
        entry = dict(weights=hist(layer.weights.ravel()))
        if layer.analog:
            entry["device_states"] = hist(layer.device_states())
        layers.append(entry)
    return dict(edges=edges.tolist(), layers=layers)


def _write_metrics(path: Path, epochs: list[EpochMetrics]) -> None:
    buffer = io.StringIO()
    names = list(asdict(epochs[0]).keys())
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for m in epochs:
        writer.writerow(asdict(m))
    write_atomically(path, buffer.getvalue())


def _save_checkpoint(path: Path, config: TrainConfig, network: Network, epoch: int, epochs, calibration) -> None:
    meta = dict(fingerprint=config.fingerprint(), epoch=epoch, epochs=[asdict(m) for m in epochs],
                calibration=calibration, version=__version__)
    arrays = network.state_dict()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load_checkpoint(path: Path, config: TrainConfig, network: Network):
    try:
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise EdgelearnError(f"{path}: unreadable checkpoint ({exc})") from None
    if "__meta__" not in arrays:
        raise EdgelearnError(f"{path}: not an edgelearn checkpoint")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    if meta["fingerprint"] != config.fingerprint():
        raise EdgelearnError(f"{path}: the checkpoint was written with a different configuration "
                             "(only --epochs may change on --resume)")
    network.load_state_dict(arrays)
    epochs = [EpochMetrics(**m) for m in meta["epochs"]]
    return meta["epoch"] + 1, epochs, meta["calibration"]
