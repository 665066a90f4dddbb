"""Test-wide settings: Hypothesis profiles and leak attribution."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# CI and the default run are derandomized, so a red run is reproducible and
# coverage guards cannot flicker; `HYPOTHESIS_PROFILE=explore` searches anew.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test so an unclosed socket or transport is
    reported (as an error, see filterwarnings) against the test that leaked
    it, not a later one."""
    yield
    gc.collect()
