"""Sensor streams: sources of timestamped multichannel samples, and the controller's windowing front end.

Sources validate everything before returning (one-line errors naming file, line or array); nothing is dropped
silently. Gap policy of CSV and serial streams: a step longer than 1.5 sample periods is a gap; up to
MAX_INTERPOLATED_GAP missing samples are filled by linear interpolation (a dropped sample must not cost the windows
around it), a longer gap splits the stream into separate recordings (no window spans it) with a warning.

Units: samples are kept in the unit of the data; `FrontEndConfig.full_scale` (per channel prefix, the same unit) is
the sensor's range that the int16 codes span. `check_saturation` warns when more than SATURATION_WARN_FRACTION of a
channel's samples lie at or beyond it.
"""

from __future__ import annotations

import array
import logging
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
_log = logging.getLogger(__name__)  # status lines (the CLI prints them on stderr unless --quiet)
# Limits (docs/architecture.md, "Limits"). A live serial stream without duration_s is read until 'end', a silent port,
# or MAX_STREAM_SAMPLES samples (then it stops with a warning); duration_s * rate_hz may not exceed it either. Samples
# are kept as float64 (8 bytes per channel, time and label): the cap bounds a capture to about 64 MB at 6 channels.
MAX_STREAM_SAMPLES = 1_000_000  # 5.5 h at 50 Hz, 27.7 h at 10 Hz
MAX_WINDOW_S = 3600.0
MAX_FULL_SCALE = 1e6  # per channel prefix, in the channel's unit
NORM_SIGMAS = 3.0  # factory normalisation: standard deviations of a feature that span the DAC's half range
MAX_NORM_SIGMAS = 100.0
MIN_NORM_STD = 0.5  # codes: a feature varying less than this over the pre-training windows is set to 0


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


def windows(recording: Recording, config: FrontEndConfig, norm: Normalisation | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(network inputs in [-1, 1) [windows, features], window labels, window end times in s).
    A window's label is the label of most of its samples; UNLABELLED when that is 'unlabelled'. `norm`: the
    factory normalisation (see `Normalisation`); None is the fixed scaling (codes / 32768)."""
    features, labels, ends = window_codes(recording, config)
    return to_inputs(features, norm), labels, ends


def window_codes(recording: Recording, config: FrontEndConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int32 front-end codes [windows, features] (features mode) or decimated int16 samples widened to int32 (raw
    mode), window labels, window end times in s): what the controller computes before normalisation."""
    length, hop = config.geometry(recording.rate_hz)
    codes = to_codes(recording, config)
    n_windows = frontend.window_count(codes.shape[0], length, hop)
    channels = codes.shape[1]
    if config.mode == "features":
        out = np.zeros((n_windows, channels * frontend.N_FEATURES), np.int32)
        frontend.window_features(codes, length, hop, out)
    else:
        raw = np.zeros((n_windows, channels * (length // config.decimation)), np.int16)
        frontend.decimate(codes, length, hop, config.decimation, raw)
        out = raw.astype(np.int32)
    labels = np.full(n_windows, UNLABELLED, np.int64)
    for w in range(n_windows):
        values, counts = np.unique(recording.labels[w * hop:w * hop + length], return_counts=True)
        labels[w] = values[np.argmax(counts)]
    ends = (np.arange(n_windows) * hop + length) / recording.rate_hz
    return out, labels, ends


@dataclass(frozen=True)
class Normalisation:
    """The front end's per-feature normalisation as the controller stores it (firmware_model.frontend.normalise,
    Q formats there): z = sat16(((feature - offset) * multiplier + round) >> shift), a Q1.15 DAC input code.

    `factory`: offset = the rounded mean and scale = 1 / (sigmas * std) of each feature over the pre-training windows,
    so `sigmas` standard deviations span the DAC's half range (values further out saturate); in raw mode the samples
    of a channel share one offset and scale. `fixed`: offset 0, multiplier 1, shift 0, i.e. the codes themselves
    (features / 32768 into [-1, 1)), used when there are no pre-training windows."""

    offset: np.ndarray  # int32 [features], sensor codes
    multiplier: np.ndarray  # int32 [features], unsigned Q(shift)
    shift: np.ndarray  # int32 [features], 0..NORM_MAX_SHIFT
    mode: Literal["factory", "fixed"] = "fixed"
    windows: int = 0  # pre-training windows the statistics came from
    sigmas: float = 0.0

    @classmethod
    def fixed(cls, n_features: int) -> Normalisation:
        return cls(np.zeros(n_features, np.int32), np.ones(n_features, np.int32), np.zeros(n_features, np.int32))

    @classmethod
    def fit(cls, features: np.ndarray, sigmas: float = NORM_SIGMAS, groups: np.ndarray | None = None
            ) -> Normalisation:
        """From int32 front-end codes of the pre-training windows [windows, features]; `groups` (int per feature)
        pools the statistics of features that share one offset and scale (raw mode: the samples of a channel)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] < 1:
            raise InputError("front end", "normalisation needs at least one pre-training window")
        if not 0.0 < sigmas <= MAX_NORM_SIGMAS:
            raise InputError("front end", f"norm_sigmas must be > 0 and <= {MAX_NORM_SIGMAS:g}, got {sigmas}")
        n = features.shape[1]
        groups = np.arange(n) if groups is None else np.asarray(groups)
        values = features.astype(np.float64)
        mean, std = np.empty(n), np.empty(n)
        for g in np.unique(groups):
            cols = groups == g
            mean[cols], std[cols] = values[:, cols].mean(), values[:, cols].std()
        offset = np.clip(np.round(mean), -2**31, 2**31 - 1).astype(np.int32)
        multiplier = np.zeros(n, np.int32)
        shift = np.zeros(n, np.int32)
        for f in range(n):
            if std[f] < MIN_NORM_STD:  # constant over the pre-training data: the feature carries nothing
                continue
            scale = 32768.0 / (sigmas * std[f])
            s = int(np.clip(14 - np.floor(np.log2(scale)), 0, frontend.NORM_MAX_SHIFT))
            multiplier[f] = min(int(round(scale * 2.0**s)), 2**31 - 1)
            shift[f] = s
        return cls(offset, multiplier, shift, "factory", int(features.shape[0]), float(sigmas))

    def apply(self, features: np.ndarray) -> np.ndarray:
        """int16 Q1.15 codes [windows, features] (the controller's kernel)."""
        features = np.ascontiguousarray(features, np.int32)
        if features.ndim != 2 or features.shape[1] != len(self.offset):
            raise InputError("front end", f"normalisation of {len(self.offset)} features applied to "
                             f"{features.shape[-1] if features.ndim else 0}")
        out = np.zeros(features.shape, np.int16)
        frontend.normalise(features, self.offset, self.multiplier, self.shift, out)
        return out

    def summary(self) -> dict:
        """What the factory stored (JSON-ready), for summary.json."""
        return dict(mode=self.mode, windows=self.windows, sigmas=self.sigmas, offset=self.offset.tolist(),
                    multiplier=self.multiplier.tolist(), shift=self.shift.tolist())


def to_inputs(features: np.ndarray, norm: Normalisation | None = None) -> np.ndarray:
    """Network inputs in [-1, 1): the Q1.15 codes of `norm.apply` (or of the fixed scaling) / 32768."""
    if norm is None:
        norm = Normalisation.fixed(features.shape[1] if features.ndim == 2 else 0)
    return norm.apply(features).astype(np.float64) / 32768.0


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


# Gap policy, labels and range checks of CSV and serial streams (docs/architecture.md, "Limits")
MAX_INTERPOLATED_GAP = 5  # missing samples in a row filled by linear interpolation; a longer gap splits the stream
SATURATION_WARN_FRACTION = 0.005  # more of a channel's samples at or beyond its full_scale than this: a warning
MAX_LABEL = 2**31 - 1  # integer labels are 0..MAX_LABEL; -1 or nothing is unlabelled
NAME_CODE_BASE = 2**32  # class names (text labels) get integer codes from here on, apart from any integer label
HAPT_ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
                   "STAND_TO_SIT", "SIT_TO_STAND", "SIT_TO_LIE", "LIE_TO_SIT", "STAND_TO_LIE", "LIE_TO_STAND")
DEFAULT_HEADER = "time_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"  # shown in messages as an example


def canonical_label(text) -> str | None:
    """A label as the class it names: None when unlabelled (nothing, -1 or nan), an integer label as its decimal
    text (also written '3.0', as pandas writes an integer column with gaps), else the name itself ('walking').
    ValueError for an integer outside 0..MAX_LABEL or a fractional number."""
    s = str(text).strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1].strip()
    if not s or s.lower() == "nan":
        return None
    try:
        value = int(s)
    except ValueError:
        try:
            number = float(s)
        except ValueError:
            return s  # a name
        if not np.isfinite(number) or number != int(number):
            raise ValueError(f"expected an integer label, a class name or nothing, got '{s}'") from None
        value = int(number)
    if value == UNLABELLED:
        return None
    if not 0 <= value <= MAX_LABEL:
        raise ValueError(f"label {value}: integer labels are 0..{MAX_LABEL} (-1 or nothing: unlabelled)")
    return str(value)


class LabelCodes:
    """The label column's values as integer codes, shared by the files of one run (pre-training and stream): an
    integer label is its own code, a name ('walking') gets a code of its own (NAME_CODE_BASE + k), nothing / -1 is
    UNLABELLED. With `allowed` (a label map's labels) any other label is refused where it appears."""

    def __init__(self, allowed=None):
        self.allowed = None if allowed is None else [canonical_label(a) for a in allowed]
        self._codes: dict[str, int] = {}
        self._tokens: dict[int, str] = {}
        self._seen: dict[str, int] = {}

    def code(self, text) -> int:
        code = self._seen.get(text)  # labels repeat line after line: each distinct text is parsed once
        if code is not None:
            return code
        token = canonical_label(text)
        if token is None:
            code = UNLABELLED
        else:
            code = self._codes.get(token)
            if code is None:
                if self.allowed is not None and token not in self.allowed:
                    raise ValueError(f"label '{token}' is not in label_map (its labels: {', '.join(self.allowed)})")
                names = sum(1 for c in self._codes.values() if c >= NAME_CODE_BASE)
                code = int(token) if token.isascii() and token.isdigit() else NAME_CODE_BASE + names
                self._codes[token], self._tokens[code] = code, token
        if len(self._seen) < 4096:
            self._seen[text] = code
        return code

    def token(self, code: int) -> str:
        """The label as written (an integer label as its decimal text)."""
        return self._tokens.get(int(code), str(int(code)))

    def ordered(self, codes) -> list[int]:
        """The codes present in `codes` (unlabelled left out) in class order: the label map's order when there is
        one, else integer labels ascending, then names alphabetically."""
        present = {int(c) for c in np.unique(np.asarray(codes, np.int64)) if c >= 0}
        if self.allowed is not None:
            return [self._codes[t] for t in self.allowed if t in self._codes and self._codes[t] in present]
        return sorted(present, key=lambda c: (0, c, "") if c < NAME_CODE_BASE else (1, 0, self.token(c)))


def _header_cells(line: str) -> list[str]:
    return [h.strip() for h in line.split(",")]


def load_csv(path: str | Path, rate_hz: float, label_column: str = "label", header: str | None = None,
             labels: LabelCodes | None = None) -> list[Recording]:
    """A CSV stream: header `time_s,<channel>,...[,label]`, one sample per line, time in seconds ascending, label an
    integer, a class name, or nothing / -1 (unlabelled). The sampling rate must match rate_hz within 1 %; gaps of up to
    MAX_INTERPOLATED_GAP missing samples are interpolated, longer ones split the stream. `header`: the header of a
    file that has none (a first line equal to it is skipped). `labels`: codes shared with the run's other files."""
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
    first = 2
    if header is None:
        header = lines[0]
    elif _header_cells(lines[0])[0] == "time_s":
        if _header_cells(lines[0]) != _header_cells(header):
            raise InputError(path, f"the file's header '{lines[0].strip()}' differs from header '{header}'", 1,
                             "header")
    else:
        first = 1  # no header line: every line is a sample
    parser = SampleParser(path, header, label_column, labels)
    for line_no, raw in enumerate(lines[first - 1:], start=first):
        parser.add(raw, line_no)
    return parser.recordings(rate_hz)


class SampleParser:
    """The sample line format shared by CSV files and live serial streams: a header `time_s,<channel>,...[,label]`,
    then one line per sample. Every line is validated as it arrives; errors name the source and line. After
    `recordings`, `gaps` says what the gap policy did (interpolated gaps and samples, gaps that split the stream)."""

    def __init__(self, source, header_line: str, label_column: str = "label", labels: LabelCodes | None = None):
        self.source = source
        self.header = _header_cells(header_line)
        if self.header[0] != "time_s":
            if self._is_number(self.header[0]):
                raise InputError(source, f"no header: line 1 is a sample ('{_short(header_line)}'); first column must "
                                 f"be 'time_s': give the header, e.g. --header '{DEFAULT_HEADER}' (config field "
                                 "header)", 1)
            raise InputError(source, f"first column must be 'time_s' (seconds), got '{self.header[0]}'", 1)
        self.has_label = self.header[-1] == label_column
        self.label_column = label_column
        self.labels_codes = labels if labels is not None else LabelCodes()
        self.channels = tuple(self.header[1:-1] if self.has_label else self.header[1:])
        if not self.channels:
            raise InputError(source, "no sensor channels in the header", 1)
        for k, name in enumerate(self.channels):
            if not name:
                raise InputError(source, f"header column {k + 2} has no name", 1)
            if name in self.channels[:k] or name in ("time_s", label_column):
                raise InputError(source, f"channel '{name}' appears twice in the header", 1)
        # compact buffers (8 bytes a value): a capture of MAX_STREAM_SAMPLES stays tens of MB
        self.times = array.array("d")
        self.rows = array.array("d")  # channels per sample, flattened
        self.labels = array.array("q")
        self.gaps: dict = {}

    @staticmethod
    def _is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

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
        if self.has_label:
            try:
                label = self.labels_codes.code(cells[-1])
            except ValueError as exc:
                raise InputError(path, str(exc), line_no, self.label_column) from None
        if self.times and t <= self.times[-1]:
            raise InputError(path, f"time must increase, got {t} after {self.times[-1]}", line_no, "time_s")
        self.times.append(t)
        self.rows.extend(values)
        self.labels.append(label)

    def __len__(self) -> int:
        return len(self.times)

    def recordings(self, rate_hz: float) -> list[Recording]:
        """The samples so far, checked against rate_hz (within 1 %); gaps (steps > 1.5 periods) of up to
        MAX_INTERPOLATED_GAP missing samples are filled by linear interpolation (labels from the nearer neighbour),
        longer ones split the stream (with a warning)."""
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
        gap = dt > 1.5 * period
        steps = np.where(gap, np.maximum(2, np.rint(dt / period)), 1).astype(np.int64)  # sample periods per step
        split = gap & (steps - 1 > MAX_INTERPOLATED_GAP)
        filled = gap & ~split
        samples = np.frombuffer(self.rows, np.float64).reshape(len(times), len(self.channels))
        label_array = np.frombuffer(self.labels, np.int64)
        bounds = np.r_[0, np.nonzero(split)[0] + 1, len(times)]
        name = Path(str(path)).name
        out = []
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            x, y = samples[a:b], label_array[a:b]
            if filled[a:b - 1].any():
                pos = np.r_[0, np.cumsum(steps[a:b - 1])]  # each sample's place on the regular grid
                grid = np.arange(pos[-1] + 1)
                x = np.column_stack([np.interp(grid, pos, x[:, c]) for c in range(x.shape[1])])
                right = np.minimum(np.searchsorted(pos, grid), len(pos) - 1)
                left = np.maximum(right - 1, 0)
                y = y[np.where(grid - pos[left] <= pos[right] - grid, left, right)]
            out.append(Recording(np.array(x, np.float64), np.array(y, np.int64), rate_hz, self.channels, 0, k, name))
        self.gaps = dict(interpolated_gaps=int(filled.sum()), interpolated_samples=int((steps[filled] - 1).sum()),
                         split_gaps=int(split.sum()), longest_split_s=float(dt[split].max()) if split.any() else 0.0)
        if self.gaps["interpolated_gaps"]:
            _log.info(f"{name}: {self.gaps['interpolated_samples']:,} missing samples in "
                      f"{self.gaps['interpolated_gaps']:,} short gaps (up to {MAX_INTERPOLATED_GAP} samples) filled by "
                      "linear interpolation")
        if split.any():
            first = float(t[np.nonzero(split)[0][0]])
            warnings.warn(f"{name}: {int(split.sum())} gap(s) longer than {MAX_INTERPOLATED_GAP} missing samples (the "
                          f"first after time_s {first:g}, the longest {self.gaps['longest_split_s']:.3g} s) split the "
                          f"stream into {len(out)} recordings; no window spans a gap", EdgelearnWarning, stacklevel=2)
        return out


def _short(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_serial(url: str, rate_hz: float, duration_s: float | None = None, timeout_s: float = 5.0,
                label_column: str = "label", port=None, max_samples: int | None = None, header: str | None = None,
                labels: LabelCodes | None = None) -> list[Recording]:
    """A live sensor stream from a serial port (any pyserial URL: /dev/ttyACM0, socket://host:port, loop://, ...):
    ASCII lines in the CSV sample format (header line first, then `time_s,<channels>[,label]` per sample, `\\n` or
    `\\r\\n` endings). Reading stops at a line `end`, after `duration_s` of stream time, when the port stays silent
    for `timeout_s` (an error if no header arrived), or after `max_samples` samples (default MAX_STREAM_SAMPLES; with
    an EdgelearnWarning, as the capture is kept in memory). `port` may be an already open serial object.

    `header`: for a sensor that was already streaming when the reader started (its header line is gone): the samples'
    header. The first line read is then skipped (it may be cut), and so is any line equal to the header."""
    import serial

    cap = MAX_STREAM_SAMPLES if max_samples is None else int(max_samples)

    if port is None:
        try:
            port = serial.serial_for_url(url, baudrate=115200, timeout=timeout_s)
        except (serial.SerialException, ValueError) as exc:
            raise InputError(url, f"cannot open the sensor port ({exc})") from None
    parser = None if header is None else SampleParser(url, header, label_column, labels)
    skip_first = header is not None
    line_no = 0
    report_every = max(60.0, (duration_s or 0.0) / 10.0)  # stream seconds between status lines
    next_report = report_every
    _log.info(f"{url}: reading the sensor ({'header given, first line skipped' if header else 'header line first'};"
              f" until 'end', {f'{duration_s:g} s of stream, ' if duration_s else ''}{timeout_s:g} s of silence or "
              f"{cap:,} samples)")
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
                if skip_first and line_no == 1:
                    continue  # a cut first line may hold half a character
                raise InputError(url, "not ASCII text", line_no) from None
            if text == "end":
                break
            if parser is None:
                parser = SampleParser(url, text, label_column, labels)
                continue
            if (skip_first and line_no == 1) or (header is not None and _header_cells(text) == parser.header):
                continue
            parser.add(text, line_no)
            elapsed = parser.times[-1] - parser.times[0]
            if duration_s is not None and elapsed >= duration_s:
                break
            if elapsed >= next_report:
                _log.info(f"{url}: captured {len(parser):,} samples ({elapsed:.0f} s of stream)")
                next_report += report_every
            if len(parser) >= cap:
                warnings.warn(f"{url}: stopped reading after {cap:,} samples ({cap / rate_hz:.0f} s at {rate_hz:g} "
                              "Hz), the cap on a serial capture kept in memory (MAX_STREAM_SAMPLES); set duration_s to "
                              "choose a shorter stream, or end it with a line 'end'", EdgelearnWarning, stacklevel=2)
                break
    finally:
        port.close()
    if parser is None:
        raise InputError(url, "the stream ended before a header line: expected 'time_s,<channels>[,label]'", line_no)
    _log.info(f"{url}: captured {len(parser):,} samples "
              f"({parser.times[-1] - parser.times[0] if len(parser) else 0.0:.1f} s of stream)")
    return parser.recordings(rate_hz)


def check_saturation(recordings: list[Recording], config: FrontEndConfig, source: str = "stream") -> dict[str, float]:
    """The fraction of each channel's samples at or beyond its full_scale (the front end clips them to the int16
    range). An EdgelearnWarning per channel prefix where a channel exceeds SATURATION_WARN_FRACTION, naming the
    channels and a full_scale that would hold the data; a one-line error for a channel without a full_scale."""
    if not recordings:
        return {}
    channels = recordings[0].channels
    scales = {}
    for c in channels:
        try:
            scales[c] = config.scale_for(c)
        except InputError:
            prefix = c.split("_")[0]
            raise InputError(source, f"channel '{c}' has no full_scale (prefixes with one: "
                             f"{', '.join(config.full_scale)}): add {prefix} = RANGE to [frontend] full_scale, in the "
                             "data's unit", field="frontend.full_scale") from None
    n = sum(r.samples.shape[0] for r in recordings)
    fractions, peaks = {}, {}
    for k, c in enumerate(channels):
        clipped = sum(int((np.abs(r.samples[:, k]) >= scales[c]).sum()) for r in recordings)
        fractions[c] = clipped / max(1, n)
        peaks[c] = max(float(np.abs(r.samples[:, k]).max()) for r in recordings if r.samples.shape[0]) if n else 0.0
    over = [c for c in channels if fractions[c] > SATURATION_WARN_FRACTION]
    if over:
        prefixes = {next(p for p in config.full_scale if c.startswith(p)) for c in over}
        suggest = {p: (float(f"{1.25 * max(peaks[c] for c in channels if c.startswith(p)):.2g}") if p in prefixes
                       else v) for p, v in config.full_scale.items()}
        shown = ", ".join(f"{c} {100 * fractions[c]:.1f} %" for c in over)
        ranges = ", ".join(f"{p} = {config.full_scale[p]:g}" for p in sorted(prefixes))
        warnings.warn(f"{source}: samples at or beyond full_scale ({ranges}) are clipped: {shown} (more than "
                      f"{100 * SATURATION_WARN_FRACTION:g} %); give the sensor's range in the data's unit, e.g. "
                      f"[frontend] full_scale = {{ {', '.join(f'{p} = {v:g}' for p, v in suggest.items())} }} (the "
                      "defaults are g and rad/s: acc 8 g = 78.5 m/s^2, gyro 34.9 rad/s = 2000 deg/s)", EdgelearnWarning,
                      stacklevel=2)
    return fractions


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
