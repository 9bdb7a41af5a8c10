"""edgelearn: emulator of on-device learning on ferroelectric synaptic crossbars."""

from ._version import __version__
from .board import Board, CalibrationResult, CounterReport, InProcessBoard, PeripheryConfig, PulseConfig, Tile
from .devices import (DeviceCard, DeviceVariation, PiecewiseStepModel, ReplayReport, fit_device, load_card,
                      symmetry_points, validate_card)
from .errors import EdgelearnError, InputError
from .memory import MemoryReport, memory_footprint
from .profiles import HardwareProfile, load_profile
from .traces import Trace, TraceMeta, load_trace

__all__ = ["__version__", "Board", "CalibrationResult", "CounterReport", "InProcessBoard", "PeripheryConfig",
           "PulseConfig", "Tile", "DeviceCard", "DeviceVariation", "PiecewiseStepModel", "ReplayReport", "fit_device",
           "load_card", "symmetry_points", "validate_card", "EdgelearnError", "InputError", "Trace", "TraceMeta",
           "load_trace", "MemoryReport", "memory_footprint", "HardwareProfile", "load_profile"]
