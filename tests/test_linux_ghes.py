"""A hardware error delivered to a stock Linux guest through SDEI, end to end.

Debian's cloud arm64 kernel boots with UEFI (AAVMF) and ACPI on the patched
QEMU with `-M virt,ras=on` and `-device smccc-user,...,ghes-event=100`, so HEST
has a GHESv2 error source notified by SDEI event 100 (notification type 11),
a static shared event of the daemon (`--event 100:shared:normal`).  Checked:

- the guest finds the SDEI table and detects SDEI, and its GHES driver
  registers and enables event 100 at boot (query-sdei);
- `sdei-inject-error {"event": 100, "address": GPA}` on the control socket
  makes the daemon write a CPER memory-error record into the source's error
  status block with QEMU's QMP `inject-ghes-v2-error`, then trigger the event; the
  guest's GHES SDEI handler logs `[Hardware Error]` lines naming the memory
  error at that address;
- the daemon counted the dispatch and its completion, and the guest printed
  no SDEI error;
- after sdeid is killed and restarted from its --state-file, QEMU reconnects,
  the registration is still there and a second memory error is reported;
- a burst of 31 injections at distinct addresses, sent at once: each is
  either delivered (the guest's memory-failure handling names its page) or
  refused to the operator with a reason, never lost: delivered + refused =
  31 in the replies and in query-stats, and the guest saw every delivered one
  (GHESv2 read-ack: QEMU never overwrites a record the guest has not
  acknowledged, the daemon queues behind it).

The guest runs tests/linux/overlay/tests/console.sh (see test_linux_guest.py),
driven through QEMU's stdin.  Integration test: it runs in CI and fails, never
skips, when QEMU or the guest assets cannot be had, unless
SDEID_SKIP_INTEGRATION=1.  Every step has a timeout and the VM and the daemon
are always torn down (sdeid.testing.vm.VM).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdeid import cper
from sdeid.launcher import LaunchError
from sdeid.testing.vm import VM
from tests.test_linux_guest import (
    assets,  # noqa: F401 - a fixture
    qemu,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

EVENT = 100
ADDRESS = 0x40000000 + 64 * 1024 * 1024      # guest RAM starts at 1 GiB on virt
ADDRESS2 = ADDRESS + 2 * 1024 * 1024
APPEND = "console=ttyAMA0 acpi=force panic=-1 sdeid.test=console"
BOOT_TIMEOUT = 180.0     # UEFI + kernel under TCG, up to the command prompt
STEP_TIMEOUT = 60.0
DETECTED = "sdei: SDEIv1.1 (0x53444549) detected in firmware."
SDEI_ERROR = re.compile(r"sdei: .*([Ff]ailed|disabling)|sdei_.*fail|GHES: .*SDE")


def _check_firmware(found: dict[str, str]) -> None:
    for key in ("AAVMF_CODE", "AAVMF_VARS"):
        if key not in found or not Path(found[key]).is_file():
            pytest.fail(f"scripts/fetch-guest-assets gave no {key}: {found}", pytrace=False)


def _expect(vm: VM, pattern: str, timeout: float, what: str) -> re.Match[str]:
    try:
        return vm.expect(pattern, timeout=timeout)
    except (TimeoutError, LaunchError) as e:
        pytest.fail(f"{what}: no console line matching {pattern!r} ({e})\n"
                    "--- console tail:\n" + "\n".join(vm.lines[-40:])
                    + "\n--- qemu.log:\n" + _read(vm.qemu_log)
                    + "\n--- sdeid.log:\n" + _read(vm.daemon_log), pytrace=False)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


BURST = 31
BURST_BASE = ADDRESS + 8 * 1024 * 1024
BURST_STRIDE = 2 * 1024 * 1024
MEMORY_FAILURE = re.compile(r"Memory failure: (0x[0-9a-f]+)")


def burst(vm: VM) -> None:
    """31 injections at once; each delivered to the guest or refused, none lost."""
    addresses = [BURST_BASE + i * BURST_STRIDE for i in range(BURST)]
    pfns = {a >> 12 for a in addresses}
    with vm.control(timeout=STEP_TIMEOUT) as ctl:
        before = ctl.execute("query-stats")
    seen_before = len(vm.lines)
    t0 = time.monotonic()
    with vm.control(timeout=STEP_TIMEOUT) as ctl:
        replies = ctl.execute_all([("sdei-inject-error", {"event": EVENT, "address": a})
                                   for a in addresses])
    took = time.monotonic() - t0
    delivered = [a for a, r in zip(addresses, replies, strict=True) if "return" in r]
    refused = [r["error"]["desc"] for r in replies if "error" in r]
    assert len(delivered) + len(refused) == BURST, replies
    with vm.control(timeout=STEP_TIMEOUT) as ctl:
        after = ctl.execute("query-stats")
    for key, n in (("error-records-delivered", len(delivered)),
                   ("error-records-refused", len(refused))):
        assert after[key] - before.get(key, 0) == n, (key, before, after)
    assert after["error-records-queued"] == 0, after
    # The guest handles each delivered record: its memory-failure code names
    # the page (recovered, ignored or outside its control: one line each).
    want = {a >> 12 for a in delivered}
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        named = {int(m.group(1), 16) for ln in vm.lines[seen_before:]
                 if (m := MEMORY_FAILURE.search(ln))} & pfns
        if named >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"\nburst of {BURST} injections at once: {len(delivered)} delivered, "
          f"{len(refused)} refused, in {took:.1f} s; the guest named {len(named)} pages")
    for why in sorted(set(refused)):
        print(f"  refused: {why}")
    assert named == want, f"delivered but not seen by the guest: {sorted(want - named)}"


def record_nobody_signalled(vm: VM) -> None:
    """A record written with QEMU's own inject-ghes-v2-error raises no
    event, so the guest never reads it and the source stays busy.  sdeid's
    next injection raises the event for it first: the guest reports both."""
    foreign, ours = ADDRESS + 4 * 1024 * 1024, ADDRESS + 6 * 1024 * 1024
    with vm.qemu_monitor(timeout=STEP_TIMEOUT) as mon:
        mon.execute("inject-ghes-v2-error",
                    cper.qmp_argument(cper.memory_error(foreign, cper.SEV_RECOVERABLE)))
    with vm.control(timeout=STEP_TIMEOUT) as ctl:
        before = ctl.execute("query-stats")
        ctl.execute("sdei-inject-error", {"event": EVENT, "address": ours})
        after = ctl.execute("query-stats")
    # GHES rate-limits its full reports; memory_failure names every page.
    # (The console queue still holds the burst's lines: skip those.)
    pages = [foreign >> 12, ours >> 12]
    reported: list[int] = []
    while len(reported) < 2:
        m = _expect(vm, MEMORY_FAILURE.pattern, STEP_TIMEOUT, "the unsignalled record and ours")
        if int(m.group(1), 16) in pages:
            reported.append(int(m.group(1), 16))
    assert reported == pages
    for key, grew in (("error-records-signalled-for-others", 1),
                      ("error-records-delivered", 1), ("error-records-refused", 0)):
        assert after[key] == before[key] + grew, (key, before, after)


def test_memory_error_is_logged_by_the_guest(qemu: str, assets: dict[str, str],  # noqa: F811
                                             tmp_path: Path) -> None:
    _check_firmware(assets)    # VM(firmware="uefi") takes the same pair (find_aavmf)
    args = ["-kernel", assets["KERNEL"], "-initrd", assets["INITRD"], "-append", APPEND]
    with VM(args, qemu=qemu, firmware="uefi", smp=2, memory="1G",
            sdeid_args=["--event", f"{EVENT}:shared:normal",
                            "--state-file", str(tmp_path / "sdeid.state")],
            device_props=f"ghes-event={EVENT}", keep_dir=tmp_path / "run",
            console_input=True,
            echo=sys.stdout if os.environ.get("SDEID_TEST_ECHO") else None) as vm:
        _expect(vm, r"SDEID-CMD\? 1$", BOOT_TIMEOUT, "boot")
        console = list(vm.lines)
        assert any(re.search(r"ACPI: SDEI 0x", ln) for ln in console), "no ACPI SDEI table"
        assert any(re.search(r"ACPI: HEST 0x", ln) for ln in console), "no ACPI HEST table"
        assert any(DETECTED in ln for ln in console), "SDEI not detected"

        with vm.control(timeout=STEP_TIMEOUT) as ctl:
            sdei = ctl.execute("query-sdei")
            regs = [r for r in sdei["registered"] if r["event"] == EVENT]
            assert len(regs) == 1, f"event {EVENT} not registered by GHES: {sdei}"
            assert regs[0]["type"] == "shared" and regs[0]["state"] == "enabled", regs
            before = ctl.execute("query-stats")

            ctl.execute("sdei-inject-error", {"event": EVENT, "address": ADDRESS})
            _expect(vm, r"\[Hardware Error\]: Hardware error from APEI Generic Hardware "
                    r"Error Source: \d+$", STEP_TIMEOUT, "GHES report")
            _expect(vm, r"\[Hardware Error\]:\s+section_type: memory error$",
                    STEP_TIMEOUT, "memory error section")
            m = _expect(vm, r"\[Hardware Error\]:\s+physical_address: (0x[0-9a-f]+)$",
                        STEP_TIMEOUT, "physical address")
            assert int(m.group(1), 16) == ADDRESS

            deadline = time.monotonic() + STEP_TIMEOUT
            while True:
                stats = ctl.execute("query-stats")
                done = stats.get("completions", 0) > before.get("completions", 0)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert stats.get("dispatches", 0) == before.get("dispatches", 0) + 1, stats
            assert stats.get("completions", 0) == before.get("completions", 0) + 1, stats
            observed = ctl.execute("query-events")
            records = [e["data"] for e in observed if e["event"] == "SDEI_ERROR_RECORD"]
            assert records == [{"event": EVENT, "address": ADDRESS, "severity": 0}], observed
            triggers = [e["data"] for e in observed if e["event"] == "SDEI_TRIGGER"]
            assert [t["event"] for t in triggers] == [EVENT] and triggers[0]["status"] == 0
            # after completion the event is enabled again and nothing is left pending
            regs = [r for r in ctl.execute("query-sdei")["registered"] if r["event"] == EVENT]
            assert regs and regs[0]["state"] == "enabled" and not regs[0]["pending"], regs

        # sdeid crashes and a supervisor restarts it from its --state-file:
        # QEMU reconnects by itself and the GHES registration is still there,
        # so a second memory error reaches the guest the same way.
        vm.restart_daemon()
        vm.wait_connected(STEP_TIMEOUT)
        with vm.control(timeout=STEP_TIMEOUT) as ctl:
            regs = [r for r in ctl.execute("query-sdei")["registered"] if r["event"] == EVENT]
            assert regs and regs[0]["state"] == "enabled", regs
            ctl.execute("sdei-inject-error", {"event": EVENT, "address": ADDRESS2})
            m = _expect(vm, r"\[Hardware Error\]:\s+physical_address: (0x[0-9a-f]+)$",
                        STEP_TIMEOUT, "physical address after the restart")
            assert int(m.group(1), 16) == ADDRESS2

        # QEMU wrote both records without a complaint about the error source.
        # (The burst below makes it say "OSPM does not acknowledge..." while
        # the daemon waits for each read-ack: that is the flow control.)
        qemu_log = _read(tmp_path / "run" / "qemu.log")
        assert not re.search(r"error source|GHES|Generic Error Status|OSPM|CPER",
                             qemu_log), qemu_log
        burst(vm)
        record_nobody_signalled(vm)

        vm.send_console(b"poweroff -f\n")
        assert vm.wait(timeout=STEP_TIMEOUT) == 0
        console = list(vm.lines)

    hw = [ln for ln in console if "[Hardware Error]" in ln]
    print("\n".join(hw))
    bad = [ln for ln in console if SDEI_ERROR.search(ln)]
    assert not bad, f"SDEI errors on the console: {bad}"


SPIN = "sdeid_spin: CPU "
AGDI_EVENT = 300
DUMP = re.compile(r"^TABLE (\w+) ((?:[0-9a-f]{2})*)$")


def check_agdi(vm: VM) -> None:
    """Issue 11 (4): the AGDI table (`sdeid run --agdi-event N`, through
    -acpitable) as the guest reads it from /sys/firmware/acpi/tables, and
    the SDEI table: well formed (length, checksum), naming event N,
    signalled by SDEI.  Debian's kernels have no CONFIG_ACPI_AGDI, so
    nothing registers the event; a kernel with it panics on it."""
    seen = len(vm.lines)
    vm.send_console(b"for t in AGDI SDEI; do echo TABLE $t $(od -An -v -tx1 "
                    b"/sys/firmware/acpi/tables/$t | tr -d ' \\n'); done\n")
    _expect(vm, r"^TABLE SDEI ", STEP_TIMEOUT, "the ACPI tables")
    tables = {m.group(1): bytes.fromhex(m.group(2)) for ln in vm.lines[seen:]
              if (m := DUMP.match(ln))}
    for sig, size in (("AGDI", 48), ("SDEI", 36)):
        raw = tables.get(sig, b"")
        assert len(raw) == size and raw[:4] == sig.encode(), (sig, raw.hex())
        assert int.from_bytes(raw[4:8], "little") == size, raw.hex()
        assert sum(raw) % 256 == 0, f"{sig}: bad checksum {raw.hex()}"
    flags, event, gsiv = struct.unpack_from("<B3xII", tables["AGDI"], 36)
    assert (flags, event, gsiv) == (0, AGDI_EVENT, 0), tables["AGDI"].hex()
    print(f"\nAGDI as the guest reads it: {tables['AGDI'].hex()}")
PANIC = r"Kernel panic - not syncing: GHES: Fatal hardware error"


def spin_initrd(tmp_path: Path) -> str:
    """The test initramfs plus tests/linux/modules/sdeid_spin, cross-built
    for the guest's kernel (scripts/build-guest-module), at /lib/sdeid/."""
    ko = _run([str(ROOT / "scripts/build-guest-module"), "sdeid_spin"]).splitlines()[-1]
    extra = tmp_path / "spin-overlay"
    (extra / "lib/sdeid").mkdir(parents=True)
    shutil.copyfile(ko, extra / "lib/sdeid/sdeid_spin.ko")
    out = _run([str(ROOT / "scripts/fetch-guest-assets"), "--extra",
                str(ROOT / "tests/linux/overlay"), "--extra", str(extra)])
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return found["INITRD"]


def wedge_every_cpu(vm: VM, cpus: int = 2) -> None:
    """Load sdeid_spin (spin_initrd): every vCPU spins with interrupts
    masked, and says so on the console first."""
    vm.send_console(b"insmod /lib/sdeid/sdeid_spin.ko &\n")
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        wedged = {ln.split("CPU ")[1].split()[0] for ln in vm.lines if SPIN in ln}
        if len(wedged) == cpus or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert wedged == {str(i) for i in range(cpus)}, "\n".join(vm.lines[-30:])
    time.sleep(1)       # nothing but an SDEI event reaches these CPUs now


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=1800)
    if out.returncode != 0:
        pytest.fail(f"{argv[0]} failed:\n{out.stderr[-3000:]}", pytrace=False)
    return out.stdout


def test_inject_nmi_panics_a_stock_guest_through_a_fatal_ghes_record(
        qemu: str, assets: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Issue 11, mechanism (a): every vCPU of a stock Debian guest spins with
    interrupts masked (tests/linux/modules/sdeid_spin); QEMU's `inject-nmi`
    reaches sdeid (the device's NMI interface), which writes a *fatal* CPER
    record into the SDEI-notified GHES source (`--nmi-ghes`, through QEMU's
    inject-ghes-v2-error) and raises the source's critical event; the
    kernel's GHES SDEI handler preempts the spinning CPU and panics."""
    _check_firmware(assets)
    args = ["-kernel", assets["KERNEL"], "-initrd", spin_initrd(tmp_path), "-append", APPEND]
    with VM(args, qemu=qemu, firmware="uefi", smp=2, memory="1G",
            sdeid_args=["--event", f"{EVENT}:shared:critical", "--nmi-event", str(EVENT),
                            "--nmi-ghes"],
            device_props=f"ghes-event={EVENT}", keep_dir=tmp_path / "run",
            console_input=True, agdi_event=AGDI_EVENT,
            echo=sys.stdout if os.environ.get("SDEID_TEST_ECHO") else None) as vm:
        _expect(vm, r"SDEID-CMD\? 1$", BOOT_TIMEOUT, "boot")
        check_agdi(vm)
        wedge_every_cpu(vm)
        t0 = time.monotonic()
        with vm.qemu_monitor() as mon:
            mon.execute("inject-nmi")
        _expect(vm, PANIC, STEP_TIMEOUT, "the guest's panic")
        took = time.monotonic() - t0
        vm.wait(timeout=STEP_TIMEOUT)      # panic=-1 -no-reboot: QEMU exits
        console = list(vm.lines)
        events = vm.daemon_log.read_text(errors="replace")
    hw = [ln for ln in console if "[Hardware Error]" in ln or "panic" in ln.lower()]
    print(f"\ninject-nmi -> panic line in {took * 1000:.0f} ms:\n" + "\n".join(hw[-12:]))
    assert any("event severity: fatal" in ln for ln in console), hw
    # The handler ran on a CPU that was spinning with interrupts masked.
    trace = console[next(i for i, ln in enumerate(console) if re.search(PANIC, ln)):]
    assert any("__sdei_handler" in ln for ln in trace), trace[:30]
    # ... and the backtrace goes on into the code it interrupted.
    assert any("sdeid_spin_forever" in ln for ln in trace), trace[:40]
    print("\n".join(trace[:40]))
    assert "fatal error record, event 100 triggered" in events, events[-2000:]


def watchdog_guest(tmp_path: Path) -> tuple[str, str]:
    """Debian's generic arm64 kernel (the cloud one has no driver for the
    one watchdog QEMU's virt can have, the PCI i6300esb) and an initramfs
    with the test overlay and its i6300esb module (scripts/fetch-watchdog-guest)."""
    out = _run([str(ROOT / "scripts/fetch-watchdog-guest")])
    wdt = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    out = _run([str(ROOT / "scripts/fetch-guest-assets"), "--extra",
                str(ROOT / "tests/linux/overlay"), "--extra", wdt["OVERLAY"]])
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return wdt["KERNEL"], found["INITRD"]


def test_a_starved_watchdog_panics_the_guest_through_inject_nmi(
        qemu: str, assets: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Issue 11 (3): the guest arms the i6300esb with Linux's own driver
    (heartbeat 1 s), feeds it once and stops; QEMU's `-action
    watchdog=inject-nmi` reaches sdeid through the device's NMI interface
    and the guest panics from its GHES SDEI handler, as with inject-nmi."""
    _check_firmware(assets)
    kernel, initrd = watchdog_guest(tmp_path)
    args = ["-kernel", kernel, "-initrd", initrd, "-append", APPEND,
            "-device", "i6300esb", "-action", "watchdog=inject-nmi"]
    with VM(args, qemu=qemu, firmware="uefi", smp=2, memory="1G",
            sdeid_args=["--event", f"{EVENT}:shared:critical", "--nmi-event", str(EVENT),
                            "--nmi-ghes"],
            device_props=f"ghes-event={EVENT}", keep_dir=tmp_path / "run",
            console_input=True,
            echo=sys.stdout if os.environ.get("SDEID_TEST_ECHO") else None) as vm:
        _expect(vm, r"SDEID-CMD\? 1$", BOOT_TIMEOUT, "boot")
        vm.send_console(b"insmod /lib/sdeid-wdt/i6300esb.ko heartbeat=1 && "
                        b"exec 3>/dev/watchdog && echo 1 >&3 && echo FED-ONCE\n")
        _expect(vm, r"^FED-ONCE$", STEP_TIMEOUT, "the watchdog armed and fed once")
        t0 = time.monotonic()
        _expect(vm, PANIC, STEP_TIMEOUT, "the guest's panic")
        took = time.monotonic() - t0
        vm.wait(timeout=STEP_TIMEOUT)
        console = list(vm.lines)
        events = vm.daemon_log.read_text(errors="replace")
    trace = console[next(i for i, ln in enumerate(console) if re.search(PANIC, ln)):]
    print(f"\nwatchdog fed once, then starved -> panic line in {took * 1000:.0f} ms:\n"
          + "\n".join(ln for ln in console if "i6300" in ln.lower() or "watchdog" in ln)
          + "\n" + "\n".join(trace[:14]))
    assert any("__sdei_handler" in ln for ln in trace), trace[:30]
    assert "fatal error record, event 100 triggered" in events, events[-2000:]
