"""kdump in the stock Debian arm64 guest after an NMI panic delivered through SDEI.

The set-up of tests/test_linux_ghes.py's inject-nmi test (UEFI/ACPI, `ras=on`,
GHES source notified by the critical SDEI event 100, `--nmi-event 100
--nmi-ghes`), plus kdump: the guest boots with `crashkernel=256M` and loads a
crash kernel with Debian's kexec-tools (scripts/fetch-kdump-guest: the same
cloud kernel and a crash initramfs).  QEMU's `inject-nmi` reaches sdeid, which
writes a fatal GHES record and raises event 100; the kernel panics in its GHES
SDEI handler and, with a crash kernel loaded, kexecs into it instead of
stopping.  Checked:

- the reservation ("crashkernel reserved: ... (256 MB)") and the load
  (/sys/kernel/kexec_crash_loaded = 1);
- after inject-nmi the crash kernel boots and its /tests/vmcore.sh finds a
  non-empty /proc/vmcore holding an AArch64 ELF core file;
- the dead kernel's log, read back out of the vmcore with vmcore-dmesg, has
  the fatal GHES record, the panic from __sdei_handler, arm64's
  sdei_handler_abort ("still in SDEI critical event context, attempting to
  finish handler", an EVENT_COMPLETE_AND_RESUME to sdeid) and "Starting
  crashdump kernel...";
- sdeid took that COMPLETE_AND_RESUME from the PE it had dispatched to, the
  crash kernel reset SDEI and registered event 100 again, sdeid logged no
  warning or error and QEMU none; the crash kernel powers off (QEMU exits 0).

Twice: with an idle guest ("idle": the panicking CPU stops the other one
with an IPI, which parks itself with PSCI CPU_OFF), and with every vCPU
spinning with interrupts masked ("wedged", tests/linux/modules/sdeid_spin as
in test_linux_ghes.py): the other CPU never answers ("SMP: failed to stop
secondary CPUs 1", then machine_kexec's "Some CPUs may be stale" warning),
kdump goes on regardless and that vCPU keeps spinning in the dead kernel's
memory while the crash kernel (nr_cpus=1) runs.

The panic line never reaches the console of the panicking kernel itself: it
is printed from the SDEI handler, an NMI context, where printk only defers
console output, and kexec comes first (also with crash_kexec_post_notifiers).
So the timings printed are inject-nmi -> the crash kernel's first console
line -> the vmcore line (wall clock), and [Hardware Error] -> panic -> "Bye!"
from the dead kernel's own timestamps.

Integration test: it runs in CI and fails, never skips, when QEMU or the guest
assets cannot be had, unless SDEID_SKIP_INTEGRATION=1.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from sdeid.testing.vm import VM
from tests.test_linux_ghes import (
    BOOT_TIMEOUT,
    EVENT,
    PANIC,
    SDEI_ERROR,
    STEP_TIMEOUT,
    _check_firmware,
    _expect,
    _read,
    _run,
    wedge_every_cpu,
)
from tests.test_linux_guest import (
    assets,  # noqa: F401 - a fixture
    qemu,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

CRASHKERNEL = "256M"     # of the 1 GiB guest; the crash kernel runs in it
APPEND = f"console=ttyAMA0 acpi=force panic=-1 crashkernel={CRASHKERNEL} sdeid.test=console"
KDUMP_TIMEOUT = 300.0    # inject-nmi -> purgatory -> crash kernel boot -> vmcore -> power off
RESERVED = re.compile(r"crashkernel reserved: (0x[0-9a-f]+) - (0x[0-9a-f]+) \((\d+) MB\)")
BOOTING = re.compile(r"Booting Linux on physical CPU (0x[0-9a-f]+)")
VMCORE_SIZE = re.compile(r"^SDEID-VMCORE-SIZE (-?\d+)$")
VMCORE_ELF = "SDEID-VMCORE-ELF ok class=64 type=core machine=aarch64"
DMESG = "SDEID-VMCORE-DMESG "
STAMP = re.compile(r"^\[\s*(\d+\.\d+)\] ")
ABORT = "sdei: still in SDEI critical event context, attempting to finish handler."
DAEMON_TROUBLE = re.compile(r"^sdeid: (WARNING|ERROR|CRITICAL) ")
QEMU_TROUBLE = re.compile(r"(?i)error|warn|assert|abort|GHES|OSPM|CPER")


def kdump_initrd(tmp_path: Path, *, spin: bool) -> str:
    """The test initramfs (console loop) plus scripts/fetch-kdump-guest's
    overlay (kexec, its libraries, /kdump/{vmlinuz,initrd.gz},
    /tests/kdump-load.sh) and, with spin, tests/linux/modules/sdeid_spin at
    /lib/sdeid/ (scripts/build-guest-module)."""
    out = _run([str(ROOT / "scripts/fetch-kdump-guest")])
    overlay = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)["OVERLAY"]
    extras = ["--extra", str(ROOT / "tests/linux/overlay"), "--extra", overlay]
    if spin:
        ko = _run([str(ROOT / "scripts/build-guest-module"), "sdeid_spin"]).splitlines()[-1]
        extra = tmp_path / "spin-overlay"
        (extra / "lib/sdeid").mkdir(parents=True)
        shutil.copyfile(ko, extra / "lib/sdeid/sdeid_spin.ko")
        extras += ["--extra", str(extra)]
    out = _run([str(ROOT / "scripts/fetch-guest-assets"), *extras])
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return found["INITRD"]


def _drain(vm: VM) -> None:
    """Consume the console lines that came so far."""
    try:
        while vm.readline(timeout=0.2) is not None:
            pass
    except TimeoutError:
        pass


def _stamp(line: str) -> float | None:
    m = STAMP.match(line)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("guest", ["idle", "wedged"])
def test_kdump_after_an_nmi_panic_through_sdei(
        qemu: str, assets: dict[str, str], tmp_path: Path, guest: str) -> None:  # noqa: F811
    """Issue 11 (kdump): inject-nmi -> fatal GHES record + SDEI event ->
    panic in the GHES SDEI handler -> sdei_handler_abort -> crash kernel ->
    /proc/vmcore, with Debian's own kernel and kexec-tools."""
    _check_firmware(assets)
    wedged = guest == "wedged"
    initrd = kdump_initrd(tmp_path, spin=wedged)
    args = ["-kernel", assets["KERNEL"], "-initrd", initrd, "-append", APPEND]
    with VM(args, qemu=qemu, firmware="uefi", smp=2, memory="1G",
            sdeid_args=["--event", f"{EVENT}:shared:critical", "--nmi-event", str(EVENT),
                            "--nmi-ghes", "--log-level", "debug"],
            device_props=f"ghes-event={EVENT}", keep_dir=tmp_path / "run",
            console_input=True,
            echo=sys.stdout if os.environ.get("SDEID_TEST_ECHO") else None) as vm:
        _expect(vm, r"SDEID-CMD\? 1$", BOOT_TIMEOUT, "boot")
        reserved = [m for ln in vm.lines if (m := RESERVED.search(ln))]
        assert reserved, "no 'crashkernel reserved' line:\n" + "\n".join(vm.lines[:80])
        assert reserved[0].group(3) == CRASHKERNEL.rstrip("M"), reserved[0].group(0)

        vm.send_console(b"sh /tests/kdump-load.sh\n")
        _expect(vm, r"^SDEID-KDUMP-(LOADED|FAILED)", STEP_TIMEOUT, "loading the crash kernel")
        _expect(vm, r"SDEID-CMD-DONE 1 rc=\d+$", STEP_TIMEOUT, "loading the crash kernel")
        loaded = [ln for ln in vm.lines if ln.startswith("SDEID-KDUMP-")]
        assert loaded == ["SDEID-KDUMP-LOADED"], "\n".join(vm.lines[-20:])
        _expect(vm, r"SDEID-CMD\? 2$", STEP_TIMEOUT, "the console loop")
        if wedged:
            wedge_every_cpu(vm)
        _drain(vm)
        before = len(vm.lines)
        first_kernel = list(vm.lines)
        t_nmi = time.monotonic()
        with vm.qemu_monitor() as mon:
            mon.execute("inject-nmi")
        # Every console line from here on, with its arrival time, to EOF
        # (the crash kernel powers off, QEMU exits).
        stamped: list[tuple[float, str]] = []
        try:
            for line in vm.iter_lines(KDUMP_TIMEOUT):
                stamped.append((time.monotonic() - t_nmi, line))
        except TimeoutError:
            pytest.fail(f"kdump: the VM still runs {KDUMP_TIMEOUT:g} s after inject-nmi\n"
                        "--- console tail:\n" + "\n".join(vm.lines[-60:])
                        + "\n--- qemu.log:\n" + _read(vm.qemu_log)
                        + "\n--- sdeid.log:\n" + _read(vm.daemon_log), pytrace=False)
        status = vm.wait(timeout=STEP_TIMEOUT)
        daemon_log = vm.daemon_log.read_text(errors="replace")
        qemu_log = vm.qemu_log.read_text(errors="replace")
    after = [ln for _, ln in stamped]
    context = ("--- console after inject-nmi:\n" + "\n".join(vm.lines[before:][-80:])
               + "\n--- sdeid.log:\n" + daemon_log[-3000:])

    def when(pattern: str | re.Pattern[str]) -> tuple[float, str]:
        rx = re.compile(pattern)
        for t, ln in stamped:
            if rx.search(ln):
                return t, ln
        pytest.fail(f"no console line matching {rx.pattern!r} after inject-nmi\n" + context,
                    pytrace=False)

    # The crash kernel booted (its earlycon prints the banner at once) ...
    t_boot, banner = when(BOOTING)
    t_cmdline, cmdline = when(r"Kernel command line: .*sdeid\.test=vmcore")
    assert "reset_devices" in cmdline, cmdline
    # ... and found the dead kernel's memory as an ELF core file.
    t_vmcore, size_line = when(VMCORE_SIZE)
    size = int(VMCORE_SIZE.match(size_line).group(1))  # type: ignore[union-attr]
    assert VMCORE_ELF in after, context
    # The vmcore spans the guest's RAM less the crash kernel's reservation,
    # plus the ELF headers and kexec-tools' second PT_LOAD for the kernel
    # image at its virtual address (~23 MiB): 791 MiB with crashkernel=256M.
    assert 512 << 20 < size <= (1 << 30) + (64 << 20), size_line
    assert status == 0, f"QEMU exited with {status}, not from the crash kernel's poweroff"

    # The dead kernel's log, from the vmcore: panic from the SDEI handler,
    # the handler completed (sdei_handler_abort), then kexec.
    dead = [ln[len(DMESG):] for ln in after if ln.startswith(DMESG)]
    assert any("event severity: fatal" in ln for ln in dead), context
    panic_at = next((i for i, ln in enumerate(dead) if re.search(PANIC, ln)), None)
    assert panic_at is not None, f"no {PANIC!r} in the vmcore's log\n" + context
    trace = dead[panic_at:]
    assert any("__sdei_handler" in ln for ln in trace), trace[:40]
    assert any(ABORT in ln for ln in trace), trace
    assert any("Starting crashdump kernel..." in ln for ln in trace), trace
    not_stopped = [ln for ln in trace if "failed to stop secondary CPUs" in ln
                   or "Some CPUs may be stale" in ln]
    if wedged:
        # the handler preempted the spinning CPU, and the other one spins on
        assert any("sdeid_spin_forever" in ln for ln in trace), trace[:40]
    else:
        assert not not_stopped, not_stopped
    live_panic = [ln for ln in after if re.search(PANIC, ln) and not ln.startswith(DMESG)]

    # sdeid: the NMI became the fatal record and event 100; the panicking PE
    # left the handler with COMPLETE_AND_RESUME; the crash kernel reset SDEI
    # and registered event 100 again (GHES); nothing went wrong on the way.
    assert f"fatal error record, event {EVENT} triggered" in daemon_log, daemon_log[-3000:]
    trace_lines = [ln for ln in daemon_log.splitlines() if "sdeid.trace:" in ln]
    dispatch = next((i for i, ln in enumerate(trace_lines)
                     if "DISPATCH" in ln and f"event={EVENT}" in ln), None)
    assert dispatch is not None, "\n".join(trace_lines[-40:])
    pe = re.search(r"pe=(\d+)", trace_lines[dispatch]).group(1)  # type: ignore[union-attr]
    resumed = next((i for i, ln in enumerate(trace_lines[dispatch:], dispatch)
                    if f"CALL pe={pe} EVENT_COMPLETE_AND_RESUME" in ln), None)
    assert resumed is not None, "\n".join(trace_lines[dispatch:dispatch + 40])
    later = trace_lines[resumed:]
    for call in ("SHARED_RESET ret=0", "EVENT_REGISTER ret=0", "EVENT_ENABLE ret=0"):
        assert any(call in ln for ln in later), (call, later)
    other = [ln for ln in trace_lines[dispatch:] if re.search(rf"pe=(?!{pe}\b)\d+", ln)]
    trouble = [ln for ln in daemon_log.splitlines() if DAEMON_TROUBLE.match(ln)]
    bad_qemu = [ln for ln in qemu_log.splitlines() if QEMU_TROUBLE.search(ln)]
    bad_console = [ln for ln in first_kernel + after if SDEI_ERROR.search(ln)]

    marks = [_stamp(ln) for ln in (
        next(ln for ln in dead if "[Hardware Error]" in ln), trace[0],
        next(ln for ln in trace if ABORT in ln),
        next((ln for ln in trace if ln.rstrip().endswith("Bye!")), trace[-1]))]
    print(f"\n{guest} guest, crashkernel={CRASHKERNEL}: {reserved[0].group(0)}")
    print(f"inject-nmi -> crash kernel's first line {t_boot:.2f} s ({banner.strip()}), "
          f"-> its command line {t_cmdline:.2f} s, -> vmcore line {t_vmcore:.2f} s")
    print("panic line on the live console: "
          + (live_panic[0] if live_panic else "none (printed from NMI context; kexec first)"))
    if all(m is not None for m in marks):
        error, panic, abort, bye = (m or 0.0 for m in marks)
        print(f"the dead kernel's clock: [Hardware Error] -> panic {(panic - error) * 1e3:.1f} ms"
              f" -> sdei_handler_abort {(abort - panic) * 1e3:.1f} ms -> Bye! "
              f"{(bye - panic) * 1e3:.1f} ms after the panic")
    print(f"vmcore: {size} bytes ({size / (1 << 20):.1f} MiB), ELF core for AArch64; "
          f"the dead kernel's log as read from it:")
    print("\n".join(dead[:60]))
    print("the other CPU: " + ("; ".join(ln.strip() for ln in not_stopped) or "stopped")
          + "; sdeid saw from it: " + ("; ".join(ln.split("trace: ")[1] for ln in other)
                                       or "nothing"))
    print(f"sdeid: NMI dispatched on PE {pe}, completed with COMPLETE_AND_RESUME; "
          f"warnings/errors: {trouble or 'none'}; QEMU: {bad_qemu or 'nothing'}")
    assert not trouble, trouble
    assert not bad_qemu, bad_qemu
    assert not bad_console, f"SDEI errors on the console: {bad_console}"
