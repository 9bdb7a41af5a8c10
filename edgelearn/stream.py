"""Sensor streams: sources of timestamped multichannel samples, and the controller's windowing front end.

Sources validate everything before returning (one-line errors naming file, line or array); nothing is dropped
silently. A gap in a CSV stream (a step longer than 1.5 sample periods) splits it into separate recordings, so no
window spans a gap; this is the documented gap policy (no interpolation).
"""

from __future__ import annotations

import array
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from firmware_model import frontend

from .errors import EdgelearnWarning, InputError
from .traces import parse_number

UNLABELLED = -1
# Limits (docs/architecture.md, "Limits"). A live serial stream without duration_s is read until 'end', a silent port,
# or MAX_STREAM_SAMPLES samples (then it stops with a warning); duration_s * rate_hz may not exceed it either. Samples
# are kept as float64 (8 bytes per channel, time and label): the cap bounds a capture to about 64 MB at 6 channels.
MAX_STREAM_SAMPLES = 1_000_000  # 5.5 h at 50 Hz, 27.7 h at 10 Hz
MAX_WINDOW_S = 3600.0
MAX_FULL_SCALE = 1e6  # per channel prefix, in the channel's unit


@dataclass(frozen=True)
class Recording:
    """One continuous stretch of samples at a fixed rate."""

    samples: np.ndarray  # float [n, channels], physical units
    labels: np.ndarray  # int [n], UNLABELLED where unknown
    rate_hz: float
    channels: tuple[str, ...]
    user: int = 0
    session: int = 0
    source: str = ""

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.rate_hz


class FrontEndConfig(BaseModel):
    """How the controller turns samples into network inputs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    window_s: float = Field(2.56, gt=0, le=MAX_WINDOW_S, description="window length, seconds")
    overlap: float = Field(0.5, ge=0, lt=1, description="fraction of a window shared with the next")
    mode: Literal["features", "raw"] = Field("features", description="per-channel features, or decimated samples")
    decimation: int = Field(8, ge=1, description="raw mode: keep every n-th sample")
    full_scale: dict[str, float] = Field({"acc": 8.0, "gyro": 34.9}, description="sensor range per channel prefix "
                                         "(acc in g, gyro in rad/s: an 8 g / 2000 deg/s IMU); int16 codes span it")

    @field_validator("full_scale")
    @classmethod
    def _positive_scales(cls, value: dict[str, float]) -> dict[str, float]:
        for prefix, scale in value.items():
            if not 0.0 < scale <= MAX_FULL_SCALE:
                raise ValueError(f"'{prefix}': expected a sensor range > 0 and <= {MAX_FULL_SCALE:g}, got {scale}")
        return value

    def geometry_problem(self, rate_hz: float) -> str | None:
        """Why windows cannot be cut at rate_hz (too few samples per window or per decimated window), or None."""
        length = int(round(self.window_s * rate_hz))
        if length < 2:
            return (f"window_s {self.window_s:g} s is {length} sample(s) at {rate_hz:g} Hz; a window needs at least 2 "
                    f"(window_s >= {2.0 / rate_hz:g} s)")
        if self.mode == "raw" and length // self.decimation < 1:
            return f"decimation {self.decimation} leaves no sample of a {length}-sample window"
        return None

    def geometry(self, rate_hz: float) -> tuple[int, int]:
        problem = self.geometry_problem(rate_hz)
        if problem:
            raise InputError("front end", problem, field="window_s")
        length = int(round(self.window_s * rate_hz))
        hop = max(1, int(round(length * (1.0 - self.overlap))))
        return length, hop

    def scale_for(self, channel: str) -> float:
        for prefix, value in self.full_scale.items():
            if channel.startswith(prefix):
                return value
        raise InputError("front end", f"no full_scale for channel '{channel}' (known prefixes: "
                         f"{', '.join(self.full_scale)})")


def to_codes(recording: Recording, config: FrontEndConfig) -> np.ndarray:
    """int16 sensor codes: round(x / full_scale * 32767), saturating (what the IMU's ADC delivers)."""
    scales = np.array([config.scale_for(c) for c in recording.channels])
    codes = np.round(recording.samples / scales * 32767.0)
    return np.clip(codes, -32768, 32767).astype(np.int16)


def windows(recording: Recording, config: FrontEndConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(network inputs in [-1, 1] [windows, features], window labels, window end times in s).
    A window's label is the label of most of its samples; UNLABELLED when that is 'unlabelled'."""
    length, hop = config.geometry(recording.rate_hz)
    codes = to_codes(recording, config)
    n_windows = frontend.window_count(codes.shape[0], length, hop)
    channels = codes.shape[1]
    if config.mode == "features":
        out = np.zeros((n_windows, channels * frontend.N_FEATURES), np.int32)
        frontend.window_features(codes, length, hop, out)
    else:
        out = np.zeros((n_windows, channels * (length // config.decimation)), np.int16)
        frontend.decimate(codes, length, hop, config.decimation, out)
    inputs = out.astype(np.float64) / 32768.0  # one constant puts every code into the DAC's [-1, 1]
    labels = np.full(n_windows, UNLABELLED, np.int64)
    for w in range(n_windows):
        values, counts = np.unique(recording.labels[w * hop:w * hop + length], return_counts=True)
        labels[w] = values[np.argmax(counts)]
    ends = (np.arange(n_windows) * hop + length) / recording.rate_hz
    return inputs, labels, ends


# ------------------------------------------------------------------------------------------------ sources

HAPT_ARRAYS = {"signals": 2, "label": 1, "user": 1, "session": 1, "channels": 1}


def load_hapt(path: str | Path, users=None) -> list[Recording]:
    """UCI HAPT raw signals from the npz of ../shared/datasets/hapt (one Recording per session, 50 Hz, labels 1-12,
    -1 unlabelled); `users` keeps only those volunteers."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected the HAPT npz file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(path, f"damaged: not a readable npz archive ({_one_line(exc)}); re-create it") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(path, "not an npz archive (a single .npy array?): expected the HAPT npz file")
    with archive:
        for name, ndim in HAPT_ARRAYS.items():
            if name not in archive.files:
                raise InputError(path, f"missing array '{name}' (expected {', '.join(HAPT_ARRAYS)})")
        try:
            data = {name: archive[name] for name in HAPT_ARRAYS}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise InputError(path, f"damaged: an array cannot be read ({_one_line(exc)}); re-create it") from None
    for name, ndim in HAPT_ARRAYS.items():
        if data[name].ndim != ndim:
            raise InputError(path, f"array '{name}' has {data[name].ndim} dimensions, expected {ndim}")
    n = data["signals"].shape[0]
    channels = tuple(str(c) for c in data["channels"])
    if data["signals"].shape[1] != len(channels):
        raise InputError(path, f"signals have {data['signals'].shape[1]} columns for {len(channels)} channel names")
    for name in ("label", "user", "session"):
        if data[name].shape[0] != n:
            raise InputError(path, f"array '{name}' has {data[name].shape[0]} rows, signals have {n}")
    if not np.isfinite(data["signals"]).all():
        row = int(np.nonzero(~np.isfinite(data["signals"]).all(axis=1))[0][0])
        raise InputError(path, f"non-finite sample at row {row}", field="signals")
    bad = (data["label"] != UNLABELLED) & ((data["label"] < 1) | (data["label"] > 12))
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise InputError(path, f"label {int(data['label'][row])} at row {row}: expected 1-12 or -1", field="label")
    session = data["session"].astype(np.int64)
    starts = np.r_[0, np.nonzero(np.diff(session))[0] + 1]
    ends = np.r_[starts[1:], n]
    wanted = None if users is None else {int(u) for u in users}
    recordings = []
    for a, b in zip(starts, ends):
        user = int(data["user"][a])
        if np.any(data["user"][a:b] != user):
            raise InputError(path, f"session {int(session[a])} spans several users", field="user")
        if wanted is not None and user not in wanted:
            continue
        recordings.append(Recording(data["signals"][a:b].astype(np.float64), data["label"][a:b].astype(np.int64),
                                    50.0, channels, user, int(session[a]), path.name))
    return recordings


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def load_csv(path: str | Path, rate_hz: float, label_column: str = "label") -> list[Recording]:
    """A CSV stream: header `time_s,<channel>,...[,label]`, one sample per line, time in seconds ascending, label an
    integer or empty (unlabelled). The sampling rate must match rate_hz within 1 %; gaps split the stream."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a CSV stream file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    if not lines:
        raise InputError(path, "empty file: expected a header 'time_s,<channels>[,label]'", 1)
    parser = SampleParser(path, lines[0], label_column)
    for line_no, raw in enumerate(lines[1:], start=2):
        parser.add(raw, line_no)
    return parser.recordings(rate_hz)


class SampleParser:
    """The sample line format shared by CSV files and live serial streams: a header `time_s,<channel>,...[,label]`,
    then one line per sample. Every line is validated as it arrives; errors name the source and line."""

    def __init__(self, source, header_line: str, label_column: str = "label"):
        self.source = source
        self.header = [h.strip() for h in header_line.split(",")]
        if self.header[0] != "time_s":
            raise InputError(source, f"first column must be 'time_s' (seconds), got '{self.header[0]}'", 1)
        self.has_label = self.header[-1] == label_column
        self.label_column = label_column
        self.channels = tuple(self.header[1:-1] if self.has_label else self.header[1:])
        if not self.channels:
            raise InputError(source, "no sensor channels in the header", 1)
        # compact buffers (8 bytes a value): a capture of MAX_STREAM_SAMPLES stays tens of MB
        self.times = array.array("d")
        self.rows = array.array("d")  # channels per sample, flattened
        self.labels = array.array("q")

    def add(self, raw: str, line_no: int) -> None:
        if not raw.strip():
            return
        path, header, channels = self.source, self.header, self.channels
        cells = raw.split(",")
        if len(cells) != len(header):
            raise InputError(path, f"expected {len(header)} values, got {len(cells)}", line_no)
        t = parse_number(path, line_no, "time_s", cells[0])
        values = [parse_number(path, line_no, name, text) for name, text in zip(channels, cells[1:1 + len(channels)])]
        label = UNLABELLED
        if self.has_label and cells[-1].strip():
            try:
                label = int(cells[-1])
            except ValueError:
                raise InputError(path, f"expected an integer label or nothing, got '{cells[-1].strip()}'", line_no,
                                 self.label_column) from None
        if self.times and t <= self.times[-1]:
            raise InputError(path, f"time must increase, got {t} after {self.times[-1]}", line_no, "time_s")
        self.times.append(t)
        self.rows.extend(values)
        self.labels.append(label)

    def __len__(self) -> int:
        return len(self.times)

    def recordings(self, rate_hz: float) -> list[Recording]:
        """The samples so far, checked against rate_hz (within 1 %) and split at gaps (> 1.5 periods)."""
        path, times = self.source, self.times
        if len(times) < 2:
            raise InputError(path, f"needs at least 2 samples, has {len(times)}")
        t = np.array(times)
        dt = np.diff(t)
        period = 1.0 / rate_hz
        regular = dt[dt <= 1.5 * period]
        if regular.size == 0 or abs(np.median(regular) - period) > 0.01 * period:
            found = 1.0 / np.median(dt)
            raise InputError(path, f"sampling rate {found:.4g} Hz, expected {rate_hz:g} Hz (within 1 %)",
                             field="time_s")
        cuts = np.nonzero(dt > 1.5 * period)[0] + 1
        samples = np.frombuffer(self.rows, np.float64).reshape(len(times), len(self.channels)).copy()
        label_array = np.frombuffer(self.labels, np.int64).copy()
        bounds = np.r_[0, cuts, len(times)]
        name = Path(str(path)).name
        return [Recording(samples[a:b], label_array[a:b], rate_hz, self.channels, 0, k, name)
                for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def read_serial(url: str, rate_hz: float, duration_s: float | None = None, timeout_s: float = 5.0,
                label_column: str = "label", port=None, max_samples: int | None = None) -> list[Recording]:
    """A live sensor stream from a serial port (any pyserial URL: /dev/ttyACM0, socket://host:port, loop://, ...):
    ASCII lines in the CSV sample format (header line first, then `time_s,<channels>[,label]` per sample, `\\n` or
    `\\r\\n` endings). Reading stops at a line `end`, after `duration_s` of stream time, when the port stays silent
    for `timeout_s` (an error if no header arrived), or after `max_samples` samples (default MAX_STREAM_SAMPLES; with
    an EdgelearnWarning, as the capture is kept in memory). `port` may be an already open serial object."""
    import serial

    cap = MAX_STREAM_SAMPLES if max_samples is None else int(max_samples)

    if port is None:
        try:
            port = serial.serial_for_url(url, baudrate=115200, timeout=timeout_s)
        except (serial.SerialException, ValueError) as exc:
            raise InputError(url, f"cannot open the sensor port ({exc})") from None
    parser = None
    line_no = 0
    try:
        while True:
            raw = port.readline()
            if not raw or not raw.endswith(b"\n"):
                if parser is None:
                    raise InputError(url, f"no header line within {timeout_s:g} s: expected "
                                          "'time_s,<channels>[,label]'", line_no + 1)
                break  # silent port: the stream ended
            line_no += 1
            try:
                text = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                raise InputError(url, "not ASCII text", line_no) from None
            if text == "end":
                break
            if parser is None:
                parser = SampleParser(url, text, label_column)
                continue
            parser.add(text, line_no)
            if duration_s is not None and parser.times[-1] - parser.times[0] >= duration_s:
                break
            if len(parser) >= cap:
                warnings.warn(f"{url}: stopped reading after {cap:,} samples ({cap / rate_hz:.0f} s at {rate_hz:g} "
                              "Hz), the cap on a serial capture kept in memory (MAX_STREAM_SAMPLES); set duration_s to "
                              "choose a shorter stream, or end it with a line 'end'", EdgelearnWarning, stacklevel=2)
                break
    finally:
        port.close()
    return parser.recordings(rate_hz)


BASIC_MOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


def basic_motions_path(split: str) -> Path:
    """The BasicMotions .ts file shipped inside the sktime package (read as data; sktime is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("BasicMotions", "the embedded dataset ships inside the sktime package: pip install sktime")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "BasicMotions" / \
        f"BasicMotions_{split.upper()}.ts"
    if not path.is_file():
        raise InputError(path, "missing from the installed sktime package")
    return path


def load_ts(path: str | Path, rate_hz: float, channels: tuple[str, ...]) -> tuple[list[Recording], list[str]]:
    """A multivariate equal-length .ts file (sktime / UEA format): one Recording per instance, labelled with the
    index of its class in the @classLabel list. Returns (recordings, class names)."""
    path = Path(path)
    classes: list[str] = []
    recordings = []
    in_data = False
    for line_no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            lowered = line.lower()
            if lowered.startswith("@classlabel"):
                classes = line.split()[2:]
            elif lowered.startswith("@data"):
                in_data = True
            continue
        *dims, label = line.split(":")
        if len(dims) != len(channels):
            raise InputError(path, f"{len(dims)} dimensions, expected {len(channels)}", line_no)
        if label not in classes:
            raise InputError(path, f"class '{label}' not in @classLabel {classes}", line_no)
        try:
            series = np.array([[float(v) for v in dim.split(",")] for dim in dims]).T
        except ValueError:
            raise InputError(path, "expected comma-separated numbers in every dimension", line_no) from None
        if not np.isfinite(series).all():
            raise InputError(path, "non-finite value", line_no)
        recordings.append(Recording(series, np.full(series.shape[0], classes.index(label), np.int64), rate_hz,
                                    channels, 0, len(recordings), path.name))
    if not recordings:
        raise InputError(path, "no @data instances")
    return recordings, classes


def load_basic_motions(split: str = "train") -> tuple[list[Recording], list[str]]:
    """BasicMotions (smartwatch accelerometer + gyroscope, 10 Hz, 10 s instances of Standing / Running / Walking /
    Badminton), the embedded default stream; split 'train' or 'test' (40 instances each)."""
    return load_ts(basic_motions_path(split), 10.0, BASIC_MOTIONS_CHANNELS)
