"""Training algorithms as small policy objects: how a layer's gradient becomes a weight change.

- `sgd`: plain analog SGD, one stochastic pulse-train update per sample (aihwkit's pulsed SGD), or with
  `deterministic=True` round(lr |sum_b d_b x_b| / dw_min) pulses per device and mini-batch;
- `mp`: mixed-precision SGD (Nandakumar et al. 2020): the controller accumulates -lr * sum d x^T of a mini-batch in
  an int32 chi and fires trunc(chi / epsilon) pulses, epsilon = the card's granularity (or separate up/down values);
- `sp-shift`: symmetry-point shifting: every trainable device is driven to its own symmetry point by alternating
  pulses, its reference device is programmed there (write-verify), weights are device - reference, then plain SGD;
  the calibration's pulses are counted separately;
- `digital`: float64 SGD on the same network (the baseline).
"""

from __future__ import annotations

import numpy as np

from .errors import EdgelearnError
from .network import Network

ALGORITHMS = ("sgd", "mp", "sp-shift", "digital")


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


def make_algorithm(name: str, **options) -> Algorithm:
    factories = {"sgd": PlainSGD, "mp": MixedPrecision, "sp-shift": SymmetryPointShift, "digital": DigitalSGD}
    if name not in factories:
        raise EdgelearnError(f"unknown algorithm '{name}' (known: {', '.join(ALGORITHMS)})")
    return factories[name](**options)
