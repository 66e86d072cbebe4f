"""Training tests see the sample as training loads it: torch tensors in a DigitData."""

from __future__ import annotations

import pytest

from training.data import DigitData, load_sample


@pytest.fixture(scope="session")
def sample() -> DigitData:
    return load_sample()
