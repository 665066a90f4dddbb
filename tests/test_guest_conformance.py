"""SDEI conformance on a real guest: tests/guest (bare metal, EL1) under the
patched QEMU and sdeid, wired by the launcher, for both conduits.

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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdeid.launcher import REPO, ControlError, Launch, LaunchError, find_qemu

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
NAMED_ONLY = ("bench_", "outage_")     # src/harness.c: run only when named


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


@pytest.fixture(scope="module")
def qemu_binary() -> str:
    if _skip_requested():
        pytest.skip("SDEID_SKIP_INTEGRATION=1")
    try:
        return find_qemu(None)
    except LaunchError as e:
        pytest.fail(f"no patched QEMU: {e}; set SDEID_SKIP_INTEGRATION=1 to skip "
                    "integration tests on purpose", pytrace=False)


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


@pytest.mark.parametrize("conduit", ["hvc", "smc"])
def test_guest_conformance(guest_image: Path, qemu_binary: str, conduit: str) -> None:
    cases = registered_cases()
    assert len(cases) == len(set(cases)), "duplicate case names"
    results, summary, trigger_errors, wall, log = run_guest(guest_image, qemu_binary, conduit)
    print(f"{conduit}: {len(results)} cases in {wall:.1f} s wall")

    problems: list[str] = []
    failed = [f"{name}: {reason}" for name, (verdict, reason) in results.items()
              if verdict != "PASS"]
    if failed:
        problems.append("failed cases:\n  " + "\n  ".join(failed))
    missing = [c for c in cases if c not in results]
    if missing:
        problems.append("cases without a result: " + ", ".join(missing))
    unknown = [c for c in results if c not in cases]
    if unknown:
        problems.append("results for unknown cases: " + ", ".join(unknown))
    if summary is None:
        problems.append("no SDEI-TEST-SUMMARY line (the guest crashed, hung or QEMU failed)")
    elif summary != (len(cases), 0):
        problems.append(f"summary passed={summary[0]} failed={summary[1]}, "
                        f"want passed={len(cases)} failed=0")
    passes = sum(1 for verdict, _ in results.values() if verdict == "PASS")
    if passes != len(cases):
        problems.append(f"{passes} PASS lines for {len(cases)} cases")
    if trigger_errors:
        problems.append("host triggers failed:\n  " + "\n  ".join(trigger_errors))
    if problems:
        tail = "\n".join(log[-80:])
        pytest.fail(f"[{conduit}] " + "\n".join(problems) + f"\n--- console (tail):\n{tail}",
                    pytrace=False)


# ------------------------------------------------------------ back-end outage

def test_backend_outage(guest_image: Path, qemu_binary: str, tmp_path: Path) -> None:
    """The daemon stalls, then crashes and is restarted, under a running
    guest (tests/guest case outage_backend): a call to the stalled daemon
    returns NOT_SUPPORTED after QEMU's reply timeout with a clear error in
    QEMU's log; QEMU reconnects by itself; the guest's registration survives
    both the reconnect and the restart from --state-file, and a trigger
    after the restart reaches the guest's handler."""
    state = tmp_path / "sdeid.state"
    steps: list[int] = []
    results: dict[str, str] = {}
    with Launch(["-kernel", str(guest_image), "-append", "tests=outage_backend"],
                qemu=qemu_binary, smp=1, memory="256M",
                sdeid_args=["--event=100:shared:normal", "--state-file", str(state)],
                keep_dir=tmp_path / "run", capture_output=True, console_input=True) as vm:
        for line in vm.iter_lines(timeout=RUN_TIMEOUT):
            m = HOST_STEP.match(line)
            if m:
                step = int(m.group(1))
                steps.append(step)
                assert vm.daemon_proc is not None
                if step == 1:
                    vm.wait_connected(10)
                    os.kill(vm.daemon_proc.pid, signal.SIGSTOP)
                elif step == 2:
                    os.kill(vm.daemon_proc.pid, signal.SIGCONT)
                    vm.wait_connected(30)
                elif step == 3:
                    vm.restart_daemon()
                    vm.wait_connected(30)
                vm.send_console(b"+%d\n" % step)
                continue
            m = TRIGGER.match(line)
            if m:
                vm.trigger(int(m.group(1)))
                vm.send_console(b"+%s\n" % m.group(1).encode())
                continue
            m = RESULT.match(line)
            if m:
                results[m.group(1)] = f"{m.group(2)} {m.group(3) or ''}".strip()
            if SUMMARY.match(line):
                break
        console = list(vm.lines)
        qemu_log = vm.qemu_log.read_text(errors="replace")
        daemon_log = vm.daemon_log.read_text(errors="replace")
    print("\n".join(ln for ln in console if "outage_backend" in ln))
    assert steps == [1, 2, 3], console[-30:]
    assert results == {"outage_backend": "PASS"}, "\n".join(console[-40:])
    # QEMU said why it dropped the back-end, and came back without help
    assert re.search(r"sdei-user: no reply to request \d+ within \d+ ms", qemu_log), qemu_log
    # the restarted daemon began from the state file (the guest's
    # EVENT_STATUS after step 3 shows the registration came with it)
    assert f"restored dispatcher state from {state}" in daemon_log, daemon_log[-3000:]
