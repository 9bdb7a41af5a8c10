"""Shared fixtures. Tests that need the measured traces skip with a reason where ../shared is absent."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPO.parent / "shared" / "traces" / "lbe247"


@pytest.fixture(scope="session")
def lbe247() -> Path:
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"measured traces not found at {SHARED_TRACES}: ../shared is absent on this machine")
    return SHARED_TRACES


@pytest.fixture(params=["python", "c"])
def board_firmware(request, monkeypatch):
    """Run a test against both board firmwares (the Python interpreter and the C firmware built for this host):
    every BoardFirmware the test builds, in process or in an `edgelearn board-emulator` subprocess, takes it from
    $EDGELEARN_BOARD_FIRMWARE."""
    monkeypatch.setenv("EDGELEARN_BOARD_FIRMWARE", request.param)
    return request.param
