"""Continuous wearable learning, the main job: pre-train, then stream windows through the emulated chip, inferring on
every window and learning whenever a label arrives (prequential, test-then-train), with every event counted and
costed. `edgelearn run` is a thin layer over `run_stream`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .algorithms import make_algorithm
from .devices import load_card
from .endurance import endurance_of, endurance_report
from .energy import cost, load_energy_model, unit_energies
from .errors import EdgelearnError, EdgelearnWarning, InputError, bundled_files, read_toml, validation_error
from .network import Network
from .stream import (MAX_NORM_SIGMAS, MAX_STREAM_SAMPLES, NORM_SIGMAS, FrontEndConfig, Normalisation, Recording,
                     load_basic_motions, load_csv, load_hapt, read_serial, to_inputs, window_codes)
from .stream import HAPT_ACTIVITIES, LabelCodes, canonical_label, check_saturation  # own-data sources, checks
from .traces import write_atomically

_log = logging.getLogger(__name__)  # status lines (the CLI prints them on stderr unless --quiet)

# Limits (docs/architecture.md, "Limits"); the defaults are far inside them
MAX_PRETRAIN_EPOCHS = 1000  # the shipped runs use 30; 1000 over the HAPT pre-training set is hours
MAX_LR = 100.0  # learning rates (weights live in about [-1, 1]; the shipped runs use 0.2-0.5)
MAX_RATE_HZ = 100_000.0
SOURCE_RATES_HZ = {"basicmotions": 10.0, "hapt": 50.0}  # fixed by the dataset; csv and serial give rate_hz
# Sensor ranges (frontend.full_scale) of every source but the BasicMotions demo, in the data's unit: an 8 g / 2000 deg/s
# IMU with the accelerometer in g and the gyroscope in rad/s (HAPT's units). Data in other units give full_scale.
OWN_DATA_FULL_SCALE = {"acc": 8.0, "gyro": 34.9}
# Digital pre-training (docs/wearable.md): each layer's weights w are programmed as w / s with s chosen so that the
# largest |w| lands at DIGITAL_FILL of the card's nominal weight range on the tighter side (room for device-to-device
# bound variation); s is applied digitally to the layer's output. A device whose own bound is tighter clips its
# weight; more than MAX_CLIPPED_FRACTION of a layer's weights clipping refuses the run.
DIGITAL_FILL = 0.9
MAX_CLIPPED_FRACTION = 0.01


class RunConfig(BaseModel):
    """Every option of `edgelearn run`; also the schema of its TOML config file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    source: Literal["basicmotions", "hapt", "csv", "serial"] = Field("basicmotions", description="sensor stream "
                                                                                                 "source")
    path: str | None = Field(None, description="hapt: the npz; csv: the stream file; serial: the pyserial URL of a "
                                               "live sensor (/dev/ttyACM0, socket://host:port)")
    pretrain_path: str | None = Field(None, description="csv or serial: a labelled CSV file for pre-training")
    pretrain_fraction: float | None = Field(None, gt=0, lt=1, description="csv or serial without pretrain_path: "
                                            "pre-train on this first fraction of the stream (it must hold labelled "
                                            "windows of every class), stream the rest")
    rate_hz: float | None = Field(None, gt=0, le=MAX_RATE_HZ, description="csv or serial: sampling rate")
    duration_s: float | None = Field(None, gt=0, description="serial: stop after this much stream time (else at "
                                                             "'end', a silent port or MAX_STREAM_SAMPLES samples)")
    serial_timeout_s: float = Field(5.0, gt=0, le=3600, description="serial: a port silent this long ends the "
                                                                    "stream")
    header: str | None = Field(None, description="csv or serial: the stream's header line 'time_s,<channels>[,label]' "
                               "when it has none (a sensor already streaming when the reader starts)")
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
    pretrain_lr_halving: int = Field(0, ge=0, le=MAX_PRETRAIN_EPOCHS, description="halve the pre-training learning "
                                     "rate every this many epochs (0: constant)")
    normalise: Literal["pretrain", "fixed"] = Field("pretrain", description="front-end normalisation: 'pretrain': "
                                                    "per-feature offset and scale computed at the factory from the "
                                                    "pre-training windows (the fixed scaling when there are none); "
                                                    "'fixed': feature codes / 32768")
    norm_sigmas: float = Field(NORM_SIGMAS, gt=0, le=MAX_NORM_SIGMAS, description="normalisation: standard deviations "
                               "of a feature that span the DAC's half range (further out saturates)")
    digital_scale: float | None = Field(None, gt=0, le=1e6, description="pretrain 'digital': weights are programmed "
                                        "as w / scale with the scale applied at each layer's output; default per "
                                        "layer, the largest |w| at DIGITAL_FILL of the card's range")
    lr: float = Field(0.2, gt=0, le=MAX_LR, description="learning rate on the stream (one window per step)")
    label_rate: float = Field(0.1, ge=0, le=1, description="fraction of stream windows whose label arrives")
    replay: int = Field(16, ge=0, le=100_000, description="labelled windows the controller keeps (feature vectors in "
                        "SRAM); each learning step is a mini-batch of the new window and up to replay_batch - 1 of "
                        "these")
    replay_anchors: int = Field(4, ge=0, le=100_000, description="pre-training windows per class stored in the replay "
                                "buffer at the factory")
    replay_batch: int = Field(8, ge=1, le=100_000, description="mini-batch size of a learning step (new window + "
                              "replayed ones)")
    holdout_every: int = Field(2, ge=2, le=1000, description="every n-th block of holdout_block stream windows is "
                               "held out to measure adaptation (never learned from)")
    holdout_block: int = Field(5, ge=1, le=10_000, description="consecutive stream windows per held-out block")
    moved_sensor: bool | None = Field(None, description="rotate the streamed sensor 90 degrees about z (the watch "
                                      "was put on differently): the shift the device must adapt to; default (None): "
                                      "only for the built-in basicmotions demo, never for a user's own data")
    label_map: dict[str, str] = Field({}, description="class names by label as written in the data ('1' or 'walk' = "
                                      "'walking'); csv/serial: with a map, a label not in it is refused, and classes "
                                      "are in its order; hapt: renames activities 1-12; basicmotions: renames its "
                                      "classes")
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

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_keys(cls, value):
        if not isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        for key, name in value.items():
            label = canonical_label(key)
            if label is None:
                raise ValueError(f"'{key}': -1 or an empty label means unlabelled; it cannot name a class")
            if label in out:
                raise ValueError(f"'{key}' is the label '{label}' given twice")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"'{key}': expected a class name (text), got {name!r}")
            if name.strip() in out.values():
                raise ValueError(f"'{key}': two labels named '{name.strip()}'")
            out[label] = name.strip()
        return out

    @model_validator(mode="before")
    @classmethod
    def _own_data_full_scale(cls, data):
        """The BasicMotions demo keeps the field's default sensor ranges (acc 40, gyro 40, in the dataset's units);
        every other source gets the documented IMU ranges, acc 8 g and gyro 34.9 rad/s (HAPT's units), unless the
        config gives frontend.full_scale."""
        if not isinstance(data, dict) or data.get("source", "basicmotions") == "basicmotions":
            return data
        frontend = data.get("frontend")
        if isinstance(frontend, FrontEndConfig):
            return data
        frontend = dict(frontend) if isinstance(frontend, dict) else \
            cls.model_fields["frontend"].default.model_dump(exclude={"full_scale"})
        frontend.setdefault("full_scale", dict(OWN_DATA_FULL_SCALE))
        return {**data, "frontend": frontend}

    @model_validator(mode="after")
    def _demo_only_rotation(self):
        if self.moved_sensor is None:  # the demo's built-in shift; a user's own data are streamed as recorded
            self.moved_sensor = self.source == "basicmotions"
        return self


def bundled_configs() -> dict[str, Path]:
    """The shipped example configs of `edgelearn run` (traces/configs/*.toml, installed as edgelearn.bundled), by
    name: basicmotions, hapt, csv-template."""
    return bundled_files("configs", "*.toml")


def config_path(path_or_name: str | Path) -> Path:
    """A config file, or the name of a shipped config (`edgelearn run --config hapt`); a file of that name wins."""
    path = Path(path_or_name)
    if path.exists():
        return path
    shipped = bundled_configs()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    if path.suffix == ".toml" and path.stem in shipped and len(path.parts) == 1:
        raise InputError(path, f"file not found; a shipped config of that name exists: --config {path.stem}")
    raise InputError(path, f"file not found, and no shipped config of that name (shipped: {', '.join(shipped)}; "
                           "edgelearn run --list-configs)")


def config_description(path: str | Path) -> str:
    """The first comment line of a config file (what the shipped configs say about themselves)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def source_problem(config: RunConfig) -> tuple[str, str] | None:
    """(field, message) of the first reason the config's sources cannot make a run (a missing path or rate, no
    pre-training data, options of another source), or None."""
    own = config.source in ("csv", "serial")
    if config.source == "hapt" and config.path is None:
        return "path", "source hapt needs the HAPT npz: give --path FILE (e.g. ../shared/datasets/hapt/hapt_raw.npz)"
    if own and config.path is None:
        return "path", (f"source {config.source} needs path: give --path " +
                        ("FILE.csv" if config.source == "csv" else "URL (/dev/ttyACM0, socket://host:port)"))
    if own and config.rate_hz is None:
        return "rate_hz", f"source {config.source} needs the sampling rate: give --rate-hz HZ"
    for name in ("pretrain_path", "pretrain_fraction", "header"):
        if not own and getattr(config, name) is not None:
            return name, (f"only for source csv or serial (source {config.source} " +
                          ("pre-trains on pretrain_users)" if config.source == "hapt" else
                           "pre-trains on its training split)" if name != "header" else "has no header)"))
    if config.pretrain_path is not None and config.pretrain_fraction is not None:
        return "pretrain_fraction", "give pretrain_path (a separate labelled file) or pretrain_fraction, not both"
    if config.pretrain != "none":
        if own and config.pretrain_path is None and config.pretrain_fraction is None:
            return "pretrain_path", (f"source {config.source} has no pre-training data, and an untrained chip guesses: "
                                     "give pretrain_path (a labelled CSV, --pretrain-path), or pretrain_fraction (e.g. "
                                     "0.5: pre-train on the first half of the stream), or set pretrain = \"none\" to "
                                     "start untrained on purpose")
        if config.source == "hapt" and not config.pretrain_users:
            return "pretrain_users", "no users to pre-train on (or set pretrain = \"none\" to start untrained)"
    return None


def load_run_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the TOML file (a path, or a shipped config's name), then command-line overrides; one-line
    errors naming the file and field."""
    data: dict = {}
    if path is not None:
        path = config_path(path)
        data = read_toml(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "pretrain_path" in overrides and "pretrain_fraction" not in overrides:
        data.pop("pretrain_fraction", None)  # the two are alternatives: the command line's choice replaces the file's
    data.update(overrides)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path or "command line", exc) from None
    rate = SOURCE_RATES_HZ.get(config.source, config.rate_hz)
    problem = config.frontend.geometry_problem(rate) if rate is not None else None
    if problem:
        raise InputError(path or "command line", problem, field="frontend.window_s")
    problem = source_problem(config)
    if problem:
        raise InputError(path or "command line", problem[1], field=problem[0])
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
    control_prequential_accuracy: float = float("nan")  # the no-learning control arm, same stream, seed and chip
    control_accuracy_after: float = float("nan")
    gain: float = float("nan")  # held-out accuracy after: learning arm - control arm
    gain_interval: list = field(default_factory=list)  # 95 % paired bootstrap over held-out windows
    chance_accuracy: float = float("nan")  # the commonest class's share of the held-out windows
    timeline: dict = field(default_factory=dict)
    endurance: dict = field(default_factory=dict)  # worst device's wear, learning arm (edgelearn.endurance)
    memory: dict = field(default_factory=dict)  # SRAM the controller needs (edgelearn.memory.MemoryReport)
    geometry: dict = field(default_factory=dict)  # network sizes, sensor rate, channels, window, hop, windows per day
    system: dict = field(default_factory=dict)  # the whole-system day on the run's profile (edgelearn.system)

    def to_json(self) -> str:
        """JSON with NaN written as null (strict JSON has no NaN)."""
        return json.dumps(_finite(asdict(self)), indent=2)


def _finite(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _recordings(config: RunConfig):
    """(pre-training recordings, stream recordings, class names, label values of the classes), checked: a source
    that cannot pre-train is refused (never a silent untrained chip), samples beyond full_scale warn, and status lines
    say what is streamed (a labelless stream: inference only; the demo's rotated sensor)."""
    problem = source_problem(config)
    if problem:
        raise EdgelearnError(f"field '{problem[0]}': {problem[1]}")
    names_map = config.label_map
    if config.source == "basicmotions":
        train, classes = load_basic_motions("train")
        test, _ = load_basic_motions("test")
        _check_label_map(names_map, classes, "basicmotions: its classes")
        # the file lists instances class by class; a wearer's day interleaves activities, so the stream order is a
        # seeded shuffle of the 10 s recordings
        order = np.random.default_rng([config.seed, 3]).permutation(len(test))
        train_what, stream_what = "BasicMotions' training split", "BasicMotions (test split)"
        train, stream = train, [test[k] for k in order]
        names, values = [names_map.get(c, c) for c in classes], list(range(len(classes)))
    elif config.source == "hapt":
        train = load_hapt(config.path, users=config.pretrain_users)
        stream = load_hapt(config.path, users=config.stream_users)
        if not stream:
            raise EdgelearnError(f"no HAPT sessions for stream_users {config.stream_users}")
        ids = [str(v) for v in range(1, 13)]
        _check_label_map(names_map, ids, "hapt: activity ids")
        train_what, stream_what = f"HAPT users {_users(config.pretrain_users)}", \
            f"HAPT user(s) {_users(config.stream_users)}"
        names, values = [names_map.get(i, HAPT_ACTIVITIES[int(i) - 1]) for i in ids], list(range(1, 13))
    else:
        codes = LabelCodes(list(names_map) if names_map else None)
        train, train_what = [], ""
        if config.pretrain_path:  # read first: a bad pre-training file is refused before a live sensor is waited for
            train = load_csv(config.pretrain_path, config.rate_hz, labels=codes)
            train_what = Path(config.pretrain_path).name
        if config.source == "serial":
            stream = read_serial(config.path, config.rate_hz, config.duration_s, config.serial_timeout_s,
                                 header=config.header, labels=codes)
        else:
            stream = load_csv(config.path, config.rate_hz, header=config.header, labels=codes)
        stream_what = Path(config.path).name if config.source == "csv" else config.path
        if config.pretrain_fraction is not None:
            train, stream = _split(stream, config.pretrain_fraction)
            if not stream:
                raise EdgelearnError(f"field 'pretrain_fraction': {config.pretrain_fraction:g} of {stream_what} "
                                     "leaves nothing to stream")
            train_what = f"the first {100 * config.pretrain_fraction:g} % of {stream_what}"
            stream_what = f"the rest of {stream_what}"
        if train and train[0].channels != stream[0].channels:
            raise InputError(config.pretrain_path, f"channels {', '.join(train[0].channels)}, but the stream has "
                             f"{', '.join(stream[0].channels)}: pre-training and stream need the same channels")
        values = codes.ordered(np.concatenate([r.labels for r in train + stream]))
        names = [names_map.get(codes.token(v), codes.token(v)) for v in values]
    name_of = dict(zip(values, names))
    pre_windows = _window_labels(train, config.frontend)
    pre_classes = {int(v) for v in np.unique(pre_windows) if v >= 0}
    stream_classes = {int(v) for v in np.unique(_window_labels(stream, config.frontend)) if v >= 0}
    if config.pretrain != "none":
        if len(pre_classes) < 2:
            raise EdgelearnError(f"{train_what or 'pre-training data'}: {len(pre_windows)} windows, labelled with "
                                 f"{len(pre_classes)} class(es); pre-training needs at least 2 (label the pre-training "
                                 "data, or set pretrain = \"none\" to start untrained on purpose)")
        unseen = [name_of.get(v, str(v)) for v in values if v in stream_classes - pre_classes]
        if unseen:
            warnings.warn(f"classes in the stream that pre-training never saw: {', '.join(unseen)} (the chip can "
                          "only learn them from the stream's labels)", EdgelearnWarning, stacklevel=2)
    files = stream_what if config.pretrain_fraction is None else stream_what.removeprefix("the rest of ")
    check_saturation(train + stream, config.frontend, f"{train_what} and {files}" if config.pretrain_path else files)
    seconds = sum(r.duration_s for r in stream)
    _log.info(f"stream: {stream_what}, {seconds:.1f} s at {stream[0].rate_hz:g} Hz, channels "
              f"{', '.join(stream[0].channels)}; classes: {', '.join(names)}")
    if config.pretrain == "none":
        _log.info("pre-training: none (pretrain = \"none\"): the chip starts untrained, near chance")
    else:
        _log.info(f"pre-training: {config.pretrain}, {config.pretrain_epochs} epochs on {train_what} "
                  f"({sum(r.duration_s for r in train):.1f} s)")
    if not stream_classes:
        _log.info("the stream has no labels: inference only (no learning steps; accuracies are null, there is "
                  "nothing to score them against)")
    if config.moved_sensor:
        pairs = [p for p in ("acc", "gyro") if {f"{p}_x", f"{p}_y"} <= set(stream[0].channels)]
        if not pairs:
            warnings.warn("moved_sensor: no acc_x/acc_y or gyro_x/gyro_y channels to rotate; the stream is used as "
                          "recorded", EdgelearnWarning, stacklevel=2)
        else:
            _log.info(f"moved_sensor: the streamed sensor is turned 90 degrees about z ({', '.join(pairs)} x/y "
                      "rotated" + ("; the demo's built-in shift, moved_sensor = false streams it as recorded)"
                                   if config.source == "basicmotions" else ")"))
    return train, stream, names, values


def _window_labels(recordings: list[Recording], frontend: FrontEndConfig) -> np.ndarray:
    """The label of every window the front end will cut (the label of most of its samples), without computing
    features: what pre-training and the stream will have to learn from."""
    out = []
    for r in recordings:
        length, hop = frontend.geometry(r.rate_hz)
        for start in range(0, r.samples.shape[0] - length + 1, hop):
            values, counts = np.unique(r.labels[start:start + length], return_counts=True)
            out.append(values[np.argmax(counts)])
    return np.array(out, np.int64)


def _users(users) -> str:
    users = sorted(users)
    if users and users == list(range(users[0], users[-1] + 1)) and len(users) > 2:
        return f"{users[0]}-{users[-1]}"
    return ", ".join(str(u) for u in users)


def _check_label_map(label_map: dict, known, what: str) -> None:
    unknown = [k for k in label_map if k not in known]
    if unknown:
        raise EdgelearnError(f"field 'label_map': '{unknown[0]}' is not a label of the data ({what}: "
                             f"{', '.join(known)})")


def _split(recordings: list[Recording], fraction: float) -> tuple[list[Recording], list[Recording]]:
    """The first `fraction` of the samples (pre-training) and the rest (the stream); a recording across the cut is
    cut in two."""
    total = sum(r.samples.shape[0] for r in recordings)
    cut = int(round(fraction * total))
    head, tail, seen = [], [], 0
    for r in recordings:
        n = r.samples.shape[0]
        if seen + n <= cut:
            head.append(r)
        elif seen >= cut:
            tail.append(r)
        else:
            k = cut - seen
            head.append(replace(r, samples=r.samples[:k], labels=r.labels[:k]))
            tail.append(replace(r, samples=r.samples[k:], labels=r.labels[k:]))
        seen += n
    return head, tail


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
    """(int32 front-end codes before normalisation, labels, end times on one stream clock) of all recordings'
    windows, in order."""
    xs, ys, ends = [], [], []
    offset = 0.0
    for rec in recordings:
        x, y, e = window_codes(rec, frontend)
        xs.append(x)
        ys.append(y)
        ends.append(e + offset)
        offset += rec.duration_s
    if not xs:
        return np.zeros((0, 0), np.int32), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ends)


def _normalisation(config: RunConfig, codes_train: np.ndarray, n_features: int, n_channels: int) -> Normalisation:
    """The front end's normalisation, computed at the factory from the pre-training windows only (never from the
    stream); the fixed scaling when configured or when there are no pre-training windows."""
    if config.normalise == "fixed" or codes_train.shape[0] == 0:
        return Normalisation.fixed(n_features)
    if codes_train.shape[1] != n_features:
        raise EdgelearnError(f"the pre-training windows have {codes_train.shape[1]} features, the stream's "
                             f"{n_features}: the two sources must have the same channels")
    groups = None if config.frontend.mode == "features" else np.arange(n_features) // (n_features // n_channels)
    return Normalisation.fit(codes_train, config.norm_sigmas, groups)


def _remember(buf_x: list, buf_y: list, x: np.ndarray, y: int, size: int) -> None:
    """Add a labelled window to the class-balanced replay buffer: when full, the oldest entry of the commonest class
    goes (so the factory anchors of a class are replaced by the wearer's own windows as they arrive)."""
    buf_x.append(x)
    buf_y.append(int(y))
    if len(buf_y) > size:
        commonest = int(np.bincount(buf_y).argmax())
        j = buf_y.index(commonest)
        del buf_x[j], buf_y[j]


def _pretrain(config: RunConfig, net: Network, algorithm, sizes, x_train, y_train, rng, card=None,
              on_epoch=None) -> dict:
    """Pre-train the network on the labelled training windows (on chip, or digitally then programmed);
    on_epoch(epoch, model) is called after every epoch (model: the network being trained, digital or on chip)."""
    info = dict(mode=config.pretrain, windows=int((y_train >= 0).sum()))
    labelled = np.nonzero(y_train >= 0)[0]
    if config.pretrain == "none" or not len(labelled):
        return info
    if config.pretrain == "digital":
        model, algo = Network(sizes, config.activation, digital=True, seed=config.seed), make_algorithm("digital")
        model.initialise()
    else:
        model, algo = net, algorithm
    for epoch in range(config.pretrain_epochs):
        lr = config.pretrain_lr * (0.5 ** (epoch // config.pretrain_lr_halving) if config.pretrain_lr_halving else 1.0)
        order = rng.permutation(labelled)
        for start in range(0, len(order), config.pretrain_batch):
            idx = order[start:start + config.pretrain_batch]
            _, _, grads = model.gradients(x_train[idx], y_train[idx])
            for layer, (inputs, deltas) in zip(model.layers, grads):
                algo.update(layer, inputs, deltas, lr)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    if config.pretrain == "digital":
        info["digital_train_accuracy"] = model.accuracy(x_train[labelled], y_train[labelled])
        info.update(_program_digital(config, net, model, card, algorithm.references))
    info["train_accuracy"] = net.accuracy(x_train[labelled], y_train[labelled])
    return info


def _program_digital(config: RunConfig, net: Network, model: Network, card, references: bool) -> dict:
    """Factory-program digitally trained weights (not counted): layer by layer, w / s on the devices and s carried
    digitally at the output (Network.gradients); the clipped fraction is measured by reading the weights back, and
    more than MAX_CLIPPED_FRACTION of a layer clipping is refused."""
    w_lo, w_hi = float(card.model.w_min), float(card.model.w_max)
    scales, clipped, largest = [], [], []
    for k, (layer, source) in enumerate(zip(net.layers, model.layers)):
        w = source.weights
        ref = 0.0
        if references:  # weights are relative to reference devices at their symmetry points
            ref = float(np.median(np.concatenate([(net.board.device_states(t) - net.board.read_weights(t)).ravel()
                                                  for _, _, t in layer.grid()])))
        room = DIGITAL_FILL * min(w_hi - ref, ref - w_lo)
        peak = float(np.abs(w).max())
        s = float(config.digital_scale) if config.digital_scale is not None else (peak / room if peak > 0 else 1.0)
        layer.set_weights(w / s)
        layer.output_scale = s
        frac = float(np.mean(np.abs(layer.weights - w / s) > 1e-9 * max(1.0, peak / s)))
        scales.append(s)
        clipped.append(frac)
        largest.append(peak)
        if frac > MAX_CLIPPED_FRACTION:
            raise EdgelearnError(f"digital pre-training: {frac:.1%} of layer {k}'s weights clip when programmed "
                                 f"(|w| up to {peak:.3g} / scale {s:.3g} on a card with range [{w_lo:.2f}, "
                                 f"{w_hi:.2f}]); the limit is {MAX_CLIPPED_FRACTION:.0%}: leave digital_scale unset "
                                 f"or raise it")
    return dict(output_scales=scales, clipped_fraction=clipped, max_abs_weight=largest,
                max_clipped_fraction=MAX_CLIPPED_FRACTION)


def prepare(config: RunConfig, on_epoch=None):
    """Everything before the stream: windows of both phases, the front end's normalisation (from the pre-training
    windows), the network on its board, pre-training (on_epoch: see _pretrain).
    Returns a dict with keys net, algorithm, card, sizes, classes, class_names, x_stream, y_stream, t_stream,
    stream_recs, pretrain, rng (what `stream` needs)."""
    train_recs, stream_recs, class_names, values = _recordings(config)
    if config.moved_sensor:
        stream_recs = [_moved(r) for r in stream_recs]
    codes_train, y_train, _ = _window_set(train_recs, config.frontend)
    codes_stream, y_stream, t_stream = _window_set(stream_recs, config.frontend)
    if len(y_stream) == 0:
        raise EdgelearnError("the stream is shorter than one window")
    # the factory computes the normalisation from the pre-training windows; the same integers serve both phases
    norm = _normalisation(config, codes_train, codes_stream.shape[1], len(stream_recs[0].channels))
    x_train = to_inputs(codes_train, norm) if len(codes_train) else codes_train.astype(np.float64)
    x_stream = to_inputs(codes_stream, norm)
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
    pretrain = _pretrain(config, net, algorithm, sizes, x_train, y_train_i, rng, card, on_epoch)
    pretrain["normalisation"] = norm.summary()
    pretrain["counters"] = net.board.counters().counts  # the factory's on-chip work: calibration and pre-training
    anchors = ([], [])
    for k in range(len(classes)):  # factory anchors: a few pre-training windows of each class
        idx = np.nonzero(y_train_i == k)[0] if len(y_train_i) else []
        for j in rng.choice(idx, min(len(idx), config.replay_anchors), replace=False) if len(idx) else []:
            anchors[0].append(x_train[j])
            anchors[1].append(k)
    return dict(net=net, algorithm=algorithm, card=card, classes=classes, class_names=class_names, anchors=anchors,
                x_stream=x_stream, y_stream=to_index(y_stream), t_stream=t_stream, stream_recs=stream_recs,
                pretrain=pretrain, rng=rng)


def held_out_mask(n_windows: int, block: int, every: int) -> np.ndarray:
    """Windows held out to measure adaptation: every `every`-th block of `block` consecutive stream windows (spread
    over the whole stream; never learned from, scored before and after the stream)."""
    return (np.arange(n_windows) // block) % every == every - 1


def bootstrap_gain(correct_learning: np.ndarray, correct_control: np.ndarray, resamples: int = 2000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the paired accuracy difference (learning - control) over held-out windows resampled with
    replacement: how far the gain could move with another draw of held-out windows of the same stream."""
    diff = np.asarray(correct_learning, float) - np.asarray(correct_control, float)
    if len(diff) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng([seed, 17])
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


class _StreamProgress:
    """Progress of a stream arm on stderr: a tqdm bar on a terminal, plain lines (one per tenth) in a log."""

    def __init__(self, enabled: bool, total: int, label: str):
        import sys

        self.enabled, self.total, self.label, self.bar = enabled, total, label, None
        self.next_line = 0
        self.stream = sys.stderr
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="window", leave=False, file=self.stream)

    def update(self, done: int, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(text, refresh=True)
        elif done >= self.next_line or done == self.total:
            print(f"{self.label}: {done}/{self.total} windows, {text}", file=self.stream, flush=True)
            self.next_line = done + max(1, self.total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stream_arm(config: RunConfig, p: dict, held_idx: np.ndarray, stream_idx: np.ndarray, learn: bool,
                progress: bool) -> dict:
    """One pass over the stream from the chip's current state: infer every streamed window, learn on the labelled ones
    (each with probability label_rate) when `learn`, then score the held-out windows."""
    net, algorithm = p["net"], p["algorithm"]
    x_stream, y_stream_i, t_stream = p["x_stream"], p["y_stream"], p["t_stream"]
    rng = np.random.default_rng([config.seed, 23])  # label arrivals and replay picks: one stream of draws per run
    before = net.board.counters().counts
    units = p["units"]
    correct_seq, arrivals, energy_t, energy_j = [], [], [], []
    judged = correct = steps = trained = 0
    inference_counts = None
    buf_x, buf_y = [list(v) for v in p.get("anchors", ([], []))]
    bar = _StreamProgress(progress, len(stream_idx), "stream (learning)" if learn else "stream (control, no learning)")
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
            hit = int(logits[0].argmax() == label)
            correct += hit
            correct_seq.append((float(t_stream[w]), hit))
            if rng.random() < config.label_rate:
                arrivals.append(float(t_stream[w]))
                bx, by = [x_stream[w]], [label]
                if buf_y and config.replay_batch > 1:
                    pick = rng.choice(len(buf_y), min(len(buf_y), config.replay_batch - 1), replace=False)
                    bx += [buf_x[j] for j in pick]
                    by += [buf_y[j] for j in pick]
                if config.replay:
                    _remember(buf_x, buf_y, x_stream[w], label, config.replay)
                if learn:
                    _, _, grads = net.gradients(np.array(bx), np.array(by))
                    trained += len(by)
                    for layer, (inputs, deltas) in zip(net.layers, grads):
                        algorithm.update(layer, inputs, deltas, config.lr)
                    steps += 1
        if n % 10 == 0 or n == len(stream_idx) - 1:
            now = net.board.counters().counts
            energy_t.append(float(t_stream[w]))
            energy_j.append(cost({k: now[k] - before[k] for k in now}, units)["total"])
            bar.update(n + 1, f"prequential {correct / judged:.3f}, learning steps {steps}" if judged else
                       "no labelled window yet")
    stream_wall = time.perf_counter() - t_start
    bar.close()
    after = net.board.counters().counts
    logits_held = net.forward(x_stream[held_idx])[0] if len(held_idx) else np.zeros((0, 1))
    held_correct = (logits_held.argmax(axis=1) == y_stream_i[held_idx]).astype(np.int64) if len(held_idx) else \
        np.zeros(0, np.int64)
    end = net.board.counters().counts
    return dict(judged=judged, correct=correct, steps=steps, trained=trained, correct_seq=correct_seq,
                arrivals=arrivals, energy_t=energy_t, energy_j=energy_j, inference_counts=inference_counts or {},
                counters={k: after[k] - before[k] for k in after}, held_counts={k: end[k] - after[k] for k in end},
                held_correct=held_correct, stream_wall=stream_wall)


def stream_memory(config: RunConfig, p: dict):
    """The controller's SRAM footprint of this run (edgelearn.memory.memory_footprint): the network, the replay buffer
    (its capacity: `replay` entries, or the factory anchors when they are more), one window of the stream's channels
    and a replay_batch learning step."""
    from .memory import memory_footprint

    rec = p["stream_recs"][0]
    anchors = len(p.get("anchors", ([], []))[1])
    entries = max(config.replay, anchors) if config.replay else anchors
    return memory_footprint(p["net"].sizes, config.algorithm, replay=entries, window_samples=config.frontend.geometry(
        rec.rate_hz)[0], channels=int(rec.samples.shape[1]), batch=config.replay_batch)


def run_stream(config: RunConfig, progress: bool = True, prepared: dict | None = None,
               require_fit: bool = False, profile=None) -> RunResult:
    """Pre-train (or take `prepared`, e.g. a shared pre-trained network whose state was reloaded), then stream the
    windows twice from the same chip state and seed: a no-learning control arm, then the learning arm (infer every
    window, learn on the labelled ones). The adaptation gain is learning minus control on the held-out windows, with a
    paired bootstrap interval; energy and counters are the learning arm's. The whole-system day (`system`) and the
    memory verdict are on `profile` (a HardwareProfile, a bundled name or a TOML file; default DEFAULT_PROFILE);
    require_fit: refuse, before the stream, a configuration whose controller memory does not fit its SRAM."""
    from .profiles import HardwareProfile, load_profile

    wall0 = time.perf_counter()
    if not isinstance(profile, HardwareProfile):
        profile = load_profile(profile)  # a bad profile fails before any work
    p = prepared if prepared is not None else prepare(config)
    memory = stream_memory(config, p).check(profile)
    if require_fit and not memory.fits:
        raise EdgelearnError(memory.message)
    net, card = p["net"], p["card"]
    y_stream_i, stream_recs = p["y_stream"], p["stream_recs"]
    held = held_out_mask(len(y_stream_i), config.holdout_block, config.holdout_every)
    held_idx = np.nonzero(held & (y_stream_i >= 0))[0]
    stream_idx = np.nonzero(~(held & (y_stream_i >= 0)))[0]  # unlabelled windows are never held out: inferred
    p["units"] = units = unit_energies(load_energy_model(config.energy_model), card)
    start_state = net.state_dict()
    accuracy_before = net.accuracy(p["x_stream"][held_idx], y_stream_i[held_idx]) if len(held_idx) else float("nan")
    net.load_state_dict(start_state)  # both arms start from the same chip state, read noise included
    control = _stream_arm(config, p, held_idx, stream_idx, learn=False, progress=progress)
    net.load_state_dict(start_state)
    devices_before = net.board.counters()
    arm = _stream_arm(config, p, held_idx, stream_idx, learn=True, progress=progress)
    devices_after = net.board.counters()
    diff, steps = arm["counters"], arm["steps"]
    total_j = cost(diff, units)["total"]
    inference_j = cost(arm["inference_counts"], units)["total"] if arm["inference_counts"] else 0.0
    learning_j = (total_j - inference_j * len(stream_idx)) / steps if steps else 0.0
    rate = stream_recs[0].rate_hz
    length, hop = config.frontend.geometry(rate)
    windows_per_day = 86_400.0 * rate / hop
    # A day is windows_per_day windows, each with the stream's measured counts per streamed window (inference of every
    # window, learning steps at the rate they happened): energy and wear per day alike (docs/budget.md, "A day").
    per_window_to_day = windows_per_day / max(1, len(stream_idx))
    endurance = endurance_report(
        devices_after.pulses_per_device_up - devices_before.pulses_per_device_up,
        devices_after.pulses_per_device_down - devices_before.pulses_per_device_down,
        per_window_to_day, *endurance_of(card)).to_dict()
    geometry = dict(sizes=list(net.sizes), rate_hz=float(rate), channels=int(stream_recs[0].samples.shape[1]),
                    window_samples=int(length), hop_samples=int(hop), mode=config.frontend.mode,
                    windows_per_day=windows_per_day)
    stream_seconds = float(sum(r.duration_s for r in stream_recs))
    n_held = len(held_idx)
    after = float(arm["held_correct"].mean()) if n_held else float("nan")
    after_control = float(control["held_correct"].mean()) if n_held else float("nan")
    low, high = bootstrap_gain(arm["held_correct"], control["held_correct"], seed=config.seed)
    counts = np.bincount(y_stream_i[held_idx], minlength=len(p["classes"])) if n_held else np.zeros(1)
    judged = arm["judged"]
    result = RunResult(
        config=config.model_dump(), card_id=card.card_id,
        classes=[p["class_names"][k] if p["class_names"] else str(v) for v, k in p["classes"].items()],
        stream_seconds=stream_seconds, windows=int(len(stream_idx)), labelled_windows=int(judged), learning_steps=steps,
        trained_windows=arm["trained"],
        prequential_accuracy=arm["correct"] / judged if judged else float("nan"), accuracy_before=accuracy_before,
        accuracy_after=after, held_out_windows=int(n_held),
        pulses=int(diff["pulses_up"] + diff["pulses_down"]), counters=diff, energy_model=units.model,
        energy_per_window_j=total_j / max(1, len(stream_idx)), energy_per_learning_step_j=learning_j,
        energy_per_inference_j=inference_j,
        energy_per_day_j=total_j * per_window_to_day,
        wall_s=time.perf_counter() - wall0,
        real_time_factor=stream_seconds / max(arm["stream_wall"], 1e-9),
        pretrain=p["pretrain"],
        control_prequential_accuracy=control["correct"] / control["judged"] if control["judged"] else float("nan"),
        control_accuracy_after=after_control, gain=after - after_control, gain_interval=[low, high],
        chance_accuracy=float(counts.max() / counts.sum()) if n_held else float("nan"),
        timeline=dict(t_s=arm["energy_t"], energy_j=arm["energy_j"],
                      judged_t_s=[t for t, _ in arm["correct_seq"]],
                      correct=[c for _, c in arm["correct_seq"]],
                      control_correct=[c for _, c in control["correct_seq"]],
                      label_arrivals_t_s=arm["arrivals"], held_out_inference_counts=arm["held_counts"]),
        endurance=endurance, memory=memory.to_dict(),
        geometry=geometry)
    result.system = run_system(result, config, profile)
    return result


def run_system(result: RunResult, config: RunConfig, profile) -> dict:
    """The whole-system day of a run on a HardwareProfile (edgelearn.system): the run's energy model first, then the
    other built-in models for the band."""
    from .energy import BUILTIN_MODELS
    from .system import system_budget, workload_from_run

    work = workload_from_run(asdict(result), "this run")
    models = [config.energy_model] + [m for m in BUILTIN_MODELS if m != config.energy_model]
    return asdict(system_budget(work, profile, models))


def rolling(values, width: int) -> np.ndarray:
    """Mean of the last `width` values at each position (fewer at the start)."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return v
    c = np.cumsum(np.r_[0.0, v])
    k = np.arange(1, len(v) + 1)
    lo = np.maximum(0, k - width)
    return (c[k] - c[lo]) / (k - lo)


def write_outputs(result: RunResult, out: str | Path) -> None:
    """summary.json and stream.png (rolling prequential accuracy of both arms, chance, label arrivals; energy)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the output directory ({exc.strerror or exc})") from None
    write_atomically(out / "summary.json", result.to_json() + "\n")
    from .report import _pyplot

    plt = _pyplot()
    tl = result.timeline
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    width = 20
    t = tl.get("judged_t_s", [])
    if t:
        ax.plot(t, rolling(tl["control_correct"], width), color="tab:gray", lw=2.5, alpha=0.6,
                label="control (no learning)")
        ax.plot(t, rolling(tl["correct"], width), color="tab:blue", lw=1.2, label="learning")
    if np.isfinite(result.chance_accuracy):
        ax.axhline(result.chance_accuracy, color="k", lw=0.8, ls=":", label="chance (commonest class)")
    arrivals = tl.get("label_arrivals_t_s", [])
    if arrivals:
        ax.plot(arrivals, np.full(len(arrivals), 0.02), "|", color="tab:green", ms=10, label="label arrives")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"prequential accuracy\n(last {width} labelled windows)")
    ax.legend(fontsize=7, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 0.08))
    lo, hi = (result.gain_interval + [float("nan"), float("nan")])[:2]
    ax.set_title(f"{result.card_id}, {result.config['algorithm']}: held-out {result.accuracy_before:.3f} -> "
                 f"{result.accuracy_after:.3f} (control {result.control_accuracy_after:.3f}); gain {result.gain:+.3f} "
                 f"[{lo:+.3f}, {hi:+.3f}], n = {result.held_out_windows}", fontsize=8)
    ax2.plot(tl.get("t_s", []), tl.get("energy_j", []), color="tab:red")
    ax2.set_xlabel("stream time (s)")
    ax2.set_ylabel(f"energy, J\n({result.energy_model})")
    fig.tight_layout()
    fig.savefig(out / "stream.png", dpi=90)
    plt.close(fig)
