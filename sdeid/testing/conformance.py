"""The bare-metal conformance guest (tests/guest) under QEMU and sdeid, judged from
its console: the harness the tests use, and a command for places pytest is not, such
as an L1 machine of scripts/nested-kvm:

    python3 -m sdeid.testing.conformance [--accel kvm|tcg] [--conduit hvc|smc]
                                         [--smp N] [--tests a,b] [--qemu PATH] IMAGE

The guest announces `SDEI-WAIT-TRIGGER <event> [<pe>]` when a case needs a static
event that only the platform can raise; we run `sdei-trigger` on the control socket
and answer on its console ("+<event>" done, "!<event>" failed).  Every `SDEI-TEST
<name> PASS|FAIL` line is collected.  The command prints the guest's console, then one
line `CONFORMANCE {json}` (results, summary, errors, wall seconds) and exits 0 when the
summary appeared with nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sdeid.launcher import default_accel
from sdeid.testing.vm import VM, ControlError

STATIC_EVENTS = ["100:shared:normal", "101:shared:critical",
                 "200:private:normal", "201:private:critical"]
RUN_TIMEOUT = 300.0

RESULT = re.compile(r"^SDEI-TEST (\S+) (PASS|FAIL)(?: (.*))?$")
SUMMARY = re.compile(r"^SDEI-TEST-SUMMARY passed=(\d+) failed=(\d+)$")
TRIGGER = re.compile(r"^SDEI-WAIT-TRIGGER (\d+)(?: (\d+))?$")
MARKER = "CONFORMANCE "


def read_results(vm: VM, react: Callable[[str], bool], timeout: float,
                 results: dict[str, tuple[str, str]]) -> tuple[int, int] | None:
    """Read the guest's console up to its SDEI-TEST-SUMMARY: each line goes to
    `react` first (a host step a case asks for; it returns True when the line was
    one), then every `SDEI-TEST name PASS|FAIL detail` goes into `results` (filled
    as they come, so a caller that meets a timeout keeps what was seen).  Returns
    the summary (passed, failed), or None when the console ended without one."""
    for line in vm.iter_lines(timeout=timeout):
        if react(line):
            continue
        m = RESULT.match(line)
        if m:
            results[m.group(1)] = (m.group(2), m.group(3) or "")
            continue
        m = SUMMARY.match(line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def run_guest(image: Path, qemu: str | None, conduit: str, *, accel: str | None = None,
              smp: int = 4, append: str = "") -> tuple[dict[str, tuple[str, str]],
                                                       tuple[int, int] | None,
                                                       list[str], float, list[str]]:
    """Boot the guest with the static events it expects, answer its trigger requests
    on the control socket, and collect its results: (results by case, the summary
    (passed, failed) or None, trigger and exit errors, wall seconds, the console and
    the logs).  Under KVM the DT always says HVC, so the SMC conduit is asked for on
    the guest's command line (`conduit=smc`)."""
    results: dict[str, tuple[str, str]] = {}
    summary = None
    trigger_errors: list[str] = []
    echo = sys.stderr if os.environ.get("SDEID_ECHO_GUEST") == "1" else None
    t0 = time.monotonic()
    kvm = (accel or default_accel()) == "kvm"
    # Under KVM the timer PPIs are the kernel's, and INTERRUPT_BIND refuses them: the
    # guest checks the refusal instead of the binding (cases/conformance.c).
    kvm_args = f"conduit={conduit} ppi-bind=refused" if kvm else ""
    args = " ".join(a for a in (append, kvm_args) if a)
    with VM(["-kernel", str(image), *(["-append", args] if args else [])], qemu=qemu,
            smp=smp, memory="256M", conduit="hvc" if kvm else conduit, accel=accel,
            sdeid_args=[f"--event={e}" for e in STATIC_EVENTS],
            console_input=True, echo=echo) as vm:
        def trigger(line: str) -> bool:
            m = TRIGGER.match(line)
            if not m:
                return False
            event, pe = int(m.group(1)), m.group(2)
            try:
                vm.trigger(event, None if pe is None else int(pe))
                vm.send_console(b"+%d\n" % event)
            except (ControlError, OSError) as e:
                trigger_errors.append(f"sdei-trigger {event} {pe}: {e}")
                vm.send_console(b"!%d\n" % event)
            return True

        try:
            summary = read_results(vm, trigger, RUN_TIMEOUT, results)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m sdeid.testing.conformance",
                                 description="Run the conformance guest and judge it.")
    ap.add_argument("image", type=Path)
    ap.add_argument("--accel", choices=["kvm", "tcg"])
    ap.add_argument("--conduit", choices=["hvc", "smc"], default="hvc")
    ap.add_argument("--smp", type=int, default=4)
    ap.add_argument("--tests", default="", help="run only these cases (a,b,...)")
    ap.add_argument("--qemu", help="default: as `sdeid run` finds it")
    args = ap.parse_args(argv)
    os.environ.setdefault("SDEID_ECHO_GUEST", "1")
    results, summary, errors, wall, log = run_guest(
        args.image, args.qemu, args.conduit, accel=args.accel, smp=args.smp,
        append=f"tests={args.tests}" if args.tests else "")
    if summary is None or summary[1] or errors:
        print("\n".join(log[-80:]), file=sys.stderr)
    print(MARKER + json.dumps({"results": results, "summary": summary, "errors": errors,
                               "wall": round(wall, 2)}), flush=True)
    ok = (summary is not None and summary[1] == 0 and not errors and bool(results)
          and all(r[0] == "PASS" for r in results.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
