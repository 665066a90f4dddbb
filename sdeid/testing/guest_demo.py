"""The README's main job: a hardware error reaches a real Linux guest through
SDEI.

Builds what is missing (scripts/build-qemu: QEMU with our patch series;
scripts/fetch-guest-assets: Debian's stock cloud arm64 kernel, a busybox
initramfs, UEFI firmware; progress on stderr), then boots the kernel with
UEFI and ACPI on `-M virt,ras=on` with sdeid attached (sdeid.testing.vm).
The smccc-user device (`ghes-event=100`) names SDEI event 100 as the
notification of a HEST GHESv2 error source, and the daemon defines 100 as a
static shared event.  Once the guest is up, the demo shows its SDEI lines
and the daemon's view of the event its GHES driver registered, injects a memory error through the
control socket (`sdei-inject-error`: the daemon writes the record with QEMU's inject-ghes-v2-error,
then fires the event), shows the guest's `[Hardware Error]` report and the
daemon's statistics and observed events, and powers the guest off.

    scripts/demo                 # this
    scripts/demo --simulated     # the older demo with a simulated front-end
    python -m sdeid.testing.guest_demo [--qemu PATH] [--echo] [--address GPA]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from typing import Any

from sdeid.launcher import LaunchError
from sdeid.testing.vm import REPO, VM, QmpConnection

EVENT = 100
ADDRESS = 0x40000000 + 64 * 1024 * 1024     # guest RAM starts at 1 GiB on virt
OVERLAY = REPO / "tests" / "linux" / "overlay"   # /tests/console.sh: a command loop
APPEND = "console=ttyAMA0 acpi=force panic=-1 sdeid.test=console"
BOOT_TIMEOUT = 300.0
STEP_TIMEOUT = 60.0


def say(who: str, text: str) -> None:
    print(f"[{who:>8}] {text}", flush=True)


class DemoError(Exception):
    pass


def build_qemu() -> str:
    say("demo", "scripts/build-qemu (cached after the first build, which takes minutes)")
    out = subprocess.run([str(REPO / "scripts/build-qemu")], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)     # progress: our stderr
    if out.returncode != 0 or not out.stdout.strip():
        raise DemoError(f"scripts/build-qemu failed (status {out.returncode})")
    return out.stdout.strip().splitlines()[-1]


def fetch_assets() -> dict[str, str]:
    say("demo", "scripts/fetch-guest-assets (Debian kernel, initramfs, UEFI firmware)")
    out = subprocess.run([str(REPO / "scripts/fetch-guest-assets"), "--extra", str(OVERLAY)],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    if out.returncode != 0:
        raise DemoError(f"scripts/fetch-guest-assets failed (status {out.returncode})")
    found = dict(ln.split("=", 1) for ln in out.stdout.splitlines() if "=" in ln)
    for key in ("KERNEL", "INITRD"):
        if key not in found:
            raise DemoError(f"scripts/fetch-guest-assets gave no {key}")
    return found


def guest_lines(lines: list[str], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [ln for ln in lines if rx.search(ln)]


def show(who: str, lines: list[str]) -> None:
    for ln in lines:
        say(who, ln.rstrip())


def expect(vm: VM, pattern: str, timeout: float, what: str) -> re.Match[str]:
    try:
        return vm.expect(pattern, timeout=timeout)
    except (TimeoutError, LaunchError) as e:
        tail = "\n".join(vm.lines[-30:])
        raise DemoError(f"{what}: {e}\n--- console tail:\n{tail}") from e


def daemon_view(ctl: QmpConnection) -> None:
    sdei = ctl.execute("query-sdei")
    for r in sdei["registered"]:
        info = {k: r[k] for k in ("event", "type", "state", "entry", "pending") if k in r}
        if isinstance(info.get("entry"), int):
            info["entry"] = f"{info['entry']:#x}"
        say("operator", "query-sdei registered: " + json.dumps(info))
    pes = [f"PE{p['index']}:{'masked' if p['masked'] else 'unmasked'}" for p in sdei["pes"]]
    say("operator", "query-sdei pes: " + " ".join(pes))


def run(args: argparse.Namespace) -> int:
    qemu = args.qemu or build_qemu()
    assets = fetch_assets()
    qemu_args = ["-kernel", assets["KERNEL"], "-initrd", assets["INITRD"], "-append", APPEND]
    say("demo", f"booting Debian's stock kernel with UEFI + ACPI (ras=on), sdeid attached, "
        f"HEST error source notified by SDEI event {EVENT}")
    t0 = time.monotonic()
    with VM(qemu_args, qemu=qemu, firmware="uefi", smp=2, memory="1G",
            sdeid_args=["--event", f"{EVENT}:shared:normal"],
            device_props=f"ghes-event={EVENT}", console_input=True,
            echo=sys.stdout if args.echo else None) as vm:
        expect(vm, r"SDEID-CMD\? 1$", BOOT_TIMEOUT, "guest boot")
        say("demo", f"guest up after {time.monotonic() - t0:.1f} s; its SDEI/HEST lines:")
        show("guest", guest_lines(vm.lines, r"ACPI: (SDEI|HEST) |sdei|HEST|GHES"))

        with vm.control(timeout=STEP_TIMEOUT) as ctl:
            say("operator", f"control socket {vm.control_path}")
            daemon_view(ctl)
            say("operator", f"sdei-inject-error {{\"event\": {EVENT}, \"address\": "
                f"{args.address:#x}}} (a memory error)")
            seen = len(vm.lines)
            ctl.execute("sdei-inject-error", {"event": EVENT, "address": args.address})
            expect(vm, r"\[Hardware Error\]:\s+physical_address:", STEP_TIMEOUT,
                   "the guest's hardware error report")
            time.sleep(0.5)                  # the lines that follow (error_type, ...)
            say("demo", "the guest's report:")
            show("guest", guest_lines(vm.lines[seen:], r"\[Hardware Error\]|Memory failure"))
            say("demo", "the daemon's view:")
            daemon_view(ctl)
            stats: dict[str, Any] = ctl.execute("query-stats")
            say("operator", "query-stats: " + json.dumps(
                {k: v for k, v in stats.items() if not k.startswith("call.")}))
            say("operator", "query-stats calls: " + json.dumps(
                {k[5:]: v for k, v in stats.items() if k.startswith("call.")}))
            for ev in ctl.execute("query-events"):
                say("operator", f"query-events: {ev['event']} {json.dumps(ev['data'])}")

        say("demo", "powering the guest off")
        vm.send_console(b"poweroff -f\n")
        rc = vm.wait(timeout=STEP_TIMEOUT)
    say("demo", f"QEMU exited with status {rc}; sdeid is gone too")
    return 0 if rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu", metavar="PATH",
                    help="qemu-system-aarch64 with our patches (default: scripts/build-qemu)")
    ap.add_argument("--echo", action="store_true", help="show the whole guest console")
    ap.add_argument("--address", type=lambda s: int(s, 0), default=ADDRESS, metavar="GPA",
                    help=f"guest physical address of the memory error (default {ADDRESS:#x})")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (DemoError, LaunchError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
