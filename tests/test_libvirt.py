"""A libvirt domain with sdeid, driven through real virsh (docs/libvirt.md).

Debian bookworm's libvirt (libvirt-daemon-system 9.0) defines and starts the
documented domain, libvirt/domain-example.xml, with the patched QEMU as its
emulator; libvirt/sdeid-hook (installed by libvirt/install as
/etc/libvirt/hooks/qemu.d/sdeid) starts sdeid for it from
/etc/sdeid/DOMAIN.conf.  Checked:

- `virsh start`: sdeid runs as the user libvirt runs QEMU as (not root), its
  sockets are in /run/sdeid/DOMAIN/, QEMU's smccc-user device is connected,
  and Debian's stock kernel (UEFI, ACPI) registers the GHES source's SDEI
  event 100 (query-sdei on sdeid's control socket);
- `sdei-inject-error` on sdeid's control socket (as root) reaches the guest
  as a memory error (sdeid writes the record through the QMP monitor QEMU
  serves it);
- `virsh qemu-monitor-command DOMAIN '{"execute":"query-status"}'` works next
  to sdeid's own QMP monitor, and libvirt logs the taints the docs name
  (custom-argv for <qemu:commandline>, custom-monitor for that command);
- `virsh inject-nmi DOMAIN` reaches sdeid (--nmi-event 100 --nmi-ghes), and
  the guest panics from its GHES SDEI handler ("Kernel panic - not syncing:
  GHES: Fatal hardware error" in the serial console file);
- `virsh destroy`: no sdeid of that domain is left and /run/sdeid/DOMAIN is
  gone; the same when QEMU dies by SIGKILL (libvirt's `stopped` hook);
- sdeid that cannot start (a bad option) makes `virsh start` fail with the
  hook's reason, and leaves no QEMU, no sdeid and no socket directory.

Times are printed (define -> boot prompt, inject-nmi -> panic line, destroy
-> daemon gone): see them with `pytest -s`.

The test installs what it needs (Debian packages through scripts/setup-apt,
sdeid into a venv with Debian's Python under /var/lib/sdeid/libvirt-test, the
hook) and starts virtlogd and libvirtd itself when no init system does, and
stops what it started.  It needs root.  Integration test: it runs in CI and
fails, never skips, when something cannot be had, unless
SDEID_SKIP_INTEGRATION=1.  Every step is bounded by a timeout, and every domain
it defines is destroyed and undefined whatever happens (left-overs of a killed
run, named sdeid-lvt-*, are removed at the next start).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sdeid.launcher import SDEI_FIDS
from sdeid.testing.vm import QmpConnection
from tests.test_linux_guest import (
    assets,  # noqa: F401 - a fixture
    qemu,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

EXAMPLE = ROOT / "libvirt" / "domain-example.xml"
EXAMPLE_CONF = ROOT / "libvirt" / "sdeid.conf.example"
EXAMPLE_NAME = "sdeid-demo"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
URI = "qemu:///system"
STAGE = Path("/var/lib/sdeid/libvirt-test")    # readable by libvirt-qemu, unlike /root
RUN_DIR = Path("/run/sdeid")
CONF_DIR = Path("/etc/sdeid")
SDEID_LOG_DIR = Path("/var/log/sdeid")
LIBVIRT_LOG_DIR = Path("/var/log/libvirt/qemu")
PREFIX = "sdeid-lvt-"
EVENT = 100
ADDRESS = 0x40000000 + 64 * 1024 * 1024      # guest RAM starts at 1 GiB on virt
APPEND_EXTRA = "sdeid.test=console"
PROMPT = "SDEID-CMD? 1"
PANIC = "Kernel panic - not syncing: GHES: Fatal hardware error"
DETECTED = "sdei: SDEIv1.1 (0x53444549) detected in firmware."
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LC_ALL": "C"}

APT_TIMEOUT = 1800.0     # a fresh machine downloads libvirt
INSTALL_TIMEOUT = 900.0  # a venv and pip
BOOT_TIMEOUT = 180.0     # UEFI + kernel under TCG, up to the command prompt
STEP_TIMEOUT = 60.0
VIRSH_TIMEOUT = 120.0    # one virsh command (start includes the hook's wait)
GONE_TIMEOUT = 15.0      # the hook stops sdeid within 5 s (SIGKILL after that)


def _fail(msg: str) -> None:
    pytest.fail(f"{msg}; set SDEID_SKIP_INTEGRATION=1 to skip integration tests on purpose",
                pytrace=False)


def _run(argv: list[str], timeout: float, *, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)}: no answer within {timeout:g} s", pytrace=False)
    except OSError as e:
        _fail(f"{argv[0]}: {e}")
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed with status {out.returncode}:\n"
                    f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}", pytrace=False)
    return out


def virsh(*args: str, check: bool = True,
          timeout: float = VIRSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return _run(["virsh", "-c", URI, *args], timeout, check=check)


def _read(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _pid_from(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _alive(pid: int) -> bool:
    """Is pid a process that has not exited?  (An exited one stays a zombie
    until its parent, often init, reaps it.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def _wait_for(what: str, cond: Callable[[], bool], timeout: float,
              interval: float = 0.1) -> float:
    """Poll cond() until true; the seconds it took.  Fails after timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout:g} s", pytrace=False)
        time.sleep(interval)
    return time.monotonic() - t0


# ------------------------------------------------------------------ the host

@dataclass
class Host:
    sdeid: str                     # the venv's sdeid, runnable by QEMU's user
    emulator: str                  # the patched QEMU, copied where libvirt-qemu reads it
    kernel: str
    initrd: str
    started: list[str] = field(default_factory=list)   # daemons this test started


def _running(pidfile: str) -> bool:
    return _pid_from(Path(pidfile)) is not None


def _stop_daemon(name: str) -> None:
    pid = _pid_from(Path(f"/run/{name}.pid"))
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    _wait_for(f"{name} to exit", lambda: not _alive(pid), 30.0)


def _start_daemon(name: str) -> None:
    """virtlogd or libvirtd, daemonized, with a clean environment (as an init
    system would start them)."""
    _run([name, "-d"], 60.0, env=CLEAN_ENV)
    _wait_for(f"{name} to write /run/{name}.pid", lambda: _running(f"/run/{name}.pid"), 30.0)


def _ensure_daemons(hook_changed: bool, started: list[str]) -> None:
    if Path("/run/systemd/system").is_dir():
        # systemd runs the machine: its units (virtlogd is socket-activated).
        if hook_changed or _run(["systemctl", "is-active", "--quiet", "libvirtd.service"],
                                30.0, check=False).returncode != 0:
            _run(["systemctl", "restart", "libvirtd.service"], 120.0)
    else:
        # No init system (a container, CI): we start them, and stop at the end
        # those that were not running before.
        if not _running("/run/virtlogd.pid"):
            _start_daemon("virtlogd")
            started.append("virtlogd")
        if _running("/run/libvirtd.pid"):
            if hook_changed:
                _stop_daemon("libvirtd")       # libvirtd finds hooks only when it starts
                _start_daemon("libvirtd")
        else:
            _start_daemon("libvirtd")
            started.append("libvirtd")
    t0 = time.monotonic()
    while virsh("list", "--all", check=False, timeout=30.0).returncode != 0:
        if time.monotonic() - t0 > 60.0:
            virsh("list", "--all")     # fails with virsh's reason
        time.sleep(0.5)


def _copy_if_changed(src: str, dest: Path, mode: int) -> str:
    if not (dest.is_file() and _same(Path(src), dest)):
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.chmod(mode)
        tmp.replace(dest)
    return str(dest)


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _remove_leftovers() -> None:
    """Domains a killed run of this test left behind, and their files."""
    out = virsh("list", "--all", "--name", check=False, timeout=30.0)
    for name in out.stdout.split():
        if name.startswith(PREFIX):
            _remove_domain(name)
    for conf in CONF_DIR.glob(f"{PREFIX}*.conf"):
        conf.unlink(missing_ok=True)


def _remove_domain(name: str) -> None:
    virsh("destroy", name, check=False, timeout=60.0)
    virsh("undefine", "--nvram", name, check=False, timeout=60.0)
    (CONF_DIR / f"{name}.conf").unlink(missing_ok=True)
    # (a failing test has quoted what matters from the logs already)
    for path in (STAGE / f"{name}-serial.log", STAGE / f"{name}.xml",
                 SDEID_LOG_DIR / f"{name}.log", LIBVIRT_LOG_DIR / f"{name}.log"):
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def host(qemu: str, assets: dict[str, str]) -> Iterator[Host]:  # noqa: F811
    if os.geteuid() != 0:
        _fail("tests/test_libvirt.py needs root (it installs libvirt and a hook)")
    for key in ("AAVMF_CODE", "AAVMF_VARS"):
        if key not in assets or not Path(assets[key]).is_file():
            _fail(f"scripts/fetch-guest-assets gave no {key}: {assets}")
    _run([str(ROOT / "scripts/setup-apt"), "libvirt-daemon-system", "libvirt-clients",
          "python3-venv"], APT_TIMEOUT)
    STAGE.mkdir(parents=True, exist_ok=True)
    for d in (STAGE.parent, STAGE):
        d.chmod(0o755)
    out = _run([str(ROOT / "libvirt/install"), "--venv", str(STAGE / "venv"),
                "--qemu", qemu], INSTALL_TIMEOUT)
    found = dict(ln.split("=", 1) for ln in out.stdout.splitlines() if "=" in ln)
    h = Host(sdeid=found["SDEID"], emulator=found["QEMU"],
             kernel=_copy_if_changed(assets["KERNEL"], STAGE / "vmlinuz", 0o644),
             initrd=_copy_if_changed(assets["INITRD"], STAGE / "initrd.gz", 0o644))
    try:
        _ensure_daemons(found["HOOK_CHANGED"] == "1", h.started)
        _remove_leftovers()
        yield h
    finally:
        if "libvirtd" in h.started:
            _remove_leftovers()
        for name in reversed(h.started):
            _stop_daemon(name)


# ------------------------------------------------------------------ a domain

def domain_xml(h: Host, name: str, serial: Path) -> str:
    """libvirt/domain-example.xml for domain `name`: our emulator, kernel,
    initrd and console file, the console command loop, and the socket
    directory /run/sdeid/NAME/ in the QEMU options."""
    ET.register_namespace("qemu", QEMU_NS)
    tree = ET.parse(EXAMPLE)
    dom = tree.getroot()

    def one(path: str) -> ET.Element:
        el = dom.find(path)
        assert el is not None, f"{EXAMPLE} has no {path}"
        return el

    one("name").text = name
    one("os/kernel").text = h.kernel
    one("os/initrd").text = h.initrd
    cmdline = one("os/cmdline")
    cmdline.text = f"{cmdline.text} {APPEND_EXTRA}"
    one("devices/emulator").text = h.emulator
    one("devices/serial/source").set("path", str(serial))
    old = f"/run/sdeid/{EXAMPLE_NAME}/"
    for arg in dom.iter(f"{{{QEMU_NS}}}arg"):
        arg.set("value", arg.get("value", "").replace(old, f"{RUN_DIR}/{name}/"))
    return ET.tostring(dom, encoding="unicode")


def example_args() -> str:
    """SDEID_ARGS of libvirt/sdeid.conf.example."""
    m = re.search(r"^SDEID_ARGS=(.*)$", EXAMPLE_CONF.read_text(), re.M)
    assert m, f"no SDEID_ARGS in {EXAMPLE_CONF}"
    return m.group(1)


@dataclass
class Domain:
    name: str
    serial: Path

    @property
    def run_dir(self) -> Path:
        return RUN_DIR / self.name

    @property
    def pidfile(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def sdeid_log(self) -> Path:
        return SDEID_LOG_DIR / f"{self.name}.log"

    @property
    def libvirt_log(self) -> Path:
        return LIBVIRT_LOG_DIR / f"{self.name}.log"

    def console(self) -> str:
        return _read(self.serial, limit=1 << 20)

    def procs(self) -> list[str]:
        """Processes whose command line names this domain's socket directory
        (its sdeid and its QEMU), as `pgrep -a` prints them."""
        out = _run(["pgrep", "-a", "-f", f"{RUN_DIR}/{self.name}/"], 10.0, check=False)
        return out.stdout.splitlines()

    def qemu_pid(self) -> int | None:
        return _pid_from(Path(f"/run/libvirt/qemu/{self.name}.pid"))

    def diagnostics(self) -> str:
        return ("\n--- console tail:\n" + self.console()[-3000:]
                + f"\n--- {self.sdeid_log}:\n" + _read(self.sdeid_log)
                + f"\n--- {self.libvirt_log}:\n" + _read(self.libvirt_log))

    def expect(self, text: str, timeout: float, what: str, count: int = 1) -> float:
        t0 = time.monotonic()
        while self.console().count(text) < count:
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{what}: no {text!r} on the console within {timeout:g} s"
                            + self.diagnostics(), pytrace=False)
            time.sleep(0.1)
        return time.monotonic() - t0

    def assert_gone(self) -> float:
        """sdeid, QEMU and the socket directory are gone (the hook's stop);
        the seconds that took after the call."""
        t0 = time.monotonic()
        while self.procs() or self.run_dir.exists() or self.pidfile.exists():
            if time.monotonic() - t0 > GONE_TIMEOUT:
                pytest.fail(f"left behind after {GONE_TIMEOUT:g} s: processes {self.procs()}, "
                            f"{self.run_dir} exists: {self.run_dir.exists()}, "
                            f"{self.pidfile} exists: {self.pidfile.exists()}"
                            + self.diagnostics(), pytrace=False)
            time.sleep(0.1)
        return time.monotonic() - t0


@pytest.fixture
def domain(host: Host) -> Iterator[Domain]:
    name = PREFIX + secrets.token_hex(3)
    d = Domain(name, STAGE / f"{name}-serial.log")
    conf = CONF_DIR / f"{name}.conf"
    conf.write_text(f"SDEID={host.sdeid}\nSDEID_ARGS={example_args()}\n")
    conf.chmod(0o644)
    xml = STAGE / f"{name}.xml"
    xml.write_text(domain_xml(host, name, d.serial))
    try:
        yield d
    finally:
        _remove_domain(name)


def define_and_start(d: Domain) -> float:
    """virsh define + start; the seconds from define to start's return."""
    t0 = time.monotonic()
    virsh("define", str(STAGE / f"{d.name}.xml"))
    virsh("start", d.name)
    return time.monotonic() - t0


# ------------------------------------------------------------------ tests

def test_example_xml_matches_the_hook_and_sdeid() -> None:
    """The documented XML names the hook's socket paths and sdeid's SMCCC
    ranges (no libvirt needed)."""
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.parse(EXAMPLE).getroot()
    assert dom.get("type") == "qemu" and dom.findtext("name") == EXAMPLE_NAME
    args = [a.get("value", "") for a in dom.iter(f"{{{QEMU_NS}}}arg")]
    joined = " ".join(args)
    assert f"path=/run/sdeid/{EXAMPLE_NAME}/sdei.sock," in joined, args
    assert f"path=/run/sdeid/{EXAMPLE_NAME}/qmp.sock,server=on,wait=off" in joined, args
    assert f"fids={SDEI_FIDS.replace(',', ',,')}" in joined, args
    assert f"ghes-event={EVENT}" in joined and "sig=SDEI,rev=1,data=/dev/null" in args, args
    assert ["-machine", "ras=on"] == args[:2], args
    assert f"--event {EVENT}:shared:critical" in example_args()
    assert f"--nmi-event {EVENT} --nmi-ghes" in example_args()


def test_inject_nmi_through_virsh_panics_the_guest(host: Host, domain: Domain) -> None:
    d = domain
    started = define_and_start(d)
    # The hook returned before QEMU started: sdeid listens, as QEMU's user.
    sdeid_pid = _pid_from(d.pidfile)
    qemu_pid = d.qemu_pid()
    assert sdeid_pid is not None and qemu_pid is not None, d.diagnostics()
    qemu_uid, sdeid_uid = _uid_of(qemu_pid), _uid_of(sdeid_pid)
    assert sdeid_uid == qemu_uid != 0, (sdeid_uid, qemu_uid)
    for sock in ("sdei.sock", "control.sock", "qmp.sock"):
        assert (d.run_dir / sock).is_socket(), sock
    assert d.run_dir.stat().st_uid == qemu_uid
    assert [p for p in d.procs() if p.startswith(f"{sdeid_pid} ")], d.procs()

    boot = started + d.expect(PROMPT, BOOT_TIMEOUT, "boot")
    console = d.console()
    assert DETECTED in console, "SDEI not detected" + d.diagnostics()
    assert re.search(r"ACPI: SDEI 0x", console) and re.search(r"ACPI: HEST 0x", console)

    # root on sdeid's control socket (the hook gives sdeid --allow-uid 0)
    with QmpConnection(d.run_dir / "control.sock", timeout=STEP_TIMEOUT) as ctl:
        status = ctl.execute("query-status")
        assert status["connected"] and status["ready"], status
        regs = [r for r in ctl.execute("query-sdei")["registered"] if r["event"] == EVENT]
        assert len(regs) == 1 and regs[0]["state"] == "enabled", regs
        # a memory error through the QMP monitor QEMU serves sdeid
        ctl.execute("sdei-inject-error", {"event": EVENT, "address": ADDRESS})
    d.expect(f"physical_address: 0x{ADDRESS:016x}", STEP_TIMEOUT, "the memory error's report")

    # libvirt's own monitor, next to the one QEMU serves sdeid
    out = virsh("qemu-monitor-command", d.name, '{"execute":"query-status"}')
    assert json.loads(out.stdout)["return"]["status"] == "running", out.stdout
    out = virsh("qemu-monitor-command", d.name, '{"execute":"query-chardev"}')
    chardevs = {c["label"]: c for c in json.loads(out.stdout)["return"]}
    assert chardevs["sdei0"]["frontend-open"], chardevs
    assert chardevs["sdeidqmp"]["filename"].startswith(f"unix:{d.run_dir}/qmp.sock"), chardevs

    t0 = time.monotonic()
    virsh("inject-nmi", d.name, timeout=STEP_TIMEOUT)
    d.expect(PANIC, STEP_TIMEOUT, "the guest's panic")
    nmi = time.monotonic() - t0
    assert "event severity: fatal" in d.console()
    assert "fatal error record, event 100 triggered" in _read(d.sdeid_log, 1 << 20)
    with QmpConnection(d.run_dir / "control.sock", timeout=STEP_TIMEOUT) as ctl:
        stats = ctl.execute("query-stats")
    assert stats["nmi-received"] == 1 and stats["nmi-delivered"] == 1, stats

    log = _read(d.libvirt_log, 1 << 20)
    assert re.search(r"Domain id=\d+ is tainted: custom-argv", log), log
    assert re.search(r"Domain id=\d+ is tainted: custom-monitor", log), log

    t0 = time.monotonic()
    virsh("destroy", d.name)
    destroyed = time.monotonic() - t0
    gone = d.assert_gone()
    assert not _alive(sdeid_pid) and not _alive(qemu_pid)
    virsh("undefine", "--nvram", d.name)
    print(f"\nlibvirt: define+start {started:.2f} s, define -> boot prompt {boot:.1f} s, "
          f"inject-nmi -> panic line {nmi * 1000:.0f} ms, virsh destroy {destroyed:.2f} s "
          f"(+{gone:.2f} s until sdeid was gone)")


def test_sdeid_goes_when_qemu_dies(host: Host, domain: Domain) -> None:
    """QEMU killed (SIGKILL): libvirt's `stopped` hook stops sdeid."""
    d = domain
    define_and_start(d)
    qemu_pid, sdeid_pid = d.qemu_pid(), _pid_from(d.pidfile)
    assert qemu_pid is not None and sdeid_pid is not None, d.diagnostics()
    os.kill(qemu_pid, signal.SIGKILL)
    _wait_for("libvirt to see QEMU die",
              lambda: virsh("domstate", d.name, check=False).stdout.strip() == "shut off",
              STEP_TIMEOUT, interval=0.5)
    gone = d.assert_gone()
    reason = virsh("domstate", "--reason", d.name).stdout.strip()
    print(f"\nQEMU SIGKILLed: domain {reason}, sdeid gone {gone:.2f} s after libvirt noticed")


def test_a_failing_sdeid_fails_the_start(host: Host, domain: Domain) -> None:
    """sdeid refuses its options: `virsh start` fails with the hook's reason,
    and nothing is left running."""
    d = domain
    conf = CONF_DIR / f"{d.name}.conf"
    conf.write_text(f"SDEID={host.sdeid}\nSDEID_ARGS='--nmi-ghes'\n")
    virsh("define", str(STAGE / f"{d.name}.xml"))
    out = virsh("start", d.name, check=False)
    assert out.returncode != 0, out.stdout
    assert "did not start" in out.stderr and "--nmi-ghes needs" in out.stderr, out.stderr
    assert virsh("domstate", d.name).stdout.strip() == "shut off"
    assert d.qemu_pid() is None
    d.assert_gone()
