"""Hardware profiles: the microcontroller, inertial sensor and battery of a wearable, from TOML (bundled or a file).

A profile file has a top-level name (and optional description, typical = true for figures typical of a part class
rather than measured on one board) and the sections [mcu] (required), [imu] and [battery] (optional). Units are in the
field names. The bundled profiles (traces/profiles/*.toml, installed as edgelearn.bundled) carry typical figures of
their class from public datasheets; docs/budget.md names the parts. `load_profile("m4f-lowpower")` or
`load_profile("my-board.toml")`; errors are one line naming the file and field.
"""

from __future__ import annotations

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


class HardwareProfile(_Strict):
    """A wearable's hardware: microcontroller, optional IMU and battery."""

    name: str = Field(min_length=1)
    description: str = ""
    typical: bool = Field(False, description="figures typical of a part class (datasheet), not measured")
    mcu: Microcontroller
    imu: InertialSensor | None = None
    battery: Battery | None = None


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
