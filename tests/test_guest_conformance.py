"""SDEI conformance on a real guest: the harness that runs tests/guest (bare
metal, EL1) under the patched QEMU and sdeid, wired by the launcher.  The
tests that use it are in test_qemu_series_v2.py (the conformance guest on
both conduits, and the back-end outage with a re-sent call); the protocol 1
versions that lived here went with that protocol.

The guest announces `SDEI-WAIT-TRIGGER <event> [<pe>]` when a case needs a
static event that only the platform can raise; we run `sdei-trigger` on the
control socket and answer on its console ("+<event>" done, "!<event>" failed).  Every
`SDEI-TEST <name> PASS|FAIL` line is collected; the run passes when the
summary appeared, nothing failed, and every registered case passed.

These tests are not skipped when something is missing: a missing cross
compiler or QEMU fails them with the reason.  A developer can skip them
explicitly with SDEID_SKIP_INTEGRATION=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sdeid.testing.conformance import (  # noqa: F401  (the tests' names for them)
    RUN_TIMEOUT,
    TRIGGER,
    run_guest,
)
from sdeid.testing.vm import REPO

pytestmark = pytest.mark.integration

GUEST = REPO / "tests" / "guest"
IMAGE = GUEST / "build" / "sdei-guest.bin"
HOST_STEP = re.compile(r"^SDEI-WAIT-HOST (\d+)$")
NAMED_ONLY = ("bench_", "outage_", "nmi_")     # src/harness.c: run only when named


def _skip_requested() -> bool:
    return os.environ.get("SDEID_SKIP_INTEGRATION") == "1"


@pytest.fixture(scope="module")
def guest_image() -> Path:
    if _skip_requested():
        pytest.skip("SDEID_SKIP_INTEGRATION=1")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.fail("aarch64-linux-gnu-gcc is missing (apt-get install gcc-aarch64-linux-gnu); "
                    "set SDEID_SKIP_INTEGRATION=1 to skip integration tests on purpose",
                    pytrace=False)
    proc = subprocess.run(["make", "-s", "-C", str(GUEST), "WERROR=1"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building the test guest failed:\n{proc.stdout}{proc.stderr}",
                    pytrace=False)
    return IMAGE


def registered_cases() -> list[str]:
    """The cases a default run executes, in run order, read from the guest's
    sources in the Makefile's order (TEST(name) / TEST_TIMEOUT(name, us)).
    bench_* and outage_* cases are registered too but, as in src/harness.c,
    run only when named on the command line, so a default run must not
    expect them."""
    make = (GUEST / "Makefile").read_text()
    files = re.findall(r"cases/\w+\.c", make)
    names: list[str] = []
    for f in files:
        text = (GUEST / f).read_text()
        names += re.findall(r"^TEST(?:_TIMEOUT)?\((\w+)", text, re.M)
    return [n for n in names if not n.startswith(NAMED_ONLY)]


