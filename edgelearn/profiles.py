"""Hardware profiles: the microcontroller, inertial sensor and battery of a wearable, from TOML (bundled or a file).

A profile file has a top-level name (and optional description, typical = true for figures typical of a part class
rather than measured on one board) and the sections [mcu] (required), [imu] and [battery] (optional). Units are in the
field names. The bundled profiles (traces/profiles/*.toml, installed as edgelearn.bundled) carry typical figures of
their class from public datasheets (docs/budget.md names the parts) and the controller cycles measured on the C
firmware for their core class (`python tools/firmware_tables.py`, docs/firmware.md). `load_profile("m4f-lowpower")` or
`load_profile("my-board.toml")`; errors are one line naming the file and field.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError, bundled_files, read_toml, validation_error

DEFAULT_PROFILE = "m4f-lowpower"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Microcontroller(_Strict):
    """The controller that runs the front end, the χ accumulators, replay and the protocol."""

    core: str = Field(description="CPU core, e.g. Cortex-M4F")
    clock_hz: float = Field(gt=0, le=10e9, description="core clock while active")
    active_current_per_mhz_a: float = Field(gt=0, le=1.0, description="run-mode supply current per MHz of clock")
    sleep_current_a: float = Field(ge=0, le=1.0, description="sleep current with RAM retained and a wake-up timer")
    supply_v: float = Field(3.0, gt=0, le=60, description="supply voltage the currents are drawn at")
    sram_bytes: int = Field(gt=0, le=2**40, description="on-chip SRAM available to the application")
    flash_bytes: int = Field(gt=0, le=2**40, description="on-chip flash (code and constants)")


class InertialSensor(_Strict):
    """The IMU that produces the stream: its supply current while sampling at odr_hz."""

    part_class: str = Field("", description="the parts the figures are typical of")
    current_a: float = Field(gt=0, le=1.0, description="supply current at the output data rate")
    odr_hz: float = Field(gt=0, le=1e6, description="output data rate the current applies to")
    supply_v: float = Field(1.8, gt=0, le=60, description="supply voltage the current is drawn at")


class Battery(_Strict):
    capacity_mah: float = Field(gt=0, le=1e7)
    voltage_v: float = Field(gt=0, le=60)

    @property
    def energy_j(self) -> float:
        return self.capacity_mah * 1e-3 * 3600.0 * self.voltage_v


class CycleTable(_Strict):
    """Controller cycles per counted operation (docs/budget.md, "Controller cycles"). The defaults are a documented
    estimate for a Cortex-M4-class core running C compiled at -O2 from zero-wait-state memory, not a measurement;
    a profile's [cycles] section replaces any of them (with measured firmware figures when they exist)."""

    source: str = Field("estimate: Cortex-M4 class, C at -O2 (docs/budget.md)", description="where the figures "
                        "come from")
    mvm_pass: float = Field(80, ge=0, description="per array pass (forward or backward): select, start, wait")
    dac_code: float = Field(6, ge=0, description="per DAC conversion: scale an input, round, saturate, write")
    adc_code: float = Field(12, ge=0, description="per ADC conversion: read, rescale, activation or derivative")
    mac: float = Field(3, ge=0, description="per digital multiply-accumulate (two loads + SMLAL)")
    chi_update: float = Field(20, ge=0, description="per chi accumulator read-modify-write, threshold and fire")
    rng_draw: float = Field(18, ge=0, description="per xorshift64* draw on a 32-bit core")
    pulse: float = Field(10, ge=0, description="per programming pulse issued (driver set-up, timer trigger)")
    device_read: float = Field(40, ge=0, description="per single-device read (calibration, write-verify)")
    update_call: float = Field(150, ge=0, description="per update call (tile bookkeeping, scales, loops)")
    wake: float = Field(400, ge=0, description="per window: wake-up on the sensor FIFO interrupt and back to sleep")
    sample_read: float = Field(20, ge=0, description="per sensor value read from the IMU FIFO (one channel)")
    feature_sample: float = Field(8, ge=0, description="per sample and channel of a window: sum, sum of squares, "
                                  "|x|, min, max")
    feature_channel: float = Field(300, ge=0, description="per channel of a window: divisions and integer square "
                                   "root")
    normalise_feature: float = Field(10, ge=0, description="per network input: offset, multiply, shift, saturate")
    frame_byte: float = Field(12, ge=0, description="per protocol frame byte (COBS and CRC-16; hardware in the loop "
                              "only, a standalone wearable sends none)")


class HardwareProfile(_Strict):
    """A wearable's hardware: microcontroller, optional IMU and battery, and the controller's cycles per operation."""

    name: str = Field(min_length=1)
    description: str = ""
    typical: bool = Field(False, description="figures typical of a part class (datasheet), not measured")
    mcu: Microcontroller
    imu: InertialSensor | None = None
    battery: Battery | None = None
    cycles: CycleTable = CycleTable()

    @property
    def energy_per_cycle_j(self) -> float:
        """Active energy of one core cycle: run current per MHz x supply / 1e6 (180 pJ at 60 uA/MHz and 3 V)."""
        return self.mcu.active_current_per_mhz_a * self.mcu.supply_v / 1e6


def bundled_profiles() -> dict[str, Path]:
    """The shipped hardware profiles (traces/profiles/*.toml, installed as edgelearn.bundled), by name."""
    return bundled_files("profiles", "*.toml")


def load_profile(path_or_name: str | Path | None = None) -> HardwareProfile:
    """A hardware profile from a TOML file or a bundled profile's name (default: DEFAULT_PROFILE); a file of that
    name wins. Errors are one-line InputErrors naming the file and the field."""
    path = Path(path_or_name if path_or_name is not None else DEFAULT_PROFILE)
    if not path.exists():
        shipped = bundled_profiles()
        if str(path) not in shipped:
            raise InputError(path, f"file not found, and no bundled profile of that name (bundled: "
                                   f"{', '.join(shipped)})")
        path = shipped[str(path)]
    data = read_toml(path)
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, "profile") from None


# CycleTable fields the firmware measurement gives (edgelearn firmware measure), from firmware_model.measure's
# operations; the others (mac, pulse, device_read, update_call, wake, sample_read) are the platform's or the HAL's and
# keep their estimate.
MEASURED_CYCLES = {"dac_code": "mvm_per_input", "adc_code": "mvm_per_output", "chi_update": "mp_update_chi_per_cell",
                   "rng_draw": "rng_u32_call", "feature_sample": "window_features_per_sample",
                   "normalise_feature": "normalise_per_feature", "frame_byte": "encode_frame_per_byte"}


def measured_cycles(result: dict) -> dict:
    """CycleTable values from a firmware measurement (firmware_model.measure.measure): the measured operations, the
    MVM pass's fixed part (a forward call's own cycles less its DAC and ADC codes) and the per-channel window
    arithmetic, with a `source` naming what was measured and what kept its estimate."""
    ops = result["operations"]
    out = {field: round(float(ops[name]["cycles"]), 1) for field, name in MEASURED_CYCLES.items()}
    shape = next(k for k in ops["mvm_whole_call"] if k.startswith("shape_"))
    rows, cols = (int(v) for v in shape[len("shape_"):].split("x"))
    own = ops["mvm_whole_call"][shape]["own_cycles"]
    out["mvm_pass"] = round(max(0.0, own - cols * out["dac_code"] - rows * out["adc_code"]), 1)
    out["feature_channel"] = round(float(ops["window_features_per_window"]["excluding_samples_cycles"]), 1)
    estimate = [f for f in CycleTable.model_fields if f not in out and f != "source"]
    model = re.search(r"cycle model: ([^)]*)", result.get("cpu_note", ""))
    out["source"] = (f"measured: edgelearn firmware measure, {result['cpu']}, {result['compiler']}, sources "
                     f"{result['source_hash']} (cycles estimated from exact instruction counts"
                     f"{', cycle model: ' + model.group(1) if model else ''}); estimate kept for "
                     f"{', '.join(estimate)}")
    CycleTable.model_validate(out)  # every value in range
    return out


def profile_with_cycles(path_or_name: str | Path, cycles: dict) -> str:
    """The TOML text of a profile (file or bundled name) with its [cycles] table replaced by `cycles`."""
    path = Path(path_or_name)
    if not path.exists():
        load_profile(path_or_name)  # the one-line error for an unknown name
        path = bundled_profiles()[str(path_or_name)]
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^\[cycles\]\n.*?(?=^\[|\Z)", "", text).rstrip() + "\n\n[cycles]\n"
    if str(cycles.get("source", "")).startswith("measured: edgelearn firmware measure"):
        text += "# written by edgelearn firmware measure (bundled profiles: python tools/firmware_tables.py)\n"
    for key, value in cycles.items():
        text += f"{key} = {value!r}\n" if isinstance(value, float) else f'{key} = "{value}"\n'
    return text
