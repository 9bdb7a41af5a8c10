"""Training algorithms as small policy objects: how a layer's gradient becomes a weight change.

- `sgd`: plain analog SGD, one stochastic pulse-train update per sample (aihwkit's pulsed SGD), or with
  `deterministic=True` round(lr |sum_b d_b x_b| / dw_min) pulses per device and mini-batch;
- `mp`: mixed-precision SGD (Nandakumar et al. 2020): the controller accumulates -lr * sum d x^T of a mini-batch in
  an int32 chi and fires trunc(chi / epsilon) pulses, epsilon = the card's granularity (or separate up/down values);
- `sp-shift`: symmetry-point shifting: every trainable device is driven to its own symmetry point by alternating
  pulses, its reference device is programmed there (write-verify), weights are device - reference, then plain SGD;
  the calibration's pulses are counted separately;
- `ttv2`, `c-ttv2`, `agad`: the transfer algorithms (Gokmen 2021; Rasch et al. 2023-2024; aihwkit's
  BufferedTransferCompound, ChoppedTransferCompound and DynamicTransferCompound): each weight tile C gets a fast
  companion array A of the same card that takes the pulsed gradient updates; columns of A are read in turn, their
  values accumulated in a narrow digital buffer H (in slow-array pulses), and where |H| reaches a pulse, that pulse
  is written into C. ttv2 reads A against a reference calibrated to A's symmetry points, c-ttv2 flips the sign of
  A's inputs at random (a chopper, undone on read), agad tracks A's reference digitally from the previous chopper
  period's reads (docs/algorithms.md).
- `digital`: float64 SGD on the same network (the baseline).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from firmware_model import controller as ctl
from firmware_model import fixed, lowmem

from .devices import load_card
from .errors import EdgelearnError
from .network import Network

TRANSFER_ALGORITHMS = ("ttv2", "c-ttv2", "agad")
ALGORITHMS = ("sgd", "mp", "sp-shift", *TRANSFER_ALGORITHMS, "digital")


class Algorithm:
    name = ""
    digital = False
    references = False

    def prepare(self, network: Network) -> dict:
        """Run once before training: program the initial weights (and calibrate, where the algorithm needs it);
        returns figures for the report."""
        network.initialise()
        return {}

    def update(self, layer, inputs: np.ndarray, deltas: np.ndarray, lr: float) -> int:
        raise NotImplementedError

    def attach(self, network: Network) -> None:
        """Called once after the network is built (fresh or resumed), before prepare or a checkpoint load: where an
        algorithm adds arrays of its own to the board."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The algorithm's own state for checkpoints (companion arrays, digital buffers); none by default."""
        return {}

    def load_state_dict(self, data: dict[str, np.ndarray]) -> None:
        pass

    def extra_counts(self) -> dict[str, int]:
        """Controller work the algorithm did outside the board's tiles (its digital buffers), by counter name."""
        return {}


class PlainSGD(Algorithm):
    name = "sgd"

    def __init__(self, deterministic: bool = False):
        self.deterministic = deterministic

    def update(self, layer, inputs, deltas, lr):
        update = layer.board.update_deterministic_batch if self.deterministic else layer.board.update_sgd_batch
        return sum(update(tile, inputs[:, cs], deltas[:, rs], lr) for rs, cs, tile in layer.grid())


class MixedPrecision(Algorithm):
    name = "mp"

    def __init__(self, epsilon: float | None = None, epsilon_down: float | None = None):
        self.epsilon, self.epsilon_down = epsilon, epsilon_down

    def update(self, layer, inputs, deltas, lr):
        return sum(layer.board.update_mp_batch(tile, inputs[:, cs], deltas[:, rs], lr, self.epsilon,
                                               self.epsilon_down) for rs, cs, tile in layer.grid())


class SymmetryPointShift(PlainSGD):
    name = "sp-shift"
    references = True

    def __init__(self, window: int = 20, max_pairs: int = 2000, deterministic: bool = False):
        super().__init__(deterministic)
        self.window, self.max_pairs = window, max_pairs

    def prepare(self, network):
        pulses, points = 0, []
        for tile in network.tile_ids():
            result = network.board.calibrate_symmetry(tile, window=self.window, max_pairs=self.max_pairs)
            pulses += result.pulses
            points.append(result.symmetry_points.ravel())
        network.initialise()  # weights relative to the references: devices start around their symmetry points
        points = np.concatenate(points)
        return dict(calibration_pulses=int(pulses), mean_symmetry_point=float(points.mean()),
                    std_symmetry_point=float(points.std()))


class DigitalSGD(Algorithm):
    name = "digital"
    digital = True

    def update(self, layer, inputs, deltas, lr):
        layer.w -= lr * (deltas.T @ inputs)
        layer.macs += inputs.shape[0] * layer.w.size
        return 0


class TransferConfig(BaseModel):
    """Settings of the transfer algorithms (ttv2, c-ttv2, agad); the names follow aihwkit's where they mean the same
    (docs/algorithms.md lists where they differ)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    fast_lr: float = Field(20.0, gt=0, le=1e3, description="learning rate of the pulsed update onto the fast array "
                           "A, times the schedule's lr (default tuned on ID170ZR5000 20 ns, docs/algorithms.md)")
    transfer_lr: float = Field(0.3, gt=0, le=1e6, description="H increment per weight unit read from A, in pulses "
                               "of the slow array's granularity, times the schedule's lr (default tuned with fast_lr)")
    transfer_every: int = Field(1, ge=1, le=1_000_000, description="training samples per column read of A (aihwkit "
                                "transfer_every in mat-vecs, n_reads_per_transfer 1)")
    buffer_bits: Literal[8, 16, 32] = Field(8, description="width of H: 2^(bits-4) units per pulse, stochastic "
                                            "rounding, saturating")
    momentum: float = Field(0.0, ge=0, lt=1, description="fraction of H kept after a transfer (aihwkit momentum)")
    forget_buffer: bool = Field(True, description="after a transfer H keeps momentum * H (True) or loses "
                                "(1 - momentum) x the pulses written (False)")
    max_steps: int = Field(1, ge=1, le=127, description="most pulses per device and transfer (aihwkit desired_bl)")
    chop_prob: float = Field(0.1, ge=0, le=1, description="probability that a column's chopper flips after its read "
                             "(with chop_random False, agad flips regularly every round(1/chop_prob) reads)")
    chop_random: bool = Field(True, description="agad: flip at random (as c-ttv2) rather than regularly (aihwkit's "
                              "DynamicTransferCompound default); regular flips measured worse here "
                              "(docs/algorithms.md)")
    reference: bool | None = Field(None, description="read A against reference devices programmed to its symmetry "
                                   "points (calibrated, counted); default: on for ttv2, off for c-ttv2 and agad")


class _TileTransfer:
    """The transfer state of one weight tile: its fast tile on the board and the controller's digital buffers."""

    def __init__(self, fast: int, rows: int, cols: int, buffer_dtype, granularity: float, seed: int, agad: bool):
        self.fast, self.rows, self.cols = fast, rows, cols
        self.granularity = granularity  # of both arrays: the fast one is of the same card
        self.h = np.zeros((rows, cols), buffer_dtype)
        self.chop = np.ones(cols, np.int8)
        self.cursor = np.zeros(2, np.int64)  # next column, samples since the last read
        self.rng = fixed.seed_state(seed)
        self.fields = ["h", "chop", "cursor", "rng"]
        if agad:  # the reference is 0 until a column's first flip, so the first period reads A as it is
            self.ref = np.zeros((rows, cols), np.int16)  # previous chopper period's mean read, units eps / 16
            self.acc = np.zeros((rows, cols), np.int16)  # this period's reads summed (saturating)
            self.reads = np.zeros(cols, np.int16)  # reads of each column in this period
            self.fields += ["ref", "acc", "reads"]


class Transfer(Algorithm):
    """ttv2 / c-ttv2 / agad (module docstring; docs/algorithms.md). Through the Board API only: companion tiles via
    add_tile, updates via update_sgd_batch, column reads via forward_batch with one-hot inputs, transfers via
    apply_counts. H and the chopper/reference state live on the controller (here)."""

    def __init__(self, name: str, config: "TransferConfig | None" = None):
        if name not in TRANSFER_ALGORITHMS:
            raise EdgelearnError(f"unknown transfer algorithm '{name}' (known: {', '.join(TRANSFER_ALGORITHMS)})")
        self.name = name
        self.config = config or TransferConfig()
        self.use_reference = (name == "ttv2") if self.config.reference is None else self.config.reference
        self.chopper = name in ("c-ttv2", "agad")
        self.period = max(1, int(round(1.0 / self.config.chop_prob))) if self.config.chop_prob > 0 else 0
        self.tiles: dict[int, _TileTransfer] = {}
        self.board = None
        self.counters = np.zeros(ctl.N_COUNTERS, np.int64)
        top = 2 ** (self.config.buffer_bits - 1) - 1
        self.h_range, self.h_unit = (-top, top), 2 ** (self.config.buffer_bits - 4)

    def attach(self, network):
        if network.board is None:
            raise EdgelearnError(f"algorithm {self.name} needs an analog network")
        self.board = network.board
        dtype = {8: np.int8, 16: np.int16, 32: np.int32}[self.config.buffer_bits]
        for k, layer in enumerate(network.layers):
            for r, (rs, cs, tile) in enumerate(layer.grid()):
                rows, cols = rs.stop - rs.start, cs.stop - cs.start
                fast = self.board.add_tile(layer.card, rows, cols, seed=layer.seed * 1000 + 500_000 + r,
                                           references=self.use_reference, **layer.tile_options)
                card = load_card(layer.card) if isinstance(layer.card, str) else layer.card
                self.tiles[tile] = _TileTransfer(fast, rows, cols, dtype, getattr(card, "model", card).granularity,
                                                 seed=(layer.seed * 1000 + r) * 7 + 3, agad=self.name == "agad")

    def prepare(self, network):
        network.initialise()
        if not self.use_reference:
            return {}
        pulses, points = 0, []
        for t in self.tiles.values():
            result = self.board.calibrate_symmetry(t.fast)
            pulses += result.pulses
            points.append(result.symmetry_points.ravel())
        points = np.concatenate(points)
        return dict(calibration_pulses=int(pulses), mean_symmetry_point=float(points.mean()),
                    std_symmetry_point=float(points.std()))

    def update(self, layer, inputs, deltas, lr):
        c = self.config
        total = 0
        for rs, cs, tile in layer.grid():
            t = self.tiles[tile]
            xs = inputs[:, cs]
            if self.chopper:
                xs = xs * t.chop
            total += self.board.update_sgd_batch(t.fast, xs, deltas[:, rs], c.fast_lr * lr)
            t.cursor[1] += xs.shape[0]
            n_reads = int(t.cursor[1] // c.transfer_every)
            if n_reads == 0:
                continue
            t.cursor[1] -= n_reads * c.transfer_every
            cols = (t.cursor[0] + np.arange(n_reads)) % t.cols
            t.cursor[0] = (t.cursor[0] + n_reads) % t.cols
            one_hot = np.zeros((n_reads, t.cols))
            one_hot[np.arange(n_reads), cols] = 1.0
            reads = self.board.forward_batch(t.fast, one_hot)  # one-hot column reads of A
            counts = np.zeros((t.rows, t.cols), np.int64)
            column = np.empty(t.rows, np.int64)
            gain = c.transfer_lr * lr * self.h_unit / t.granularity
            for col, v in zip(cols, reads):
                signal = self._signal(t, int(col), v)
                lowmem.buffer_transfer(t.h, int(col), signal, gain, self.h_range[0], self.h_range[1], self.h_unit,
                                       c.momentum, c.forget_buffer, c.max_steps, t.rng, column, self.counters)
                counts[:, col] += column
            if counts.any():
                total += self.board.apply_counts(tile, counts)
        return total

    def _signal(self, t: _TileTransfer, col: int, v: np.ndarray) -> np.ndarray:
        """The column's read as H sees it: chopper sign applied and, for agad, the tracked reference subtracted;
        then the chopper's next state."""
        if not self.chopper:
            return v
        sign = float(t.chop[col])
        agad = self.name == "agad"
        if agad:  # reads in units of eps / 16; the reference is the previous period's mean
            unit = t.granularity / 16.0
            out = sign * (v - t.ref[:, col] * unit)
            q = np.clip(np.round(v / unit), -32767, 32767).astype(np.int64)
            t.acc[:, col] = np.clip(t.acc[:, col].astype(np.int64) + q, -32767, 32767)
            t.reads[col] += 1
            self.counters[ctl.C_ACC_UPDATES] += t.rows
        else:
            out = sign * v
        if self._flips(t, col):
            if agad:
                mean = t.acc[:, col].astype(np.float64) / t.reads[col]
                t.ref[:, col] = np.clip(np.sign(mean) * np.floor(np.abs(mean) + 0.5), -32767, 32767)
                t.acc[:, col] = 0
                t.reads[col] = 0
            t.chop[col] = -t.chop[col]
        return out

    def _flips(self, t: _TileTransfer, col: int) -> bool:
        """Whether column col's chopper flips after this read: at random with chop_prob (one counted draw), or for
        agad with chop_random off, every `period` reads."""
        if self.name == "agad" and not self.config.chop_random:
            return bool(self.period) and t.reads[col] >= self.period
        if self.config.chop_prob <= 0:
            return False
        self.counters[ctl.C_RNG_DRAWS] += 1
        return fixed_uniform(t.rng) < self.config.chop_prob

    def state_dict(self):
        out = {}
        for tile, t in self.tiles.items():
            out.update({f"transfer.{tile}.{name}": np.array(getattr(t, name), copy=True) for name in t.fields})
            out.update({f"transfer.{tile}.fast.{k}": v for k, v in self.board.state_dict(t.fast).items()})
        out["transfer.counters"] = self.counters.copy()
        return out

    def load_state_dict(self, data):
        for tile, t in self.tiles.items():
            for name in t.fields:
                current, value = getattr(t, name), np.asarray(data[f"transfer.{tile}.{name}"])
                if value.shape != current.shape or value.dtype != current.dtype:
                    raise EdgelearnError(f"checkpoint field transfer.{tile}.{name}: shape {value.shape} {value.dtype}, "
                                         f"expected {current.shape} {current.dtype}")
                setattr(t, name, value.copy())
            head = f"transfer.{tile}.fast."
            self.board.load_state_dict(t.fast, {k[len(head):]: v for k, v in data.items() if k.startswith(head)})
        self.counters = np.asarray(data["transfer.counters"], np.int64).copy()

    def extra_counts(self):
        return {name: int(v) for name, v in zip(ctl.COUNTER_NAMES, self.counters) if v}


def fixed_uniform(rng) -> float:
    """A uniform [0, 1) draw from the controller's generator (its top 32 bits)."""
    return float(fixed.rng_u32(rng)) / lowmem.TWO32


def make_algorithm(name: str, **options) -> Algorithm:
    if name in TRANSFER_ALGORITHMS:
        return Transfer(name, **options)
    factories = {"sgd": PlainSGD, "mp": MixedPrecision, "sp-shift": SymmetryPointShift, "digital": DigitalSGD}
    if name not in factories:
        raise EdgelearnError(f"unknown algorithm '{name}' (known: {', '.join(ALGORITHMS)})")
    return factories[name](**options)
