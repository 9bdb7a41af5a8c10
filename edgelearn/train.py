"""On-chip training runs: config, epoch loop, metrics, checkpoints and resume (what `edgelearn train` calls)."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import secrets
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ._version import __version__
from .algorithms import ALGORITHMS, TRANSFER_ALGORITHMS, TransferConfig, make_algorithm
from .board import PeripheryConfig, PulseConfig
from .datasets import MNIST_CLASSES, MNIST_FEATURES, SPLIT_SEED, load_mnist
from .devices import load_card
from .endurance import counter_endurance
from .errors import EdgelearnError
from .network import Network, check_size, parse_sizes
from .runlock import run_lock
from .traces import write_atomically

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = 2  # 2: metadata with a format number and a SHA-256 of arrays and metadata
RUN_FILES = ("summary.json", "metrics.csv", CHECKPOINT)  # what makes a directory hold a training run


class CheckpointError(EdgelearnError):
    """A checkpoint that cannot be resumed from: damaged (empty, truncated, bit flips, garbage, object arrays, bad
    metadata, wrong shapes, NaN/inf states) or written for another configuration. Raised only while reading it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


MAX_EPOCHS = 10_000  # limits (docs/architecture.md, "Limits"): the paper trains 25 epochs
MAX_LR = 100.0  # weights live in about [-1, 1]; the paper grid uses 0.05-1


# Config fields added after checkpoints were in use, left out of the fingerprint while unset, so that those
# checkpoints resume: (section or None for the top level, field).
FINGERPRINT_OMIT_WHEN_UNSET = (("pulses", "chi_bits"), (None, "transfer"))


def drop_unset(data: dict, fields) -> dict:
    """`data` (a config dump, changed in place) without the (section, name) fields that hold None."""
    for section, name in fields:
        part = data if section is None else data.get(section)
        if isinstance(part, dict) and name in part and part[name] is None:
            del part[name]
    return data


class TrainConfig(BaseModel):
    """One training run. Every field is recorded in summary.json."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    card: str | None = Field(None, description="device card file or bundled name (not needed for digital)")
    algorithm: str = Field("mp", description="sgd, mp, sp-shift, ttv2, c-ttv2, agad or digital")
    network: str = Field("paper", description="preset name (paper: 784-256-128-10 sigmoid MLP) or sizes "
                                              "784-...-10 (MNIST: 784 inputs, 10 classes)")
    activation: str = Field("sigmoid", description="hidden activation: sigmoid or relu")
    epochs: int = Field(25, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1, le=60_000)
    lr: float = Field(0.5, gt=0, le=MAX_LR)
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
    transfer: TransferConfig | None = Field(None, description="ttv2 / c-ttv2 / agad settings (default: "
                                            "TransferConfig())")

    @field_validator("network")
    @classmethod
    def _network_fits_mnist(cls, network: str, info: ValidationInfo) -> str:
        """MNIST's 784 inputs and 10 classes (a smaller first layer would silently see only the first pixels), and
        the size limit (MAX_NETWORK_WEIGHTS) before anything is allocated."""
        try:
            sizes = parse_sizes(network)
            if len(sizes) < 2 or min(sizes) < 1:
                raise EdgelearnError(f"network '{network}': expected at least two positive sizes")
            if sizes[0] != MNIST_FEATURES or sizes[-1] != MNIST_CLASSES:
                raise EdgelearnError(f"network '{network}' has {sizes[0]} inputs and {sizes[-1]} outputs; MNIST "
                                     f"needs {MNIST_FEATURES} inputs (28 x 28 pixels) and {MNIST_CLASSES} outputs, "
                                     f"e.g. {MNIST_FEATURES}-64-{MNIST_CLASSES}")
            algorithm = info.data.get("algorithm")
            check_size(sizes, digital=algorithm == "digital", references=algorithm == "sp-shift")
        except EdgelearnError as exc:
            raise ValueError(str(exc)) from None
        return network

    @model_validator(mode="after")
    def _digital_has_no_card(self):
        """The digital baseline uses no device: its card is dropped, so a record never names a card that played no
        part (and a sweep's card axis gives one digital run, not one per card)."""
        if self.algorithm == "digital":
            self.card = None
        return self

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based epoch: lr * gamma^floor((epoch - 1) / lr_step)."""
        return self.lr * self.lr_gamma ** ((epoch - 1) // self.lr_step)

    def fingerprint(self) -> str:
        """Hash of everything but the epoch count (a resumed run may be extended)."""
        data = drop_unset(self.model_dump(exclude={"epochs"}), FINGERPRINT_OMIT_WHEN_UNSET)
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
    endurance: dict = field(default_factory=dict)  # worst device's wear over the run ({} digital): _run_endurance
    memory: dict = field(default_factory=dict)  # SRAM the controller needs (edgelearn.memory.MemoryReport)
    card_checks: dict = field(default_factory=dict)  # the card's symmetry point, its interval, stable points, warnings

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)



def card_checks(card, pulses: PulseConfig | None = None) -> dict:
    """What a reader of a training summary needs to weigh it by the card: the symmetry point (plain SGD drifts
    there), its interval over refits and every stable point when the card carries them, and the card's warnings.
    With pulse amplitudes set, the steps the run used (the card's amplitude response there): granularity and the
    symmetry point at those amplitudes."""
    if card is None:
        return {}
    from .devices import card_warnings, symmetry_points

    f = card.figures
    at = None
    if pulses is not None and pulses.amplitude_aware:
        model = card.model_at(pulses.amplitude_up_v, pulses.amplitude_down_v)
        sym, sym_sim, _ = symmetry_points(model)
        at = dict(amplitude_up_v=pulses.amplitude_up_v, amplitude_down_v=pulses.amplitude_down_v,
                  granularity=model.granularity, symmetry_point=sym, symmetry_point_simulated=sym_sim,
                  response_nrmse=card.amplitude.nrmse,
                  response_out_of_sample_nrmse=(card.amplitude.out_of_sample or {}).get("out_of_sample_nrmse"))
    return dict(amplitude=at, symmetry_point=f.symmetry_point, symmetry_point_simulated=f.symmetry_point_simulated,
                symmetry_interval={k: f.symmetry_interval[k] for k in ("median", "low", "high", "level", "resamples")}
                if f.symmetry_interval else None,
                stable_points=[dict(w=p["w"], basin_fraction=p["basin_fraction"]) for p in f.stable_points]
                if f.stable_points else None,
                out_of_sample_nrmse=(f.out_of_sample or {}).get("nrmse"), warnings=card_warnings(card))


def _run_endurance(network: Network, card) -> dict:
    """Worst device's pulses over the whole training run (all epochs, calibration included; one pulse = one switching
    cycle) and how many such runs it survives before reaching its endurance. A run has no "day": no per-day figure."""
    if network.board is None:
        return {}
    r = counter_endurance(network.board.counters(), 1.0, card)
    return dict(devices=r.devices, worst_device=r.worst_device, worst_device_pulses=r.worst_device_pulses,
                mean_device_pulses=r.mean_device_pulses, endurance_cycles=r.endurance_cycles,
                endurance_source=r.endurance_source, training_runs_to_endurance=r.lifetime_days)


def train_memory(config: TrainConfig):
    """The controller's SRAM footprint of this training (edgelearn.memory.memory_footprint): the network's χ (mp) or
    digital weights, and the activations and deltas of one batch; no stream buffers (MNIST images are the inputs)."""
    from .memory import memory_footprint

    return memory_footprint(parse_sizes(config.network), config.algorithm, batch=config.batch_size,
                            chi_bits=config.pulses.chi_width,
                            buffer_bits=(config.transfer or TransferConfig()).buffer_bits)


def _counter_totals(network: Network, algorithm=None) -> dict:
    """All of the board's tiles' counters summed (the network's and any an algorithm added), plus the controller
    work an algorithm did outside them ({} for the digital baseline, which has no board)."""
    if network.board is None:
        return {}
    counts = dict(network.board.counters().counts)
    for name, value in (algorithm.extra_counts() if algorithm is not None else {}).items():
        counts[name] = counts.get(name, 0) + value
    return counts


def build(config: TrainConfig):
    """(network, algorithm, card) for a config; the network is not yet calibrated nor initialised."""
    if config.algorithm not in ALGORITHMS:
        raise EdgelearnError(f"unknown algorithm '{config.algorithm}' (known: {', '.join(ALGORITHMS)})")
    options = {}
    if config.algorithm == "mp":
        options = dict(epsilon=config.epsilon, epsilon_down=config.epsilon_down)
    elif config.algorithm in ("sgd", "sp-shift"):
        options = dict(deterministic=config.deterministic)
    elif config.algorithm in TRANSFER_ALGORITHMS:
        options = dict(config=config.transfer)
    if config.transfer is not None and config.algorithm not in TRANSFER_ALGORITHMS:
        raise EdgelearnError(f"transfer settings are for {', '.join(TRANSFER_ALGORITHMS)}, not '{config.algorithm}'")
    if config.pulses.chi_width != 32 and config.algorithm != "mp":
        raise EdgelearnError(f"pulses.chi_bits is the mixed-precision accumulator's width; algorithm "
                             f"'{config.algorithm}' keeps no chi")
    algorithm = make_algorithm(config.algorithm, **options)
    card = None
    if not algorithm.digital:
        if config.card is None:
            raise EdgelearnError(f"--card is required for algorithm '{config.algorithm}'")
        card = load_card(config.card)
    network = Network(config.network, config.activation, card=card, digital=algorithm.digital, seed=config.seed,
                      max_tile_rows=config.max_tile_rows, max_tile_cols=config.max_tile_cols,
                      references=algorithm.references, periphery=config.periphery, pulses=config.pulses)
    algorithm.attach(network)
    return network, algorithm, card


def train(config: TrainConfig, out: str | Path | None = None, resume: bool = False, progress: bool = True,
          data=None, overwrite: bool = False) -> TrainResult:
    """Train, evaluate and (with `out`) write metrics.csv, summary.json and a checkpoint after every epoch.
    With resume, continue from out/checkpoint.npz (the config must match, apart from a larger epoch count).
    Without resume, a directory that already holds a run (summary.json, metrics.csv or a checkpoint) is refused
    unless `overwrite`, which deletes those files first. While it runs, `out` is locked (runlock): a second process
    training into the same directory is refused."""
    out = Path(out) if out is not None else None
    if out is None and resume:
        raise EdgelearnError("--resume needs --out: the directory holding the checkpoint")
    if out is not None:
        if resume and overwrite:
            raise EdgelearnError("--resume and --overwrite exclude each other: continue the run or replace it")
        _check_out(out, resume, overwrite)  # before loading anything: the usual mistakes fail at once
    data = data if data is not None else load_mnist(config.data_dir, config.max_train_samples)
    if out is None:
        return _train(config, None, False, progress, data)
    with run_lock(out):
        _check_out(out, resume, overwrite)  # again, now that no other process can be writing here
        _remove_stale_temporaries(out)
        if overwrite:
            for name in RUN_FILES:  # the summary first: its presence means "complete"
                (out / name).unlink(missing_ok=True)
        return _train(config, out, resume, progress, data)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgelearnError(f"--out {out}: exists and is not a directory")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise EdgelearnError(f"--resume: no checkpoint in {out}")
    elif not overwrite:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise EdgelearnError(f"--out {out}: already holds a training run ({', '.join(found)}); pass --resume to "
                                 "continue it, --overwrite to replace it, or choose another directory")


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary checkpoints left by a process killed while writing (never read; removed under the run's lock)."""
    for tmp in [*out.glob(f".{CHECKPOINT}.*.tmp"), out / f"{CHECKPOINT}.tmp.npz"]:  # the latter: before format 2
        with contextlib.suppress(OSError):
            tmp.unlink()


def _train(config: TrainConfig, out: Path | None, resume: bool, progress: bool, data) -> TrainResult:
    start_wall = time.perf_counter()
    network, algorithm, card = build(config)
    epochs: list[EpochMetrics] = []
    calibration: dict = {}
    first_epoch = 1
    checkpoint = out / CHECKPOINT if out is not None else None
    if resume:
        first_epoch, epochs, calibration = _load_checkpoint(checkpoint, config, network, algorithm)
    else:
        calibration = algorithm.prepare(network)
    n_train = len(data.train)
    previous = _counter_totals(network, algorithm)
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
        now = _counter_totals(network, algorithm)
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
            _save_checkpoint(checkpoint, config, network, epoch, epochs, calibration, algorithm)
            _write_metrics(out / "metrics.csv", epochs)
    test = network.accuracy(data.test.x, data.test.y)
    digital_macs = sum(getattr(layer, "macs", 0) for layer in network.layers)
    result = TrainResult(weight_histograms=weight_histograms(network), config=config.model_dump(), card_id=card.card_id if card else None, epochs=epochs,
                         test_accuracy=test, calibration=calibration, counters=_counter_totals(network, algorithm),
                         wall_s=time.perf_counter() - start_wall, resumed_from_epoch=first_epoch - 1 if resume else 0,
                         digital_macs=digital_macs, endurance=_run_endurance(network, card),
                         memory=train_memory(config).to_dict(), card_checks=card_checks(card, config.pulses))
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


def _digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 over every array (name, dtype, shape, bytes, in name order) and the metadata (without the digest)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\0")
        h.update(a.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def _save_checkpoint(path: Path, config: TrainConfig, network: Network, epoch: int, epochs, calibration,
                     algorithm=None) -> None:
    """Write the checkpoint atomically: a uniquely named temporary file in the same directory (which np.savez does not
    rename, being given a file object), fsync, os.replace, fsync of the directory. Whatever fails, the temporary file
    is removed and the previous checkpoint stays as it was; an OSError (a full disk) becomes one line."""
    arrays = {**network.state_dict(), **(algorithm.state_dict() if algorithm is not None else {})}
    meta = dict(format=CHECKPOINT_FORMAT, fingerprint=config.fingerprint(), epoch=epoch,
                epochs=[asdict(m) for m in epochs], calibration=calibration, version=__version__)
    meta["sha256"] = _digest(arrays, meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = None
    try:
        name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
        tmp = name
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
        raise EdgelearnError(f"{path}: cannot write the checkpoint: {exc.strerror or exc} ({code}); the previous "
                             "checkpoint, if any, is unchanged") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every filesystem)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int
    fingerprint: str
    epoch: int = Field(ge=1)
    epochs: list[EpochMetrics]
    calibration: dict
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _read_member(archive: zipfile.ZipFile, name: str, shape=None, dtype=None, damaged=None) -> np.ndarray:
    """One .npy member, its header checked before any data is read (no object arrays, the expected shape and
    dtype, no more data than the member holds); reading it to its end makes zipfile check its CRC-32."""
    fmt = np.lib.format
    info = archive.getinfo(name + ".npy")
    with archive.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = fmt.read_array_header_2_0(f)
        else:
            raise damaged(f"array '{name}' has an unknown .npy version {version}")
        if got_dtype.hasobject:
            raise damaged(f"array '{name}' holds Python objects (pickled data), refused")
        if shape is not None and (tuple(got_shape) != tuple(shape) or got_dtype != dtype):
            raise damaged(f"array '{name}' is {tuple(got_shape)} {got_dtype}, expected {tuple(shape)} {dtype} "
                          "for this network")
        nbytes = int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
        if nbytes > info.file_size:
            raise damaged(f"array '{name}' claims {nbytes} bytes, its member holds {info.file_size}")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise damaged(f"array '{name}' is truncated ({len(raw)} of {nbytes} bytes)")
        if f.read(1):
            raise damaged(f"array '{name}' has trailing bytes")
    return np.frombuffer(raw, got_dtype).reshape(got_shape, order="F" if fortran else "C")


def _read_checkpoint(path: Path, config: TrainConfig, expected: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(metadata, arrays) of a checkpoint, every problem a one-line CheckpointError naming the file and the problem.
    Never unpickles anything; arrays are checked against the network's own names, shapes and dtypes."""

    def damaged(what: str) -> CheckpointError:
        return CheckpointError(path, f"damaged checkpoint: {what}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the checkpoint ({exc.strerror or exc})") from None
    if size == 0:
        raise damaged("empty file (0 bytes)")
    if head != b"PK\x03\x04":
        raise damaged("not an npz archive (garbage, or another kind of file)")
    try:
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise damaged("truncated (the end of the zip archive, its directory, is missing)") from None
        with archive:
            members = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
            if set(archive.namelist()) != {m + ".npy" for m in members}:
                raise damaged("the archive holds files other than .npy arrays")
            if "__meta__" not in members:
                raise damaged("no metadata (__meta__ array): not written by edgelearn train")
            raw = _read_member(archive, "__meta__", damaged=damaged)
            try:
                meta = json.loads(raw.tobytes().decode())
            except UnicodeDecodeError:
                raise damaged("the metadata is not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise damaged(f"the metadata is not valid JSON ({exc.msg} at character {exc.pos})") from None
            except RecursionError:
                raise damaged("the metadata is not valid JSON (nested too deeply)") from None
            if not isinstance(meta, dict):
                raise damaged("the metadata is not a JSON object")
            if "format" not in meta:
                raise CheckpointError(path, "written by an older edgelearn, without a format number and integrity "
                                      "digest: it cannot be verified; start the run again (--overwrite)")
            try:
                parsed = _CheckpointMeta.model_validate(meta)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "metadata"
                raise damaged(f"metadata field '{where}': {err['msg']}") from None
            if parsed.format != CHECKPOINT_FORMAT:
                raise CheckpointError(path, f"checkpoint format {parsed.format}, this edgelearn reads format "
                                      f"{CHECKPOINT_FORMAT}")
            if [m.epoch for m in parsed.epochs] != list(range(1, parsed.epoch + 1)):
                raise damaged(f"metadata says epoch {parsed.epoch} but holds metrics of epochs "
                              f"{[m.epoch for m in parsed.epochs]}")
            if parsed.fingerprint != config.fingerprint():
                raise CheckpointError(path, "the checkpoint was written with a different configuration "
                                      "(only --epochs may change on --resume)")
            missing = sorted(set(expected) - members)
            extra = sorted(members - set(expected) - {"__meta__"})
            if missing or extra:
                raise damaged(f"array '{(missing or extra)[0]}' is " + ("missing" if missing else "unexpected")
                              + " for this network")
            arrays = {name: _read_member(archive, name, expected[name].shape, expected[name].dtype, damaged)
                      for name in sorted(expected)}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever zipfile / numpy raise on a damaged archive, as one line
        text = " ".join(str(exc).split())
        raise damaged(f"unreadable archive ({type(exc).__name__}: {text})") from None
    if _digest(arrays, meta) != parsed.sha256:
        raise damaged("integrity check failed (the SHA-256 of its arrays and metadata differs from the one recorded "
                      "when it was written)")
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(path, f"array '{name}' holds NaN or infinite values: cannot resume from it")
    return {**meta, "epochs": parsed.epochs}, arrays


def _load_checkpoint(path: Path, config: TrainConfig, network: Network, algorithm=None):
    extra = algorithm.state_dict() if algorithm is not None else {}
    meta, arrays = _read_checkpoint(path, config, {**network.state_dict(), **extra})
    network.load_state_dict(arrays)
    if algorithm is not None:
        algorithm.load_state_dict(arrays)
    return meta["epoch"] + 1, list(meta["epochs"]), meta["calibration"]
