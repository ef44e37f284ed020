from __future__ import annotations

import decimal
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parents[1] / "streamtoll" / "samples"


@pytest.fixture(autouse=True)
def _trap_float_decimals() -> None:
    # Money must never be built from a float: make it an error everywhere in tests.
    decimal.getcontext().traps[decimal.FloatOperation] = True


@pytest.fixture
def samples() -> Path:
    return SAMPLES
