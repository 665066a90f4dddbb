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
import sys
import time
from pathlib import Path

import pytest

from sdeid.launcher import REPO, ControlError, Launch

pytestmark = pytest.mark.integration

GUEST = REPO / "tests" / "guest"
IMAGE = GUEST / "build" / "sdei-guest.bin"
STATIC_EVENTS = ["100:shared:normal", "101:shared:critical",
                 "200:private:normal", "201:private:critical"]
RUN_TIMEOUT = 300.0

RESULT = re.compile(r"^SDEI-TEST (\S+) (PASS|FAIL)(?: (.*))?$")
SUMMARY = re.compile(r"^SDEI-TEST-SUMMARY passed=(\d+) failed=(\d+)$")
TRIGGER = re.compile(r"^SDEI-WAIT-TRIGGER (\d+)(?: (\d+))?$")
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


def run_guest(image: Path, qemu: str, conduit: str) -> tuple[dict[str, tuple[str, str]],
                                                             tuple[int, int] | None,
                                                             list[str], float, list[str]]:
    results: dict[str, tuple[str, str]] = {}
    summary = None
    trigger_errors: list[str] = []
    echo = sys.stderr if os.environ.get("SDEID_ECHO_GUEST") == "1" else None
    t0 = time.monotonic()
    with Launch(["-kernel", str(image)], qemu=qemu, smp=4, memory="256M", conduit=conduit,
                protocol=2,
                sdeid_args=[f"--event={e}" for e in STATIC_EVENTS],
                capture_output=True, console_input=True, echo=echo) as vm:
        try:
            for line in vm.iter_lines(timeout=RUN_TIMEOUT):
                m = TRIGGER.match(line)
                if m:
                    event, pe = int(m.group(1)), m.group(2)
                    try:
                        vm.trigger(event, None if pe is None else int(pe))
                        vm.send_console(b"+%d\n" % event)
                    except (ControlError, OSError) as e:
                        trigger_errors.append(f"sdei-trigger {event} {pe}: {e}")
                        vm.send_console(b"!%d\n" % event)
                    continue
                m = RESULT.match(line)
                if m:
                    results[m.group(1)] = (m.group(2), m.group(3) or "")
                    continue
                m = SUMMARY.match(line)
                if m:
                    summary = (int(m.group(1)), int(m.group(2)))
            code = vm.wait(timeout=30)
        except TimeoutError:
            code = None
        wall = time.monotonic() - t0
        log = list(vm.lines)
        if code != 0:
            log.append(f"(QEMU exit status {code})")
            log += ["--- qemu.log", *(vm.qemu_log.read_text(errors="replace").splitlines()
                                     if vm.qemu_log.exists() else []),
                    "--- sdeid.log", *(vm.daemon_log.read_text(errors="replace")
                                       .splitlines()[-40:] if vm.daemon_log.exists() else [])]
    daemon = vm.daemon_proc
    if daemon is None or daemon.returncode != 0:
        trigger_errors.append(f"sdeid did not exit cleanly with the VM: status "
                              f"{None if daemon is None else daemon.returncode}")
    return results, summary, trigger_errors, wall, log
