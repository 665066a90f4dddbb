"""Test-wide settings: Hypothesis profiles and leak attribution."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
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


@pytest_asyncio.fixture(autouse=True)
async def _strict_event_loop() -> AsyncIterator[None]:
    """Every test's event loop runs in asyncio debug mode, and an exception
    that reaches the loop's handler (a callback, a transport, a task nobody
    awaited) fails the test instead of being logged and forgotten."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    errors: list[dict[str, Any]] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)
        _loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    await asyncio.sleep(0)          # let callbacks scheduled at teardown run
    loop.set_exception_handler(None)
    if errors:
        pytest.fail("unhandled exception(s) in the event loop: "
                    + "; ".join(repr(e.get("exception") or e.get("message")) for e in errors))
