"""A stock Linux guest under the patched QEMU with sdeid attached.

Debian trixie's cloud arm64 kernel (pinned by scripts/fetch-guest-assets)
boots with a busybox initramfs on the virt machine's device tree; QEMU's
smccc-user device (qemu-patches/v2) forwards the guest's SDEI calls to a real
`sdeid --protocol 2`.  Checked:

- the kernel probes SDEI cleanly on 2 and 4 vCPUs, over HVC (EL1 guest) and
  over SMC (`virtualization=on`: the kernel runs at EL2 with VHE), and the
  daemon then shows every PE unmasked;
- CPU hotplug inside the guest masks/unmasks the PE and is reported as
  PE_POWER;
- `reboot -f` inside the guest: the kernel's reboot notifier resets the
  dispatcher (PE_MASK, PRIVATE_RESET on every PE, SHARED_RESET), QEMU sends
  RESET, and the second boot probes SDEI again cleanly.

The guest runs tests/linux/overlay/tests/console.sh, a command loop the test
drives by writing lines to QEMU's stdin (`-serial stdio`).  The daemon runs
with `--log-level debug`, whose `sdeid.trace` lines name every SDEI call it
answers, every reset and every PE power change, in order.  Boot times
(QEMU start -> the initramfs's first line) are printed, not asserted: see
them with `pytest -s`.

Integration tests: they run in CI and fail, never skip, when QEMU or the guest
assets cannot be had, unless SDEID_SKIP_INTEGRATION=1.  Every QEMU runs
under a hard timeout, so a hung kernel fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from sdeid.launcher import SDEI_FIDS

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "tests" / "linux" / "overlay"

pytestmark = pytest.mark.integration

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

APPEND = "console=ttyAMA0 panic=-1 earlycon=pl011,mmio32,0x9000000 sdeid.test=console"
HARD_TIMEOUT = 150.0     # seconds one QEMU may live, however many boots it does
STEP_TIMEOUT = 60.0      # one boot or one guest command
INIT_MARKER = "SDEID-GUEST-INIT-OK"
DETECTED = "sdei: SDEIv1.1 (0x53444549) detected in firmware."
SDEI_ERROR = re.compile(r"Failed|failed to|disabling SDEI")
PE_POWER_OFF, PE_POWER_ON = 0, 1


def _fail(msg: str) -> None:
    pytest.fail(f"{msg}; set SDEID_SKIP_INTEGRATION=1 to skip integration tests on purpose",
                pytrace=False)


def _build_qemu() -> str:
    from sdeid.launcher import LaunchError
    from sdeid.testing.vm import find_qemu
    try:
        path = find_qemu()
    except LaunchError as e:
        _fail(f"scripts/build-qemu: {e}")
    if not (Path(path).is_absolute() and os.access(path, os.X_OK)):
        _fail(f"scripts/build-qemu printed {path!r}, not an executable")
    return path


@pytest.fixture(scope="module")
def qemu() -> str:
    """The patched QEMU (qemu-patches/v2, built by scripts/build-qemu)."""
    return _build_qemu()


@pytest.fixture(scope="module")
def assets() -> dict[str, str]:
    try:
        out = subprocess.run([str(ROOT / "scripts/fetch-guest-assets"), "--extra", str(OVERLAY)],
                             capture_output=True, stdin=subprocess.DEVNULL, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        _fail(f"scripts/fetch-guest-assets: {e}")
    if out.returncode != 0:
        _fail("scripts/fetch-guest-assets failed:\n"
              + out.stderr.decode(errors="replace")[-3000:])
    found = dict(line.split("=", 1) for line in out.stdout.decode().splitlines() if "=" in line)
    for key in ("KERNEL", "INITRD"):
        if key not in found or not Path(found[key]).is_file():
            _fail(f"scripts/fetch-guest-assets gave no {key}: {out.stdout.decode()!r}")
    return found


# ------------------------------------------------------------------ harness

def control(path: Path, *commands: str) -> list[Any]:
    """Run commands on sdeid's QMP-style control socket, with qemu.qmp."""
    from qemu.qmp import QMPClient

    async def go() -> list[Any]:
        client = QMPClient("test-linux-guest")
        await asyncio.wait_for(client.connect(str(path)), 10)
        try:
            return [await asyncio.wait_for(client.execute(c), 10) for c in commands]
        finally:
            await client.disconnect()

    return asyncio.run(go())


class Vm:
    """sdeid (optional) and QEMU booting the Linux guest; the guest's console
    is read line by line and written to through QEMU's stdin.  close() ends
    both processes whatever state they are in."""

    def __init__(self, qemu: str, assets: dict[str, str], workdir: Path, *, smp: int = 2,
                 conduit: str = "hvc", sdei: bool = True, reboot: bool = False,
                 extra_args: list[str] | None = None) -> None:
        self.qemu, self.assets, self.dir = qemu, assets, workdir
        self.extra_args = list(extra_args or [])   # appended to QEMU's command line
        self.smp, self.conduit, self.sdei, self.reboot = smp, conduit, sdei, reboot
        self.sock = workdir / "sdei.sock"
        self.ctl = workdir / "control.sock"
        self.daemon_log_path = workdir / "sdeid.log"
        self.console_path = workdir / "console.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[float, str]] = []   # (seconds since QEMU start, line)
        self.queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.reader: threading.Thread | None = None
        self.watchdog: threading.Timer | None = None
        self.timed_out = False
        self.t0 = 0.0
        self.daemon_rc: int | None = None
        self.waiting: int | None = None     # the command the guest asked for, not yet sent
        self.qemu_args: list[str] = []

    # ---- start / stop

    def start(self) -> Self:
        args = [self.qemu, "-M", "virt,gic-version=3"
                + (",virtualization=on" if self.conduit == "smc" else ""),
                "-cpu", "max", "-smp", str(self.smp), "-m", "1G", "-nodefaults",
                "-display", "none", "-serial", "stdio",
                "-kernel", self.assets["KERNEL"], "-initrd", self.assets["INITRD"],
                "-append", APPEND]
        if not self.reboot:
            args.append("-no-reboot")
        if self.sdei:
            self._start_daemon()
            args += ["-chardev", f"socket,id=sdei0,path={self.sock},reconnect-ms=1000",
                     "-device", f"smccc-user,chardev=sdei0,fids={SDEI_FIDS.replace(',', ',,')}"]
        args += self.extra_args
        self.qemu_args = args
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.watchdog = threading.Timer(HARD_TIMEOUT, self._hard_timeout)
        self.watchdog.daemon = True
        self.watchdog.start()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _start_daemon(self) -> None:
        r, w = os.pipe()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.daemon_log_path, "wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "sdeid", "--protocol", "2",
                 "--socket-path", str(self.sock), "--control-socket", str(self.ctl),
                 "--ready-fd", str(w), "--log-level", "debug"],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, env=env)
        os.close(w)
        with os.fdopen(r, "rb") as ready:
            readable, _, _ = select.select([ready], [], [], 30)
            line = ready.readline() if readable else b""
        if line != b"READY\n":
            self.close()
            pytest.fail(f"sdeid did not report READY (got {line!r}):\n{self.daemon_log()}")

    def _hard_timeout(self) -> None:
        self.timed_out = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.console_path, "w") as log:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                item = (time.monotonic() - self.t0, line)
                self.lines.append(item)
                log.write(line + "\n")
                log.flush()
                self.queue.put(item)
        self.queue.put(None)

    def wait(self, timeout: float = STEP_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"QEMU still running after {timeout} s\n{self.tail()}") from None
        assert self.reader is not None
        self.reader.join(10)
        return rc

    def stop_daemon(self) -> int | None:
        """End sdeid (SIGTERM) and return its exit status."""
        if self.daemon is not None and self.daemon_rc is None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon_rc = self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon_rc = self.daemon.wait()
        return self.daemon_rc

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
            if self.reader is not None:
                self.reader.join(10)
        self.stop_daemon()

    # ---- the console

    def tail(self, n: int = 60) -> str:
        text = "\n".join(f"  {line}" for _, line in self.lines[-n:])
        extra = " (hard timeout hit)" if self.timed_out else ""
        return f"console tail{extra}:\n{text}\nsdeid log tail:\n{self.daemon_log()[-3000:]}"

    def daemon_log(self) -> str:
        try:
            return self.daemon_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def expect(self, pattern: str, timeout: float = STEP_TIMEOUT,
               skipped: list[str] | None = None) -> tuple[float, re.Match[str]]:
        """Wait for a console line matching `pattern` (searched anywhere in
        the line: kernel messages may share it); returns (time, match).
        Lines before it are appended to `skipped`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=max(left, 0))
            except queue.Empty:
                raise AssertionError(f"no console line matching {pattern!r} "
                                     f"within {timeout} s\n{self.tail()}") from None
            if item is None:
                self.queue.put(None)
                try:   # stdout closed: QEMU is exiting, if not gone already
                    rc = self.proc.wait(10) if self.proc else None
                except subprocess.TimeoutExpired:
                    rc = None
                raise AssertionError(f"QEMU exited (status {rc}) before a line matching "
                                     f"{pattern!r}\n{self.tail()}")
            m = rx.search(item[1])
            if m:
                return item[0], m
            if skipped is not None:
                skipped.append(item[1])

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.waiting = None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def prompt(self, timeout: float = STEP_TIMEOUT) -> int:
        """Wait until the guest's command loop asks for a command (at once if
        it asked and nothing was sent since); returns the command's number."""
        if self.waiting is None:
            self.waiting = int(self.expect(r"SDEID-CMD\? (\d+)", timeout)[1].group(1))
        return self.waiting

    def run(self, command: str, timeout: float = STEP_TIMEOUT) -> list[str]:
        """At the prompt: run `command` in the guest, return its output lines.
        The guest's rc must be 0."""
        n = self.prompt(timeout)
        self.send(command)
        out: list[str] = []
        _, m = self.expect(rf"SDEID-CMD-DONE {n} rc=(\d+)", timeout, out)
        assert m.group(1) == "0", f"guest command {command!r} failed: rc={m.group(1)}\n{out}"
        return out

    # ---- the daemon's view

    def control(self, *commands: str) -> list[Any]:
        return control(self.ctl, *commands)

    def trace(self) -> list[str]:
        """The daemon's sdeid.trace lines: 'CALL pe=1 PE_MASK ret=1', 'RESET', ..."""
        marker = " sdeid.trace: "
        return [line.split(marker, 1)[1] for line in self.daemon_log().splitlines()
                if marker in line]

    def console(self) -> list[str]:
        return [line for _, line in self.lines]

    def sdei_lines(self) -> list[str]:
        return [line for line in self.console() if re.search(r"sdei(?!d)", line, re.I)]


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[list[Vm]]:
    made: list[Vm] = []
    yield made
    for vm in made:
        vm.close()


def boot(vms: list[Vm], qemu: str, assets: dict[str, str], tmp_path: Path,
         **kw: Any) -> Vm:
    workdir = tmp_path / f"vm{len(vms)}"
    workdir.mkdir()
    vm = Vm(qemu, assets, workdir, **kw)
    vms.append(vm)
    return vm.start()


def wait_boot(vm: Vm) -> float:
    """Wait for the initramfs's first line; returns the boot time (s)."""
    t, m = vm.expect(INIT_MARKER)
    assert f"cpus={vm.smp}" in m.string, m.string
    print(f"\nboot time smp={vm.smp} conduit={vm.conduit} sdei={'on' if vm.sdei else 'off'}: "
          f"{t:.2f} s (QEMU start -> {INIT_MARKER})")
    return t


def assert_no_sdei_errors(vm: Vm) -> None:
    bad = [line for line in vm.sdei_lines() if SDEI_ERROR.search(line)]
    assert not bad, "SDEI error lines on the console:\n" + "\n".join(bad)


def calls(trace: list[str]) -> list[tuple[int, str, str]]:
    """(pe, function, ret) of each CALL line of a trace segment."""
    out = []
    for line in trace:
        m = re.fullmatch(r"CALL pe=(\d+) (\S+) ret=(\S+)", line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def assert_probe(segment: list[str], smp: int) -> None:
    """What Linux's SDEI probe does: VERSION, PRIVATE_RESET on every CPU,
    SHARED_RESET, then PE_UNMASK on every CPU (cpuhp), all successful."""
    c = calls(segment)
    names = [f for _, f, _ in c]
    where = "\n".join(segment)
    assert names and names[0] == "VERSION", where
    assert all(ret == "0" or f == "VERSION" for _, f, ret in c), where
    version = int(c[0][2], 0)
    assert version >> 48 == 1, f"VERSION returned {version:#x}"
    priv = [i for i, (_, f, _) in enumerate(c) if f == "PRIVATE_RESET"]
    shared = [i for i, (_, f, _) in enumerate(c) if f == "SHARED_RESET"]
    unmask = [i for i, (_, f, _) in enumerate(c) if f == "PE_UNMASK"]
    assert sorted(c[i][0] for i in priv) == list(range(smp)), where
    assert len(shared) == 1 and shared[0] > max(priv), where
    assert sorted(c[i][0] for i in unmask) == list(range(smp)), where
    assert min(unmask) > shared[0], where


def assert_all_unmasked(vm: Vm) -> dict[str, Any]:
    [sdei] = vm.control("query-sdei")
    assert isinstance(sdei, dict), sdei
    pes = sdei["pes"]
    assert [p["index"] for p in pes] == list(range(vm.smp)), sdei
    for p in pes:
        assert p["online"] and not p["masked"], f"PE {p['index']}: {p}"
    return sdei


def events(vm: Vm, kind: str) -> list[dict[str, Any]]:
    [evs] = vm.control("query-events")
    return [e["data"] for e in evs if e["event"] == kind]


def finish(vm: Vm) -> None:
    """Power the guest off from the prompt; QEMU and sdeid end cleanly."""
    vm.prompt()
    vm.send("poweroff -f")
    rc = vm.wait()
    assert rc == 0, f"QEMU exited with {rc}\n{vm.tail()}"
    # QEMU's own messages: none.  The smccc-user device reports only what
    # goes wrong, and a back-end connection that ends with QEMU is not that.
    console = vm.console()
    qemu_lines = [ln for ln in console if ln.startswith("qemu-system")]
    assert not qemu_lines, qemu_lines
    if vm.sdei:
        drc = vm.stop_daemon()
        log = vm.daemon_log()
        assert drc == 0, f"sdeid exited with {drc}:\n{log[-3000:]}"
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


# ------------------------------------------------------------------- tests

@pytest.mark.parametrize("conduit", ["hvc", "smc"])
@pytest.mark.parametrize("smp", [2, 4])
def test_linux_probes_sdei(qemu: str, assets: dict[str, str], tmp_path: Path,
                           vms: list[Vm], smp: int, conduit: str) -> None:
    vm = boot(vms, qemu, assets, tmp_path, smp=smp, conduit=conduit)
    vm.expect(re.escape(DETECTED))
    wait_boot(vm)
    out = vm.run("cd /proc/device-tree/firmware/sdei && for p in method compatible;"
                 " do tr -d '\\000' < $p; echo; done")
    assert out[:2] == [conduit, "arm,sdei-1.0"], out
    if conduit == "smc":
        assert any("CPU: All CPU(s) started at EL2" in ln for ln in vm.console()), vm.tail()
        assert any("VHE mode initialized" in ln for ln in vm.console()), vm.tail()

    # The guest is idle at its prompt: the daemon's view.
    sdei = assert_all_unmasked(vm)
    assert sdei["registered"] == [], sdei   # nothing in Linux registers an event here
    print(f"daemon's query-sdei PEs: {sdei['pes']}")
    [status, stats] = vm.control("query-status", "query-stats")
    assert status["connected"] and status["pes"] == smp, status
    trace = vm.trace()
    assert_probe(trace, smp)
    assert stats["calls"] == len(calls(trace)), (stats, trace)
    ons = events(vm, "SDEI_PE_POWER")
    assert sorted(e["pe"] for e in ons if e["state"] == PE_POWER_ON) == list(range(1, smp)), ons

    finish(vm)
    assert [DETECTED in ln for ln in vm.console()].count(True) == 1, vm.sdei_lines()
    assert_no_sdei_errors(vm)
    print(f"guest SDEI lines ({conduit}, smp={smp}):\n  " + "\n  ".join(vm.sdei_lines()))


def test_cpu_hotplug_masks_and_unmasks_the_pe(qemu: str, assets: dict[str, str],
                                              tmp_path: Path, vms: list[Vm]) -> None:
    vm = boot(vms, qemu, assets, tmp_path, smp=2)
    vm.expect(re.escape(DETECTED))
    wait_boot(vm)
    vm.run("true")
    assert_all_unmasked(vm)
    before = len(vm.trace())
    powers_before = len(events(vm, "SDEI_PE_POWER"))

    vm.run("echo 0 > /sys/devices/system/cpu/cpu1/online")
    assert vm.run("cat /sys/devices/system/cpu/online") == ["0"]
    [sdei] = vm.control("query-sdei")
    pe0, pe1 = sdei["pes"]
    assert pe1["masked"] and not pe1["online"], pe1
    assert not pe0["masked"] and pe0["online"], pe0
    off_trace = vm.trace()[before:]
    # PE_MASK returns 1: "masked by this call".
    assert [c for c in calls(off_trace) if c[0] == 1] == [(1, "PE_MASK", "1")], off_trace
    assert f"PE_POWER pe=1 state={PE_POWER_OFF}" in off_trace, off_trace
    powers = events(vm, "SDEI_PE_POWER")[powers_before:]
    assert powers == [{"pe": 1, "state": PE_POWER_OFF}], powers

    mid = len(vm.trace())
    vm.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
    assert vm.run("cat /sys/devices/system/cpu/online") == ["0-1"]
    assert_all_unmasked(vm)
    on_trace = vm.trace()[mid:]
    assert on_trace.index(f"PE_POWER pe=1 state={PE_POWER_ON}") \
        < on_trace.index("CALL pe=1 PE_UNMASK ret=0"), on_trace
    powers = events(vm, "SDEI_PE_POWER")[powers_before:]
    assert powers == [{"pe": 1, "state": PE_POWER_OFF}, {"pe": 1, "state": PE_POWER_ON}], powers
    print("hotplug trace (offline, then online):\n  " + "\n  ".join(off_trace + on_trace))

    finish(vm)
    assert_no_sdei_errors(vm)


def test_reboot_resets_and_probes_again(qemu: str, assets: dict[str, str], tmp_path: Path,
                                        vms: list[Vm]) -> None:
    smp = 2
    vm = boot(vms, qemu, assets, tmp_path, smp=smp, reboot=True)
    vm.expect(re.escape(DETECTED))
    wait_boot(vm)
    vm.prompt()
    first = vm.trace()
    assert_probe(first, smp)
    assert_all_unmasked(vm)
    resets_before = len(events(vm, "SDEI_RESET"))

    t_reboot = time.monotonic() - vm.t0
    vm.send("reboot -f")
    vm.expect(re.escape(DETECTED))
    t2, _ = vm.expect(INIT_MARKER)
    print(f"\nsecond boot (reboot -f -> {INIT_MARKER}): {t2 - t_reboot:.2f} s")
    vm.prompt()

    trace = vm.trace()
    assert trace[:len(first)] == first
    rest = trace[len(first):]
    assert rest.count("RESET") == 1, rest
    cut = rest.index("RESET")
    going_down, second = rest[:cut], rest[cut + 1:]
    # The reboot notifier: cpuhp teardown masks each PE, then PRIVATE_RESET on
    # every CPU and SHARED_RESET (smp_send_stop masks the stopped CPUs again).
    down = calls(going_down)
    # (PE_MASK returns 1 when it masked the PE, 0 when it was masked already.)
    assert all(ret == "0" or (f == "PE_MASK" and ret == "1") for _, f, ret in down), going_down
    priv = [i for i, (_, f, _) in enumerate(down) if f == "PRIVATE_RESET"]
    shared = [i for i, (_, f, _) in enumerate(down) if f == "SHARED_RESET"]
    masks = {pe for pe, f, _ in down if f == "PE_MASK"}
    assert sorted(down[i][0] for i in priv) == list(range(smp)), going_down
    assert len(shared) == 1 and shared[0] > max(priv), going_down
    assert masks == set(range(smp)), going_down
    # The second boot probes as the first did.
    assert_probe(second, smp)
    assert_all_unmasked(vm)
    assert len(events(vm, "SDEI_RESET")) == resets_before + 1
    # One connection throughout: a reset is a message, not a reconnection.
    assert len(re.findall(r"fe\d+: front-end connected:", vm.daemon_log())) == 1, \
        vm.daemon_log()
    print("reboot trace (reboot -f up to the second probe's end):\n  " + "\n  ".join(rest))

    finish(vm)
    detected = [ln for ln in vm.console() if DETECTED in ln]
    assert len(detected) == 2, detected
    assert_no_sdei_errors(vm)


def test_boot_time_with_and_without_sdeid(qemu: str, assets: dict[str, str], tmp_path: Path,
                                          vms: list[Vm]) -> None:
    """Not asserted: printed for the record (pytest -s)."""
    times = {}
    for sdei in (False, True):
        vm = boot(vms, qemu, assets, tmp_path, smp=2, sdei=sdei)
        times[sdei] = wait_boot(vm)
        finish(vm)
        assert any(DETECTED in ln for ln in vm.console()) == sdei
        if not sdei:
            assert not vm.sdei_lines(), vm.sdei_lines()
    print(f"boot time smp=2 hvc: without smccc-user {times[False]:.2f} s, "
          f"with sdeid {times[True]:.2f} s")
