"""Fully connected networks whose weights live on analog tiles (or in floats, for the digital baseline).

A layer's weight matrix (outputs x inputs + 1, the last column multiplying a constant 1 for the bias) is split over
tiles of at most max_tile_rows x max_tile_cols; partial outputs of tiles sharing output rows are digitised by each
tile's ADC and added by the controller. Activations and their derivatives are computed by the controller digitally.
"""

from __future__ import annotations

import numpy as np

from .board import InProcessBoard, PeripheryConfig, PulseConfig
from .devices import DeviceCard, DeviceVariation
from .errors import EdgelearnError

PRESETS = {"paper": (784, 256, 128, 10)}  # the MLP of arXiv 2509.18121 (sigmoid hidden layers)
# Limits (docs/architecture.md, "Limits"): every weight of an analog layer is a device with its own arrays (state,
# 5 drawn parameters, accumulator, per-direction pulse counts in int32 and int64; twice the state and parameters with
# reference devices), measured with tracemalloc at 116 and 156 bytes per weight; a digital weight is 16 bytes (the
# matrix and its initial copy). The paper network has 235,146 weights.
MAX_NETWORK_WEIGHTS = 10_000_000
BYTES_PER_WEIGHT = {"analog": 120, "analog+references": 160, "digital": 16}


def network_weights(sizes) -> int:
    """Weights of an MLP with these layer sizes, bias columns included."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def _gb(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes / 1e3:.3g} KB"


def check_size(sizes, digital: bool = False, references: bool = False) -> None:
    """Refuse (one line, with the memory it would need) a network of more than MAX_NETWORK_WEIGHTS weights, before
    anything is allocated."""
    n = network_weights(sizes)
    if n > MAX_NETWORK_WEIGHTS:
        kind = "digital" if digital else ("analog+references" if references else "analog")
        per = BYTES_PER_WEIGHT[kind]
        raise EdgelearnError(f"network {'-'.join(str(s) for s in sizes)}: {n:,} weights would need about "
                             f"{_gb(n * per)} of {'weight' if digital else 'device'} arrays; the limit is "
                             f"{MAX_NETWORK_WEIGHTS:,} weights (MAX_NETWORK_WEIGHTS, about "
                             f"{_gb(MAX_NETWORK_WEIGHTS * per)})")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


ACTIVATIONS = {
    # name: (f(z), f'(z) expressed with the output a = f(z))
    "sigmoid": (_sigmoid, lambda a: a * (1.0 - a)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda a: (a > 0.0).astype(np.float64)),
}


def parse_sizes(text: str) -> tuple[int, ...]:
    """A preset name ('paper') or layer sizes joined by dashes ('784-64-10')."""
    if text in PRESETS:
        return PRESETS[text]
    try:
        return tuple(int(part) for part in text.split("-"))
    except ValueError:
        raise EdgelearnError(f"network '{text}': expected a preset ({', '.join(PRESETS)}) or sizes like 784-64-10"
                             ) from None


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class AnalogLayer:
    """One layer on a grid of tiles of one card, on a board (any backend of the Board API). `output_scale` is a
    digital factor the controller applies to the layer's digitised output (1 unless digitally trained weights were
    programmed as w / output_scale to fit the card's range; see Network.gradients)."""

    analog = True
    output_scale = 1.0

    def __init__(self, board, card: DeviceCard, n_in: int, n_out: int, *, seed: int, max_tile_rows: int,
                 max_tile_cols: int, references: bool = False, periphery: PeripheryConfig | None = None,
                 pulses: PulseConfig | None = None, variation: DeviceVariation | None = None):
        self.board = board
        self.card, self.seed = card, seed
        self.tile_options = dict(periphery=periphery, pulses=pulses, variation=variation)  # for companion arrays
        self.n_in, self.n_out = n_in + 1, n_out
        self.row_blocks = _blocks(n_out, max_tile_rows)
        self.col_blocks = _blocks(self.n_in, max_tile_cols)
        self.tile_ids = [[board.add_tile(card, rs.stop - rs.start, cs.stop - cs.start, seed=seed * 1000 + 31 * r + c,
                                         references=references, periphery=periphery, pulses=pulses,
                                         variation=variation)
                          for c, cs in enumerate(self.col_blocks)] for r, rs in enumerate(self.row_blocks)]

    def grid(self):
        """(output rows, input columns, tile id) of every tile of the layer."""
        for r, rs in enumerate(self.row_blocks):
            for c, cs in enumerate(self.col_blocks):
                yield rs, cs, self.tile_ids[r][c]

    def forward(self, xs: np.ndarray) -> np.ndarray:
        if len(self.row_blocks) == 1 and len(self.col_blocks) == 1:  # one tile: its output as it is
            return self.board.forward_batch(self.tile_ids[0][0], xs)
        out = np.zeros((xs.shape[0], self.n_out))
        for rs, cs, tile in self.grid():
            out[:, rs] += self.board.forward_batch(tile, xs[:, cs])
        return out

    def backward(self, ds: np.ndarray) -> np.ndarray:
        if len(self.row_blocks) == 1 and len(self.col_blocks) == 1:
            return self.board.backward_batch(self.tile_ids[0][0], ds)
        out = np.zeros((ds.shape[0], self.n_in))
        for rs, cs, tile in self.grid():
            out[:, cs] += self.board.backward_batch(tile, ds[:, rs])
        return out

    @property
    def weights(self) -> np.ndarray:
        w = np.empty((self.n_out, self.n_in))
        for rs, cs, tile in self.grid():
            w[rs, cs] = self.board.read_weights(tile)
        return w

    def set_weights(self, w: np.ndarray) -> None:
        for rs, cs, tile in self.grid():
            self.board.set_weights(tile, w[rs, cs])

    def device_states(self) -> np.ndarray:
        return np.concatenate([self.board.device_states(tile).ravel() for _, _, tile in self.grid()])

    def state_dict(self, prefix: str) -> dict:
        out = {}
        for rs, cs, tile in self.grid():
            out.update({f"{prefix}.{tile}.{k}": v for k, v in self.board.state_dict(tile).items()})
        return out

    def load_state_dict(self, data: dict, prefix: str) -> None:
        for rs, cs, tile in self.grid():
            head = f"{prefix}.{tile}."
            self.board.load_state_dict(tile, {k[len(head):]: v for k, v in data.items() if k.startswith(head)})


class DigitalLayer:
    """The same layer in float64 (the digital baseline): exact products, no converters, no noise."""

    analog = False
    output_scale = 1.0

    def __init__(self, n_in: int, n_out: int):
        self.n_in, self.n_out = n_in + 1, n_out
        self.w = np.zeros((n_out, self.n_in))
        self.macs = 0

    def forward(self, xs):
        self.macs += xs.shape[0] * self.w.size
        return xs @ self.w.T

    def backward(self, ds):
        self.macs += ds.shape[0] * self.w.size
        return ds @ self.w

    @property
    def weights(self):
        return self.w.copy()

    def set_weights(self, w):
        self.w[...] = w

    def state_dict(self, prefix: str) -> dict:
        return {f"{prefix}.w": self.w.copy(), f"{prefix}.macs": np.array(self.macs)}

    def load_state_dict(self, data: dict, prefix: str) -> None:
        self.w[...] = data[f"{prefix}.w"]
        self.macs = int(data[f"{prefix}.macs"])


class Network:
    """An MLP: layers (analog or digital), hidden activation, log-softmax + NLL loss."""

    def __init__(self, sizes, activation: str = "sigmoid", *, card: DeviceCard | None = None, digital: bool = False,
                 seed: int = 0, max_tile_rows: int = 1024, max_tile_cols: int = 1024, references: bool = False,
                 periphery: PeripheryConfig | None = None, pulses: PulseConfig | None = None,
                 variation: DeviceVariation | None = None, board=None):
        if isinstance(sizes, str):
            sizes = parse_sizes(sizes)
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise EdgelearnError(f"network sizes must be at least two positive numbers, got {sizes}")
        if activation not in ACTIVATIONS:
            raise EdgelearnError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        if not digital and card is None:
            raise EdgelearnError("an analog network needs a device card")
        check_size(sizes, digital, references)
        self.sizes, self.activation = sizes, activation
        self.f, self.df = ACTIVATIONS[activation]
        self.layers = []
        self.board = None if digital else (board if board is not None else InProcessBoard(seed=seed))
        rng = np.random.default_rng([seed, 1])
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if digital:
                layer = DigitalLayer(n_in, n_out)
            else:
                layer = AnalogLayer(self.board, card, n_in, n_out, seed=seed * 100 + k, max_tile_rows=max_tile_rows,
                                    max_tile_cols=max_tile_cols, references=references, periphery=periphery,
                                    pulses=pulses, variation=variation)
            self.layers.append(layer)
        self.initial_weights = [rng.uniform(-1.0, 1.0, (layer.n_out, layer.n_in)) / np.sqrt(layer.n_in)
                                for layer in self.layers]  # PyTorch's nn.Linear default, bias included

    def initialise(self) -> None:
        """Program the initial weights (uniform +-1/sqrt(fan_in), as nn.Linear); on tiles with references the
        weights are relative to the references, so the devices start around their symmetry points."""
        for layer, w in zip(self.layers, self.initial_weights):
            layer.set_weights(w)

    def forward(self, xs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(logits, layer inputs with the bias column, hidden activations)."""
        if xs.ndim != 2 or xs.shape[1] != self.sizes[0]:
            raise EdgelearnError(f"network {'-'.join(map(str, self.sizes))} takes {self.sizes[0]} inputs, the data "
                                 f"have {xs.shape[-1] if xs.ndim else 0} features")
        inputs, hidden = [], []
        a = xs
        for k, layer in enumerate(self.layers):
            a_in = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
            z = layer.forward(a_in)
            if layer.output_scale != 1.0:
                z = z * layer.output_scale
            inputs.append(a_in)
            if k < len(self.layers) - 1:
                a = self.f(z)
                hidden.append(a)
            else:
                a = z
        return a, inputs, hidden

    def gradients(self, xs: np.ndarray, labels: np.ndarray):
        """Forward and backward of one mini-batch: (loss, correct, per-layer (inputs, deltas)); deltas are
        d(mean NLL)/d(layer output), all computed before any weight changes. For a layer with an output scale s (its
        weights w stored as w / s), the delta handed to the update is divided by s, so that an update of lr moves the
        effective weights s * (w / s) as it would move w, and the backward pass goes through s * (w / s)."""
        logits, inputs, hidden = self.forward(xs)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        batch = xs.shape[0]
        loss = -float(log_p[np.arange(batch), labels].mean())
        correct = int((logits.argmax(axis=1) == labels).sum())
        delta = np.exp(log_p)
        delta[np.arange(batch), labels] -= 1.0
        delta /= batch
        deltas = [None] * len(self.layers)
        for k in range(len(self.layers) - 1, -1, -1):
            s = self.layers[k].output_scale
            deltas[k] = delta if s == 1.0 else delta / s
            if k > 0:
                back = self.layers[k].backward(delta)[:, :-1]
                delta = (back if s == 1.0 else back * s) * self.df(hidden[k - 1])
        return loss, correct, list(zip(inputs, deltas))

    def predict(self, xs: np.ndarray, batch: int = 1000) -> np.ndarray:
        out = np.empty(xs.shape[0], np.int64)
        for start in range(0, xs.shape[0], batch):
            out[start:start + batch] = self.forward(xs[start:start + batch])[0].argmax(axis=1)
        return out

    def accuracy(self, xs: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(xs) == labels).mean())

    def tile_ids(self):
        for layer in self.layers:
            if layer.analog:
                for _, _, tile in layer.grid():
                    yield tile

    def state_dict(self) -> dict:
        """Every layer's arrays; `layerK.output_scale` only where a layer carries a scale other than 1."""
        out = {}
        for k, layer in enumerate(self.layers):
            out.update(layer.state_dict(f"layer{k}"))
            if layer.output_scale != 1.0:
                out[f"layer{k}.output_scale"] = np.array(layer.output_scale)
        return out

    def load_state_dict(self, data: dict) -> None:
        for k, layer in enumerate(self.layers):
            layer.load_state_dict(data, f"layer{k}")
            layer.output_scale = float(data.get(f"layer{k}.output_scale", 1.0))
