"""Memory footprint of a learning configuration in the controller's SRAM, and a verdict against a hardware profile.

The weights live in the crossbar, not in SRAM; what the controller must hold (docs/budget.md, "Memory"):
- accumulator: mixed precision (mp) keeps one χ per weight, bias columns included, at chi_bits (int32 in the firmware
  model, firmware_model/controller.py; int16 or int8 with pulses.chi_bits, firmware_model/lowmem.py); sgd and
  sp-shift keep none; the digital baseline keeps its float32 weights.
- transfer buffer: ttv2, c-ttv2 and agad keep the buffer H, one value per weight at buffer_bits.
- transfer state: per weight-matrix input column, the chopper sign (1 byte, c-ttv2 and agad) and the read count of
  the chopper period (2 bytes, agad); agad also keeps two int16 values per weight (the previous period's mean read,
  the current period's sum); the column cursor, 8 bytes per layer.
- replay buffer: each entry is a network input after the front end's normaliser, int16 Q1.15 (the DAC input codes of
  firmware_model/frontend.normalise; the raw features before it are int32, but only one window's worth is kept, in
  `features`), plus one byte of label.
- window buffer: one window of int16 sensor samples x channels (the ring the sliding windows are cut from).
- features: the int32 features of the newest window before normalisation (4 B each).
- normalisation: offset, multiplier and shift per input feature, int32 each (firmware_model/frontend.py).
- inputs: the batch's network inputs, int16 Q1.15 (the new window and the replayed ones copied into the batch).
- activations and deltas: per layer and sample of the batch, one 4-byte value each (float32, or int32 fixed point:
  the same size), for every hidden and output unit; the backward pass needs the forward's activations.
Code (flash), stack and the protocol's buffers are not counted: there is no firmware build to measure them yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import EdgelearnError

NAMES = {"accumulator": "accumulator", "buffer": "transfer buffer H", "transfer_state": "transfer state",
         "weights": "digital weights", "replay": "replay buffer",
         "window": "window buffer", "features": "feature scratch", "normalisation": "normalisation constants",
         "inputs": "batch inputs", "activations": "activations", "deltas": "deltas"}


def kib(n_bytes: float) -> str:
    """Bytes as KiB for a one-line message: '918.5 KiB', '256 KiB', '4.4 KiB' (below 1 KiB: '908 B')."""
    if n_bytes < 1024:
        return f"{n_bytes:.0f} B"
    value = n_bytes / 1024.0
    return f"{value:,.0f} KiB" if value == int(value) else f"{value:,.1f} KiB"


@dataclass
class MemoryReport:
    """Bytes of SRAM per item (see the module docstring for what each holds), their total, and (after `check`) the
    verdict against a profile."""

    sizes: list
    algorithm: str
    items: dict  # name -> bytes
    total_bytes: int
    assumptions: dict = field(default_factory=dict)
    profile: str | None = None
    sram_bytes: int | None = None
    fits: bool | None = None
    message: str = ""

    def check(self, profile) -> MemoryReport:
        """Set the verdict against a HardwareProfile's SRAM (fits, message) and return self."""
        self.profile, self.sram_bytes = profile.name, int(profile.mcu.sram_bytes)
        self.fits = self.total_bytes <= self.sram_bytes
        have = f"the profile {profile.name} has {kib(self.sram_bytes)} SRAM"
        if self.fits:
            self.message = f"fits: {kib(self.total_bytes)} of {kib(self.sram_bytes)} SRAM"
            return self
        name, largest = max(self.items.items(), key=lambda kv: kv[1])
        if largest > self.sram_bytes:
            who = {"accumulator": "mixed precision", "buffer": self.algorithm}.get(name, "the configuration")
            self.message = f"{who} needs {kib(largest)} of {NAMES.get(name, name)}; {have}"
        else:
            self.message = (f"the configuration needs {kib(self.total_bytes)} ({kib(largest)} of "
                            f"{NAMES.get(name, name)}); {have}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def memory_footprint(sizes, algorithm: str, chi_bits: int = 32, replay: int = 0, replay_dim: int | None = None,
                     window_samples: int = 0, channels: int = 0, batch: int = 1,
                     normalised_features: int | None = None, buffer_bits: int = 8) -> MemoryReport:
    """SRAM the controller needs for a network of layer `sizes` (inputs, hidden..., outputs) trained by `algorithm`
    (mp, sgd, sp-shift or digital): χ at chi_bits for mp, `replay` stored inputs of replay_dim values (default: the
    network's inputs), a window of `window_samples` int16 samples x `channels`, a learning batch of `batch` samples.
    normalised_features: input features with stored normalisation constants (default: replay_dim when there is a
    window buffer, else none)."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise EdgelearnError(f"layer sizes must be at least two positive numbers, got {sizes}")
    if chi_bits < 1 or replay < 0 or window_samples < 0 or channels < 0 or batch < 1:
        raise EdgelearnError("chi_bits and batch must be >= 1; replay, window_samples and channels >= 0")
    weights = sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))  # bias columns included
    dim = sizes[0] if replay_dim is None else int(replay_dim)
    units = sum(sizes[1:])
    windowed = window_samples > 0 and channels > 0
    normalised = (dim if windowed else 0) if normalised_features is None else int(normalised_features)
    transfer = algorithm in ("ttv2", "c-ttv2", "agad")
    columns = sum(n_in + 1 for n_in in sizes[:-1])
    state = 0
    if transfer:
        state = 8 * (len(sizes) - 1) + (columns if algorithm != "ttv2" else 0)
        if algorithm == "agad":
            state += columns * 2 + weights * 4
    items = {
        "accumulator": weights * ((chi_bits + 7) // 8) if algorithm == "mp" else 0,
        "buffer": weights * ((buffer_bits + 7) // 8) if transfer else 0,
        "transfer_state": state,
        "weights": weights * 4 if algorithm == "digital" else 0,
        "replay": replay * (dim * 2 + 1),
        "window": window_samples * channels * 2 if windowed else 0,
        "features": dim * 4 if windowed else 0,
        "normalisation": normalised * 3 * 4,
        "inputs": batch * sizes[0] * 2,
        "activations": batch * units * 4,
        "deltas": batch * units * 4,
    }
    assumptions = dict(weights=weights, chi_bytes_per_weight=(chi_bits + 7) // 8 if algorithm == "mp" else 0,
                       buffer_bytes_per_weight=(buffer_bits + 7) // 8 if transfer else 0,
                       replay_entry_bytes=dim * 2 + 1, replay_format="int16 Q1.15 normalised inputs + 1 B label",
                       activation_bytes=4, delta_bytes=4, batch=batch,
                       not_counted="code (flash), stack, protocol buffers")
    return MemoryReport(sizes=sizes, algorithm=algorithm, items=items, total_bytes=int(sum(items.values())),
                        assumptions=assumptions)
