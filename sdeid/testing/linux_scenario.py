"""Debian's stock kernel under sdeid, driven through one scenario and judged: the
check tests/test_kvm.py runs inside scripts/nested-kvm's L1, where pytest is not.

    python3 -m sdeid.testing.linux_scenario --kernel K --initrd I
        [--firmware dt|uefi --aavmf-code=CODE --aavmf-vars=VARS]

The guest runs tests/linux/overlay/tests/console.sh (the initramfs of
scripts/fetch-guest-assets --extra tests/linux/overlay), a command loop driven over
the console.  The consoles stay quiet (`quiet`; every character of L2's console
crosses two hypervisors here), so what the kernel said is read from `dmesg`.  Steps:

1. probe: the kernel detected SDEI, and the daemon sees every PE unmasked;
2. hotplug: CPU 1 offline -> its PE masked and off (PE_POWER, which under KVM
   needs qemu-patches/v2 0005), online -> unmasked and on;
3. restart: sdeid is SIGKILLed under the running guest and started again from its
   --state-file; QEMU reconnects; a second hotplug round works;
4. with --firmware uefi: a memory error injected on the control socket reaches the
   guest's GHES driver through SDEI (the guest logs the page);
5. with --migrate: a live migration to a second QEMU (`-incoming`) attached to a
   fresh sdeid, which must then show every PE unmasked (the dispatcher state went
   along in the migration stream), and a hotplug round there;
6. reboot: `reboot -f` -> the kernel probes SDEI again, every PE unmasked;
then `poweroff -f`.  The last line on stdout is `SCENARIO {json}`: every step with ok
and what it saw, and seconds; exit status 0 when every step is ok.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sdeid.testing.vm import VM, ControlError

DETECTED = "sdei: SDEIv1.1 (0x53444549) detected in firmware."
PROMPT = re.compile(r"^SDEID-CMD\? (\d+)$")
DONE = re.compile(r"^SDEID-CMD-DONE (\d+) rc=(\d+)$")
MEMORY_FAILURE = re.compile(r"Memory failure: (0x[0-9a-f]+)")
EVENT = 100
ADDRESS = 0x40000000 + 64 * 1024 * 1024     # guest RAM starts at 1 GiB on virt
STEP_TIMEOUT = 120.0
MARKER = "SCENARIO "


class Guest:
    """The console loop of console.sh: one command at a time, its output back."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def prompt(self, timeout: float = STEP_TIMEOUT) -> None:
        self.vm.expect(PROMPT.pattern, timeout=timeout)

    def run(self, cmd: str, timeout: float = STEP_TIMEOUT) -> list[str]:
        self.vm.send_console(cmd.encode() + b"\n")
        out: list[str] = []
        for line in self.vm.iter_lines(timeout=timeout):
            if DONE.match(line):
                self.prompt(timeout)
                return out
            out.append(line)
        raise TimeoutError(f"no end of {cmd!r}")

    def dmesg(self, needle: str) -> list[str]:
        return [ln for ln in self.run("dmesg") if needle in ln]


def pes(vm: VM) -> list[dict[str, Any]]:
    with vm.control(timeout=STEP_TIMEOUT) as ctl:
        return list(ctl.execute("query-sdei")["pes"])


def pes_or_none(vm: VM) -> list[dict[str, Any]] | None:
    try:
        return pes(vm)
    except ControlError:
        return None


def wait_for(what: str, check: Any, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def hotplug(g: Guest, vm: VM) -> dict[str, Any]:
    g.run("echo 0 > /sys/devices/system/cpu/cpu1/online")
    off = pes(vm)[1]
    g.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
    on = wait_for("pe1 unmasked", lambda: (lambda p: p if not p["masked"] else None)(pes(vm)[1]))
    ok = bool(off["masked"] and not off["online"] and on and not on["masked"] and on["online"])
    return {"ok": ok, "offline": off, "online": on}


def migrate_to_a_new_vm(src: VM, work: Path, launch: Any, step: Any) -> VM | None:
    """Live-migrate the guest to a second QEMU (`-incoming`) attached to a fresh
    sdeid: the device's vmstate carries the dispatcher state from one daemon to
    the other (SAVE_STATE / LOAD_STATE), so the new daemon must show every PE
    unmasked as the guest left them.  Returns the destination, started."""
    uri = f"unix:{work / 'migration.sock'}"
    dest: VM = launch("destination", ["-incoming", uri])
    dest.start()
    try:
        dest.wait_connected(STEP_TIMEOUT)
        # Connected is not yet handshaken: query-sdei needs HELLO's topology.
        before = wait_for("topology", lambda: pes_or_none(dest))
        with src.qemu_monitor(timeout=STEP_TIMEOUT) as mon:
            mon.execute("migrate", {"uri": uri})
            status = wait_for("migration", lambda: (lambda r: r if r.get("status") in (
                "completed", "failed", "cancelled") else None)(mon.execute("query-migrate")))
        after = wait_for("state loaded", lambda: (lambda p: p if not any(
            x["masked"] for x in p) else None)(pes(dest)))
    except BaseException:
        dest.shutdown()
        raise
    ok = bool(status and status["status"] == "completed" and after and before
              and all(x["masked"] for x in before))
    if not step("migrate", {"ok": ok, "status": status and status.get("status"),
                            "pes_before": before, "pes_after": after}):
        dest.shutdown()
        return None
    return dest


def scenario(kernel: str, initrd: str, firmware: str, smp: int,
             steps: list[dict[str, Any]],
             aavmf: tuple[str, str] | None = None, migrate: bool = False) -> None:
    """Run the steps, appending each one's result to `steps`; stop at the first that
    fails."""
    t0 = time.monotonic()

    def step(name: str, result: dict[str, Any]) -> bool:
        result = {"step": name, **result, "t": round(time.monotonic() - t0, 1)}
        steps.append(result)
        print(f"scenario: {json.dumps(result)}", file=sys.stderr, flush=True)
        return bool(result["ok"])

    work = Path(tempfile.mkdtemp(prefix="linux-scenario-"))
    append = "console=ttyAMA0 quiet panic=-1 sdeid.test=console"
    sdeid_args: list[str] = []
    props = ""
    if firmware == "uefi":
        append += " acpi=force"
        sdeid_args += ["--event", f"{EVENT}:shared:normal"]
        props = f"ghes-event={EVENT}"

    def launch(name: str, extra: list[str]) -> VM:
        return VM(["-kernel", kernel, "-initrd", initrd, "-append", append, *extra],
                  smp=smp, memory="512M", firmware=firmware,
                  sdeid_args=[*sdeid_args, "--state-file", str(work / f"{name}.state")],
                  device_props=props, keep_dir=work / name, console_input=True, reboot=True,
                  aavmf=aavmf)

    with contextlib.ExitStack() as stack:
        vm = stack.enter_context(launch("source", []))
        g = Guest(vm)
        g.prompt(timeout=300)
        detected = g.dmesg(DETECTED)
        p = pes(vm)
        if not step("probe", {"ok": len(detected) == 1 and len(p) == smp
                              and not any(x["masked"] for x in p), "dmesg": detected,
                              "pes": p}):
            return
        if not step("hotplug", hotplug(g, vm)):
            return
        vm.restart_daemon()
        vm.wait_connected(STEP_TIMEOUT)
        if not step("restart", hotplug(g, vm)):
            return
        if firmware == "uefi":
            with vm.control(timeout=STEP_TIMEOUT) as ctl:
                reply = ctl.execute("sdei-inject-error", {"event": EVENT, "address": ADDRESS})
            seen = wait_for("memory failure", lambda: [
                m.group(1) for ln in g.dmesg("Memory failure")
                if (m := MEMORY_FAILURE.search(ln))])
            page = f"{ADDRESS >> 12:#x}"
            if not step("ghes", {"ok": page in (seen or []), "reply": reply,
                                 "pages": seen}):
                return
        if migrate:
            dest = migrate_to_a_new_vm(vm, work, launch, step)
            if dest is None:
                return
            stack.callback(dest.shutdown)
            vm = dest
            g = Guest(vm)
            if not step("hotplug-after-migration", hotplug(g, vm)):
                return
        vm.send_console(b"reboot -f\n")
        g.prompt(timeout=300)
        again = g.dmesg(DETECTED)
        p = pes(vm)
        if not step("reboot", {"ok": len(again) == 1 and not any(x["masked"] for x in p),
                               "dmesg": again, "pes": p}):
            return
        vm.send_console(b"poweroff -f\n")
        code = vm.wait(timeout=STEP_TIMEOUT)
        step("poweroff", {"ok": code == 0, "qemu_status": code})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m sdeid.testing.linux_scenario")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--firmware", choices=["dt", "uefi"], default="dt")
    ap.add_argument("--aavmf-code", help="UEFI firmware (--firmware uefi)")
    ap.add_argument("--aavmf-vars", help="its pristine variable store")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--migrate", action="store_true",
                    help="live-migrate the guest to a second QEMU and sdeid before the "
                    "reboot step, and go on there")
    args = ap.parse_args(argv)
    if args.firmware == "uefi" and not (args.aavmf_code and args.aavmf_vars):
        ap.error("--firmware uefi needs --aavmf-code and --aavmf-vars")
    t0 = time.monotonic()
    steps: list[dict[str, Any]] = []
    error = None
    try:
        scenario(args.kernel, args.initrd, args.firmware, args.smp, steps,
                 (args.aavmf_code, args.aavmf_vars) if args.firmware == "uefi" else None,
                 args.migrate)
    except Exception as e:          # reported in the summary: the run failed there
        error = f"{type(e).__name__}: {e}"
    ok = bool(steps) and error is None and all(s["ok"] for s in steps) and \
        steps[-1]["step"] == "poweroff"
    print(MARKER + json.dumps({"ok": ok, "steps": steps, "error": error,
                               "wall": round(time.monotonic() - t0, 1)}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
