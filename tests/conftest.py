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
