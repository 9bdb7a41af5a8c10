"""Continuous wearable learning, the main job: pre-train, then stream windows through the emulated chip, inferring on
every window and learning whenever a label arrives (prequential, test-then-train), with every event counted and
costed. `edgelearn run` is a thin layer over `run_stream`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .algorithms import make_algorithm
from .devices import load_card
from .energy import cost, load_energy_model, unit_energies
from .errors import EdgelearnError, InputError, read_toml, validation_error
from .network import Network
from .stream import (MAX_STREAM_SAMPLES, FrontEndConfig, Recording, load_basic_motions, load_csv, load_hapt,
                     read_serial, windows)
from .traces import write_atomically

# Limits (docs/architecture.md, "Limits"); the defaults are far inside them
MAX_PRETRAIN_EPOCHS = 1000  # the shipped runs use 30; 1000 over the HAPT pre-training set is hours
MAX_LR = 100.0  # learning rates (weights live in about [-1, 1]; the shipped runs use 0.2-0.5)
MAX_RATE_HZ = 100_000.0
SOURCE_RATES_HZ = {"basicmotions": 10.0, "hapt": 50.0}  # fixed by the dataset; csv and serial give rate_hz


class RunConfig(BaseModel):
    """Every option of `edgelearn run`; also the schema of its TOML config file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    source: Literal["basicmotions", "hapt", "csv", "serial"] = Field("basicmotions", description="sensor stream "
                                                                                                 "source")
    path: str | None = Field(None, description="hapt: the npz; csv: the stream file; serial: the pyserial URL of a "
                                               "live sensor (/dev/ttyACM0, socket://host:port)")
    pretrain_path: str | None = Field(None, description="csv or serial: a labelled CSV file for pre-training")
    rate_hz: float | None = Field(None, gt=0, le=MAX_RATE_HZ, description="csv or serial: sampling rate")
    duration_s: float | None = Field(None, gt=0, description="serial: stop after this much stream time (else at "
                                                             "'end', a silent port or MAX_STREAM_SAMPLES samples)")
    serial_timeout_s: float = Field(5.0, gt=0, le=3600, description="serial: a port silent this long ends the "
                                                                    "stream")
    pretrain_users: list[int] = Field(list(range(1, 21)), description="hapt: users to pre-train on")
    stream_users: list[int] = Field([21], description="hapt: the new wearer(s) streamed")
    card: str = Field("ID170ZR5000-20ns", description="device card file or bundled name")
    algorithm: Literal["mp", "sgd", "sp-shift"] = "mp"
    hidden: int = Field(32, ge=1, description="hidden units of the one-hidden-layer network (the "
                        "network's size is checked against MAX_NETWORK_WEIGHTS when it is built)")
    activation: Literal["sigmoid", "relu"] = "sigmoid"
    pretrain: Literal["on-chip", "digital", "none"] = Field("on-chip", description="how the network starts")
    pretrain_epochs: int = Field(30, ge=0, le=MAX_PRETRAIN_EPOCHS)
    pretrain_lr: float = Field(0.5, gt=0, le=MAX_LR)
    pretrain_batch: int = Field(8, ge=1, le=100_000)
    lr: float = Field(0.2, gt=0, le=MAX_LR, description="learning rate on the stream (one window per step)")
    label_rate: float = Field(0.1, ge=0, le=1, description="fraction of stream windows whose label arrives")
    replay: int = Field(16, ge=0, le=100_000, description="labelled windows the controller keeps (feature vectors in "
                        "SRAM); each learning step is a mini-batch of the new window and up to replay_batch - 1 of "
                        "these")
    replay_anchors: int = Field(4, ge=0, le=100_000, description="pre-training windows per class stored in the replay "
                                "buffer at the factory")
    replay_batch: int = Field(8, ge=1, le=100_000, description="mini-batch size of a learning step (new window + "
                              "replayed ones)")
    holdout_every: int = Field(4, ge=2, description="every n-th block of 10 stream windows is held out to measure "
                                                    "adaptation")
    moved_sensor: bool = Field(True, description="rotate the streamed sensor 90 degrees about z (the watch was put "
                                                 "on differently): the shift the device must adapt to")
    frontend: FrontEndConfig = FrontEndConfig(full_scale={"acc": 40.0, "gyro": 40.0})
    energy_model: str = Field("table", description="energy model name or JSON file")
    seed: int = Field(0, ge=0)

    @field_validator("duration_s")
    @classmethod
    def _bounded_capture(cls, duration_s: float | None, info: ValidationInfo) -> float | None:
        rate_hz = info.data.get("rate_hz")
        if duration_s is not None and rate_hz is not None and duration_s * rate_hz > MAX_STREAM_SAMPLES:
            raise ValueError(f"{duration_s:g} s at {rate_hz:g} Hz is {duration_s * rate_hz:,.0f} samples; the limit "
                             f"of a capture is {MAX_STREAM_SAMPLES:,} (MAX_STREAM_SAMPLES)")
        return duration_s


def load_run_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the TOML file, then command-line overrides; one-line errors naming the file and field."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path or "command line", exc) from None
    rate = SOURCE_RATES_HZ.get(config.source, config.rate_hz)
    problem = config.frontend.geometry_problem(rate) if rate is not None else None
    if problem:
        raise InputError(path or "command line", problem, field="frontend.window_s")
    return config


@dataclass
class RunResult:
    config: dict
    card_id: str
    classes: list
    stream_seconds: float
    windows: int
    labelled_windows: int
    learning_steps: int
    trained_windows: int  # windows passed forward and backward in learning steps (new + replayed)
    prequential_accuracy: float
    accuracy_before: float
    accuracy_after: float
    held_out_windows: int
    pulses: int
    counters: dict
    energy_model: str
    energy_per_window_j: float
    energy_per_learning_step_j: float
    energy_per_inference_j: float
    energy_per_day_j: float
    wall_s: float
    real_time_factor: float
    pretrain: dict = field(default_factory=dict)
    timeline: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _recordings(config: RunConfig):
    """(pre-training recordings, stream recordings, class names or None, label values of the classes or None)."""
    if config.source == "basicmotions":
        train, classes = load_basic_motions("train")
        test, _ = load_basic_motions("test")
        # the file lists instances class by class; a wearer's day interleaves activities, so the stream order is a
        # seeded shuffle of the 10 s recordings
        order = np.random.default_rng([config.seed, 3]).permutation(len(test))
        return train, [test[k] for k in order], classes, list(range(len(classes)))
    if config.source == "hapt":
        if config.path is None:
            raise EdgelearnError("source hapt needs path (the hapt_raw.npz file)")
        train = load_hapt(config.path, users=config.pretrain_users)
        stream = load_hapt(config.path, users=config.stream_users)
        if not stream:
            raise EdgelearnError(f"no HAPT sessions for stream_users {config.stream_users}")
        return train, stream, None, list(range(1, 13))  # HAPT activity ids 1-12 name themselves
    if config.path is None or config.rate_hz is None:
        raise EdgelearnError(f"source {config.source} needs path and rate_hz")
    if config.source == "serial":
        stream = read_serial(config.path, config.rate_hz, config.duration_s, config.serial_timeout_s)
    else:
        stream = load_csv(config.path, config.rate_hz)
    train = load_csv(config.pretrain_path, config.rate_hz) if config.pretrain_path else []
    return train, stream, None, None


def _moved(recording: Recording) -> Recording:
    """The same motion seen by a sensor turned 90 degrees about its z axis: (x, y, z) -> (y, -x, z) for the
    accelerometer and the gyroscope alike."""
    samples = recording.samples.copy()
    for prefix in ("acc", "gyro"):
        cols = {c[-1]: k for k, c in enumerate(recording.channels) if c.startswith(prefix)}
        if "x" in cols and "y" in cols:
            x, y = recording.samples[:, cols["x"]], recording.samples[:, cols["y"]]
            samples[:, cols["x"]], samples[:, cols["y"]] = y, -x
    return Recording(samples, recording.labels, recording.rate_hz, recording.channels, recording.user,
                     recording.session, recording.source)


def _window_set(recordings: list[Recording], frontend: FrontEndConfig):
    """(inputs, labels, end times on one stream clock) of all recordings' windows, in order."""
    xs, ys, ends = [], [], []
    offset = 0.0
    for rec in recordings:
        x, y, e = windows(rec, frontend)
        xs.append(x)
        ys.append(y)
        ends.append(e + offset)
        offset += rec.duration_s
    if not xs:
        return np.zeros((0, 0)), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ends)


def _class_map(labels: np.ndarray):
    known = sorted(int(v) for v in np.unique(labels) if v >= 0)
    return {v: k for k, v in enumerate(known)}


def _remember(buf_x: list, buf_y: list, x: np.ndarray, y: int, size: int) -> None:
    """Add a labelled window to the class-balanced replay buffer: when full, the oldest entry of the commonest class
    goes (so the factory anchors of a class are replaced by the wearer's own windows as they arrive)."""
    buf_x.append(x)
    buf_y.append(int(y))
    if len(buf_y) > size:
        commonest = int(np.bincount(buf_y).argmax())
        j = buf_y.index(commonest)
        del buf_x[j], buf_y[j]


def _pretrain(config: RunConfig, net: Network, algorithm, sizes, x_train, y_train, rng) -> dict:
    """Pre-train the network on the labelled training windows (on chip, or digitally then programmed)."""
    info = dict(mode=config.pretrain, windows=int((y_train >= 0).sum()))
    labelled = np.nonzero(y_train >= 0)[0]
    if config.pretrain == "none" or not len(labelled):
        return info
    if config.pretrain == "digital":
        model, algo = Network(sizes, config.activation, digital=True, seed=config.seed), make_algorithm("digital")
        model.initialise()
    else:
        model, algo = net, algorithm
    for _ in range(config.pretrain_epochs):
        order = rng.permutation(labelled)
        for start in range(0, len(order), config.pretrain_batch):
            idx = order[start:start + config.pretrain_batch]
            _, _, grads = model.gradients(x_train[idx], y_train[idx])
            for layer, (inputs, deltas) in zip(model.layers, grads):
                algo.update(layer, inputs, deltas, config.pretrain_lr)
    if config.pretrain == "digital":  # factory-program the digitally trained weights (not counted)
        for layer, source in zip(net.layers, model.layers):
            layer.set_weights(source.weights)
    info["train_accuracy"] = net.accuracy(x_train[labelled], y_train[labelled])
    return info


def prepare(config: RunConfig):
    """Everything before the stream: windows of both phases, the network on its board, pre-training.
    Returns a dict with keys net, algorithm, card, sizes, classes, class_names, x_stream, y_stream, t_stream,
    stream_recs, pretrain, rng (what `stream` needs)."""
    train_recs, stream_recs, class_names, values = _recordings(config)
    if config.moved_sensor:
        stream_recs = [_moved(r) for r in stream_recs]
    x_train, y_train, _ = _window_set(train_recs, config.frontend)
    x_stream, y_stream, t_stream = _window_set(stream_recs, config.frontend)
    if len(y_stream) == 0:
        raise EdgelearnError("the stream is shorter than one window")
    if values is None:
        values = sorted(int(v) for v in np.unique(np.concatenate([y_train, y_stream])) if v >= 0)
    classes = {v: k for k, v in enumerate(values)}
    if len(classes) < 2:
        raise EdgelearnError("the data have fewer than two labelled classes")
    to_index = np.vectorize(lambda v: classes.get(int(v), -1), otypes=[np.int64])
    y_train_i = to_index(y_train) if len(y_train) else y_train
    card = load_card(config.card)
    algorithm = make_algorithm(config.algorithm)
    sizes = (x_stream.shape[1], config.hidden, len(classes))
    net = Network(sizes, config.activation, card=card, seed=config.seed, references=algorithm.references)
    algorithm.prepare(net)
    rng = np.random.default_rng([config.seed, 7])
    pretrain = _pretrain(config, net, algorithm, sizes, x_train, y_train_i, rng)
    anchors = ([], [])
    for k in range(len(classes)):  # factory anchors: a few pre-training windows of each class
        idx = np.nonzero(y_train_i == k)[0] if len(y_train_i) else []
        for j in rng.choice(idx, min(len(idx), config.replay_anchors), replace=False) if len(idx) else []:
            anchors[0].append(x_train[j])
            anchors[1].append(k)
    return dict(net=net, algorithm=algorithm, card=card, classes=classes, class_names=class_names, anchors=anchors,
                x_stream=x_stream, y_stream=to_index(y_stream), t_stream=t_stream, stream_recs=stream_recs,
                pretrain=pretrain, rng=rng)


def run_stream(config: RunConfig, progress: bool = True, prepared: dict | None = None) -> RunResult:
    """Pre-train (or take `prepared`, e.g. a shared pre-trained network whose state was reloaded), then stream:
    infer every window, learn on the labelled ones (each with probability label_rate)."""
    wall0 = time.perf_counter()
    p = prepared if prepared is not None else prepare(config)
    net, algorithm, card, rng = p["net"], p["algorithm"], p["card"], p["rng"]
    x_stream, y_stream_i, t_stream, stream_recs = p["x_stream"], p["y_stream"], p["t_stream"], p["stream_recs"]
    # held out: every holdout_every-th block of 10 consecutive windows (never learned from, scored before and after)
    held = (np.arange(len(y_stream_i)) // 10) % config.holdout_every == config.holdout_every - 1
    held_idx = np.nonzero(held & (y_stream_i >= 0))[0]
    accuracy_before = net.accuracy(x_stream[held_idx], y_stream_i[held_idx]) if len(held_idx) else float("nan")
    before = net.board.counters().counts
    units = unit_energies(load_energy_model(config.energy_model), card)
    stream_idx = np.nonzero(~held)[0]
    correct = judged = steps = trained = 0
    curve_t, curve_acc, curve_energy = [], [], []
    inference_counts = None
    # the controller's replay buffer of labelled feature vectors, seeded at the factory with anchors per class
    buf_x, buf_y = [list(v) for v in p.get("anchors", ([], []))]
    t_start = time.perf_counter()
    for n, w in enumerate(stream_idx):
        c0 = net.board.counters().counts if inference_counts is None else None
        logits, _, _ = net.forward(x_stream[w:w + 1])
        if inference_counts is None:
            c1 = net.board.counters().counts
            inference_counts = {k: c1[k] - c0[k] for k in c1}
        label = y_stream_i[w]
        if label >= 0:
            judged += 1
            correct += int(logits[0].argmax() == label)
            if rng.random() < config.label_rate:
                bx, by = [x_stream[w]], [label]
                if buf_y and config.replay_batch > 1:
                    pick = rng.choice(len(buf_y), min(len(buf_y), config.replay_batch - 1), replace=False)
                    bx += [buf_x[j] for j in pick]
                    by += [buf_y[j] for j in pick]
                if config.replay:
                    _remember(buf_x, buf_y, x_stream[w], label, config.replay)
                _, _, grads = net.gradients(np.array(bx), np.array(by))
                trained += len(by)
                for layer, (inputs, deltas) in zip(net.layers, grads):
                    algorithm.update(layer, inputs, deltas, config.lr)
                steps += 1
        if judged and (n % 10 == 0 or n == len(stream_idx) - 1):
            now = net.board.counters().counts
            curve_t.append(float(t_stream[w]))
            curve_acc.append(correct / judged)
            curve_energy.append(cost({k: now[k] - before[k] for k in now}, units)["total"])
            if progress:
                print(f"\rstream {t_stream[w]:7.1f} s  windows {n + 1}/{len(stream_idx)}  prequential "
                      f"{correct / judged:.3f}  learning steps {steps}  energy {curve_energy[-1]:.3e} J", end="",
                      flush=True)
    stream_wall = time.perf_counter() - t_start
    if progress:
        print()
    after = net.board.counters().counts
    diff = {k: after[k] - before[k] for k in after}
    accuracy_after = net.accuracy(x_stream[held_idx], y_stream_i[held_idx]) if len(held_idx) else float("nan")
    diff_held = {k: net.board.counters().counts[k] - after[k] for k in after}
    total_j = cost(diff, units)["total"]
    inference_j = cost(inference_counts, units)["total"]
    learning_j = (total_j - inference_j * len(stream_idx)) / steps if steps else 0.0
    hop_s = config.frontend.geometry(stream_recs[0].rate_hz)[1] / stream_recs[0].rate_hz
    windows_per_day = 86_400.0 / hop_s
    stream_seconds = float(sum(r.duration_s for r in stream_recs))
    return RunResult(
        config=config.model_dump(), card_id=card.card_id,
        classes=[p["class_names"][k] if p["class_names"] else str(v) for v, k in p["classes"].items()],
        stream_seconds=stream_seconds, windows=int(len(stream_idx)), labelled_windows=int(judged), learning_steps=steps,
        trained_windows=trained,
        prequential_accuracy=correct / judged if judged else float("nan"), accuracy_before=accuracy_before,
        accuracy_after=accuracy_after, held_out_windows=int(len(held_idx)),
        pulses=int(diff["pulses_up"] + diff["pulses_down"]), counters=diff, energy_model=units.model,
        energy_per_window_j=total_j / max(1, len(stream_idx)), energy_per_learning_step_j=learning_j,
        energy_per_inference_j=inference_j,
        energy_per_day_j=windows_per_day * (inference_j + config.label_rate * learning_j),
        wall_s=time.perf_counter() - wall0, real_time_factor=stream_seconds / max(stream_wall, 1e-9),
        pretrain=p["pretrain"], timeline=dict(t_s=curve_t, prequential_accuracy=curve_acc, energy_j=curve_energy,
                                         held_out_inference_counts=diff_held))


def write_outputs(result: RunResult, out: str | Path) -> None:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the output directory ({exc.strerror or exc})") from None
    write_atomically(out / "summary.json", result.to_json() + "\n")
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    t = result.timeline["t_s"]
    ax.plot(t, result.timeline["prequential_accuracy"], color="tab:blue")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("prequential accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(t, result.timeline["energy_j"], color="tab:red")
    ax2.set_ylabel(f"cumulative energy, J ({result.energy_model})", color="tab:red")
    ax.set_title(f"{result.card_id}, {result.config['algorithm']}: before {result.accuracy_before:.2f}, after "
                 f"{result.accuracy_after:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "stream.png", dpi=90)
    plt.close(fig)
